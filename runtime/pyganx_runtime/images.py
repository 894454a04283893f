"""Reading images from disk robustly, and writing them atomically (numpy and Pillow
only).

Any format Pillow reads. EXIF orientation is applied; alpha is dropped (composited on
white, as a viewer shows it); 16-bit, palette, CMYK and other modes are converted; the
result is RGB or grey as asked. A file that cannot be read raises ImageError naming
the path, never a bare traceback from deep inside Pillow. So does a decompression bomb:
an image whose header claims more pixels than Pillow decodes (twice
``PIL.Image.MAX_IMAGE_PIXELS``), refused before any pixel is decoded.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError
from .files import atomic_write_bytes

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                    ".pgm")
#: image modes that hold no colour
GREY_MODES = ("L", "LA", "1", "I", "I;16", "I;16B", "I;16L", "F")


def list_images(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Image files below ``folder`` (by extension), sorted by path."""
    root = Path(folder)
    if not root.is_dir():
        raise ImageError(f"{root}: not a folder")
    it = root.rglob("*") if recursive else root.iterdir()
    return sorted(p for p in it if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _to_8bit(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        return Image.fromarray(np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        return Image.fromarray(((a - lo) * scale + 0.5).astype(np.uint8), "L")
    return img


def convert_image(im: Image.Image, channels: int) -> Image.Image:
    """A loaded PIL image as 8-bit RGB (channels=3) or grey (1): EXIF orientation applied,
    alpha composited on white."""
    img = ImageOps.exif_transpose(im) or im
    img = _to_8bit(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return img.convert("RGB" if channels == 3 else "L")


def load_image(path: str | os.PathLike, channels: int = 3) -> Image.Image:
    """The image at ``path`` as an 8-bit RGB (channels=3) or grey (channels=1) PIL image."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    try:
        with Image.open(path) as im:
            im.load()
            img = convert_image(im, channels)
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path}: cannot read image (too many pixels: {e})", path) from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: cannot read image ({type(e).__name__}: {e})", path) from None
    if img.width < 1 or img.height < 1:
        raise ImageError(f"{path}: empty image", path)
    return img


def image_channels(paths: list[Path], sample: int = 16) -> int:
    """1 if the first ``sample`` images are all grey, else 3 (unreadable ones do not
    count: reading them later says what is wrong)."""
    for p in paths[:sample]:
        try:
            with Image.open(p) as im:
                if im.mode not in GREY_MODES:
                    return 3
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError):
            continue
    return 1 if paths else 3


def save_image(img: Image.Image, path: str | os.PathLike) -> None:
    """Writes ``img`` atomically in the format its file extension names (PNG when the
    extension is not one Pillow writes)."""
    target = Path(path)
    fmt = Image.registered_extensions().get(target.suffix.lower(), "PNG")
    atomic_write_bytes(target, lambda f: img.save(f, format=fmt))


__all__ = ["GREY_MODES", "IMAGE_EXTENSIONS", "ImageError", "convert_image", "image_channels", "list_images",
           "load_image", "save_image"]
