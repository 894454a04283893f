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


class _Refused:
    """A class no checkpoint may refer to (the weights-only unpickler refuses it)."""


@pytest.mark.parametrize("kind", ["random", "truncated", "empty", "global", "zip", "tensor"])
def test_a_file_that_is_no_checkpoint_is_one_line_without_torch_advice(tmp_path, kind, capfd):
    """Random bytes, a cut-off checkpoint, a pickle of a class outside the allowlist, a zip
    of something else: each a one-line CheckpointError naming the file, and never torch's
    advice to load with weights_only=False (which would run the file's code)."""
    import zipfile

    path = tmp_path / "ck.pt"
    if kind == "random":
        path.write_bytes(torch.randint(0, 256, (5000,), generator=torch.Generator().manual_seed(0),
                                       dtype=torch.uint8).numpy().tobytes())
    elif kind == "truncated":
        real = save_checkpoint(tmp_path / "run", 1, {"step": 1, "w": torch.ones(1000)})
        path.write_bytes(real.read_bytes()[:real.stat().st_size // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "global":
        torch.save({"step": 1, "x": _Refused()}, path)
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("notes.txt", "not a checkpoint")
    else:
        torch.save(torch.ones(3), path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: cannot read checkpoint: ") and "\n" not in msg
    assert "weights_only" not in msg.lower() and "weights only" not in msg.lower()
    assert ("not a pyganx checkpoint" in msg) if kind != "tensor" else ("not the dict of a pyganx checkpoint" in msg)
    if kind == "global":
        assert f"{__name__}._Refused" in msg and "does not load" in msg
    if kind in ("truncated", "zip"):
        assert "damaged or truncated" in msg
    assert "weights_only" not in capfd.readouterr().err      # nor in a warning
