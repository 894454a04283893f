"""The training engine and the CycleGAN plugin: checkpoints that survive a crash, exact
resume, the run directory, losses and the image pool, and CLI errors."""
from __future__ import annotations

import csv
import json

import pytest
import torch

import pyganx
from pyganx import registry, tuning
from pyganx.cli import main as cli_main
from pyganx.engine import (
    Trainer,
    TrainOptions,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from pyganx.engine.seeding import rng_state, set_rng_state
from pyganx.errors import CheckpointError
from pyganx.losses import ImagePool, gan_loss

SMALL = ["--ngf", "8", "--ndf", "8", "--n-blocks", "1"]


def test_checkpoints_are_atomic_and_the_newest_k_kept(tmp_path, monkeypatch):
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, {"step": step, "w": torch.full((3,), float(step))}, keep=2)
    assert sorted(p.name for p in tmp_path.glob("step-*.pt")) == ["step-000000003.pt",
                                                                  "step-000000004.pt"]
    assert latest_checkpoint(tmp_path).name == "step-000000004.pt"

    def crash(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 5, {"step": 5}, keep=2)
    monkeypatch.undo()
    # the previous checkpoint is untouched and still the latest; no temporary file is left
    assert latest_checkpoint(tmp_path).name == "step-000000004.pt"
    assert load_checkpoint(latest_checkpoint(tmp_path))["step"] == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="bad.pt: cannot read checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")


def test_rng_state_round_trip():
    import random

    import numpy as np
    st = rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(st)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_gan_losses_and_image_pool():
    p = torch.tensor([[0.5, 2.0]])
    assert gan_loss("lsgan", p, True).item() == pytest.approx(((0.5 - 1) ** 2 + 1) / 2)
    assert gan_loss("lsgan", p, False).item() == pytest.approx((0.25 + 4) / 2)
    assert gan_loss("hinge", p, True).item() == pytest.approx(0.25)
    assert gan_loss("hinge", p, True, for_generator=True).item() == pytest.approx(-1.25)
    with pytest.raises(ValueError, match="unknown GAN loss"):
        gan_loss("nope", p, True)
    pool = ImagePool(2, seed=0)
    imgs = [torch.full((1, 1, 2, 2), float(i)) for i in range(8)]
    assert torch.equal(pool.query(imgs[0]), imgs[0]) and torch.equal(pool.query(imgs[1]), imgs[1])
    state = pool.state_dict()
    first = [pool.query(x).clone() for x in imgs[2:]]
    other = ImagePool(2, seed=99)
    other.load_state_dict(state)
    assert all(torch.equal(a, other.query(x)) for a, x in zip(first, imgs[2:]))
    seen = {float(t.mean()) for t in first}
    assert seen - {2.0, 3.0, 4.0, 5.0, 6.0, 7.0}   # some answers came from the history


def test_cyclegan_is_registered_through_its_entry_point():
    cls = registry.get("cyclegan")
    assert cls.__module__ == "pyganx_plugins.cyclegan" and cls.data_kind == "unpaired"
    cfg = cls.Config()
    assert (cfg.lambda_cycle, cfg.lambda_identity, cfg.pool_size, cfg.lr, cfg.beta1) == (
        10.0, 0.5, 50, 2e-4, 0.5)


def test_linear_decay_schedule():
    from pyganx.plugin import linear_decay
    f = linear_decay(200, 0.5)
    assert [f(0), f(99), f(100), f(150), f(199)] == [1.0, 1.0, 1.0, 0.5, pytest.approx(0.01)]


def _options(tmp_path, name, steps, **kw):
    return TrainOptions(out=str(tmp_path / name), demo="digits", steps=steps, progress=False,
                        sample_every=kw.pop("sample_every", 1000),
                        checkpoint_every=kw.pop("checkpoint_every", 1000), **kw)


def _trainer(tmp_path, name, steps, **kw):
    cls = registry.get("cyclegan")
    cfg = cls.Config(ngf=8, ndf=8, n_blocks=1, pool_size=2)
    return Trainer("cyclegan", cls, cfg, _options(tmp_path, name, steps, **kw))


def test_cyclegan_run_directory(tmp_path):
    rc = cli_main(["train", "cyclegan", "--demo", "digits", "--steps", "4", "-o",
                   str(tmp_path / "run"), "--no-progress", "--sample-every", "2",
                   "--checkpoint-every", "2", "--keep", "1", *SMALL])
    assert rc == 0
    run = tmp_path / "run"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["plugin"] == "cyclegan" and cfg["config"]["ngf"] == 8 and cfg["channels"] == 1
    assert cfg["config"]["flip"] is True and "digits" in cfg["data"]
    assert [p.name for p in (run / "checkpoints").glob("*.pt")] == ["step-000000004.pt"]
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step-000000002.png",
                                                                  "step-000000004.png"]
    rows = list(csv.DictReader(open(run / "losses.csv")))
    assert [r["step"] for r in rows] == ["1", "2", "3", "4"]
    assert {"G_gan", "G_cycle", "G_idt", "D_A", "D_B"} <= set(rows[0])
    assert (run / "losses.png").stat().st_size > 1000
    ck = load_checkpoint(run / "checkpoints" / "step-000000004.pt")
    assert ck["step"] == 4 and set(ck["networks"]) == {"G_AB", "G_BA", "D_A", "D_B"}
    assert ck["extra"]["pool_A"]["images"].shape[0] == 4      # 4 fakes so far, pool of 50
    from PIL import Image
    grid = Image.open(run / "samples" / "step-000000004.png")
    assert grid.size == (8 * 32, 6 * 32)    # 8 test images; rows real/fake/recovered x 2
    # a second run into the same folder needs --resume
    assert cli_main(["train", "cyclegan", "--demo", "digits", "--steps", "4", "-o", str(run),
                     "--no-progress", *SMALL]) == 1


def test_resume_continues_exactly(tmp_path):
    straight = _trainer(tmp_path, "a", 6)
    straight.fit()

    # killed at step 3, after the checkpoint of step 2: step 3 was logged but is redone
    interrupted = _trainer(tmp_path, "b", 6, checkpoint_every=2)
    real_step = interrupted.plugin.train_step
    calls = {"n": 0}

    def stop_after_three(batch, ctx):
        if calls["n"] == 3:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real_step(batch, ctx)

    interrupted.plugin.train_step = stop_after_three
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    resumed = _trainer(tmp_path, "b", 6, resume="")
    resumed.fit()
    assert resumed.step == 6
    logged = [int(r["step"]) for r in csv.DictReader(open(tmp_path / "b" / "losses.csv"))]
    assert logged == [1, 2, 3, 4, 5, 6]
    for name, net in straight.nets.items():
        for (k, a), b in zip(net.state_dict().items(), resumed.nets[name].state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=lambda m, w=f"{name}.{k}": f"{w}: {m}")
    lr = [g["lr"] for g in straight.optimizers["G"].param_groups]
    assert lr == [g["lr"] for g in resumed.optimizers["G"].param_groups]


@pytest.mark.skipif(not pyganx.extension_available(), reason="needs the compiled extension")
def test_a_resumed_run_takes_the_implementations_its_checkpoint_recorded(tmp_path):
    tuning.set_measuring(True)          # as users run: auto measures (conftest turns it off)
    first = _trainer(tmp_path, "run", 2, checkpoint_every=2)
    first.fit()
    path = latest_checkpoint(tmp_path / "run" / "checkpoints")
    st = load_checkpoint(path)
    recorded = st["implementation"]
    assert {k.split("(")[0] for k in recorded} == {"instance_norm_relu", "residual_block"}
    assert any(k.endswith(" train") for k in recorded)
    # the other choice everywhere: the resumed run must follow the checkpoint, not its cache
    flipped = {k: "reference" if v != "reference" else "fused" for k, v in recorded.items()}
    save_checkpoint(tmp_path / "run" / "checkpoints", 2, {**st, "implementation": flipped}, keep=3)
    resumed = _trainer(tmp_path, "run", 4, checkpoint_every=2, resume="")
    resumed.fit()
    after = load_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"))
    assert after["step"] == 4 and flipped.items() <= after["implementation"].items()
    # a deterministic run never measures: the built-in gates, recorded as such
    tuning.reset()
    _trainer(tmp_path, "det", 1, checkpoint_every=1, deterministic=True).fit()
    gates = load_checkpoint(latest_checkpoint(tmp_path / "det" / "checkpoints"))["implementation"]
    assert gates and set(gates.values()) == {"fused"}
    assert tuning.measuring() is True                  # the run's setting ended with it


def test_train_errors_are_one_line(tmp_path, capsys):
    assert cli_main(["train", "nope", "--demo", "digits", "--steps", "1", "-o", str(tmp_path)]) == 1
    assert "no GAN variant named 'nope'" in capsys.readouterr().err
    (tmp_path / "A").mkdir()
    (tmp_path / "B").mkdir()
    (tmp_path / "A" / "x.png").write_bytes(b"not an image")
    from PIL import Image
    Image.new("RGB", (40, 40)).save(tmp_path / "B" / "y.png")
    rc = cli_main(["train", "cyclegan", "--data-a", str(tmp_path / "A"), "--data-b",
                   str(tmp_path / "B"), "--steps", "1", "-o", str(tmp_path / "run"),
                   "--image-size", "32", "--no-progress", *SMALL])
    err = capsys.readouterr().err
    assert rc == 1 and "x.png: cannot read image" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as e:
        cli_main(["train", "cyclegan", "--steps", "1", "-o", str(tmp_path / "r2")])
    assert e.value.code == 2
    capsys.readouterr()
    for argv in (["train", "cyclegan", "--demo", "digits", "--steps", "1", "-o", "x", "--bogus"],
                 ["export"], ["sample", "run", "--n", "many"]):
        with pytest.raises(SystemExit) as e:
            cli_main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and "--help" in err, (argv, err)


def test_ema_of_the_generators_is_kept_and_checkpointed(tmp_path):
    t = _trainer(tmp_path, "ema", 3, ema=0.5, sample_every=3)
    start = {k: v.clone() for k, v in t.nets["G_AB"].state_dict().items()}
    t.fit()
    ck = load_checkpoint(latest_checkpoint(tmp_path / "ema" / "checkpoints"))
    assert set(ck["ema"]) == {"G_AB", "G_BA"}
    name = next(k for k in start if k.endswith("weight"))
    live, ema, first = ck["networks"]["G_AB"][name], ck["ema"]["G_AB"][name], start[name]
    # the average lies between where training started and where it is now
    assert not torch.equal(ema, live) and not torch.equal(ema, first)
    assert (ema - live).abs().max() < (first - live).abs().max() + 1e-6
    assert (tmp_path / "ema" / "samples" / "step-000000003.png").is_file()
    assert t.plugin.G_AB is t.nets["G_AB"]          # sampling with EMA put the live nets back


def _image_folders(tmp_path, bad_kind: str = "truncated"):
    from PIL import Image
    for d in ("A", "B"):
        (tmp_path / d).mkdir()
    for i in range(2):
        Image.new("RGB", (40, 40), (120 * i, 60, 0)).save(tmp_path / "A" / f"{i}.png")
        Image.new("RGB", (40, 40), (0, 60, 120 * i)).save(tmp_path / "B" / f"{i}.png")
    bad = tmp_path / "A" / f"2_{bad_kind}.png"
    if bad_kind == "bomb":      # a valid PNG of 20000 x 20000: more pixels than Pillow decodes
        Image.new("1", (20000, 20000)).save(bad)
    else:
        bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return tmp_path / "A", tmp_path / "B", bad


@pytest.mark.parametrize("bad_kind", ["truncated", "bomb"])
def test_an_unreadable_image_stops_training_unless_skipped(tmp_path, capsys, bad_kind):
    a, b, bad = _image_folders(tmp_path, bad_kind)
    args = ["train", "cyclegan", "--data-a", str(a), "--data-b", str(b), "--steps", "3",
            "--image-size", "32", "--no-progress", "--sample-every", "1000",
            "--checkpoint-every", "1000", *SMALL]
    assert cli_main([*args, "-o", str(tmp_path / "stops")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{bad}: cannot read image" in err and "Traceback" not in err
    if bad_kind == "bomb":
        assert "too many pixels" in err and "400000000 pixels" in err

    assert cli_main([*args, "-o", str(tmp_path / "skips"), "--skip-bad-images"]) == 0
    err = capsys.readouterr().err
    warned = [line for line in err.splitlines() if str(bad) in line]
    assert len(warned) == 1 and "skipping an unreadable image" in warned[0], err
    ck = load_checkpoint(latest_checkpoint(tmp_path / "skips" / "checkpoints"))
    assert ck["step"] == 3


def test_resume_with_other_networks_is_one_line(tmp_path, capsys):
    run = str(tmp_path / "run")
    args = ["train", "cyclegan", "--demo", "digits", "-o", run, "--no-progress", "--ndf", "8",
            "--sample-every", "1000", "--checkpoint-every", "1000"]
    assert cli_main([*args, "--steps", "2", "--image-size", "32", "--ngf", "8",
                     "--n-blocks", "0"]) == 0
    capsys.readouterr()
    assert cli_main([*args, "--steps", "4", "--image-size", "32", "--ngf", "16",
                     "--n-blocks", "0", "--resume"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "networks do not match this run" in err and "ngf=8" in err and "ngf=16" in err, err
    # n_blocks 0 means 9 blocks from 256 px, else 6: the image size changes the networks
    assert cli_main([*args, "--steps", "4", "--image-size", "256", "--ngf", "8",
                     "--n-blocks", "0", "--resume"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "image_size=32" in err and "image_size=256" in err, err
    assert "ngf" not in err


def _fake_tensorboard(events):
    import types

    class SummaryWriter:
        def __init__(self, log_dir):
            events.append(("open", log_dir))

        def add_scalar(self, tag, value, step):
            events.append(("scalar", tag, value, step))

        def flush(self):
            events.append(("flush",))

        def close(self):
            events.append(("close",))

    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = SummaryWriter
    return module


def test_losses_go_to_tensorboard_when_it_imports(tmp_path, monkeypatch):
    import sys
    events = []
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", _fake_tensorboard(events))
    _trainer(tmp_path, "tb", 3, sample_every=2).fit()
    rows = list(csv.DictReader(open(tmp_path / "tb" / "losses.csv")))
    names = [k for k in rows[0] if k not in ("step", "epoch", "seconds")]
    assert len(names) == 5
    scalars = [("scalar", f"loss/{k}", float(r[k]), int(r["step"])) for r in rows for k in names]
    # every loss of every step, flushed with the sample grids (steps 2 and 3), then closed
    assert events == [("open", str(tmp_path / "tb" / "tb")), *scalars[:10], ("flush",),
                      *scalars[10:], ("flush",), ("close",)]


def test_no_tensorboard_no_trace(tmp_path, monkeypatch, capsys):
    import sys
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)   # import fails
    _trainer(tmp_path, "plain", 1).fit()
    assert not (tmp_path / "plain" / "tb").exists()
    assert "ensorBoard" not in capsys.readouterr().err


def test_channels_flag_overrides_what_the_data_are(tmp_path):
    from PIL import Image
    for side in "AB":
        (tmp_path / side).mkdir()
        for i in range(2):
            Image.new("RGB", (40, 40), (200, 30 * i, 10)).save(tmp_path / side / f"{i}.png")
    common = ["--steps", "1", "--image-size", "32", "--sample-every", "100", *SMALL]
    assert cli_main(["train", "cyclegan", "--data-a", str(tmp_path / "A"), "--data-b", str(tmp_path / "B"),
                     "-o", str(tmp_path / "grey"), "--channels", "1", *common]) == 0
    assert cli_main(["train", "cyclegan", "--demo", "digits", "-o", str(tmp_path / "rgb"),
                     "--channels", "3", *common]) == 0
    for run, c in (("grey", 1), ("rgb", 3)):
        cfg = json.loads((tmp_path / run / "config.json").read_text())
        assert cfg["data_info"]["channels"] == c
        ck = load_checkpoint(latest_checkpoint(tmp_path / run / "checkpoints"))
        first = next(v for k, v in ck["networks"]["G_AB"].items() if v.ndim == 4)
        assert first.shape[1] == c                       # the generator takes c channels


def test_random_crop_jitter_follows_the_plugin(tmp_path):
    # CycleGAN's resize-and-random-crop rescales what D sees by 286/256 while test images
    # keep their scale; StarGAN's loader (random_crop = False) only resizes to the size.
    from pyganx.data import build_dataset, demo, to_tensor
    stargan = registry.get("stargan")
    assert registry.get("cyclegan").random_crop and not stargan.random_crop
    opts = _options(tmp_path, "x", 1)
    first = demo.load("digits").domains("train")[0][0]
    plain = build_dataset(stargan, opts.data_source(), None)
    assert torch.equal(plain.train[0]["image"], to_tensor(first))
    jittered = build_dataset(type("Jittered", (stargan,), {"random_crop": True}), opts.data_source(), None)
    assert jittered.train[0]["image"].shape == plain.train[0]["image"].shape
    assert not torch.equal(jittered.train[0]["image"], plain.train[0]["image"])


@pytest.mark.parametrize("flag,value", [("--sample-every", "0"), ("--checkpoint-every", "0"),
                                        ("--batch-size", "0"), ("--steps", "0"), ("--keep", "-1")])
def test_counts_below_their_minimum_are_refused_before_training(tmp_path, capsys, flag, value):
    argv = ["train", "cyclegan", "--demo", "digits", "--steps", "1", "-o", str(tmp_path / "r"),
            "--no-progress", *SMALL]
    if flag == "--steps":
        argv[argv.index("--steps") + 1] = value
    else:
        argv += [flag, value]
    assert cli_main(argv) == 1
    err = capsys.readouterr().err
    assert f"{flag} must be at least" in err and "Traceback" not in err
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_cli_errors_user_errors_apart_from_bugs_and_out_of_memory(tmp_path, monkeypatch, capsys):
    """A PyganxError is the user's one line; anything else is one line naming its type
    and pointing to --debug, and an out-of-memory error says so."""
    from pyganx.engine import trainer
    from pyganx.errors import PyganxError, TrainError

    args = ["train", "cyclegan", "--demo", "digits", "--steps", "1", "--ngf", "4", "--ndf", "4", "--n-blocks", "1",
            "--no-progress", "-o", str(tmp_path / "r")]
    for exc, want in ((torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
                       "pyganx train: out of memory (OutOfMemoryError: CUDA out of memory. "
                       "Tried to allocate 20.00 GiB)"),
                      (ZeroDivisionError("division by zero"),
                       "pyganx train: unexpected ZeroDivisionError: division by zero (a bug or a broken installation; "
                       "--debug shows the traceback)")):
        def fit(self, exc=exc):
            raise exc
        monkeypatch.setattr(trainer.Trainer, "fit", fit)
        assert cli_main(args) == 1
        err = capsys.readouterr().err
        assert err.startswith(want) and err.count("\n") == 1, err
    with pytest.raises(ZeroDivisionError):
        cli_main([*args, "--debug"])
    monkeypatch.undo()
    # TrainError, the one class of earlier releases, still catches every user error
    assert TrainError is PyganxError
    with pytest.raises(TrainError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
