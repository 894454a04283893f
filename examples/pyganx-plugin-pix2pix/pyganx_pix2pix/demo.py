"""A small paired data set for pix2pix: line drawings (A) -> colour photos (B).

Crops of scikit-learn's two sample photos (china.jpg, flower.jpg), each written as one
side-by-side A|B PNG, the layout ``pyganx train pix2pix --data DIR`` reads::

    python -m pyganx_pix2pix.demo DIR [--size 64] [--train 400] [--test 50] [--seed 0]

writes ``DIR/train/`` and ``DIR/test/``. A is the crop's edge map (Sobel gradient
magnitude of the grey image, thresholded, dark lines on white), B the crop itself.
Test crops come from the bottom quarter of each photo, training crops from the rest,
so no test pixel is seen in training. The same arguments give the same files.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

#: the fraction of each photo's height, at the bottom, kept for the test crops
TEST_FRACTION = 0.25
#: a crop whose drawing has fewer line pixels than this is drawn again ...
MIN_LINES = 0.03
#: ... at most this many times
MAX_REDRAWS = 10


def sample_photos() -> list[Image.Image]:
    """scikit-learn's sample photos (china.jpg, flower.jpg) as RGB images."""
    try:
        from sklearn.datasets import load_sample_images
    except ImportError:
        raise RuntimeError("the demo photos come with scikit-learn: pip install scikit-learn") from None
    return [Image.fromarray(a).convert("RGB") for a in load_sample_images().images]


def line_drawing(photo: Image.Image, threshold: float = 0.12) -> Image.Image:
    """Dark lines on white where the photo has strong edges: the Sobel gradient magnitude
    of the slightly blurred grey image above ``threshold`` (of the 0-1 grey range)."""
    g = np.asarray(photo.convert("L").filter(ImageFilter.GaussianBlur(0.8)), np.float32) / 255
    p = np.pad(g, 1, mode="edge")
    gx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    gy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    edges = np.hypot(gx, gy) / 4 > threshold
    return Image.fromarray(np.where(edges, 0, 255).astype(np.uint8)).convert("RGB")


def _pairs(photo: Image.Image, n: int, size: int, y_lo: int, y_hi: int,
           rng: np.random.Generator) -> list[tuple[Image.Image, Image.Image]]:
    """``n`` (line drawing, photo crop) pairs: square crops within rows [y_lo, y_hi), of
    side between ``size`` and twice that (less where the region is smaller), resized to
    ``size``. A crop with almost no lines (plain sky, blurred background) is drawn again,
    a few times at most."""
    w = photo.width
    most = min(y_hi - y_lo, w)
    out = []
    for _ in range(n):
        for _attempt in range(MAX_REDRAWS + 1):
            side = int(rng.integers(min(size, most), min(2 * size, most) + 1))
            x = int(rng.integers(0, w - side + 1))
            y = int(rng.integers(y_lo, y_hi - side + 1))
            crop = photo.crop((x, y, x + side, y + side)).resize((size, size), Image.LANCZOS)
            drawing = line_drawing(crop)
            if np.mean(np.asarray(drawing.convert("L")) < 128) >= MIN_LINES:
                break
        out.append((drawing, crop))
    return out


def write_pairs(root: str | Path, size: int = 64, n_train: int = 400, n_test: int = 50,
                seed: int = 0) -> Path:
    """Writes ``root/train/*.png`` and ``root/test/*.png``: ``size`` x ``2 * size`` images,
    the line drawing on the left, the photo on the right; returns ``root``."""
    if size < 8:
        raise ValueError(f"size must be at least 8, got {size}")
    if n_train < 1 or n_test < 1:
        raise ValueError("give at least one training and one test pair")
    root = Path(root)
    rng = np.random.default_rng(seed)
    photos = sample_photos()
    for split, n in (("train", n_train), ("test", n_test)):
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        k = 0
        for j, photo in enumerate(photos):
            cut = int(photo.height * (1 - TEST_FRACTION))
            lo, hi = (0, cut) if split == "train" else (cut, photo.height)
            count = n // len(photos) + (1 if j < n % len(photos) else 0)
            for drawing, crop in _pairs(photo, count, size, lo, hi, rng):
                pair = Image.new("RGB", (2 * size, size))
                pair.paste(drawing, (0, 0))
                pair.paste(crop, (size, 0))
                pair.save(folder / f"{k:04d}.png")
                k += 1
    return root


def main(argv: list[str] | None = None) -> int:
    """``python -m pyganx_pix2pix.demo``: writes the data set; returns the exit status."""
    ap = argparse.ArgumentParser(prog="python -m pyganx_pix2pix.demo", description=(
        "Write a paired data set (line drawings | photo crops, side by side) for pix2pix."))
    ap.add_argument("folder", help="where to write train/ and test/")
    ap.add_argument("--size", type=int, default=64, help="side of each half, in pixels")
    ap.add_argument("--train", type=int, default=400, help="training pairs")
    ap.add_argument("--test", type=int, default=50, help="test pairs")
    ap.add_argument("--seed", type=int, default=0, help="which crops")
    args = ap.parse_args(argv)
    try:
        root = write_pairs(args.folder, args.size, args.train, args.test, args.seed)
    except (ValueError, RuntimeError, OSError) as e:
        print(f"{ap.prog}: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.train} training and {args.test} test pairs of {args.size} px to "
          f"{root / 'train'} and {root / 'test'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
