"""Checkpoints: a dict of tensors and plain values (loadable with
``torch.load(weights_only=True)``), written atomically: to a temporary file in the
same folder, flushed and fsynced, then renamed over the target, so a crash mid-save
leaves the previous checkpoint as it was. ``latest.txt`` names the newest; the newest
K are kept. The temporary file of a save that was killed (``.step-*.pt.*.tmp``) is
removed by the next save into the folder."""
from __future__ import annotations

import os
import random
import re
import tempfile
from pathlib import Path

import numpy as np
import torch

_NAME = re.compile(r"^step-(\d{9})\.pt$")
_TEMP = re.compile(r"^\.step-\d{9}\.pt\.[A-Za-z0-9_]+\.tmp$")   # atomic_write_bytes's, for a step


def _fsync_dir(folder: Path) -> None:
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


def atomic_write_bytes(path: Path, write) -> None:
    """Calls ``write(fileobj)`` on a temporary file beside ``path``, then renames it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def save_checkpoint(folder: str | os.PathLike, step: int, state: dict, keep: int = 3) -> Path:
    folder = Path(folder)
    path = folder / f"step-{step:09d}.pt"
    # temporary files left by a killed save: those already there and not written to during
    # this save are removed after it
    stale = {}
    if folder.is_dir():
        for p in folder.iterdir():
            if _TEMP.match(p.name):
                try:
                    st = p.stat()
                except OSError:
                    continue
                stale[p] = (st.st_mtime_ns, st.st_size)
    atomic_write_bytes(path, lambda f: torch.save(state, f))
    atomic_write_bytes(folder / "latest.txt", lambda f: f.write((path.name + "\n").encode()))
    if keep > 0:
        for old in sorted(p for p in folder.iterdir() if _NAME.match(p.name))[:-keep]:
            old.unlink()
    for p, seen in stale.items():
        try:
            st = p.stat()
            if (st.st_mtime_ns, st.st_size) == seen:
                p.unlink()
        except OSError:
            pass
    return path


def list_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """The step-*.pt checkpoints of a folder, oldest step first."""
    folder = Path(folder)
    return sorted(p for p in folder.glob("step-*.pt") if _NAME.match(p.name)) if folder.is_dir() else []


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The checkpoint latest.txt names, else the newest step-*.pt, else None."""
    folder = Path(folder)
    marker = folder / "latest.txt"
    if marker.is_file():
        p = folder / marker.read_text().strip()
        if p.is_file():
            return p
    found = list_checkpoints(folder)
    return found[-1] if found else None


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt or foreign file: one clear message
        raise RuntimeError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e})") from None


def rng_state() -> dict:
    """Every RNG the training uses, as tensors and plain values."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_gauss": [int(np_state[3]), float(np_state[4])],
        "python": torch.tensor(py_state[1], dtype=torch.int64),
        "python_gauss": py_state[2],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32),
                         state["numpy_pos"], state["numpy_gauss"][0], state["numpy_gauss"][1]))
    random.setstate((3, tuple(int(v) for v in state["python"].tolist()), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
