"""The DCGAN (alias gan), conditional GAN and StarGAN plugins: losses against values
computed independently, a few training steps through the CLI, exact resume and the
StarGAN update schedule (their trained runs: test_variant_runs.py)."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from variant_support import DC, SG, _train

from pyganx.cli import main as cli_main
from pyganx.data import DataInfo
from pyganx.engine import latest_checkpoint, load_checkpoint
from pyganx.errors import UsageError
from pyganx.losses import GAN_LOSSES, gan_loss, gradient_penalty


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
