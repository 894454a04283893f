"""What the engine says about what it is given or meets that it cannot use: a full disk
under a checkpoint, files that are no pyganx checkpoint, image sizes the networks do not
take, and progress written to a log file. Each is one line naming the file or option."""
from __future__ import annotations

import errno
import os

import pytest
import torch

from pyganx.engine import latest_checkpoint, load_checkpoint, save_checkpoint
from pyganx.errors import CheckpointError


class _FullDisk:
    """A file whose writes fail with ENOSPC once ``room`` bytes are written, as a file on
    a full disk does."""

    def __init__(self, f, room: int) -> None:
        self.f, self.room = f, room

    def write(self, b) -> int:
        n = len(memoryview(b).cast("B"))
        if n > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= n
        return self.f.write(b)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()


def test_a_full_disk_under_a_checkpoint_is_one_line_and_keeps_the_previous_one(tmp_path, monkeypatch):
    from pyganx_runtime import files

    state = {"step": 1, "w": torch.arange(50_000, dtype=torch.float32)}
    save_checkpoint(tmp_path, 1, state)
    fdopen = os.fdopen
    monkeypatch.setattr(files.os, "fdopen", lambda fd, mode: _FullDisk(fdopen(fd, mode), 100_000))
    with pytest.raises(CheckpointError) as e:
        save_checkpoint(tmp_path, 2, {**state, "step": 2})
    monkeypatch.undo()
    msg = str(e.value)
    assert "\n" not in msg and "no space left on device" in msg
    assert str(tmp_path / "step-000000002.pt") in msg and "unexpected pos" not in msg
    # the previous checkpoint is still the latest and loads; no temporary file is left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.txt", "step-000000001.pt"]
    assert latest_checkpoint(tmp_path).name == "step-000000001.pt"
    assert torch.equal(load_checkpoint(latest_checkpoint(tmp_path))["w"], state["w"])
