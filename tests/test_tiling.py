"""Tiled translation with whole-image instance-norm statistics (pyganx_runtime/tiling.py):
the two graph rewrites compose to the untiled model exactly, and tiles of a large image
match its untiled translation far better than tiles that normalise on their own."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the ONNX extra (pip install 'pyganx[cpu]') is not installed")
onnx = pytest.importorskip("onnx")

from pyganx.cli import main as cli_main  # noqa: E402
from pyganx.export.convert import ort_session, to_onnx  # noqa: E402
from pyganx.export.wrappers import ImageGenerator  # noqa: E402
from pyganx.nn import ResnetGenerator, init_weights  # noqa: E402
from pyganx_runtime import Translator  # noqa: E402
from pyganx_runtime.tiling import Tiler, stats_model, tile_starts, tiled_model  # noqa: E402

#: Measured on the 256 px photo below, 128 px tiles with 32 px overlap, outputs in [-1, 1]:
#: |tiled - untiled| 0.0105 on average and 0.33 at worst with exact statistics (0.0057 and
#: 0.15 with 64 px overlap), 0.070 / 0.68 with the fast (downscaled) ones, and 0.135 /
#: 1.71 for tiles that normalise on their own. The bounds leave room for other CPUs.
MEAN_BOUND, MAX_BOUND = 0.02, 0.5


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = init_weights(ResnetGenerator(3, 3, 8, 2)).eval()
    with torch.no_grad():                   # norms' affine parameters matter too
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    proto = to_onnx(ImageGenerator(net).eval(), torch.rand(2, 3, 32, 32) * 2 - 1, size_multiple=4)
    proto.metadata_props.add(key="pyganx.size_multiple", value="4")   # what the Translator pads to
    return net, proto


def _photo(size: int) -> np.ndarray:
    """A real photograph (scikit-learn's china.jpg), cropped, in [-1, 1], NCHW."""
    datasets = pytest.importorskip("sklearn.datasets")
    img = datasets.load_sample_images().images[0][:size, 100:100 + size].astype(np.float32)
    return (img.transpose(2, 0, 1)[None] / 127.5 - 1).astype(np.float32)


def test_rewritten_graphs_compose_to_the_untiled_model(model):
    net, proto = model
    x = _photo(64)
    plain = ort_session(proto.SerializeToString()).run(None, {"image": x})[0]
    stats = ort_session(stats_model(proto).SerializeToString())
    out = stats.run(None, {"image": x})
    names = [o.name for o in stats.get_outputs()]
    feeds = {k: v for k, v in zip(names, out) if k.startswith("norm")}
    assert len(feeds) == 2 * (3 + 2 * 2 + 2)              # mean and variance of every norm (2 blocks)
    np.testing.assert_allclose(out[0], plain, atol=1e-6)  # the stats copy still translates
    # the first norm normalises the first conv's output: its statistics, computed here
    with torch.no_grad():
        first = net.model[1](net.model[0](torch.from_numpy(x)))
    np.testing.assert_allclose(feeds["norm0_mean"][0, :, 0, 0], first.mean((0, 2, 3)).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(feeds["norm0_var"][0, :, 0, 0], first.var((0, 2, 3), unbiased=False).numpy(),
                               rtol=1e-4, atol=1e-6)
    with_stats = ort_session(tiled_model(proto).SerializeToString()).run(None, {"image": x, **feeds})[0]
    np.testing.assert_allclose(with_stats, plain, atol=1e-5)


def test_tile_starts_cover_the_image_on_multiples():
    for size, tile, overlap in [(256, 128, 32), (300, 128, 32), (100, 128, 32), (260, 64, 16)]:
        starts = tile_starts(size, tile, overlap, 4)
        covered = np.zeros(size, bool)
        for s in starts:
            covered[s:s + tile] = True
        assert covered.all() and starts[0] == 0
        assert all(s % 4 == 0 for s in starts[:-1])
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


def test_tiles_with_whole_image_statistics_match_the_untiled_translation(model, tmp_path):
    net, proto = model
    x = _photo(256)
    untiled = ort_session(proto.SerializeToString()).run(None, {"image": x})[0]
    tiler = Tiler(proto, 128, 32, 4, ort_session)
    tiled = tiler.run(x)
    err = np.abs(tiled - untiled)
    assert err.mean() < MEAN_BOUND and err.max() < MAX_BOUND, (err.mean(), err.max())
    # every norm's gathered statistics are the untiled model's (up to tile-edge context)
    exact = dict(zip([o.name for o in tiler.stats.get_outputs()], tiler.stats.run(None, {"image": x})))
    gathered = tiler.exact_statistics(x, {})
    for k, v in gathered.items():
        np.testing.assert_allclose(v, exact[k], rtol=0.05, atol=1e-3, err_msg=k)
    fast = np.abs(Tiler(proto, 128, 32, 4, ort_session, stats="fast").run(x) - untiled).mean()
    # what tiling is for: tiles that normalise on their own are far worse
    sess = ort_session(proto.SerializeToString())
    naive = np.zeros_like(untiled)
    for y in (0, 128):
        for x0 in (0, 128):
            naive[:, :, y:y + 128, x0:x0 + 128] = sess.run(None, {"image": x[:, :, y:y + 128, x0:x0 + 128]})[0]
    assert np.abs(naive - untiled).mean() > 5 * err.mean()
    assert err.mean() < fast < np.abs(naive - untiled).mean()
    # through the Translator and the CLI: the same figures
    path = tmp_path / "g.onnx"
    path.write_bytes(proto.SerializeToString())
    tr = Translator(path, device="cpu", tile=128, overlap=32)
    np.testing.assert_allclose(tr(x), tiled, atol=1e-5)
    small = x[:, :, :96, :96]                               # fits one tile: no tiling
    np.testing.assert_allclose(tr(small), sess.run(None, {"image": small})[0], atol=1e-5)
    with pytest.raises(ValueError, match="multiple"):
        Translator(path, device="cpu", tile=130)


def test_translate_cli_tiles(model, tmp_path):
    from PIL import Image
    _, proto = model
    path = tmp_path / "g.onnx"
    path.write_bytes(proto.SerializeToString())
    img = ((_photo(200)[0].transpose(1, 2, 0) + 1) * 127.5).round().astype(np.uint8)
    (tmp_path / "in").mkdir()
    Image.fromarray(img).save(tmp_path / "in" / "big.png")
    args = ["translate", str(path), str(tmp_path / "in"), "--no-progress"]
    assert cli_main([*args, "-o", str(tmp_path / "tiled"), "--tile", "96", "--overlap", "32"]) == 0
    assert cli_main([*args, "-o", str(tmp_path / "whole")]) == 0
    a = np.asarray(Image.open(tmp_path / "tiled" / "big.png"), dtype=np.float32)
    b = np.asarray(Image.open(tmp_path / "whole" / "big.png"), dtype=np.float32)
    assert a.shape == b.shape == img.shape
    assert np.abs(a - b).mean() / 127.5 < 2 * MEAN_BOUND
