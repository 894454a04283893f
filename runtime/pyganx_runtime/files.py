"""Writing files so that a crash never leaves a half-written one: the bytes go to a
temporary file in the same folder, are flushed and fsynced, and the temporary file is
renamed over the target (an atomic replace on POSIX and Windows)."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def fsync_dir(folder: str | os.PathLike) -> None:
    """Makes a rename in ``folder`` durable, where the platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Calls ``write(fileobj)`` on a temporary file beside ``path`` (named
    ``.<name>.<random>.tmp``), then renames it over ``path``. On any error the
    temporary file is removed and ``path`` is left as it was; an OSError that names no
    file (a full disk) is raised again naming ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and e.filename is None and e.errno is not None:
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """``text`` (UTF-8) written to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    data = text.encode()
    atomic_write_bytes(path, lambda f: f.write(data))


__all__ = ["atomic_write_bytes", "atomic_write_text", "fsync_dir"]
