"""Trained runs of the DCGAN, conditional GAN and StarGAN plugins: sample rows, ONNX
export of noise / conditional / multi-domain generators, `translate --domain`, and
`pyganx eval` figures that follow stand-in generators."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from variant_support import DC, SG, _train

import pyganx
from pyganx.cli import main as cli_main
from pyganx.engine import load_run


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
