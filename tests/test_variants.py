"""The DCGAN (alias gan), conditional GAN and StarGAN plugins: losses against values
computed independently, a few training steps through the CLI, exact resume, sample rows,
the StarGAN update schedule, ONNX export of noise / conditional / multi-domain
generators, `translate --domain`, and `pyganx eval` figures that follow stand-in
generators."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import pyganx
from pyganx.cli import main as cli_main
from pyganx.data import DataInfo
from pyganx.engine import latest_checkpoint, load_checkpoint, load_run
from pyganx.errors import UsageError
from pyganx.losses import GAN_LOSSES, gan_loss, gradient_penalty

DC = ["--ngf", "8", "--ndf", "8", "--z-dim", "16", "--batch-size", "8", "--no-progress"]
SG = ["--g-conv-dim", "8", "--d-conv-dim", "8", "--g-blocks", "1", "--batch-size", "4", "--no-progress"]


def _train(variant, out, steps, *extra):
    assert cli_main(["train", variant, "--demo", "digits", "--steps", str(steps), "-o", str(out), *extra]) == 0
    return load_checkpoint(latest_checkpoint(out / "checkpoints"))


def _same(a, b) -> bool:
    """Equal, tensors (image pools) included."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _losses(run):
    rows = (run / "losses.csv").read_text().splitlines()
    head = rows[0].split(",")
    return [dict(zip(head, map(float, r.split(",")))) for r in rows[1:]]


# --- losses -----------------------------------------------------------------------------

def test_gradient_penalty_of_a_linear_critic_is_known_in_closed_form():
    # D(x) = <w, x>: its gradient is w everywhere, so the penalty is (||w|| - 1)^2 for any
    # interpolate; a critic returning a patch map (summed) or a (map, logits) tuple too
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 4, 4, generator=g, dtype=torch.float64)
    real, fake = torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64), torch.randn(5, 3, 4, 4, generator=g,
                                                                                         dtype=torch.float64)
    expected = (w.norm() - 1) ** 2
    linear = gradient_penalty(lambda x: (x * w).flatten(1).sum(1), real, fake)
    assert linear.item() == pytest.approx(expected.item(), rel=1e-12)
    patch = gradient_penalty(lambda x: ((x * w).sum(1), torch.zeros(len(x))), real, fake)
    assert patch.item() == pytest.approx(expected.item(), rel=1e-12)
    # a nonlinear critic, against a gradient taken by finite differences at given alphas
    conv = nn.Conv2d(3, 1, 3).double()
    alpha = torch.rand(5, generator=g, dtype=torch.float64)
    got = gradient_penalty(lambda x: torch.tanh(conv(x)), real, fake, alpha=alpha)
    x_hat = alpha.view(5, 1, 1, 1) * real + (1 - alpha.view(5, 1, 1, 1)) * fake
    with torch.no_grad():
        norms = [_fd_grad_norm(lambda t: torch.tanh(conv(t)).sum(), x_hat[i], 1e-6) for i in range(5)]
    assert got.item() == pytest.approx(float(sum((n - 1) ** 2 for n in norms) / 5), rel=1e-6)
    # the penalty trains the critic: it has a gradient w.r.t. the critic's weights
    conv.zero_grad()
    got.backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


def _fd_grad_norm(f, x, eps):
    """||grad f(x)|| by central differences."""
    flat = x.flatten()
    grad = torch.zeros_like(flat)
    for j in range(len(flat)):
        d = torch.zeros_like(flat)
        d[j] = eps
        grad[j] = (f((flat + d).view(1, *x.shape)) - f((flat - d).view(1, *x.shape))) / (2 * eps)
    return grad.norm()


def test_minimax_losses_match_their_definitions():
    d = torch.tensor([[-2.0], [0.5], [3.0]])
    p = torch.sigmoid(d)
    # D: -log D(x) on real, -log(1 - D(G(z))) on fake; G (non-saturating): -log D(G(z))
    assert gan_loss("bce", d, True).item() == pytest.approx(float(-torch.log(p).mean()), rel=1e-6)
    assert gan_loss("bce", d, False).item() == pytest.approx(float(-torch.log(1 - p).mean()), rel=1e-6)
    assert gan_loss("bce", d, True, for_generator=True).item() == pytest.approx(float(-torch.log(p).mean()), rel=1e-6)
    assert gan_loss("wgan-gp", d, True).item() == pytest.approx(-0.5)
    assert gan_loss("wgan-gp", d, False).item() == pytest.approx(0.5)
    assert gan_loss("hinge", d, False).item() == pytest.approx(float(np.mean([0, 1.5, 4.0])))


def _plugin(name, config, info):
    from pyganx import registry
    from pyganx.engine.context import TrainContext
    cls = registry.get(name)
    torch.manual_seed(0)
    plugin = cls(cls.Config(**config), info)
    return plugin, TrainContext(torch.device("cpu"), plugin.optimizers(), None)


def test_dcgan_step_losses_are_the_minimax_objective_with_the_non_saturating_g_loss():
    import copy

    from pyganx.plugin import DataInfo
    plugin, ctx = _plugin("dcgan", {"ngf": 4, "ndf": 4, "z_dim": 8}, DataInfo(1, 16))
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    G, D = copy.deepcopy(plugin.G), copy.deepcopy(plugin.D)
    torch.manual_seed(7)
    z = torch.randn(4, 8)
    with torch.no_grad():
        fake = G(z)
        d_real, d_fake = D(x), D(fake)
    expected_d = float(-torch.log(torch.sigmoid(d_real)).mean() - torch.log(1 - torch.sigmoid(d_fake)).mean())
    torch.manual_seed(7)
    losses = plugin.train_step({"image": x}, ctx)
    assert losses["D"] == pytest.approx(expected_d, rel=1e-5)
    assert losses["D_real"] == pytest.approx(float(torch.sigmoid(d_real).mean()), rel=1e-5)
    # G's loss is taken against the discriminator just updated, on the same fakes
    with torch.no_grad():
        expected_g = float(-torch.log(torch.sigmoid(plugin.D(fake))).mean())
    assert losses["G"] == pytest.approx(expected_g, rel=1e-5)


@pytest.mark.parametrize("per_domain", [False, True])
def test_stargan_step_losses_match_an_independent_computation(per_domain):
    import copy

    from pyganx.nn import one_hot
    from pyganx.plugin import DataInfo
    plugin, ctx = _plugin("stargan", {"g_conv_dim": 4, "d_conv_dim": 4, "g_blocks": 1, "n_critic": 1,
                                      "d_per_domain": per_domain},
                          DataInfo(1, 16, 0, ("a", "b", "c")))
    assert plugin.D.conv_src.out_channels == (3 if per_domain else 1)
    x, c_org = torch.rand(4, 1, 16, 16) * 2 - 1, torch.tensor([0, 1, 2, 1])
    G, D = copy.deepcopy(plugin.G), copy.deepcopy(plugin.D)
    rows = torch.arange(4)

    def critic(src, labels):   # the single map, or each image's own domain's map
        return src[rows, labels] if per_domain else src

    torch.manual_seed(11)
    c_trg = torch.randint(3, (4,))
    c_gp = torch.where(torch.rand(4) < 0.5, c_org, c_trg) if per_domain else None
    alpha = torch.rand(4)
    with torch.no_grad():
        src_real, cls_real = D(x)
        fake = G(x, one_hot(c_trg, 3))
        src_fake, _ = D(fake)
    a = alpha.view(4, 1, 1, 1)
    x_hat = (a * x + (1 - a) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(D(x_hat)[0], c_gp).sum(), x_hat)
    gp = float(((grad.flatten(1).norm(dim=1) - 1) ** 2).mean())
    torch.manual_seed(11)
    losses = plugin.train_step({"image": x, "label": c_org}, ctx)
    if per_domain:   # each domain's fake mean minus its real mean, averaged over the domains with both
        d_adv = torch.stack([src_fake[c_trg == k, k].mean() - src_real[c_org == k, k].mean()
                             for k in range(3) if (c_trg == k).any() and (c_org == k).any()]).mean()
    else:
        d_adv = src_fake.mean() - src_real.mean()
    assert losses["D_adv"] == pytest.approx(float(d_adv), rel=1e-4, abs=1e-7)
    assert losses["D_cls"] == pytest.approx(float(F.cross_entropy(cls_real, c_org)), rel=1e-5)
    assert losses["D_gp"] == pytest.approx(gp, rel=1e-5)
    # G against the updated D: adversarial, domain of the fakes, L1 of the round trip to c_org
    with torch.no_grad():
        src, cls = plugin.D(fake)
        rec = G(fake, one_hot(c_org, 3))
    assert losses["G_adv"] == pytest.approx(float(-critic(src, c_trg).mean()), rel=1e-4, abs=1e-7)
    assert losses["G_cls"] == pytest.approx(float(F.cross_entropy(cls, c_trg)), rel=1e-5)
    assert losses["G_rec"] == pytest.approx(float((rec - x).abs().mean()), rel=1e-5)


# --- training, resume, samples ----------------------------------------------------------------

#: D augmented with an adaptive probability that moves within the run (kimg tiny)
ADA = ["--d-augment", "color,translation,cutout", "--ada-kimg", "0.004"]
CUT = ["--ngf", "8", "--ndf", "8", "--n-blocks", "5", "--batch-size", "2", "--no-progress"]


@pytest.mark.parametrize("variant,extra", [
    ("dcgan", DC),
    ("gan", DC + ["--loss", "wgan-gp", "--n-critic", "2"]),
    ("cgan", DC + ["--loss", "hinge"]),
    ("stargan", SG + ["--n-critic", "2"]),
    ("dcgan", DC + ["--d-augment", "color,translation,cutout", "--d-augment-p", "0.5"]),
    ("cut", CUT + ADA),
    ("fastcut", CUT),
    ("cyclegan", ["--ngf", "8", "--ndf", "8", "--n-blocks", "1", "--no-progress"] + ADA),
])
def test_training_is_finite_and_resumes_exactly(variant, extra, tmp_path):
    run = tmp_path / "run"
    straight = _train(variant, run, 5, *extra, "--checkpoint-every", "2", "--keep", "5")
    rows = _losses(run)
    assert len(rows) == 5 and all(math.isfinite(v) for r in rows for v in r.values())
    # the same 5-step run (same schedule), resumed from its step-2 checkpoint
    assert cli_main(["train", variant, "--demo", "digits", "--steps", "5", "-o", str(run),
                     "--resume", str(run / "checkpoints" / "step-000000002.pt"), *extra]) == 0
    resumed = load_checkpoint(latest_checkpoint(run / "checkpoints"))
    assert resumed["step"] == straight["step"] == 5 and _same(resumed["extra"], straight["extra"])
    if "--ada-kimg" in extra:                  # ADA's statistics (and p) resumed where they stood
        assert straight["extra"]["augment"]["steps"] == 5
    drop = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert drop(_losses(run)) == drop(rows)
    for net in straight["networks"]:
        for k, v in straight["networks"][net].items():
            assert torch.equal(v, resumed["networks"][net][k]), (net, k)


def test_dcgan_networks_follow_the_paper_and_the_alias_is_the_same_plugin():
    from pyganx import registry
    from pyganx.plugin import DataInfo
    assert registry.get("gan") is registry.get("dcgan")
    cls = registry.get("dcgan")
    plugin = cls(cls.Config(), DataInfo(3, 64))
    first = plugin.G.model[0]
    assert (first.in_channels, first.out_channels) == (100, 1024)            # z -> 4x4x1024
    assert [m.out_channels for m in plugin.G.model if isinstance(m, nn.ConvTranspose2d)] == [1024, 512, 256, 128, 3]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plugin.D.model[:2])  # none on D's input layer
    assert isinstance(plugin.G.model[-1], nn.Tanh)
    opt = plugin.optimizers()["G"].param_groups[0]
    assert opt["lr"] == 2e-4 and opt["betas"][0] == 0.5
    out = plugin.G(torch.randn(2, 100))
    assert out.shape == (2, 3, 64, 64)
    wgan = cls(cls.Config(loss="wgan-gp"), DataInfo(1, 32))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in wgan.D.modules())
    with pytest.raises(ValueError, match="per sample"):
        cls(cls.Config(loss="wgan-gp", d_norm="batch"), DataInfo(1, 32))


@pytest.mark.parametrize("variant", ["gan", "cgan"])
def test_loss_offers_pyganx_losses_and_wgan_gp(variant, tmp_path, capsys):
    from pyganx import registry
    cls = registry.get(variant)
    (f,) = [f for f in dataclasses.fields(cls.Config) if f.name == "loss"]
    assert f.metadata["choices"] == (*GAN_LOSSES, "wgan-gp")
    with pytest.raises(UsageError, match=r"^--loss must be one of lsgan, bce, hinge, wgan-gp, got 'wgan'$"):
        cls(cls.Config(ngf=8, ndf=8, loss="wgan"), DataInfo(1, 32, 10))
    with pytest.raises(SystemExit) as e:
        cli_main(["train", variant, "--demo", "digits", "--steps", "1", "-o", str(tmp_path / "run"),
                  *DC, "--loss", "wgan"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "argument --loss: invalid choice: 'wgan'" in err, err


def test_stargan_d_augment_shifts_each_image_and_passes_gradients():
    from pyganx.augment import DiscriminatorAugment
    x = torch.randn(6, 2, 8, 10, requires_grad=True)
    assert DiscriminatorAugment("")(x) is x
    shift = DiscriminatorAugment("0.25")              # StarGAN's --d-augment F: translation, always
    torch.manual_seed(3)
    y = shift(x)
    assert y.shape == x.shape
    padded = F.pad(x.detach(), (2, 2, 2, 2))
    for i in range(6):          # some shift of at most 2 rows and 2 columns, zero-filled
        matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                   if torch.equal(y[i].detach(), padded[i, :, 2 - dy:10 - dy, 2 - dx:12 - dx])]
        assert matches, i
    y.sum().backward()
    assert x.grad is not None and x.grad.sum() > 0


def test_stargan_updates_g_once_every_n_critic_steps():
    from pyganx import registry
    from pyganx.engine.context import TrainContext
    from pyganx.plugin import DataInfo
    cls = registry.get("stargan")
    torch.manual_seed(0)
    plugin = cls(cls.Config(g_conv_dim=4, d_conv_dim=4, g_blocks=1, n_critic=3), DataInfo(1, 16, 0, ("a", "b", "c")))
    assert plugin.D.conv_cls.kernel_size == (2, 2)        # 16 px: 3 layers, a 2x2 map as at 128 px
    ctx = TrainContext(torch.device("cpu"), plugin.optimizers(), None)
    batch = {"image": torch.rand(4, 1, 16, 16) * 2 - 1, "label": torch.tensor([0, 1, 2, 0])}
    changed = []
    for _ in range(7):
        before = [p.clone() for p in plugin.G.parameters()]
        d_before = [p.clone() for p in plugin.D.parameters()]
        plugin.train_step(batch, ctx)
        changed.append(any(not torch.equal(a, b) for a, b in zip(before, plugin.G.parameters())))
        assert any(not torch.equal(a, b) for a, b in zip(d_before, plugin.D.parameters()))
    assert changed == [True, False, False, True, False, False, True]


@pytest.fixture(scope="module")
def cgan_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "cgan"
    _train("cgan", out, 2, *DC)
    return out


@pytest.fixture(scope="module")
def stargan_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "stargan"
    _train("stargan", out, 2, *SG)
    return out


@pytest.fixture(scope="module")
def dcgan_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "dcgan"
    _train("dcgan", out, 2, *DC)
    return out


def _grid_rows(path):
    img = Image.open(path)
    return img.height // 32, img.width // 32


def test_sample_rows_per_class_and_per_domain(cgan_run, stargan_run, dcgan_run, tmp_path, capsys):
    assert cli_main(["sample", str(cgan_run), "-o", str(tmp_path / "c"), "--n", "3"]) == 0
    assert _grid_rows(tmp_path / "c" / "grid.png") == (10, 3)      # one row per class
    assert sorted(p.name for p in (tmp_path / "c").iterdir() if p.is_dir()) == sorted(str(d) for d in range(10))
    assert cli_main(["sample", str(cgan_run), "-o", str(tmp_path / "c7"), "--n", "4", "--label", "7"]) == 0
    assert _grid_rows(tmp_path / "c7" / "grid.png") == (1, 4)
    assert len(list((tmp_path / "c7" / "7").glob("*.png"))) == 4
    assert cli_main(["sample", str(cgan_run), "-o", str(tmp_path / "bad"), "--label", "11"]) == 1
    assert "unknown class" in capsys.readouterr().err
    assert cli_main(["sample", str(stargan_run), "-o", str(tmp_path / "s"), "--n", "2"]) == 0
    assert _grid_rows(tmp_path / "s" / "grid.png") == (6, 2)       # inputs + 5 domains
    assert cli_main(["sample", str(stargan_run), "-o", str(tmp_path / "s1"), "--n", "2", "--domain", "stix"]) == 0
    assert sorted(p.name for p in (tmp_path / "s1").iterdir() if p.is_dir()) == ["input", "to_stix"]
    assert cli_main(["sample", str(dcgan_run), "-o", str(tmp_path / "d"), "--n", "5"]) == 0
    assert _grid_rows(tmp_path / "d" / "grid.png") == (3, 5)
    # conditions a plugin does not take are refused
    assert cli_main(["sample", str(dcgan_run), "-o", str(tmp_path / "x"), "--label", "1"]) == 1


# --- export and translate -------------------------------------------------------------------

onnx_needed = pytest.mark.skipif(
    any(__import__("importlib").util.find_spec(m) is None for m in ("onnx", "onnxruntime", "onnxscript")),
    reason="the ONNX extra (pip install 'pyganx[cpu]') is not installed")


@onnx_needed
def test_noise_and_conditional_generators_export_with_z_and_label(dcgan_run, cgan_run, tmp_path, capsys):
    import onnxruntime as ort

    from pyganx.export import custom_domains, read_metadata
    for run, inputs in ((dcgan_run, ["z"]), (cgan_run, ["z", "label"])):
        path = tmp_path / f"{run.name}.onnx"
        assert cli_main(["export", str(run), "-o", str(path)]) == 0
        meta = read_metadata(path)
        assert json.loads(meta["pyganx.inputs"]) == inputs and meta["pyganx.z_dim"] == "16"
        import onnx
        assert custom_domains(onnx.load(str(path))) == []
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.name for i in sess.get_inputs()] == inputs
        g = pyganx.load_generator(run)
        for n in (1, 5):                                         # dynamic batch
            z = torch.randn(n, 16)
            label = torch.arange(n) % 10
            feeds = {"z": z.numpy()}
            if "label" in inputs:
                feeds["label"] = label.numpy()
            got = sess.run(None, feeds)[0]
            with torch.no_grad():
                ref = g(z, label if "label" in inputs else None).numpy()
            assert got.shape == (n, 1, 32, 32)
            np.testing.assert_allclose(got, ref, atol=1e-4)
        # translate refuses noise models and says what to use instead
        capsys.readouterr()
        assert cli_main(["translate", str(path), str(tmp_path), "-o", str(tmp_path / "t")]) == 1
        assert "pyganx sample" in capsys.readouterr().err


@onnx_needed
def test_stargan_exports_with_a_domain_input_and_translates_into_a_chosen_domain(stargan_run, tmp_path, capsys):
    from pyganx.nn import one_hot
    from pyganx_runtime import Translator
    path = tmp_path / "stargan.onnx"
    assert cli_main(["export", str(stargan_run), "-o", str(path)]) == 0
    tr = Translator(path, device="cpu")
    assert tr.takes_domain and tr.domains == ["dejavu-mono", "dejavu-sans", "dejavu-serif", "handwritten", "stix"]
    g = pyganx.load_generator(stargan_run)
    x = torch.rand(3, 1, 34, 30) * 2 - 1                         # reflect-padded to multiples of 4, cropped back
    for k, name in enumerate(tr.domains):
        with torch.no_grad():
            ref = g(F.pad(x, (0, 2, 0, 2), mode="reflect"), one_hot(torch.full((3,), k), 5))[:, :, :34, :30]
        np.testing.assert_allclose(tr(x.numpy(), name), ref.numpy(), atol=1e-4)
    # the domains really differ: translating into two of them gives two images
    assert np.abs(tr(x.numpy(), "stix") - tr(x.numpy(), "handwritten")).max() > 1e-3
    src = tmp_path / "in"
    src.mkdir()
    for i in range(2):
        Image.fromarray((np.random.default_rng(i).random((32, 32)) * 255).astype(np.uint8)).save(src / f"{i}.png")
    capsys.readouterr()
    assert cli_main(["translate", str(path), str(src), "-o", str(tmp_path / "out"), "--no-progress"]) == 1
    assert "needs a target domain" in capsys.readouterr().err
    assert cli_main(["translate", str(path), str(src), "-o", str(tmp_path / "out"), "--domain", "comic",
                     "--no-progress"]) == 1
    assert "unknown domain" in capsys.readouterr().err
    assert cli_main(["translate", str(path), str(src), "-o", str(tmp_path / "out"), "--domain", "stix",
                     "--no-progress"]) == 0
    got = np.asarray(Image.open(tmp_path / "out" / "0.png"), dtype=np.float32) / 127.5 - 1
    inp = torch.from_numpy(np.asarray(Image.open(src / "0.png"), dtype=np.float32) / 127.5 - 1)[None, None]
    with torch.no_grad():
        ref = g(inp, one_hot(torch.tensor([4]), 5))[0, 0].numpy()
    assert np.abs(got - ref).max() <= 1 / 127.5 + 1e-6           # 8-bit rounding only


# --- eval -------------------------------------------------------------------------------------

def _evaluate_with(monkeypatch, run_dir, generator):
    from pyganx.metrics import evaluate as ev
    real = ev.load_run

    def patched(path, device=None, ema=True):
        r = real(path, device="cpu", ema=ema)
        r.plugin.G = generator
        return r
    monkeypatch.setattr(ev, "load_run", patched)
    return ev.evaluate_run(run_dir)


def _key(t):
    return hash(t.mul(1000).round().to(torch.int32).numpy().tobytes())


class _ClassLookup(nn.Module):
    """A stand-in conditional generator: real test images of the class it is given
    (shifted by ``offset``)."""

    def __init__(self, by_class, offset=0):
        super().__init__()
        self.by_class, self.offset = by_class, offset

    def forward(self, z, label):
        picks = [self.by_class[(int(c) + self.offset) % 10] for c in label]
        return torch.stack([pick[i % len(pick)] for i, pick in enumerate(picks)])


def test_cgan_eval_reads_the_classes_of_what_is_generated(cgan_run, monkeypatch):
    test = load_run(cgan_run).data().test
    by_class = {}
    for i in range(len(test)):
        item = test[i]
        by_class.setdefault(item["label"], []).append(item["image"])
    right = _evaluate_with(monkeypatch, cgan_run, _ClassLookup(by_class))
    g = right["generators"]["G"]
    assert right["classifiers"]["judge"]["test_accuracy"] > 0.95
    assert g["class_accuracy"] > 0.95 and min(g["class_accuracy_per_class"].values()) > 0.8
    assert g["kid"] < 0.2 + 3 * g["kid_std"] + g["kid_real_halves"]
    wrong = _evaluate_with(monkeypatch, cgan_run, _ClassLookup(by_class, offset=1))["generators"]["G"]
    assert wrong["class_accuracy"] < 0.05
    blank = _evaluate_with(monkeypatch, cgan_run, lambda z, label: -torch.ones(len(z), 1, 32, 32))
    assert blank["generators"]["G"]["kid"] > 10 * max(g["kid"], 1e-3)
    assert json.loads((cgan_run / "eval.json").read_text()) == blank


class _StyleLookup(nn.Module):
    """A stand-in StarGAN generator: for each known input, a real test image of the
    target style showing the same digit (or, with ``keep_digit=False``, the next one)."""

    def __init__(self, table):
        super().__init__()
        self.table = table

    def forward(self, x, c):
        return torch.stack([self.table[_key(t)][int(k)] for t, k in zip(x, c.argmax(1))])


def test_stargan_eval_judges_target_domain_and_kept_digit(stargan_run, monkeypatch):
    from pyganx.data import demo
    test = load_run(stargan_run).data().test
    digits = [s.label for s in demo.load("digits").test_a + demo.load("digits").test_b]
    items = [test[i] for i in range(len(test))]
    by = {}
    for it, d in zip(items, digits):
        by.setdefault((it["label"], d), []).append(it["image"])
    same = {_key(it["image"]): [by[(k, d)][0] for k in range(5)] for it, d in zip(items, digits)}
    nxt = {_key(it["image"]): [by[(k, (d + 1) % 10)][0] for k in range(5)] for it, d in zip(items, digits)}

    identity = _evaluate_with(monkeypatch, stargan_run, lambda x, c: x)
    assert identity["classifiers"]["domain"]["test_accuracy"] > 0.95
    m = identity["generators"]["G"]["mean"]
    # an identity "translation" stays in the source domain (never the target) and keeps every digit
    assert m["target_domain"] < 0.05 and m["digit_kept"] > 0.95
    good = _evaluate_with(monkeypatch, stargan_run, _StyleLookup(same))["generators"]["G"]
    assert good["mean"]["target_domain"] > 0.95 and good["mean"]["digit_kept"] > 0.95
    assert good["mean"]["kid"] < 0.5 * m["kid"]
    assert set(good["into"]) == {"dejavu-mono", "dejavu-sans", "dejavu-serif", "handwritten", "stix"}
    lost = _evaluate_with(monkeypatch, stargan_run, _StyleLookup(nxt))["generators"]["G"]["mean"]
    assert lost["target_domain"] > 0.95 and lost["digit_kept"] < 0.05


def test_dcgan_eval_and_figures_over_training(tmp_path, capsys):
    run = tmp_path / "dc"
    _train("dcgan", run, 4, *DC, "--checkpoint-every", "2", "--keep", "5")
    assert cli_main(["eval", str(run)]) == 0
    out = capsys.readouterr().out
    assert "KID" in out and "generated images" in out
    r = json.loads((run / "eval.json").read_text())
    g = r["generators"]["G"]
    assert g["n"] == 1000 and g["kid"] > g["kid_real_halves"]
    assert cli_main(["eval", str(run), "--all-checkpoints"]) == 0
    curve = json.loads((run / "eval-checkpoints.json").read_text())["checkpoints"]
    assert [c["step"] for c in curve] == [2, 4]
    assert curve[1]["G kid"] == pytest.approx(g["kid"])
    assert (run / "eval-checkpoints.png").stat().st_size > 1000
