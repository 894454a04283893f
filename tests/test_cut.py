"""CUT and FastCUT: the PatchNCE loss against its definition, the encoder features and
the MLP heads, the paper's defaults, and a trained generator through export, translate,
eval and a checkpoint loaded as another plugin."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from pyganx import registry
from pyganx.cli import main as cli_main
from pyganx.data import DataInfo
from pyganx.engine import latest_checkpoint, load_checkpoint, load_run
from pyganx.errors import UsageError
from pyganx.losses import GAN_LOSSES, LOSSES, patch_nce_loss
from pyganx.nn import ResnetGenerator

SMALL = ["--ngf", "8", "--ndf", "8", "--n-blocks", "5", "--no-progress", "--batch-size", "2"]


def test_patch_nce_is_infonce_over_the_patches_of_each_image():
    g = torch.Generator().manual_seed(0)
    b, p, c, t = 3, 5, 8, 0.07
    q = torch.nn.functional.normalize(torch.randn(b * p, c, generator=g), dim=1).requires_grad_(True)
    k = torch.nn.functional.normalize(torch.randn(b * p, c, generator=g), dim=1).requires_grad_(True)
    ours = patch_nce_loss(q, k, b, t)
    ref = []
    for img in range(b):
        for i in range(p):
            qi = q[img * p + i]
            others = [k[img * p + j] for j in range(p)]
            logits = torch.stack([qi @ others[i]] + [qi @ others[j] if j != i else torch.tensor(-10.0)
                                                     for j in range(p)]) / t
            ref.append(-torch.log_softmax(logits, 0)[0])
    torch.testing.assert_close(ours, torch.stack(ref))
    ours.sum().backward()
    assert k.grad is None and q.grad.abs().sum() > 0          # keys are not trained through


def test_encoder_features_are_the_modules_outputs_at_cuts_layers():
    torch.manual_seed(0)
    net = ResnetGenerator(1, 1, 8, 6).eval()
    x = torch.randn(2, 1, 32, 32)
    idx = [net.encoder_index(v) for v in (0, 4, 8, 12, 16)]
    assert idx == [0, 3, 5, 7, 11]          # padded input, two downsampling convs, blocks 1 and 5
    feats = net(x, idx)
    y, manual = x, []
    for i, m in enumerate(net.model):
        y = m(y)
        if i in idx:
            manual.append(y)
    assert [f.shape[1] for f in feats] == [1, 16, 32, 32, 32]
    for a, b in zip(feats, manual):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="layer 18 is not in the encoder of a 6-block generator"):
        net.encoder_index(18)


def test_the_mlp_heads_exist_before_the_first_step_and_reuse_the_locations():
    cut = registry.get("cut")
    plugin = cut(cut.Config(ngf=8, ndf=8), DataInfo(3, 32, 0, ("A", "B")))
    assert "F" in plugin.networks() and [m[0].in_features for m in plugin.F.mlps] == [3, 16, 32, 32, 32]
    feats = plugin.G(torch.randn(2, 3, 32, 32), plugin.layers)
    out, ids = plugin.F(feats, 256)
    again, same = plugin.F(feats, 256, ids)
    assert all(torch.equal(a, b) for a, b in zip(ids, same))
    assert [o.shape for o in out] == [(2 * min(256, f.shape[2] * f.shape[3]), 256) for f in feats]
    torch.testing.assert_close(out[1].norm(dim=1), torch.ones(out[1].shape[0]))


def test_the_papers_defaults():
    cut, fast = registry.get("cut").Config(), registry.get("fastcut").Config()
    assert (cut.lambda_nce, cut.nce_idt, cut.flip_equivariance, cut.num_patches, cut.netf_nc, cut.nce_t,
            cut.nce_layers, cut.gan_loss, cut.lr, cut.beta1, cut.beta2) == \
        (1.0, True, False, 256, 256, 0.07, "0,4,8,12,16", "lsgan", 2e-4, 0.5, 0.999)
    assert (fast.lambda_nce, fast.nce_idt, fast.flip_equivariance, fast.decay_start) == (10.0, False, True, 0.75)


@pytest.mark.parametrize("variant", ["cut", "fastcut", "cyclegan"])
def test_gan_loss_offers_the_losses_of_pyganx_losses(variant):
    cls = registry.get(variant)
    (f,) = [f for f in dataclasses.fields(cls.Config) if f.name == "gan_loss"]
    assert f.metadata["choices"] == GAN_LOSSES
    # "wgan" is a loss gan_loss computes (it needs a gradient penalty), but not one offered
    assert "wgan" in LOSSES and "wgan" not in GAN_LOSSES
    with pytest.raises(UsageError, match=r"^--gan-loss must be one of lsgan, bce, hinge, got 'wgan'$"):
        cls(cls.Config(ngf=8, ndf=8, gan_loss="wgan"), DataInfo(3, 32, 0, ("A", "B")))


def test_the_command_line_refuses_a_gan_loss_not_offered(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["train", "cut", "--demo", "digits", "--steps", "1", "-o", str(tmp_path / "run"),
                  *SMALL, "--gan-loss", "wgan"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    assert "argument --gan-loss: invalid choice: 'wgan'" in err and "lsgan" in err, err
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def cut_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cut") / "run"
    assert cli_main(["train", "cut", "--demo", "digits", "--steps", "3", "-o", str(run), *SMALL]) == 0
    return run


def test_a_cut_generator_exports_translates_and_is_judged(cut_run, tmp_path, capsys):
    ck = load_checkpoint(latest_checkpoint(cut_run / "checkpoints"))
    assert set(ck["networks"]) == {"G", "D", "F"} and set(ck["optimizers"]) == {"G", "D", "F"}
    run = load_run(cut_run)
    assert run.generator().__class__.__name__ == "ResnetGenerator"
    model = tmp_path / "g.onnx"
    assert cli_main(["export", str(cut_run), "-o", str(model)]) == 0
    assert "cut G, A -> B" in capsys.readouterr().out
    from pyganx.data import demo
    (tmp_path / "in").mkdir()
    demo.load("digits").test_a[0].image.save(tmp_path / "in" / "a.png")
    assert cli_main(["translate", str(model), str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                     "--no-progress"]) == 0
    assert (tmp_path / "out" / "a.png").is_file()
    assert cli_main(["eval", str(cut_run)]) == 0
    row = json.loads((cut_run / "eval.json").read_text())["translations"]["G"]
    assert row["from"] == "A" and row["to"] == "B" and 0 <= row["digit_kept"] <= 1
    assert cli_main(["eval", str(cut_run), "--model", str(model)]) == 0


def test_a_cut_checkpoint_is_not_resumed_as_another_plugin(cut_run, tmp_path, capsys):
    ck = latest_checkpoint(cut_run / "checkpoints")
    assert cli_main(["train", "cyclegan", "--demo", "digits", "--steps", "4", "--ngf", "8", "--ndf", "8",
                     "--no-progress", "-o", str(tmp_path / "cg"), "--resume", str(ck)]) == 1
    err = capsys.readouterr().err
    assert "the checkpoint is of plugin 'cut', not 'cyclegan'" in err and err.count("\n") == 1
