"""Quality metrics, `pyganx eval`, `pyganx sample` and the Python API: KID against a
direct computation, classifiers that learn and are cached, and an evaluation whose
figures follow what stand-in generators do (identity, digit-preserving lookup, digit-
changing lookup)."""
from __future__ import annotations

import itertools
import json

import pytest
import torch
from torch import nn

import pyganx
from pyganx.cli import main as cli_main
from pyganx.data import demo
from pyganx.engine import latest_checkpoint, list_checkpoints, load_checkpoint
from pyganx.errors import UsageError
from pyganx.metrics import cached_classifier, eval_data, kid, polynomial_mmd2, train_classifier
from pyganx.metrics import evaluate as ev
from pyganx.metrics.eval_data import MAX_TEST, EvalData
from pyganx.metrics.kid import format_kid, kid_figures, kid_mean

SMALL = ["--ngf", "8", "--ndf", "8", "--n-blocks", "1", "--no-progress"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "digits"
    assert cli_main(["train", "cyclegan", "--demo", "digits", "--steps", "2", "-o", str(out),
                     "--ema", "0.9", *SMALL]) == 0
    return out


def test_polynomial_mmd2_matches_a_direct_sum():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64) + 1

    def k(a, b):
        return (float(a @ b) / 3 + 1) ** 3
    xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(5), 2)) / 20
    yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(4), 2)) / 12
    xy = sum(k(a, b) for a in x for b in y) / 20
    assert polynomial_mmd2(x, y).item() == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def test_kid_is_near_zero_for_one_distribution_and_grows_with_the_shift():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(400, 8, generator=g), torch.randn(400, 8, generator=g)
    same, _ = kid(a, b)
    near, _ = kid(a, b + 0.3)
    far, _ = kid(a, b + 1.0)
    assert abs(same) < 0.1 * near and near < far
    with pytest.raises(ValueError, match="at least 2 samples"):
        polynomial_mmd2(a[:1], b)
    with pytest.raises(ValueError, match="one width"):
        polynomial_mmd2(a, b[:, :3])


def test_kid_on_small_sets_takes_the_largest_subsets_and_says_so():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(37, 8, generator=g), torch.randn(50, 8, generator=g) + 0.5
    fig = kid_figures(a, b)
    assert (fig["kid"], fig["kid_std"]) == kid(a, b, 50, 37)        # subsets of the smaller set's size
    assert fig["kid_note"] == "KID on subsets of 37 images (a set has fewer than 100)"
    assert format_kid(fig) == f"KID {fig['kid']:.4f} +- {fig['kid_std']:.4f}; {fig['kid_note']}"
    assert kid_figures(a, b, subset_size=37) == {"kid": fig["kid"], "kid_std": fig["kid_std"]}
    # a set of one image has no KID: a note, not an error
    assert kid_figures(a[:1], b) == {"kid_note": "no KID: it needs at least 2 images per set, got 1 and 50"}
    assert kid_mean(a, a[:1], "kid_real") == {"kid_real_note": "no KID: it needs at least 2 images per set, "
                                                                "got 37 and 1"}
    assert kid_mean(a, b, "kid_real") == {"kid_real": fig["kid"], "kid_real_note": fig["kid_note"]}


def test_eval_of_a_run_with_a_one_image_test_split(tmp_path, capsys):
    from pyganx.data import demo
    ds = demo.load("digits")
    for side, samples in (("trainA", ds.train_a[:6]), ("trainB", ds.train_b[:6]), ("testA", ds.test_a[:1]),
                          ("testB", ds.test_b[:5])):
        (tmp_path / "d" / side).mkdir(parents=True)
        for i, smp in enumerate(samples):
            smp.image.save(tmp_path / "d" / side / f"{i}.png")
    out = tmp_path / "run"
    assert cli_main(["train", "cyclegan", "--data", str(tmp_path / "d"), "--image-size", "32", "--steps", "1",
                     "-o", str(out), *SMALL]) == 0
    assert cli_main(["eval", str(out)]) == 0
    r = json.loads((out / "eval.json").read_text())
    no_kid = "no KID: it needs at least 2 images per set"
    assert "kid_real_domains" not in r and r["kid_real_domains_note"] == f"{no_kid}, got 1 and 5"
    assert r["translations"]["G_AB"]["n"] == 1 and "kid" not in r["translations"]["G_AB"]
    assert r["translations"]["G_BA"]["kid_note"] == f"{no_kid}, got 5 and 1"
    assert 0 <= r["translations"]["G_BA"]["target_domain"] <= 1
    assert f"KID real A vs real B: {no_kid}, got 1 and 5" in capsys.readouterr().out


def _stripes(n: int, seed: int):
    """Noisy images of horizontal (label 0) or vertical (label 1) stripes, random phase."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    phase = torch.randint(0, 4, (n,), generator=g)
    r = torch.arange(16)
    x = torch.rand(n, 1, 16, 16, generator=g) * 0.8 - 0.4
    for i in range(n):
        wave = ((r + phase[i]) % 4 < 2).float() - 0.5
        x[i, 0] += wave[:, None] if y[i] == 0 else wave[None, :]
    return x.clamp(-1, 1), y


def test_classifier_learns_is_deterministic_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("PYGANX_CACHE_DIR", str(tmp_path))
    x, y = _stripes(256, 0)
    xt, yt = _stripes(128, 1)
    m1 = train_classifier(x, y, 2, epochs=3, batch_size=32)
    m2 = train_classifier(x, y, 2, epochs=3, batch_size=32)
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    calls = []

    def data():
        calls.append(1)
        return x, y, xt, yt, ["horizontal", "vertical"]
    first = cached_classifier("stripes", "k1", data, epochs=3)
    assert not first.cached and first.test_accuracy > 0.95 and len(calls) == 1
    again = cached_classifier("stripes", "k1", data, epochs=3)
    assert again.cached and len(calls) == 1 and again.test_accuracy == first.test_accuracy
    assert torch.equal(again.predict(xt), first.predict(xt))
    # a damaged cache entry is retrained, with a message, not a crash
    (tmp_path / "classifiers" / "stripes-k1.pt").write_bytes(b"garbage")
    msgs = []
    redo = cached_classifier("stripes", "k1", data, epochs=3, log=msgs.append)
    assert not redo.cached and len(calls) == 2 and "unreadable" in msgs[0]


class Lookup(nn.Module):
    """A stand-in generator: maps each known input image to a chosen output image."""

    def __init__(self, pairs):
        super().__init__()
        self.table = {self.key(a): b for a, b in pairs}

    @staticmethod
    def key(t):
        return hash(t.mul(1000).round().to(torch.int32).numpy().tobytes())

    def forward(self, x):
        return torch.stack([self.table[self.key(t)] for t in x])


def _evaluate_with(monkeypatch, run_dir, g_ab, g_ba):
    real = ev.load_run

    def patched(path, device=None, ema=True):
        r = real(path, device="cpu", ema=ema)
        r.plugin.G_AB, r.plugin.G_BA = g_ab, g_ba
        return r
    monkeypatch.setattr(ev, "load_run", patched)
    return ev.evaluate_run(run_dir)


def _by_digit(dom, side):
    x, labels = dom.test[side], dom.digits[side]
    out = {}
    for t, d in zip(x, labels):
        out.setdefault(d, []).append(t)
    return x, labels, out


def test_eval_figures_follow_what_the_generators_do(run, monkeypatch):
    identity = _evaluate_with(monkeypatch, run, nn.Identity(), nn.Identity())
    c = identity["classifiers"]
    assert c["domain"]["test_accuracy"] > 0.95 and c["domain"]["held_out"]
    assert c["digit"]["test_accuracy"] > 0.95
    for t in identity["translations"].values():
        # an identity "translation" stays in its own domain and keeps every digit
        assert t["target_domain"] < 0.05 and t["digit_kept"] > 0.95
        assert t["kid"] == pytest.approx(identity["kid_real_domains"], rel=0.2)
    assert json.loads((run / "eval.json").read_text()) == identity

    dom = EvalData(ev.load_run(run)).domains
    xa, la, a_by_digit = _by_digit(dom, "A")
    xb, lb, b_by_digit = _by_digit(dom, "B")
    same = Lookup((a, b_by_digit[d][i % len(b_by_digit[d])]) for i, (a, d) in enumerate(zip(xa, la)))
    other = Lookup((b, a_by_digit[(d + 1) % 10][i % len(a_by_digit[(d + 1) % 10])])
                   for i, (b, d) in enumerate(zip(xb, lb)))
    r = _evaluate_with(monkeypatch, run, same, other)["translations"]
    # real B images of the same digit: in the target domain, digit kept, near B's statistics
    assert r["G_AB"]["target_domain"] > 0.95 and r["G_AB"]["digit_kept"] > 0.95
    assert r["G_AB"]["kid"] < 0.1 * identity["kid_real_domains"]
    # real A images of the next digit: in the target domain, but the digit is lost
    assert r["G_BA"]["target_domain"] > 0.95 and r["G_BA"]["digit_kept"] < 0.05


def test_all_checkpoints_read_the_data_once_and_give_each_checkpoints_figures(tmp_path, monkeypatch):
    out = tmp_path / "ck"
    assert cli_main(["train", "cyclegan", "--demo", "digits", "--steps", "2", "--checkpoint-every", "1",
                     "--keep", "0", "-o", str(out), *SMALL]) == 0
    ckpts = list_checkpoints(out / "checkpoints")
    assert len(ckpts) == 2
    alone = [ev.headline(ev.evaluate_run(ck)) for ck in ckpts]          # the judges are cached now
    reads = []
    load_item = eval_data.load_item
    monkeypatch.setattr(eval_data, "load_item", lambda item, channels: reads.append(item) or load_item(item, channels))
    res = ev.evaluate_checkpoints(out)
    assert [{k: v for k, v in row.items() if k != "step"} for row in res["checkpoints"]] == alone
    ds = demo.load("digits")
    assert len(reads) == sum(min(len(t), MAX_TEST) for t in (ds.test_a, ds.test_b))   # each test image once


def test_eval_and_sample_cli(run, capsys, tmp_path):
    assert cli_main(["eval", str(run)]) == 0
    out = capsys.readouterr().out
    assert "G_AB (A->B" in out and "digit kept" in out and "(ema weights)" in out
    res = json.loads((run / "eval.json").read_text())
    assert res["weights"] == "ema" and res["step"] == 2
    assert cli_main(["sample", str(run), "--n", "3", "-o", str(tmp_path / "s")]) == 0
    names = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert names == ["fake_A", "fake_B", "grid.png", "real_A", "real_B", "recovered_A", "recovered_B"]
    assert len(list((tmp_path / "s" / "fake_B").glob("*.png"))) == 3
    capsys.readouterr()
    assert cli_main(["sample", str(run), "--label", "3"]) == 1
    assert "cyclegan samples take no --label" in capsys.readouterr().err
    assert cli_main(["eval", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert "no such run directory" in err and "Traceback" not in err


def test_python_api_trains_and_loads_the_generator(tmp_path):
    res = pyganx.train("cyclegan", demo="digits", out=tmp_path / "r", steps=2, ngf=8, ndf=8, n_blocks=1,
                       ema=0.5, progress=False, sample_every=100)
    assert res["steps"] == 2
    g = pyganx.load_generator(tmp_path / "r")
    ck = load_checkpoint(latest_checkpoint(tmp_path / "r" / "checkpoints"))
    assert not g.training and all(not p.requires_grad for p in g.parameters())
    for k, v in g.state_dict().items():
        assert torch.equal(v, ck["ema"]["G_AB"][k])            # EMA weights when kept
    g_ba = pyganx.load_generator(tmp_path / "r", "G_BA")
    x = torch.rand(1, 1, 32, 32) * 2 - 1
    assert g_ba(x).shape == x.shape
    with pytest.raises(TypeError, match="unknown options bogus"):
        pyganx.train("cyclegan", demo="digits", out=tmp_path / "r2", steps=1, bogus=1)
    with pytest.raises(UsageError, match="has no generator 'G_XY'"):
        pyganx.load_generator(tmp_path / "r", "G_XY")
