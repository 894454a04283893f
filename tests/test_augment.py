"""pyganx.augment: DiffAugment's transformations against the reference code's formulas,
the policy parser and its one-line errors, ADA's adaptive probability, and every
built-in plugin putting the same augmentation before each call of D."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pyganx import registry
from pyganx.augment import DiscriminatorAugment, color, cutout, parse_policy, translate
from pyganx.cli import main as cli_main
from pyganx.data import DataInfo
from pyganx.engine.context import TrainContext
from pyganx.errors import UsageError


def test_color_is_diffaugments_brightness_saturation_contrast():
    x = torch.rand(5, 3, 6, 7) * 2 - 1
    torch.manual_seed(4)
    ours = color(x)
    torch.manual_seed(4)       # the reference code's three functions, in its order and draws
    ref = x + (torch.rand(5, 1, 1, 1) - 0.5)
    m = ref.mean(dim=1, keepdim=True)
    ref = (ref - m) * (torch.rand(5, 1, 1, 1) * 2) + m
    m = ref.mean(dim=[1, 2, 3], keepdim=True)
    ref = (ref - m) * (torch.rand(5, 1, 1, 1) + 0.5) + m
    torch.testing.assert_close(ours, ref)


def test_cutout_zeroes_diffaugments_square():
    x = torch.rand(6, 2, 9, 12) + 1                     # nothing is 0 before
    torch.manual_seed(5)
    ours = cutout(x, 0.5)
    torch.manual_seed(5)       # the reference code: offsets, a clamped index grid, a mask
    ch, cw = int(9 * 0.5 + 0.5), int(12 * 0.5 + 0.5)
    ox = torch.randint(0, 9 + (1 - ch % 2), size=[6, 1, 1])
    oy = torch.randint(0, 12 + (1 - cw % 2), size=[6, 1, 1])
    gb, gx, gy = torch.meshgrid(torch.arange(6), torch.arange(ch), torch.arange(cw), indexing="ij")
    gx = torch.clamp(gx + ox - ch // 2, min=0, max=8)
    gy = torch.clamp(gy + oy - cw // 2, min=0, max=11)
    mask = torch.ones(6, 9, 12)
    mask[gb, gx, gy] = 0
    torch.testing.assert_close(ours, x * mask.unsqueeze(1))
    assert (ours == 0).any()


def test_translation_shifts_whole_images_and_every_transformation_passes_gradients():
    x = torch.randn(4, 1, 8, 8, requires_grad=True)
    y = translate(x, 0.25)
    padded = F.pad(x.detach(), (2, 2, 2, 2))
    for i in range(4):
        assert any(torch.equal(y[i].detach(), padded[i, :, 2 - dy:10 - dy, 2 - dx:10 - dx])
                   for dy in range(-2, 3) for dx in range(-2, 3))
    for op in (lambda t: translate(t, 0.25), color, lambda t: cutout(t, 0.5)):
        x.grad = None
        op(x).sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0


def test_policies_and_their_errors():
    assert parse_policy("") == ([], None)
    assert parse_policy("color, translation=0.25,cutout") == ([("color", 1.0), ("translation", 0.25),
                                                                ("cutout", 0.5)], None)
    assert parse_policy(0.125) == ([("translation", 0.125)], 1.0)       # StarGAN's --d-augment F
    for bad, words in (("blur", "unknown transformation 'blur'"), ("translation=x", "must be a number"),
                       ("cutout=3", "out of range"), ("1.5", "translation fraction in (0, 1)")):
        with pytest.raises(UsageError, match=words.replace("(", r"\(").replace(")", r"\)")):
            parse_policy(bad)
    for target in (0.0, 1.0, 1.5):
        with pytest.raises(UsageError, match=r"--ada-target must be in \(0, 1\)"):
            DiscriminatorAugment("color", target=target)


@pytest.mark.parametrize("args,words", [(["--d-augment", "blur"], "unknown transformation 'blur'"),
                                        (["--d-augment", "color", "--ada-target", "1.2"], "--ada-target")])
def test_bad_augmentation_flags_are_one_line_errors(args, words, tmp_path, capsys):
    assert cli_main(["train", "cyclegan", "--demo", "digits", "--steps", "1", "--ngf", "4", "--ndf", "4",
                     "--n-blocks", "1", "--no-progress", "-o", str(tmp_path / "r"), *args]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err and "Traceback" not in err, err


def test_the_probability_adapts_as_ada_says():
    aug = DiscriminatorAugment("translation", target=0.6, kimg=0.01, interval=4)   # 10 images: 0 -> 1
    x = torch.randn(5, 1, 8, 8)
    assert aug.p == 0 and aug(x) is x                      # starts off
    for _ in range(4):                                     # D sure of every real image: r_t = 1 > 0.6
        aug.observe(torch.ones(5, 1, 2, 2))
    assert aug.p == 1.0 and not torch.equal(aug(x), x)    # up by 20 images / 10, clipped at 1
    for _ in range(4):                                     # D unsure: r_t = -1 < 0.6, down by 20/10
        aug.observe(-torch.ones(5, 1, 2, 2))
    assert aug.p == 0.0
    aug = DiscriminatorAugment("translation", target=0.6, kimg=1.0, interval=4, mid=0.5)
    for _ in range(3):
        aug.observe(torch.full((2, 1), 0.9))               # LSGAN scores above the midpoint 0.5
    assert aug.p == 0                                      # only every 4th step moves p ...
    aug.observe(torch.full((2, 1), 0.9))
    assert aug.p == pytest.approx(8 / 1000)                # ... by the images seen / (kimg * 1000)
    state = aug.state_dict()
    again = DiscriminatorAugment("translation", target=0.6, kimg=1.0, interval=4, mid=0.5)
    again.load_state_dict(state)
    assert again.state_dict() == state
    torch.manual_seed(1)
    half = DiscriminatorAugment("translation", fixed_p=0.5)(torch.randn(400, 1, 8, 8) + 5)
    # a shifted image shows the zero fill: about half of them (8 of 9 shifts move the image)
    assert 0.3 < float((half == 0).flatten(1).any(1).double().mean()) < 0.6


@pytest.mark.parametrize("name", ["dcgan", "cgan", "cyclegan", "cut", "fastcut", "stargan"])
def test_every_plugin_shows_d_only_augmented_images(name, monkeypatch):
    """Every image D sees, real or fake, in D's step and in G's, has gone through the
    plugin's augmentation (the gradient penalty's interpolates excepted, as documented);
    and the augmentation's state is in the plugin's extra state."""
    cls = registry.get(name)
    kind = cls.data_kind
    small = {"dcgan": dict(ngf=8, ndf=8, z_dim=8), "cgan": dict(ngf=8, ndf=8, z_dim=8),
             "cyclegan": dict(ngf=4, ndf=4, n_blocks=1), "cut": dict(ngf=4, ndf=4, n_blocks=1, nce_layers="0,4,8,12"),
             "fastcut": dict(ngf=4, ndf=4, n_blocks=1, nce_layers="0,4,8,12"),
             "stargan": dict(g_conv_dim=4, d_conv_dim=4, g_blocks=1, n_critic=1)}[name]
    info = DataInfo(1, 32, 3 if kind == "labelled" else 0,
                    ("a", "b", "c") if kind in ("labelled", "multi_domain") else ("A", "B"))
    plugin = cls(cls.Config(d_augment="translation", d_augment_p=1.0, **small), info)
    seen, augmented = [], []
    aug = plugin.augment

    class Counting:
        def __call__(self, x):
            augmented.append(aug(x))       # kept: the check compares by identity
            return augmented[-1]

        def __getattr__(self, name):
            return getattr(aug, name)

    def check(_module, args):
        x = args[0]
        if not (x.is_leaf and x.requires_grad):     # the gradient penalty's interpolates
            seen.append(any(x is y for y in augmented))
    monkeypatch.setattr(plugin, "augment", Counting())
    for d in [m for k, m in plugin.networks().items() if k.startswith("D")]:
        d.register_forward_pre_hook(check)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 32, 32, generator=g) * 2 - 1
    batch = ({"A": x, "B": x.flip(3)} if kind == "unpaired" else
             {"image": x, "label": torch.tensor([0, 1, 2, 0])})
    plugin.train_step(batch, TrainContext(torch.device("cpu"), plugin.optimizers(), None))
    assert seen and all(seen), seen
    assert plugin.extra_state()["augment"] == aug.state_dict()
