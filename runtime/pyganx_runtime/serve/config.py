"""What ``pyganx serve`` is started with: its flags, as one dataclass."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServeConfig:
    """What ``pyganx serve`` is started with (its flags)."""
    max_batch: int = 8
    max_wait_ms: float = 10.0
    max_queue: int = 64
    token: str | None = None
    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    tile: int | None = 1024
    overlap: int = 32
    device: str = "auto"
    threads: int | None = None
    # the connection-level limits, uvicorn's (serve/connection.py adds the head deadline)
    header_timeout: float = 10.0
    keep_alive_timeout: int = 5
    limit_concurrency: int = 256
    shutdown_timeout: int = 30


__all__ = ["ServeConfig"]
