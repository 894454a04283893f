"""Stopping a run from outside: Ctrl-C (SIGINT) checkpoints the last completed step and
`--resume` continues from it; SIGKILL in the middle of a checkpoint save leaves the
previous checkpoint loadable."""
from __future__ import annotations

import csv
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pyganx import registry
from pyganx.cli import main as cli_main
from pyganx.engine import Trainer, TrainOptions, latest_checkpoint, load_checkpoint, save_checkpoint

SMALL = ["--ngf", "8", "--ndf", "8", "--n-blocks", "1"]
QUIET = ["--no-progress", "--sample-every", "100000", "--checkpoint-every", "100000"]


def _env() -> dict:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"   # a steady step time on a small, busy machine
    return env


def _default_sigint() -> None:
    # a child of a shell's background job inherits SIGINT ignored; the test needs it live
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _rows(path: Path) -> int:
    """Complete data rows of a CSV file being written (0 if absent)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return 0
    return max(0, text.count("\n") - 1)


def _trainer(tmp_path: Path, steps: int) -> Trainer:
    cls = registry.get("cyclegan")
    cfg = cls.Config(ngf=8, ndf=8, n_blocks=1, pool_size=2)
    opts = TrainOptions(out=str(tmp_path / "run"), demo="digits", steps=steps, progress=False,
                        sample_every=1000, checkpoint_every=1000)
    return Trainer("cyclegan", cls, cfg, opts)


def _ctrl_c_during_step(t: Trainer, at: int, times: int) -> dict:
    """Makes step ``at`` of ``t`` send itself ``times`` SIGINTs while it runs; returns the
    call counter."""
    real_step = t.plugin.train_step
    calls = {"n": 0}

    def step(batch, ctx):
        calls["n"] += 1
        if calls["n"] == at:
            for _ in range(times):
                os.kill(os.getpid(), signal.SIGINT)
        return real_step(batch, ctx)

    t.plugin.train_step = step
    return calls


@pytest.fixture
def interactive_sigint():
    """SIGINT as in a terminal: a test runner started in the background (as CI may be)
    inherits SIGINT ignored, and the trainer rightly leaves an ignored SIGINT alone."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_is_left_alone_where_sigint_is_ignored(tmp_path):
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        t = _trainer(tmp_path, 4)
        calls = _ctrl_c_during_step(t, 2, 1)
        result = t.fit()
        assert not result.get("interrupted") and result["steps"] == 4 and calls["n"] == 4
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("interactive_sigint")
def test_ctrl_c_in_a_step_stops_after_it_with_a_checkpoint(tmp_path):
    before = signal.getsignal(signal.SIGINT)
    t = _trainer(tmp_path, 50)
    calls = _ctrl_c_during_step(t, 3, 1)      # Ctrl-C arrives while step 3 runs
    try:
        result = t.fit()
    except KeyboardInterrupt:
        pytest.fail("the first Ctrl-C raised KeyboardInterrupt instead of stopping after the step")
    assert result["interrupted"] is True and result["steps"] == 3 and calls["n"] == 3
    ck = latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert result["checkpoint"] == str(ck)
    st = load_checkpoint(ck)
    assert (st["step"], st["epoch"], st["batch_index"]) == (3, 0, 3)
    for name, net in t.nets.items():        # the weights after step 3, all of them
        for k, v in net.state_dict().items():
            assert torch.equal(st["networks"][name][k], v), f"{name}.{k}"
    assert _rows(tmp_path / "run" / "losses.csv") == 3
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.usefixtures("interactive_sigint")
def test_a_second_ctrl_c_raises_at_once_without_a_checkpoint(tmp_path):
    before = signal.getsignal(signal.SIGINT)
    t = _trainer(tmp_path, 50)
    calls = _ctrl_c_during_step(t, 2, 2)
    with pytest.raises(KeyboardInterrupt):
        t.fit()
    assert calls["n"] == 2
    assert latest_checkpoint(tmp_path / "run" / "checkpoints") is None
    assert signal.getsignal(signal.SIGINT) is before


def test_sigint_to_pyganx_train_checkpoints_and_resume_continues(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "pyganx", "train", "cyclegan", "--demo", "digits", "-o", str(run),
           "--steps", "100000", *SMALL, *QUIET]
    proc = subprocess.Popen(cmd, env=_env(), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)
    try:
        deadline = time.monotonic() + 120
        while _rows(run / "losses.csv") < 3:
            if proc.poll() is not None:
                pytest.fail(f"training ended early ({proc.returncode}): {proc.communicate()[1]}")
            assert time.monotonic() < deadline, "no losses written in 120 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    m = re.search(r"^pyganx train: interrupted at step (\d+); checkpoint: (.+); "
                  r"continue with --resume$", err, re.M)
    assert m, err
    n, path = int(m.group(1)), Path(m.group(2))
    ck = latest_checkpoint(run / "checkpoints")
    assert ck == path
    rows = list(csv.DictReader(open(run / "losses.csv")))
    assert n >= 3 and [int(r["step"]) for r in rows] == list(range(1, n + 1))
    assert load_checkpoint(ck)["step"] == n

    assert cli_main(["train", "cyclegan", "--demo", "digits", "-o", str(run), "--resume",
                     "--steps", str(n + 2), *SMALL, *QUIET]) == 0
    ck2 = latest_checkpoint(run / "checkpoints")
    assert load_checkpoint(ck2)["step"] == n + 2
    rows = list(csv.DictReader(open(run / "losses.csv")))
    assert [int(r["step"]) for r in rows] == list(range(1, n + 3))


SAVER = """
import sys
import torch
from pyganx.engine import save_checkpoint

folder = sys.argv[1]
save_checkpoint(folder, 1, {"step": 1, "w": torch.arange(1_000_000, dtype=torch.float32)})
print("saved", flush=True)
step = 2
while True:   # 200 MB per checkpoint: each save takes a while to write and fsync
    save_checkpoint(folder, step, {"step": step, "w": torch.full((50_000_000,), float(step))}, keep=1)
    step += 1
"""


def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.glob(".step-*.tmp")]


def _kill_during_a_save(folder: Path) -> None:
    """Runs SAVER into ``folder`` and SIGKILLs it once a large save is being written."""
    proc = subprocess.Popen([sys.executable, "-c", SAVER, str(folder)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready and proc.stdout.readline().strip() == "saved", proc.stderr.read()
        deadline = time.monotonic() + 30
        while True:
            sizes = []
            for p in _temps(folder):
                try:
                    sizes.append(p.stat().st_size)
                except FileNotFoundError:   # renamed meanwhile
                    pass
            if any(sizes):
                break
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "no save seen in progress in 30 s"
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def _assert_complete(path: Path) -> int:
    st = load_checkpoint(path)
    step = st["step"]
    want = (torch.arange(1_000_000, dtype=torch.float32) if step == 1
            else torch.full((50_000_000,), float(step)))
    assert torch.equal(st["w"], want), f"{path.name} is not the checkpoint saved for step {step}"
    return step


def test_sigkill_during_a_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    # the kill almost always lands mid-save; where it lands just between two saves, try again
    for attempt in range(3):
        folder = tmp_path / f"ck{attempt}"
        _kill_during_a_save(folder)
        left = _temps(folder)
        step = _assert_complete(latest_checkpoint(folder))
        # without latest.txt, the fallback finds only complete checkpoints, never a temp file
        (folder / "latest.txt").unlink()
        fallback = latest_checkpoint(folder)
        assert re.fullmatch(r"step-\d{9}\.pt", fallback.name)
        assert _assert_complete(fallback) == step
        for p in folder.glob("step-*.pt"):
            _assert_complete(p)
        if left:
            break
        for p in folder.iterdir():
            p.unlink()
    assert left, "the kill never landed during a save"
    assert all(re.fullmatch(r"\.step-\d{9}\.pt\.\w+\.tmp", p.name) for p in left), left
    # the next save removes the killed save's temporary file, and nothing else of that kind
    others = [folder / ".latest.txt.x1y2z3.tmp", folder / ".other.tmp", folder / "notes.tmp"]
    for p in others:
        p.write_bytes(b"x")
    save_checkpoint(folder, step + 10, {"step": step + 10}, keep=0)
    assert not _temps(folder) and all(p.is_file() for p in others)
    assert load_checkpoint(latest_checkpoint(folder))["step"] == step + 10
    for p in folder.iterdir():
        p.unlink()
