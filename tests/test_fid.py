"""FID and KID on the FID Inception network (pyganx.metrics.inception, fid): the network
against pytorch-fid's with the same random weights, FID against pytorch-fid's
calculate_frechet_distance, KID against torch-fidelity's, the Clean-FID resize against
clean-fid's, folders read as pytorch-fid reads them, the weights check, and
`pyganx eval` with --inception-weights on runs and on two folders."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pyganx.cli import main as cli_main
from pyganx.errors import DataError, UsageError
from pyganx.metrics import fid as fidmod
from pyganx.metrics import inception as incmod
from pyganx.metrics.fid import InceptionScorer, frechet_distance, kernel_inception_distance
from pyganx.metrics.inception import FIDInceptionV3, load_fid_inception, resize_to_input

pytorch_fid = pytest.importorskip("pytorch_fid", reason="pip install pytorch-fid (the test extra)")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Random FID-Inception weights whose batch norms are calibrated on random images, so
    that every layer carries signal (features of order 10, not vanishing), saved as a file
    of the published file's layout."""
    torch.manual_seed(0)
    net = FIDInceptionV3()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 1.0
    net.train()
    with torch.no_grad():
        net(torch.rand(4, 3, 299, 299) * 2 - 1)
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.add_(torch.randn_like(m.weight) * 0.1)
                m.bias.add_(torch.randn_like(m.bias) * 0.1)
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def theirs(weights):
    """pytorch-fid's InceptionV3([3]) with the same weights (its download replaced by the file)."""
    from pytorch_fid import inception as pi
    state = torch.load(weights, weights_only=True)
    original = pi.load_state_dict_from_url
    pi.load_state_dict_from_url = lambda *a, **k: state
    try:
        return pi.InceptionV3([3]).eval()
    finally:
        pi.load_state_dict_from_url = original


def test_features_equal_pytorch_fids_network(weights, theirs):
    ours, which = load_fid_inception(weights)
    assert which.startswith("other (sha256 ")
    g = torch.Generator().manual_seed(1)
    for shape in ((3, 3, 64, 80), (2, 3, 299, 299), (1, 3, 310, 200)):
        x = torch.rand(shape, generator=g)
        a = ours.features(x)
        with torch.no_grad():
            b = theirs(x)[0].flatten(1)
        assert a.shape == (shape[0], 2048) and a.std() > 1       # signal, not vanishing features
        assert (a - b).abs().max() <= 1e-5


def test_frechet_distance_equals_pytorch_fids(tmp_path):
    from pytorch_fid.fid_score import calculate_frechet_distance
    rng = np.random.default_rng(0)
    for n, d in ((400, 2048), (3000, 64), (50, 8)):          # rank-deficient and full-rank covariances
        a = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.05
        b = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.05 + 0.1
        stats = [fidmod.feature_statistics(x) for x in (a, b)]
        ref = calculate_frechet_distance(*stats[0], *stats[1])
        assert frechet_distance(*stats[0], *stats[1]) == pytest.approx(ref, rel=1e-6)
    same = fidmod.feature_statistics(a)
    assert abs(frechet_distance(*same, *same)) < 1e-6 * np.trace(same[1])


def test_kid_equals_torch_fidelitys():
    tf = pytest.importorskip("torch_fidelity.metric_kid", reason="pip install torch-fidelity (the test extra)")
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(120, 64, generator=g), torch.randn(90, 64, generator=g) * 1.1 + 0.5
    mean, std = kernel_inception_distance(a, b, subsets=20, subset_size=50, seed=2020)
    # the same formula and subsets: equal to rounding on float64 features ...
    ref = tf.kid_features_to_metric(a.double(), b.double(), kid_subsets=20, kid_subset_size=50, rng_seed=2020,
                                    verbose=False)
    assert mean == pytest.approx(ref[tf.KEY_METRIC_KID_MEAN], rel=1e-9)
    assert std == pytest.approx(ref[tf.KEY_METRIC_KID_STD], rel=1e-9)
    # ... and to float32 rounding on the float32 features torch-fidelity's extractor gives
    ref32 = tf.kid_features_to_metric(a, b, kid_subsets=20, kid_subset_size=50, rng_seed=2020, verbose=False)
    assert mean == pytest.approx(ref32[tf.KEY_METRIC_KID_MEAN], rel=1e-5)
    assert mean > 0.01                                       # the sets differ: not a vanishing figure


def _numpy_kid(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased MMD^2 of the cubic polynomial kernel, one pair at a time."""
    d = x.shape[1]

    def k(a, b):
        return (a @ b / d + 1) ** 3
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    return xx + yy - 2 * sum(k(a, b) for a in x for b in y) / (m * n)


def test_kid_on_sets_smaller_than_the_subset_size_uses_the_smaller_sets_size():
    tf = pytest.importorskip("torch_fidelity.metric_kid", reason="pip install torch-fidelity (the test extra)")
    from cleanfid.fid import kernel_distance
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(50, 16, generator=g).double(), (torch.randn(37, 16, generator=g) * 1.2 + 0.3).double()
    mean, std = kernel_inception_distance(a, b, subsets=10, subset_size=1000, seed=2020)
    # torch-fidelity refuses subsets larger than a set; asked for the size used, it gives the same figures
    ref = tf.kid_features_to_metric(a, b, kid_subsets=10, kid_subset_size=37, rng_seed=2020, verbose=False)
    assert mean == pytest.approx(ref[tf.KEY_METRIC_KID_MEAN], rel=1e-9)
    assert std == pytest.approx(ref[tf.KEY_METRIC_KID_STD], rel=1e-9) and std > 0
    # two sets of 37: every subset is the whole set, so the figure is one number, whatever the RNG draws:
    # Clean-FID's (which shrinks its subsets the same way) and a direct sum over the pairs
    whole, spread = kernel_inception_distance(a[:37], b, subsets=3, subset_size=1000)
    assert spread == pytest.approx(0, abs=1e-12) and whole > 0.01
    assert whole == pytest.approx(kernel_distance(a[:37].numpy(), b.numpy(), num_subsets=3), rel=1e-9)
    assert whole == pytest.approx(_numpy_kid(a[:37].numpy(), b.numpy()), rel=1e-9)
    # the figures say so; a set of one image has neither FID nor KID, only the note
    scorer = InceptionScorer(net=None, weights="test", kid_subsets=10)
    fig = scorer.compare(b, a)
    assert (fig["kid"], fig["kid_std"]) == kernel_inception_distance(b, a, 10, 37) and fig["fid"] > 0
    assert fig["kid_subset_size"] == 37
    assert fig["note"] == "KID on subsets of 37 images (fewer than --kid-subset-size 1000)"
    assert fig["note"] in fidmod.format_inception(fig)
    assert "note" not in InceptionScorer(net=None, weights="test", kid_subset_size=37).compare(b, a)
    one = scorer.compare(b, a[:1])
    assert set(one) == {"n_fake", "n_real", "note"} and "at least 2 images per set, got 37 and 1" in one["note"]
    assert "no FID or KID" in fidmod.format_inception(one)
    with pytest.raises(DataError, match="KID needs at least 2 images per set, got 1 and 37"):
        kernel_inception_distance(a[:1], b)


def test_clean_resize_equals_clean_fids():
    resize = pytest.importorskip("cleanfid.resize", reason="pip install clean-fid (the test extra)")
    theirs = resize.make_resizer("PIL", False, "bicubic", (299, 299))
    img = np.random.default_rng(3).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    ref = theirs(img)                                                      # (299, 299, 3) in [0, 255]
    ours = resize_to_input(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255, "clean")[0]
    np.testing.assert_allclose(ours.permute(1, 2, 0).numpy() * 255, ref, atol=1e-3)
    with pytest.raises(UsageError, match="--inception-resize must be one of"):
        resize_to_input(torch.zeros(1, 3, 4, 4), "lanczos")


def _folder(path, specs, seed=0):
    """Images of several sizes and modes, as ``(name, (w, h), mode)``."""
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, (w, h), mode in specs:
        Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA").convert(mode).save(path / name)
    return path


MIXED = [("a.png", (40, 30), "RGB"), ("b.png", (50, 50), "L"), ("c.png", (32, 48), "RGBA"), ("d.jpg", (64, 40), "RGB"),
         ("e.png", (33, 33), "P")]


def test_folders_are_read_as_pytorch_fid_reads_them(weights, theirs, tmp_path):
    from pytorch_fid.fid_score import get_activations
    folder = _folder(tmp_path / "mixed", MIXED)
    files = sorted(folder.iterdir())
    ref = get_activations(files, theirs, batch_size=1, dims=2048, device="cpu", num_workers=0)
    scorer = InceptionScorer.load(weights, "cpu", batch_size=1, progress=False)
    ours = scorer.folder_features(folder)
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-5, rtol=0)
    # batched (pytorch-fid batches only images of one size; any mix here): the same features
    np.testing.assert_allclose(InceptionScorer.load(weights, "cpu", batch_size=4, progress=False)
                               .folder_features(folder).numpy(), ref, atol=1e-5, rtol=0)


def test_the_weights_file_is_checked(weights, tmp_path, monkeypatch):
    with pytest.raises(UsageError, match="no such file; expected the FID Inception weights, "
                                         "pt_inception-2015-12-05-6726825d.pth"):
        load_fid_inception(tmp_path / "missing.pth")
    monkeypatch.delenv(incmod.WEIGHTS_ENV, raising=False)
    with pytest.raises(UsageError, match="give --inception-weights PATH or set PYGANX_INCEPTION_WEIGHTS"):
        load_fid_inception(None)
    (tmp_path / "notes.pth").write_text("not weights")
    with pytest.raises(UsageError, match="notes.pth: not a state dict"):
        load_fid_inception(tmp_path / "notes.pth")
    from pyganx.nn import ResnetGenerator
    torch.save(ResnetGenerator(3, 3, 8, 2).state_dict(), tmp_path / "other.pth")
    with pytest.raises(UsageError, match="not Inception-v3 weights of the FID network"):
        load_fid_inception(tmp_path / "other.pth")
    state = torch.load(weights, weights_only=True)
    state["Mixed_7c.branch_pool.conv.weight"] = state["Mixed_7c.branch_pool.conv.weight"][:100]
    torch.save(state, tmp_path / "cut.pth")
    with pytest.raises(UsageError, match="not Inception-v3 weights"):
        load_fid_inception(tmp_path / "cut.pth")
    # the published file is recognised by its hash (here: this file's own, standing in for it)
    monkeypatch.setattr(incmod, "WEIGHTS_SHA256_PREFIX", incmod._sha256(weights)[:8])
    assert load_fid_inception(weights)[1] == "pt_inception-2015-12-05"
    monkeypatch.setenv(incmod.WEIGHTS_ENV, str(weights))
    assert load_fid_inception(None)[1] == "pt_inception-2015-12-05"


def test_eval_on_two_folders(weights, tmp_path, capsys):
    real = _folder(tmp_path / "real", [(f"{i}.png", (32 + i, 32), "RGB") for i in range(6)], seed=1)
    fake = _folder(tmp_path / "fake", [(f"{i}.png", (32, 40), "L") for i in range(5)], seed=2)
    base = ["eval", "--inception-weights", str(weights), "--kid-subsets", "5", "--kid-subset-size", "4"]
    assert cli_main([*base, "--real", str(real), "--fake", str(fake), "-o", str(tmp_path / "f.json")]) == 0
    out = capsys.readouterr().out
    r = json.loads((tmp_path / "f.json").read_text())
    assert f"FID {r['fid']:.3f}" in out and r["n_fake"] == 5 and r["n_real"] == 6 and r["fid"] > 0
    assert r["inception"]["weights"].startswith("other") and r["inception"]["kid_subset_size"] == 4
    assert cli_main([*base, "--real", str(real), "--fake", str(real), "-o", str(tmp_path / "same.json")]) == 0
    assert abs(json.loads((tmp_path / "same.json").read_text())["fid"]) < 1e-6 * r["fid"]
    capsys.readouterr()

    def one_line_error(args, *words):
        assert cli_main(args) == 1
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        for w in words:
            assert w in err, (w, err)
    # fewer images than --kid-subset-size (1000): KID on subsets of 5, and the figures say so
    assert cli_main(["eval", "--inception-weights", str(weights), "--real", str(real), "--fake", str(fake),
                     "--kid-subsets", "5", "-o", str(tmp_path / "small.json")]) == 0
    note = "KID on subsets of 5 images (fewer than --kid-subset-size 1000)"
    small = json.loads((tmp_path / "small.json").read_text())
    assert small["note"] == note and small["kid_subset_size"] == 5 and note in capsys.readouterr().out
    scorer = InceptionScorer.load(weights, "cpu", progress=False)
    ref = kernel_inception_distance(scorer.folder_features(fake), scorer.folder_features(real), 5, 5)
    assert (small["kid"], small["kid_std"]) == pytest.approx(ref, rel=1e-9) and small["fid"] == pytest.approx(r["fid"])
    _folder(tmp_path / "one", [("0.png", (32, 32), "RGB")])
    one_line_error([*base, "--real", str(real), "--fake", str(tmp_path / "one")],
                   "one: FID and KID need at least 2 images, it has 1")
    one_line_error([*base, "--real", str(real), "--fake", str(tmp_path / "nowhere")], "nowhere: not a folder")
    one_line_error(["eval", "--real", str(real), "--fake", str(fake), "--inception-weights", str(tmp_path / "w.pth")],
                   "w.pth: no such file", "pt_inception-2015-12-05-6726825d.pth")
    (fake / "broken.png").write_bytes(b"\x89PNG not really")
    one_line_error([*base, "--real", str(real), "--fake", str(fake)], "broken.png: cannot read image")
    assert cli_main([*base, "--real", str(real), "--fake", str(fake), "--skip-bad-images"]) == 0
    assert "skipping an unreadable image" in capsys.readouterr().err
    (fake / "broken.png").unlink()
    Image.new("1", (20000, 20000)).save(real / "bomb.png")     # more pixels than Pillow decodes
    one_line_error([*base, "--real", str(real), "--fake", str(fake)], "bomb.png: cannot read image (too many pixels")
    assert cli_main([*base, "--real", str(real), "--fake", str(fake), "--skip-bad-images"]) == 0
    assert "bomb.png" in capsys.readouterr().err
    one_line_error(["eval", "--real", str(real)], "give RUN_DIR, or --real DIR and --fake DIR")


def _digit_folders(root, n: int = 6):
    from pyganx.data import demo
    ds = demo.load("digits")
    for side, samples in (("trainA", ds.train_a), ("trainB", ds.train_b)):
        (root / side).mkdir(parents=True)
        for i, s in enumerate(samples[:n]):
            s.image.save(root / side / f"{i}.png")
    return root


def test_eval_run_adds_inception_figures_and_keeps_the_judges(weights, tmp_path, capsys):
    data = _digit_folders(tmp_path / "digits")
    run = tmp_path / "run"
    assert cli_main(["train", "cyclegan", "--data", str(data), "--image-size", "32", "--steps", "2", "--ngf", "8",
                     "--ndf", "8", "--n-blocks", "1", "--no-progress", "-o", str(run)]) == 0
    assert cli_main(["eval", str(run)]) == 0
    plain = json.loads((run / "eval.json").read_text())
    assert cli_main(["eval", str(run), "--inception-weights", str(weights), "--kid-subsets", "3",
                     "--kid-subset-size", "4"]) == 0
    out = capsys.readouterr().out
    r = json.loads((run / "eval.json").read_text())
    assert r["inception"]["weights"].startswith("other")
    fid = {k: t["inception"]["fid"] for k, t in r["translations"].items()}
    for key, row in r["translations"].items():
        inc = row.pop("inception")
        assert inc["n_fake"] == inc["n_real"] == 6 and inc["fid"] > 0
        assert f"FID {inc['fid']:.3f}" in out
        assert row == plain["translations"][key]             # the judges' figures mean what they meant
    # 6 test images, fewer than --kid-subset-size 1000: KID on subsets of 6, noted; FID as before
    assert cli_main(["eval", str(run), "--inception-weights", str(weights), "--kid-subsets", "3"]) == 0
    out = capsys.readouterr().out
    small = json.loads((run / "eval.json").read_text())
    for key, row in small["translations"].items():
        inc = row.pop("inception")
        assert inc["note"] == "KID on subsets of 6 images (fewer than --kid-subset-size 1000)" and inc["note"] in out
        assert inc["fid"] == pytest.approx(fid[key]) and inc["kid_subset_size"] == 6
        assert row == plain["translations"][key]


def test_eval_noise_run_with_inception(weights, tmp_path, monkeypatch, capsys):
    from pyganx.metrics import generative
    data = _digit_folders(tmp_path / "digits")
    run = tmp_path / "dc"
    assert cli_main(["train", "dcgan", "--data", str(data / "trainA"), "--image-size", "32", "--steps", "1",
                     "--ngf", "8", "--ndf", "8", "--z-dim", "8", "--batch-size", "4", "--no-progress",
                     "-o", str(run)]) == 0
    monkeypatch.setattr(generative, "N_GENERATED", 8)       # 1000 Inception runs are a benchmark, not a test
    # a noise run's judge trains on class sub-folders: give the run's data folder two
    (data / "trainA" / "x").mkdir()
    (data / "trainA" / "y").mkdir()
    for i, p in enumerate(sorted((data / "trainA").glob("*.png"))):
        p.rename(data / "trainA" / ("x" if i % 2 else "y") / p.name)
    assert cli_main(["eval", str(run), "--inception-weights", str(weights), "--kid-subsets", "3",
                     "--kid-subset-size", "4"]) == 0
    g = json.loads((run / "eval.json").read_text())["generators"]
    inc = next(iter(g.values()))["inception"]
    assert inc["n_fake"] == 8 and inc["n_real"] == 6 and inc["fid"] > 0
    assert f"FID {inc['fid']:.3f}" in capsys.readouterr().out


def test_eval_multi_domain_run_with_inception(weights, tmp_path, capsys):
    data = _digit_folders(tmp_path / "digits")
    (data / "trainA").rename(data / "hand")                # two domains, one sub-folder each
    (data / "trainB").rename(data / "type")
    run = tmp_path / "sg"
    assert cli_main(["train", "stargan", "--data", str(data), "--image-size", "32", "--steps", "1", "--g-conv-dim", "8",
                     "--d-conv-dim", "8", "--g-blocks", "1", "--batch-size", "2", "--no-progress", "-o", str(run)]) == 0
    assert cli_main(["eval", str(run), "--inception-weights", str(weights), "--kid-subsets", "3",
                     "--kid-subset-size", "4"]) == 0
    g = next(iter(json.loads((run / "eval.json").read_text())["generators"].values()))
    assert set(g["into"]) == {"hand", "type"}
    for row in g["into"].values():
        assert row["inception"]["n_fake"] == row["inception"]["n_real"] == 6 and row["inception"]["fid"] > 0
    assert g["mean"]["fid"] == pytest.approx(sum(r["inception"]["fid"] for r in g["into"].values()) / 2)
    assert "mean over domains" in capsys.readouterr().out
