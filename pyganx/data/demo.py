"""Bundled demo data, built on the fly from real data shipped in packages (no downloads).

``digits``: handwritten digits (scikit-learn's 8x8 digits, upscaled smoothly to 32 px)
against the same digits typeset in four font families shipped with matplotlib (DejaVu
Sans, DejaVu Serif, DejaVu Sans Mono, STIX), each with a small random affine jitter.
Grey, white ink on black, 32 px, never flipped (digits are not mirror-symmetric).
Views: unpaired (A handwritten, B typeset), labelled by digit, multi-domain by style.

``photos``: colour crops of scikit-learn's sample photographs, china.jpg (A) against
flower.jpg (B), 64 px.

Both are deterministic (fixed seeds) and need the ``demo`` extra (scikit-learn,
matplotlib). ``export(name, folder)`` writes a set in the layout of docs/contracts.md.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageFont

from ..errors import DependencyError, UsageError

#: style name -> matplotlib font file
FONTS = {
    "dejavu-sans": "DejaVuSans.ttf",
    "dejavu-serif": "DejaVuSerif.ttf",
    "dejavu-mono": "DejaVuSansMono.ttf",
    "stix": "STIXGeneral.ttf",
}
NAMES = ("digits", "photos")
#: Bumped whenever the generated images change (classifiers cached on them are then retrained).
DATA_VERSION = 2


@dataclass
class Sample:
    image: Image.Image
    label: int = -1       # the digit, or -1
    style: str = ""       # the domain


@dataclass
class DemoSet:
    """One bundled data set, split into train/test and into domains A and B."""

    name: str
    channels: int
    size: int
    flip: bool
    train_a: list[Sample] = field(default_factory=list)
    train_b: list[Sample] = field(default_factory=list)
    test_a: list[Sample] = field(default_factory=list)
    test_b: list[Sample] = field(default_factory=list)
    description: str = ""

    @property
    def styles(self) -> list[str]:
        return sorted({s.style for s in self.train_a + self.train_b})

    def labelled(self, split: str = "train") -> list[tuple[Image.Image, int]]:
        a, b = (self.train_a, self.train_b) if split == "train" else (self.test_a, self.test_b)
        return [(s.image, s.label) for s in a + b if s.label >= 0]

    def domains(self, split: str = "train") -> list[tuple[Image.Image, int]]:
        a, b = (self.train_a, self.train_b) if split == "train" else (self.test_a, self.test_b)
        index = {s: k for k, s in enumerate(self.styles)}
        return [(s.image, index[s.style]) for s in a + b]


def _need(module: str):
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DependencyError(f"the bundled demo data needs {module.split('.')[0]}: "
                           f"pip install 'pyganx[demo]'") from None


def _font_path(filename: str) -> str:
    mpl = _need("matplotlib")
    path = Path(mpl.get_data_path()) / "fonts" / "ttf" / filename
    if not path.is_file():
        raise DependencyError(f"matplotlib's font {filename} is missing ({path})")
    return str(path)


def _render_digit(digit: int, font: ImageFont.FreeTypeFont, size: int,
                  rng: np.random.Generator) -> Image.Image:
    """White digit on black, scaled so its ink spans the frame's height like the
    handwritten set's digits do (the two domains differ in style, not in scale), with a
    small random affine jitter."""
    big = 4 * size
    from PIL import ImageDraw
    ink = Image.new("L", (2 * big, 2 * big), 0)
    ImageDraw.Draw(ink).text((big, big), str(digit), fill=255, font=font, anchor="mm")
    ink = ink.crop(ink.getbbox())
    fill = 0.94 * big / ink.height
    ink = ink.resize((max(1, round(ink.width * fill)), max(1, round(ink.height * fill))), Image.LANCZOS)
    canvas = Image.new("L", (big, big), 0)
    canvas.paste(ink, ((big - ink.width) // 2, (big - ink.height) // 2))
    angle = math.radians(rng.uniform(-8, 8))
    scale = rng.uniform(0.9, 1.02)
    shear = rng.uniform(-0.15, 0.15)
    tx, ty = rng.uniform(-0.04, 0.04, size=2) * big
    # inverse map for Image.transform: output (x, y) -> input
    c, s = math.cos(angle) / scale, math.sin(angle) / scale
    cx = cy = big / 2
    a, b = c, s + shear * c
    d, e = -s, c - shear * s
    coeffs = (a, b, cx - a * (cx + tx) - b * (cy + ty), d, e, cy - d * (cx + tx) - e * (cy + ty))
    canvas = canvas.transform((big, big), Image.AFFINE, coeffs, resample=Image.BICUBIC)
    return canvas.resize((size, size), Image.LANCZOS)


def _handwritten(size: int) -> list[Sample]:
    datasets = _need("sklearn.datasets")
    d = datasets.load_digits()
    out = []
    for img, label in zip(d.images, d.target):
        a = (img / 16.0 * 255.0).astype(np.uint8)
        out.append(Sample(Image.fromarray(a, "L").resize((size, size), Image.BICUBIC), int(label),
                          "handwritten"))
    return out


def _split(samples: list[Sample], test_fraction: float, seed: int) -> tuple[list, list]:
    order = np.random.default_rng(seed).permutation(len(samples))
    n_test = int(round(len(samples) * test_fraction))
    test = set(order[:n_test].tolist())
    return ([s for i, s in enumerate(samples) if i not in test],
            [s for i, s in enumerate(samples) if i in test])


@lru_cache(maxsize=2)
def digits(size: int = 32, per_digit_per_font: int = 45, seed: int = 0) -> DemoSet:
    hand = _handwritten(size)
    rng = np.random.default_rng(seed)
    typeset = []
    for style, filename in FONTS.items():
        font = ImageFont.truetype(_font_path(filename), int(size * 4.2))
        for digit in range(10):
            for _ in range(per_digit_per_font):
                typeset.append(Sample(_render_digit(digit, font, size, rng), digit, style))
    train_a, test_a = _split(hand, 0.2, seed + 1)
    train_b, test_b = _split(typeset, 0.2, seed + 2)
    return DemoSet("digits", 1, size, False, train_a, train_b, test_a, test_b,
                   description=f"handwritten (scikit-learn) vs typeset ({', '.join(FONTS)}), "
                               f"grey, {size} px")


@lru_cache(maxsize=2)
def photos(size: int = 64, n_train: int = 300, n_test: int = 60, seed: int = 0) -> DemoSet:
    datasets = _need("sklearn.datasets")
    imgs = datasets.load_sample_images()
    by_name = {os.path.basename(f): im for f, im in zip(imgs.filenames, imgs.images)}
    rng = np.random.default_rng(seed)

    def crops(photo: np.ndarray, n: int, style: str) -> list[Sample]:
        h, w = photo.shape[:2]
        out = []
        for _ in range(n):
            side = int(rng.integers(96, min(h, w, 192) + 1))
            y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            crop = Image.fromarray(photo[y:y + side, x:x + side]).resize((size, size), Image.LANCZOS)
            out.append(Sample(crop, -1, style))
        return out

    a = crops(by_name["china.jpg"], n_train + n_test, "china")
    b = crops(by_name["flower.jpg"], n_train + n_test, "flower")
    return DemoSet("photos", 3, size, True, a[:n_train], b[:n_train], a[n_train:], b[n_train:],
                   description=f"crops of china.jpg vs flower.jpg (scikit-learn), colour, {size} px")


def load(name: str) -> DemoSet:
    if name == "digits":
        return digits()
    if name == "photos":
        return photos()
    raise UsageError(f"unknown demo data {name!r}; available: {', '.join(NAMES)}")


def export(name: str, folder: str | os.PathLike) -> Path:
    """Writes the set as PNGs: trainA/ trainB/ testA/ testB/ (and, for digits,
    labelled/<digit>/ and domains/<style>/). Returns the folder."""
    ds = load(name)
    root = Path(folder)
    for split, samples in (("trainA", ds.train_a), ("trainB", ds.train_b),
                           ("testA", ds.test_a), ("testB", ds.test_b)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for i, s in enumerate(samples):
            tag = f"_{s.label}" if s.label >= 0 else ""
            s.image.save(root / split / f"{s.style}_{i:05d}{tag}.png")
    if name == "digits":
        for i, s in enumerate(ds.train_a + ds.train_b):
            d = root / "labelled" / str(s.label)
            d.mkdir(parents=True, exist_ok=True)
            s.image.save(d / f"{s.style}_{i:05d}.png")
            d = root / "domains" / s.style
            d.mkdir(parents=True, exist_ok=True)
            s.image.save(d / f"{i:05d}_{s.label}.png")
    return root
