"""The image transforms of the papers, on PIL images, with an explicit random generator
so that data order and augmentation are reproducible from a seed."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from .images import to_tensor


def load_size_for(size: int) -> int:
    """CycleGAN's resize before the random crop: 286 for 256, scaled for other sizes."""
    return round(size * 286 / 256)


@dataclass
class TrainTransform:
    """Resize to ``load_size`` (bicubic), random ``size`` crop, random horizontal flip,
    to a tensor in [-1, 1]."""

    size: int
    load_size: int | None = None
    flip: bool = True

    def __call__(self, img: Image.Image, gen: torch.Generator | None = None) -> torch.Tensor:
        load = self.load_size or load_size_for(self.size)
        img = img.resize((load, load), Image.BICUBIC)
        if load > self.size:
            x, y = (int(v) for v in torch.randint(0, load - self.size + 1, (2,), generator=gen))
            img = img.crop((x, y, x + self.size, y + self.size))
        if self.flip and bool(torch.rand((), generator=gen) < 0.5):
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return to_tensor(img)


@dataclass
class EvalTransform:
    """Resize to ``size`` x ``size`` (bicubic), to a tensor in [-1, 1]."""

    size: int

    def __call__(self, img: Image.Image, gen: torch.Generator | None = None) -> torch.Tensor:
        if img.size != (self.size, self.size):
            img = img.resize((self.size, self.size), Image.BICUBIC)
        return to_tensor(img)
