"""The limits the service enforces on each request, and the error they answer with:
the token (401), the upload's size (413, checked from ``Content-Length`` and while
reading), the image's pixels (413, from its header, before decoding) and a full queue
(503 with ``Retry-After``). The connection-level limits in front of them are uvicorn's
(docs/serve.md)."""
from __future__ import annotations

import asyncio
import hmac
import io
import warnings
from collections.abc import Hashable
from typing import Any

from PIL import Image, UnidentifiedImageError
from starlette.requests import ClientDisconnect, Request

from ..images import convert_image
from .batcher import Batcher, QueueFull

#: the upload formats served, by Pillow's format name
FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


class ServeError(Exception):
    """An answer other than 200: ``status``, a one-line ``message``, extra ``headers``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def check_token(request: Request, token: str | None) -> None:
    """Nothing when no token is set or the request carries it (compared in constant
    time); ServeError 401 otherwise."""
    if not token:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ServeError(401, "missing or wrong token: send the header 'Authorization: Bearer <token>'",
                         {"WWW-Authenticate": "Bearer"})


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body; ServeError 413 as soon as it is known to exceed ``limit``
    bytes (from ``Content-Length``, or while reading), so a larger body is never held;
    400 when the client closes the connection before the body is complete (nobody
    reads that answer, but it is counted, and it is no server error)."""
    too_large = ServeError(413, f"the upload is larger than the limit of {limit} bytes")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_large
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
    except ClientDisconnect:
        raise ServeError(400, "the client closed the connection before its upload was complete") from None
    return b"".join(chunks)


def check_pixels(w: int, h: int, max_pixels: int, what: str = "the image has") -> None:
    """ServeError 413 when a ``w`` x ``h`` image has more than ``max_pixels`` pixels."""
    if w * h > max_pixels:
        raise ServeError(413, f"{what} {w}x{h} = {w * h} pixels, more than the limit of {max_pixels}")


def decode_image(data: bytes, channels: int, max_pixels: int) -> Image.Image:
    """An uploaded PNG, JPEG or WebP as the model's mode; ServeError 400 (not an image,
    corrupt), 415 (another image format) or 413 (more than ``max_pixels``). The pixel
    count is checked from the header, before anything is decoded."""
    if not data:
        raise ServeError(400, "the upload is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ServeError(413, f"too many pixels: {e}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ServeError(400, "not an image: send a PNG, JPEG or WebP file") from None
    if im.format not in FORMATS:
        raise ServeError(415, f"{im.format} images are not translated here: send PNG, JPEG or WebP")
    w, h = im.size
    check_pixels(w, h, max_pixels)
    if w < 1 or h < 1:
        raise ServeError(400, "the image is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im.load()
            return convert_image(im, channels)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ServeError(400, f"corrupt {im.format} image ({str(e).strip() or type(e).__name__})") from None


def enqueue(batcher: Batcher, key: Hashable, payload: Any, name: str, images: int = 1) -> asyncio.Future:
    """``batcher.submit(key, payload, images)``; ServeError 503 with ``Retry-After`` when
    model ``name``'s queue is full."""
    try:
        return batcher.submit(key, payload, images)
    except QueueFull:
        raise ServeError(503, f"{name} has {batcher.max_queue} requests waiting; try again shortly",
                         {"Retry-After": "1"}) from None


__all__ = ["FORMATS", "ServeError", "check_pixels", "check_token", "decode_image", "enqueue", "read_body"]
