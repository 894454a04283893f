"""Checkpoints: a dict of tensors and plain values (loadable with
``torch.load(weights_only=True)``), written atomically: to a temporary file in the
same folder, flushed and fsynced, then renamed over the target, so a crash mid-save
leaves the previous checkpoint as it was. ``latest.txt`` names the newest; the newest
K are kept. The temporary file of a save that was killed (``.step-*.pt.*.tmp``) is
removed by the next save into the folder; a save that fails (a full disk) removes its
own and raises a CheckpointError."""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from pyganx_runtime.files import atomic_write_bytes

from ..errors import CheckpointError
from ..weights_file import UnreadableWeights, load_weights_only, os_reason

_NAME = re.compile(r"^step-(\d{9})\.pt$")
_TEMP = re.compile(r"^\.step-\d{9}\.pt\.[A-Za-z0-9_]+\.tmp$")   # atomic_write_bytes's, for a step


def save_checkpoint(folder: str | os.PathLike, step: int, state: dict, keep: int = 3) -> Path:
    """Writes ``state`` as ``folder/step-<step>.pt`` atomically, points latest.txt at it,
    and keeps the newest ``keep`` checkpoints (0: all)."""
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
    try:
        atomic_write_bytes(path, lambda f: _torch_save(state, f))
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoint {path}: {os_reason(e)} (the checkpoints written "
                              f"before are as they were)") from e
    latest = folder / "latest.txt"
    try:
        atomic_write_bytes(latest, lambda f: f.write((path.name + "\n").encode()))
    except OSError as e:
        raise CheckpointError(f"cannot write {latest}: {os_reason(e)} ({path.name} was written whole; "
                              f"latest.txt still names the checkpoint before it)") from e
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


def _torch_save(state: dict, f) -> None:
    """``torch.save(state, f)``; an OSError of ``f``'s write (a full disk) is raised as
    itself, not as the RuntimeError torch's zip writer turns it into ("[enforce fail at
    inline_container.cc:672] . unexpected pos ...")."""
    try:
        torch.save(state, f)
    except RuntimeError as e:
        cause, seen = e.__cause__ or e.__context__, set()
        while cause is not None and not isinstance(cause, OSError) and id(cause) not in seen:
            seen.add(id(cause))
            cause = cause.__cause__ or cause.__context__
        if not isinstance(cause, OSError):
            raise
        raise cause from None




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
    """The checkpoint at ``path``, loaded with ``weights_only=True`` (tensors and plain
    values only); a CheckpointError naming the file when it cannot be read or is no
    pyganx checkpoint (never with advice to load it unsafely)."""
    try:
        st = load_weights_only(path, map_location)
    except UnreadableWeights as e:
        why = {"os": str(e), "code": f"not a pyganx checkpoint: {e}",
               "damaged": f"not a pyganx checkpoint, or a damaged or truncated one ({e})"}[e.kind]
        raise CheckpointError(f"{path}: cannot read checkpoint: {why}") from None
    if not isinstance(st, dict):
        raise CheckpointError(f"{path}: cannot read checkpoint: it holds a {type(st).__name__}, not the "
                              f"dict of a pyganx checkpoint")
    return st
