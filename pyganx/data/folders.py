"""Datasets over image folders (or in-memory images, for the bundled demo data).

Every dataset returns tensors in [-1, 1]. Randomness (which B image goes with an A
image, crops, flips) comes from a generator seeded by (seed, epoch, index), so a run is
reproducible and two processes that agree on the seed agree on the data; call
``set_epoch`` once per epoch, as with ``DistributedSampler``.

An unreadable image raises ImageError naming its path. With ``skip_bad_images=True``
the dataset warns once per path (per process) on stderr and returns the next index's
item instead; it raises ImageError only when no index gives a readable item.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from .images import ImageError, image_channels, list_images, load_image

Item = Path | Image.Image
Transform = Callable[[Image.Image, torch.Generator], torch.Tensor]

_warned: set[str] = set()   # the unreadable images already reported by this process


def _warn_skipped(e: ImageError) -> None:
    key = str(e.path) if e.path is not None else str(e)
    if key not in _warned:
        _warned.add(key)
        msg = " ".join(str(e).split())
        print(f"pyganx: skipping an unreadable image: {msg}", file=sys.stderr, flush=True)


def _generator(seed: int, epoch: int, index: int, stream: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(((seed * 1_000_003 + epoch) * 1_000_033 + index) * 7 + stream)
    return g


def load_item(item: Item, channels: int) -> Image.Image:
    """An item of a dataset (a path, or an image in memory) as an RGB or grey image."""
    if isinstance(item, Image.Image):
        return item.convert("RGB" if channels == 3 else "L")
    return load_image(item, channels)


def _images(source: str | os.PathLike | Sequence[Item], what: str) -> list[Item]:
    items = list_images(source) if isinstance(source, (str, os.PathLike)) else list(source)
    if not items:
        raise ImageError(f"{what}: no images found"
                         + (f" in {source}" if isinstance(source, (str, os.PathLike)) else ""))
    return items


def _channels(items: Sequence[Item], channels: int | None) -> int:
    if channels is not None:
        return channels
    paths = [p for p in items if isinstance(p, Path)]
    if paths:
        return image_channels(paths)
    return 1 if all(getattr(i, "mode", "RGB") == "L" for i in items[:16]) else 3


def spread(items: Sequence, k: int) -> list:
    """At most ``k`` items, evenly spread over the sequence (item ``i * n // k``)."""
    n = len(items)
    if n <= k:
        return list(items)
    return [items[i * n // k] for i in range(k)]


def _fraction_of(items: Sequence, fraction: float) -> list:
    return spread(items, max(1, round(len(items) * fraction)))


class _Seeded(Dataset):
    """Seeded randomness per (epoch, index), and the skipping of unreadable images:
    subclasses implement ``_item(i)``."""

    def __init__(self, transform: Transform, seed: int, skip_bad_images: bool = False) -> None:
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.skip_bad_images = skip_bad_images

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def thin(self, fraction: float) -> None:
        """Keeps ``fraction`` of the items (of each domain), evenly spread."""
        raise NotImplementedError

    def _item(self, i: int):
        raise NotImplementedError

    def __getitem__(self, i: int):
        if not self.skip_bad_images:
            return self._item(i)
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} items")
        i %= n
        for k in range(n):
            try:
                return self._item((i + k) % n)
            except ImageError as e:
                _warn_skipped(e)
                last = e
        raise ImageError(f"no readable image left: all {n} items have an unreadable image "
                         f"(the last: {last})", last.path)

    def _gen(self, index: int, stream: int) -> torch.Generator:
        return _generator(self.seed, self.epoch, index, stream)


class Images(_Seeded):
    """A folder of images (searched recursively) or images in memory, without labels: what
    a noise-to-image GAN (DCGAN) learns to imitate. Returns {"image": tensor}."""

    def __init__(self, source: str | os.PathLike | Sequence[Item], transform: Transform,
                 channels: int | None = None, seed: int = 0, skip_bad_images: bool = False) -> None:
        super().__init__(transform, seed, skip_bad_images)
        self.items = _images(source, "images")
        self.channels = _channels(self.items, channels)

    def __len__(self) -> int:
        return len(self.items)

    def thin(self, fraction: float) -> None:
        self.items = _fraction_of(self.items, fraction)

    def _item(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.transform(load_item(self.items[i], self.channels), self._gen(i, 0))}


class UnpairedImages(_Seeded):
    """Two unaligned sets (CycleGAN): item i is A[i % |A|] with a B image drawn at random.
    Returns {"A": tensor, "B": tensor}."""

    def __init__(self, a: str | os.PathLike | Sequence[Item], b: str | os.PathLike | Sequence[Item],
                 transform: Transform, channels: int | None = None, seed: int = 0,
                 skip_bad_images: bool = False) -> None:
        super().__init__(transform, seed, skip_bad_images)
        self.a, self.b = _images(a, "domain A"), _images(b, "domain B")
        self.channels = _channels(self.a + self.b, channels)

    def __len__(self) -> int:
        return max(len(self.a), len(self.b))

    def thin(self, fraction: float) -> None:
        self.a, self.b = _fraction_of(self.a, fraction), _fraction_of(self.b, fraction)

    def _item(self, i: int) -> dict[str, torch.Tensor]:
        j = int(torch.randint(len(self.b), (), generator=self._gen(i, 0)))
        return {"A": self.transform(load_item(self.a[i % len(self.a)], self.channels), self._gen(i, 1)),
                "B": self.transform(load_item(self.b[j], self.channels), self._gen(i, 2))}


class LabelledImages(_Seeded):
    """One sub-folder per class (or per domain), or (image, label) pairs in memory.
    Returns {"image": tensor, "label": int}; ``classes`` names the labels."""

    def __init__(self, root: str | os.PathLike | None = None, transform: Transform | None = None,
                 channels: int | None = None, seed: int = 0,
                 samples: Sequence[tuple[Item, int]] | None = None,
                 classes: Sequence[str] | None = None, skip_bad_images: bool = False) -> None:
        super().__init__(transform, seed, skip_bad_images)
        if samples is not None:
            self.samples = list(samples)
            self.classes = list(classes or sorted({str(c) for _, c in samples}))
        else:
            rootp = Path(root)
            if not rootp.is_dir():
                raise ImageError(f"{rootp}: not a folder")
            self.classes = sorted(d.name for d in rootp.iterdir() if d.is_dir())
            if not self.classes:
                raise ImageError(f"{rootp}: expected one sub-folder per class, found none")
            self.samples = [(p, k) for k, c in enumerate(self.classes)
                            for p in list_images(rootp / c)]
            if not self.samples:
                raise ImageError(f"{rootp}: no images in its class folders")
        self.channels = _channels([s for s, _ in self.samples], channels)

    def __len__(self) -> int:
        return len(self.samples)

    def thin(self, fraction: float) -> None:
        """Keeps ``fraction`` of each class's samples."""
        self.samples = [s for k in range(len(self.classes))
                        for s in _fraction_of([s for s in self.samples if s[1] == k], fraction)]

    def _item(self, i: int) -> dict:
        item, label = self.samples[i]
        return {"image": self.transform(load_item(item, self.channels), self._gen(i, 0)),
                "label": label}


class PairedImages(_Seeded):
    """Aligned pairs (pix2pix): files of the same name in two folders, or one folder of
    side-by-side A|B images. The same crop and flip are applied to both halves.
    Returns {"A": tensor, "B": tensor}."""

    def __init__(self, a: str | os.PathLike, b: str | os.PathLike | None = None,
                 transform: Transform | None = None, channels: int | None = None,
                 seed: int = 0, skip_bad_images: bool = False) -> None:
        super().__init__(transform, seed, skip_bad_images)
        self.side_by_side = b is None
        if self.side_by_side:
            self.pairs = [(p, None) for p in _images(a, "paired images")]
        else:
            by_stem = {p.stem: p for p in _images(b, "domain B")}
            self.pairs = [(p, by_stem[p.stem]) for p in _images(a, "domain A") if p.stem in by_stem]
            if not self.pairs:
                raise ImageError(f"{a} and {b}: no file names in common")
        self.channels = _channels([p for p, _ in self.pairs], channels)

    def __len__(self) -> int:
        return len(self.pairs)

    def thin(self, fraction: float) -> None:
        self.pairs = _fraction_of(self.pairs, fraction)

    def _item(self, i: int) -> dict[str, torch.Tensor]:
        pa, pb = self.pairs[i]
        img_a = load_item(pa, self.channels)
        if self.side_by_side:
            w = img_a.width // 2
            if w < 1:
                raise ImageError(f"{pa}: too narrow to be a side-by-side A|B pair", pa)
            img_a, img_b = img_a.crop((0, 0, w, img_a.height)), img_a.crop((w, 0, 2 * w, img_a.height))
        else:
            img_b = load_item(pb, self.channels)
        # one generator state for both halves: identical crop and flip
        state = self._gen(i, 0).get_state()
        ga, gb = torch.Generator(), torch.Generator()
        ga.set_state(state)
        gb.set_state(state)
        return {"A": self.transform(img_a, ga), "B": self.transform(img_b, gb)}
