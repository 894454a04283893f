"""What the engine says about what it is given or meets that it cannot use: a full disk
under a checkpoint, files that are no pyganx checkpoint, image sizes the networks do not
take, and progress written to a log file. Each is one line naming the file or option."""
from __future__ import annotations

import errno
import json
import os

import pytest
import torch

from pyganx import registry
from pyganx.cli import main as cli_main
from pyganx.engine import Trainer, TrainOptions, latest_checkpoint, load_checkpoint, save_checkpoint
from pyganx.errors import CheckpointError, UsageError

#: narrow networks of each built-in variant, for a step or two on the CPU
SMALL = {"cyclegan": ["--ngf", "4", "--ndf", "4", "--n-blocks", "1", "--pool-size", "2"],
         "cut": ["--ngf", "4", "--ndf", "4", "--n-blocks", "5", "--netf-nc", "8", "--num-patches", "8"],
         "fastcut": ["--ngf", "4", "--ndf", "4", "--n-blocks", "5", "--netf-nc", "8", "--num-patches", "8"],
         "dcgan": ["--ngf", "4", "--ndf", "4", "--z-dim", "8", "--batch-size", "4"],
         "cgan": ["--ngf", "4", "--ndf", "4", "--z-dim", "8", "--batch-size", "4"],
         "stargan": ["--g-conv-dim", "4", "--d-conv-dim", "4", "--g-blocks", "1", "--batch-size", "2"]}


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


def test_a_full_disk_under_latest_txt_says_which_checkpoint_it_still_names(tmp_path, monkeypatch):
    from pyganx_runtime import files

    state = {"step": 1, "w": torch.arange(1000, dtype=torch.float32)}
    save_checkpoint(tmp_path, 1, state)
    fdopen, opened = os.fdopen, []

    def second_write_fails(fd, mode):
        opened.append(fd)           # the checkpoint is written whole, then latest.txt meets a full disk
        return fdopen(fd, mode) if len(opened) == 1 else _FullDisk(fdopen(fd, mode), 0)

    monkeypatch.setattr(files.os, "fdopen", second_write_fails)
    with pytest.raises(CheckpointError) as e:
        save_checkpoint(tmp_path, 2, {**state, "step": 2})
    monkeypatch.undo()
    assert str(e.value) == (f"cannot write {tmp_path / 'latest.txt'}: no space left on device "
                            f"(step-000000002.pt was written whole; latest.txt still names the checkpoint before it)")
    assert latest_checkpoint(tmp_path).name == "step-000000001.pt"
    assert load_checkpoint(tmp_path / "step-000000002.pt")["step"] == 2


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


@pytest.mark.parametrize("variant,size", [("cyclegan", 30), ("cyclegan", 0), ("cut", 26), ("dcgan", 48),
                                          ("cgan", 0), ("stargan", 10), ("stargan", -4)])
def test_an_image_size_the_networks_do_not_take_is_refused_before_anything_is_built(
        tmp_path, monkeypatch, capsys, variant, size):
    """The size the user gives, not the demo set's own (digits: 32 px), is checked, and
    before the data set or the networks are built."""
    from pyganx.engine import trainer

    def build(*args, **kwargs):
        raise AssertionError("the data set was built")

    monkeypatch.setattr(trainer, "build_dataset", build)
    out = tmp_path / "run"
    assert cli_main(["train", variant, "--demo", "digits", "--image-size", str(size), "--steps", "1",
                     "-o", str(out), "--no-progress", *SMALL[variant]]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"pyganx train: --image-size {size}: {variant} trains at ") and err.count("\n") == 1, err
    assert "nearest: " in err and not out.exists()


def test_a_run_trained_with_a_value_no_longer_offered_still_loads(tmp_path, capsys):
    """A CycleGAN run whose config says --gan-loss wgan (which earlier versions took): its
    networks load with a warning naming the checkpoint and the value, while a config built
    in Python with that value is still refused."""
    from pyganx.engine import load_run

    out = tmp_path / "run"
    assert cli_main(["train", "cyclegan", "--demo", "digits", "--steps", "1", "-o", str(out), "--no-progress",
                     *SMALL["cyclegan"]]) == 0
    ckpt = latest_checkpoint(out / "checkpoints")
    st = load_checkpoint(ckpt)
    st["config"]["gan_loss"] = "wgan"
    save_checkpoint(out / "checkpoints", st["step"], st)
    cfg = json.loads((out / "config.json").read_text())
    cfg["config"]["gan_loss"] = "wgan"
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.warns(RuntimeWarning, match=rf"^{ckpt}: the run was trained with a value cyclegan no longer offers "
                                            r"\(--gan-loss must be one of lsgan, bce, hinge, got 'wgan'\)"):
        run = load_run(out)
    assert run.config.gan_loss == "wgan"
    for k, v in st["networks"]["G_AB"].items():
        assert torch.equal(run.plugin.networks()["G_AB"].state_dict()[k], v), k
    with pytest.raises(UsageError, match=r"^--gan-loss must be one of lsgan, bce, hinge, got 'wgan'$"):
        type(run.plugin)(run.config, run.info)
    assert cli_main(["sample", str(out), "-o", str(tmp_path / "grid"), "--n", "2", "--device", "cpu"]) == 0


def _smallest(sizes) -> int:
    return sizes.start if isinstance(sizes, range) else min(sizes)


@pytest.mark.parametrize("variant", sorted(SMALL))
def test_every_variant_trains_at_the_smallest_size_it_declares(tmp_path, variant):
    """``image_sizes`` holds what the networks take: a step at the smallest one trains,
    and the grid shows images of that size."""
    from PIL import Image

    size = _smallest(registry.get(variant).image_sizes)
    out = tmp_path / "run"
    assert cli_main(["train", variant, "--demo", "digits", "--image-size", str(size), "--steps", "1",
                     "-o", str(out), "--no-progress", *SMALL[variant]]) == 0
    assert json.loads((out / "config.json").read_text())["data_info"]["image_size"] == size
    assert load_checkpoint(latest_checkpoint(out / "checkpoints"))["data_info"]["image_size"] == size
    grid = Image.open(next((out / "samples").iterdir()))
    assert grid.height % size == 0 and grid.width % size == 0 and grid.height // size >= 1


def test_a_demo_sets_own_size_is_checked_too(tmp_path):
    """Without --image-size the demo set's size is used: one the plugin does not take is
    refused before its networks are built, with the flag to give."""
    cls = registry.get("dcgan")
    only_64 = type("Only64", (cls,), {"image_sizes": frozenset({64})})
    opts = TrainOptions(out=str(tmp_path / "run"), demo="digits", steps=1, progress=False)
    with pytest.raises(UsageError, match=r"^dcgan cannot train at the data's 32 px, only at 64 px: "
                                         r"give --image-size \(nearest: 64\)$"):
        Trainer("dcgan", only_64, cls.Config(ngf=4, ndf=4, z_dim=8), opts)
    assert not (tmp_path / "run").exists()


def test_progress_lines_every_5_percent_or_every_minute():
    """LineProgress, on a clock the test sets: a line per further 5 % of the steps or per
    minute without one, whichever comes first, the last step always; a resumed run counts
    from where it resumed."""
    import io

    from pyganx.engine.reporting import LineProgress

    now = [0.0]
    out = io.StringIO()
    p = LineProgress(100, 0, every=60.0, stream=out, clock=lambda: now[0])
    for step in range(1, 101):
        now[0] += 25.0 if step <= 10 else 1.0     # slow at first: lines by the minute
        p.update(step, {"G": 1.0 / step})
    p.close()
    lines = out.getvalue().splitlines()
    steps = [int(ln.split()[1].split("/")[0]) for ln in lines]
    # a minute passed at step 3 (75 s), the 5 % mark at 5, a minute more at 8 (200 s), then the marks
    assert steps == [3, 5, 8, 10, *range(15, 101, 5)]
    assert lines[0] == "step 3/100 (3%), 0.04 it/s, 0:01:15 elapsed, 0:40:25 left; G 0.333"
    assert lines[-1].startswith("step 100/100 (100%), ") and " 0:00:00 left; G 0.010" in lines[-1]
    # resumed at 40 of 60, stopped at 47: marks at 42, 45 (stride 3), then the step it stopped at
    out = io.StringIO()
    p = LineProgress(60, 40, stream=out, clock=lambda: now[0])
    for step in range(41, 48):
        now[0] += 1.0
        p.update(step, {})
    p.close()
    assert [ln.split(",")[0] for ln in out.getvalue().splitlines()] == [
        "step 42/60 (70%)", "step 45/60 (75%)", "step 47/60 (78%)"]


def test_progress_into_a_log_file_is_plain_lines(tmp_path):
    """With stderr a file (no terminal), training writes a bounded number of plain
    progress lines, not tqdm's bar redrawn with carriage returns at every step."""
    import re
    import subprocess
    import sys

    log = tmp_path / "train.log"
    cmd = [sys.executable, "-m", "pyganx", "train", "dcgan", "--demo", "digits", "--steps", "40",
           "-o", str(tmp_path / "run"), *SMALL["dcgan"]]
    with open(log, "w") as err:
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=err, cwd=tmp_path, check=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    text = log.read_text()
    assert "\r" not in text
    steps = [int(m.group(1)) for m in re.finditer(r"^step (\d+)/40 \(\d+%\), [\d.]+ it/s, ", text, re.M)]
    # one line per 2 steps (5 %); a step slower than a minute would add one
    assert set(range(2, 41, 2)) <= set(steps) and len(steps) <= 25 and steps == sorted(steps)
    assert max(len(ln) for ln in text.splitlines()) < 200
