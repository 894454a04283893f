"""Images as tensors: reading (from pyganx_runtime.images: any format Pillow reads,
EXIF orientation, alpha, 16-bit and palette images handled, errors that name the file)
and the conversions between PIL images and (C, H, W) tensors in [-1, 1]."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from pyganx_runtime.images import (
    IMAGE_EXTENSIONS,
    ImageError,
    convert_image,
    image_channels,
    list_images,
    load_image,
    save_image,
)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """(C, H, W) float32 in [-1, 1]."""
    a = np.asarray(img, dtype=np.uint8)
    if a.ndim == 2:
        a = a[:, :, None]
    t = torch.from_numpy(a.copy()).permute(2, 0, 1).float()
    return t / 127.5 - 1.0


def to_pil(t: torch.Tensor) -> Image.Image:
    """A (C, H, W) tensor in [-1, 1] as an 8-bit image."""
    a = ((t.detach().float().clamp(-1, 1) + 1) * 127.5 + 0.5).to(torch.uint8).cpu()
    a = a.permute(1, 2, 0).numpy()
    return Image.fromarray(a[:, :, 0], "L") if a.shape[2] == 1 else Image.fromarray(a, "RGB")


__all__ = ["IMAGE_EXTENSIONS", "ImageError", "convert_image", "image_channels", "list_images", "load_image",
           "save_image", "to_pil", "to_tensor"]
