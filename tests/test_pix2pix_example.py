"""The pix2pix example plugin (examples/pyganx-plugin-pix2pix), installed for real (pip
--no-deps into a temporary target, from a copy so that no build output lands in the
repository): listed by `pyganx plugins`, trained, sampled and exported through the CLI
on its own demo data, and its pieces checked against the paper's definitions."""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import importlib
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import pyganx
from pyganx import registry
from pyganx.errors import UsageError
from pyganx.losses import GAN_LOSSES
from pyganx.plugin import DataInfo

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "pyganx-plugin-pix2pix"
SIZE = 32          # the U-Net then has log2(32) = 5 levels: a 1 x 1 bottleneck, as at 256 px


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> Path:
    """A folder holding the installed example (its package and dist-info)."""
    base = tmp_path_factory.mktemp("pix2pix")
    # Built from a copy: setuptools leaves build/ and *.egg-info beside the sources.
    src = shutil.copytree(EXAMPLE, base / "src",
                          ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    site = base / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--no-index", "--target", str(site), str(src)],
                   check=True, env=dict(os.environ, PIP_NO_CACHE_DIR="1"))
    return site


@pytest.fixture(scope="module")
def p2p(target):
    """The installed ``pyganx_pix2pix`` module, importable and registered in this process."""
    sys.path.insert(0, str(target))
    registry.refresh()
    try:
        yield importlib.import_module("pyganx_pix2pix")
    finally:
        sys.path.remove(str(target))
        for name in [m for m in sys.modules if m == "pyganx_pix2pix" or m.startswith("pyganx_pix2pix.")]:
            del sys.modules[name]
        registry.refresh()


def _run(target: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), str(REPO)]))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


class RecordingContext:
    """A train_step context that records each loss given to backward and never steps an
    optimizer, so the networks stay as they were for an independent recomputation."""

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []
        self.steps: list[str] = []

    def autocast(self):
        return contextlib.nullcontext()

    def zero_grad(self, name: str) -> None:
        pass

    def backward(self, loss: torch.Tensor) -> None:
        self.losses.append(loss.detach().clone())
        loss.backward()

    def step(self, name: str) -> None:
        self.steps.append(name)


# --- the plugin, in process ------------------------------------------------------------

def test_the_registry_finds_the_installed_plugin(p2p):
    cls = registry.get("pix2pix")
    assert cls is p2p.Pix2Pix
    assert cls.data_kind == "paired" and cls.api_version == 1
    cfg = cls.Config()
    # the paper's settings are the defaults
    assert (cfg.lambda_l1, cfg.gan_loss, cfg.lr, cfg.beta1, cfg.beta2, cfg.dropout) == \
        (100.0, "bce", 2e-4, 0.5, 0.999, 0.5)
    plugin = cls(cls.Config(ngf=4, ndf=4), DataInfo(channels=3, image_size=256))
    assert plugin.G.depth == 8                               # the paper's U-Net at 256 px
    assert plugin.D.model[0].in_channels == 6                # D sees input and output stacked
    assert set(plugin.networks()) == {"G", "D"} and set(plugin.optimizers()) == {"G", "D"}
    spec = plugin.export_specs()["G"]
    assert (spec.network, spec.inputs, spec.domains) == ("G", ("image",), ("A", "B"))
    sched = plugin.schedulers(10)["G"]
    factors = []
    for _ in range(10):
        factors.append(sched.get_last_lr()[0] / cfg.lr)
        plugin.optimizers()["G"].step()
        sched.step()
    assert factors[:5] == [1.0] * 5 and factors[5] > factors[9] > 0


def test_gan_loss_offers_the_losses_of_pyganx_losses(p2p):
    (f,) = [f for f in dataclasses.fields(p2p.Pix2PixConfig) if f.name == "gan_loss"]
    assert f.metadata["choices"] == GAN_LOSSES
    with pytest.raises(UsageError, match=r"^--gan-loss must be one of lsgan, bce, hinge, got 'wgan'$"):
        p2p.Pix2Pix(p2p.Pix2PixConfig(ngf=4, ndf=4, gan_loss="wgan"), DataInfo(channels=3, image_size=SIZE))


@pytest.mark.parametrize("size", [32, 64, 128, 256])
def test_unet_depth_follows_the_image_size(p2p, size):
    g = p2p.UNetGenerator(3, 3, ngf=2, depth=p2p.depth_for(size))
    assert g.depth == min(8, int(math.log2(size)))
    # the exporter derives the size multiple from the stride-2 convolutions: 2 ** depth
    downs = [m for m in g.modules() if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
    assert len(downs) == g.depth


@pytest.mark.parametrize("depth,shape", [(5, (2, 3, 32, 32)), (5, (1, 3, 64, 96)), (6, (2, 1, 64, 64))])
def test_unet_output_has_the_input_shape(p2p, depth, shape):
    c = shape[1]
    g = p2p.UNetGenerator(c, c, ngf=4, depth=depth).eval()
    with torch.no_grad():
        y = g(torch.rand(shape) * 2 - 1)
    assert y.shape == shape and y.abs().max() <= 1
    with pytest.raises(ValueError, match="multiples of"):
        g(torch.zeros(1, c, 2 ** depth + 8, 2 ** depth))


def test_skip_connections_carry_the_input_around_the_bottleneck(p2p):
    torch.manual_seed(0)
    g = p2p.UNetGenerator(3, 3, ngf=4, depth=5).eval()
    # cut the path through the bottleneck: the innermost encoder output becomes zeros
    g.down[-1].register_forward_hook(lambda mod, inp, out: torch.zeros_like(out))
    x = (torch.rand(1, 3, 32, 32) * 2 - 1).requires_grad_(True)
    y = g(x)
    y.sum().backward()
    # gradients still reach the input, and a different input still gives another output
    assert x.grad is not None and x.grad.abs().sum() > 0
    with torch.no_grad():
        assert (g(-x) - y).abs().max() > 1e-3


@pytest.mark.parametrize("loss", ["bce", "lsgan"])
def test_losses_are_the_papers(p2p, loss):
    torch.manual_seed(0)
    plugin = p2p.Pix2Pix(p2p.Pix2PixConfig(ngf=4, ndf=4, gan_loss=loss),
                         DataInfo(channels=3, image_size=SIZE))
    batch = {"A": torch.rand(2, 3, SIZE, SIZE) * 2 - 1, "B": torch.rand(2, 3, SIZE, SIZE) * 2 - 1}
    ctx = RecordingContext()
    torch.manual_seed(1)                     # the dropout masks of G's forward
    logged = plugin.train_step(batch, ctx)
    assert ctx.steps == ["D", "G"]
    loss_D, loss_G = ctx.losses

    # recomputed independently, with the same dropout masks and the unchanged weights
    torch.manual_seed(1)
    A, B = batch["A"], batch["B"]
    with torch.no_grad():
        fake = plugin.G(A)
        d_fake, d_real = plugin.D(torch.cat([A, fake], 1)), plugin.D(torch.cat([A, B], 1))

    def adv(pred, real):
        target = torch.full_like(pred, 1.0 if real else 0.0)
        if loss == "bce":
            return F.binary_cross_entropy_with_logits(pred, target)
        return ((pred - target) ** 2).mean()

    l1 = (fake - B).abs().mean()
    torch.testing.assert_close(loss_G, adv(d_fake, True) + 100 * l1)
    torch.testing.assert_close(loss_D, 0.5 * (adv(d_real, True) + adv(d_fake, False)))
    assert logged["G_L1"] == pytest.approx(100 * l1.item(), rel=1e-5)
    assert logged["G_gan"] == pytest.approx(adv(d_fake, True).item(), rel=1e-5)
    # the update reached both networks
    assert all(p.grad is not None for p in plugin.G.parameters())
    assert all(p.grad is not None for p in plugin.D.parameters())


def test_demo_pairs_are_deterministic_and_split(p2p, tmp_path):
    demo = importlib.import_module("pyganx_pix2pix.demo")
    a = demo.write_pairs(tmp_path / "a", size=16, n_train=6, n_test=3, seed=0)
    b = demo.write_pairs(tmp_path / "b", size=16, n_train=6, n_test=3, seed=0)
    c = demo.write_pairs(tmp_path / "c", size=16, n_train=6, n_test=3, seed=1)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == 9 and {p.parent.name for p in files} == {"train", "test"}
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files)
    img = np.asarray(Image.open(a / files[0]))
    assert img.shape == (16, 32, 3)
    drawing = img[:, :16]
    # a line drawing: black and white only, mostly white
    assert set(np.unique(drawing)) <= {0, 255} and (drawing == 255).mean() > 0.5


# --- through the command line ------------------------------------------------------------

def test_pyganx_plugins_lists_pix2pix(target):
    r = _run(target, "-m", "pyganx", "plugins")
    assert r.returncode == 0, r.stderr
    lines = {line.split()[0]: line for line in r.stdout.splitlines()[1:]}
    assert "pix2pix" in lines, r.stdout
    line = lines["pix2pix"]
    assert "paired" in line and "pyganx-plugin-pix2pix 0.1.0" in line and "Isola et al. 2017" in line
    assert "error" not in line


@pytest.mark.slow
def test_train_and_export_through_the_cli(target, p2p, tmp_path):
    data, run, model = tmp_path / "data", tmp_path / "run", tmp_path / "g.onnx"
    r = _run(target, "-m", "pyganx_pix2pix.demo", str(data), "--size", str(SIZE),
             "--train", "8", "--test", "4")
    assert r.returncode == 0, r.stderr
    assert len(list((data / "train").glob("*.png"))) == 8 and len(list((data / "test").glob("*.png"))) == 4

    r = _run(target, "-m", "pyganx", "train", "pix2pix", "--data", str(data), "--steps", "3",
             "--out", str(run), "--image-size", str(SIZE), "--batch-size", "2", "--ngf", "8",
             "--ndf", "8", "--precision", "fp32", "--sample-every", "3", "--no-progress")
    assert r.returncode == 0, r.stderr
    with open(run / "losses.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(row["step"]) for row in rows] == [1, 2, 3]
    for row in rows:
        for k in ("G_gan", "G_L1", "D_real", "D_fake"):
            assert math.isfinite(float(row[k])), row
    latest = (run / "checkpoints" / "latest.txt").read_text().strip()
    assert (run / "checkpoints" / Path(latest).name).is_file()
    grid = Image.open(run / "samples" / "step-000000003.png")
    assert grid.size == (4 * SIZE, 3 * SIZE)         # input, output, target of the 4 test pairs

    # at the paper's depth the generator's size multiple (2 ** 5) is the training size:
    # H and W stay dynamic all the same
    r = _run(target, "-m", "pyganx", "export", str(run), "-o", str(model))
    assert r.returncode == 0, r.stderr
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    assert meta["pyganx.plugin"] == "pix2pix" and meta["pyganx.size_multiple"] == str(SIZE)
    g = pyganx.load_generator(run)
    assert not g.training
    rng = np.random.default_rng(0)
    for shape in [(2, 3, SIZE, SIZE), (1, 3, 2 * SIZE, 3 * SIZE)]:
        x = rng.uniform(-1, 1, shape).astype(np.float32)
        (y,) = sess.run(None, {"image": x})
        with torch.no_grad():
            ref = g(torch.from_numpy(x)).numpy()
        assert y.shape == shape
        np.testing.assert_allclose(y, ref, atol=1e-4, rtol=0)
