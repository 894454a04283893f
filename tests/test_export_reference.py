"""The export's self-check against the exact result (the network in float64), its bound
relative to float32's own error, and the ``--from`` hint for foreign checkpoints
(docs/export.md, "The self-check")."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the ONNX extra (pip install 'pyganx[cpu]') is not installed")
onnx = pytest.importorskip("onnx")

from pyganx.cli import main as cli_main  # noqa: E402
from pyganx.errors import ExportError  # noqa: E402
from pyganx.export import exporter  # noqa: E402
from pyganx.export.exporter import export_generator  # noqa: E402
from pyganx.export.selfcheck import FP32_MULTIPLE, plain_copy, reference  # noqa: E402
from pyganx.export.wrappers import ImageGenerator  # noqa: E402
from pyganx.nn import ResidualBlock  # noqa: E402


def _junyanz(path, ngf: int = 64, blocks: int = 9, seed: int = 0):
    """A junyanz/pytorch-CycleGAN-and-pix2pix ResNet generator's state dict, every weight
    and bias drawn from N(0, 0.05), saved to ``path``."""
    from foreign.junyanz_cyclegan import ResnetGenerator as Theirs
    torch.manual_seed(seed)
    theirs = Theirs(3, 3, ngf, blocks)
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(0, 0.05)
    torch.save(theirs.state_dict(), path)
    return path


def test_the_reference_is_float64_without_winograd_and_float32_error_is_the_plain_one():
    # a block on the Winograd gate (float32, 128 channels, 48 x 48 planes, docs/ops.md)
    torch.manual_seed(0)
    block = ResidualBlock(128).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.05)
    model = ImageGenerator(block).eval()
    x = torch.rand(1, 128, 48, 48) * 2 - 1
    ref = reference(model, [(x,)])
    compiled = copy.deepcopy(model).double()
    compiled.net.fused = True
    with torch.no_grad():
        exact = compiled(x.double()).numpy()           # the compiled op's float64 path
        eager = plain_copy(model)(x).double().numpy()
    assert ref.exact and np.abs(ref.outputs[0] - exact).max() < 1e-10
    assert ref.float32_error == pytest.approx(np.abs(eager - exact).max(), rel=1e-6)
    assert 0 < ref.float32_error < 1e-5
    assert ref.bound(FP32_MULTIPLE) == pytest.approx(FP32_MULTIPLE * ref.float32_error + 1e-6 * ref.scale)


def test_junyanz_9_block_generator_exports_at_256_px_and_a_corrupted_graph_is_refused(tmp_path, monkeypatch):
    # The generator pyganx runs computes its 256-channel blocks with NNPACK's Winograd
    # convolutions (1.6e-4 off float64 on this checkpoint at 256 px); onnxruntime is
    # 1.3e-5 off, float32 PyTorch 1.2e-5. A check against the fused generator with a
    # fixed 1e-4 refused this model (1.6e-4 apart); against float64 it is accepted.
    path = _junyanz(tmp_path / "latest_net_G_A.pth")
    res = export_generator(path, tmp_path / "g.onnx", from_format="junyanz-cyclegan")
    assert res.path.is_file() and res.metadata["pyganx.image_size"] == "256"
    assert res.reference == "float64" and res.checked_shapes[0] == (1, 3, 256, 256)
    assert 0 < res.float32_error < 5e-5
    assert res.max_abs_error <= res.bound == pytest.approx(FP32_MULTIPLE * res.float32_error + 1e-6, rel=1e-2)

    # the check can fail: the output layer's bias moved by 1e-3 in the graph
    real = exporter.to_onnx

    def corrupted(*args, **kwargs):
        proto = real(*args, **kwargs)
        last = [n for n in proto.graph.node if n.op_type == "Conv"][-1]
        for t in proto.graph.initializer:
            if t.name == last.input[2]:
                t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t) + 1e-3, t.name))
        return proto
    monkeypatch.setattr(exporter, "to_onnx", corrupted)
    out = tmp_path / "bad.onnx"
    with pytest.raises(ExportError) as e:
        export_generator(path, out, from_format="junyanz-cyclegan", image_size=32)
    msg = str(e.value)
    assert "off the exact result (the network in float64)" in msg and "PyTorch float32 is off by" in msg
    assert f"more than {FP32_MULTIPLE} x that" in msg and "not written" in msg and not out.exists()


def test_a_foreign_checkpoint_without_from_gets_the_format_to_name(tmp_path, capsys):
    from foreign.yunjey_stargan import Generator as Star
    cases = [(_junyanz(tmp_path / "latest_net_G_A.pth", ngf=8, blocks=2),
              "junyanz/pytorch-CycleGAN-and-pix2pix generator: add --from junyanz-cyclegan"),
             (tmp_path / "200000-G.ckpt", "yunjey/stargan generator: add --from yunjey-stargan")]
    torch.save(Star(conv_dim=8, c_dim=3, repeat_num=2).state_dict(), cases[1][0])
    torch.save(ResidualBlock(4).state_dict(), tmp_path / "other.pth")     # neither layout
    (tmp_path / "junk.pth").write_bytes(b"junk")
    capsys.readouterr()
    for path, hint in cases:
        assert cli_main(["export", str(path), "-o", str(tmp_path / "m.onnx")]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "not a pyganx checkpoint" in err and hint in err
    for name, old in (("other.pth", "not a pyganx checkpoint (it names no plugin)"),
                      ("junk.pth", "cannot read checkpoint")):
        assert cli_main(["export", str(tmp_path / name), "-o", str(tmp_path / "m.onnx")]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and old in err and "--from" not in err
    assert not (tmp_path / "m.onnx").exists()
    # inside a run directory, whose config.json names a plugin, the file still gets the hint
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"plugin": "cyclegan", "config": {},
                                                 "data_info": {"channels": 3, "image_size": 32}}))
    inside = _junyanz(run / "checkpoints" / "latest_net_G_A.pth", ngf=8, blocks=2)
    assert cli_main(["export", str(inside), "-o", str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds no weights of network 'G_AB'" in err
    assert "add --from junyanz-cyclegan" in err


def test_a_network_without_a_float64_run_falls_back_to_float32_with_the_fixed_bound():
    class Float32Only(torch.nn.Module):
        def forward(self, image):
            if image.dtype != torch.float32:
                raise RuntimeError("no double kernel")
            return torch.tanh(image * 0.5)
    model = ImageGenerator(Float32Only()).eval()
    x = torch.rand(1, 1, 8, 8) * 2 - 1
    ref = reference(model, [(x,)])
    assert not ref.exact and ref.float32_error is None
    np.testing.assert_array_equal(ref.outputs[0], torch.tanh(x * 0.5).double().numpy())
    with pytest.raises(ValueError, match="without float32's error"):
        ref.bound(FP32_MULTIPLE)


def test_check_export_bounds_each_kind_of_graph_and_refuses_a_wrong_one():
    from pyganx.export.convert import to_onnx
    from pyganx.export.selfcheck import check_export
    from pyganx.export.wrappers import WithPreprocessing
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3, padding=1), torch.nn.Tanh()).eval()
    model = ImageGenerator(net).eval()
    checks = [(torch.rand(1, 3, 8, 8) * 2 - 1,), (torch.rand(2, 3, 12, 8) * 2 - 1,)]
    proto = to_onnx(model, checks[1][0], size_multiple=1)
    got = check_export(model, proto.SerializeToString(), checks)
    ref = reference(model, checks)
    assert got.reference.exact and got.bound == pytest.approx(ref.bound(FP32_MULTIPLE))
    assert 0 <= got.error <= got.bound
    wide = check_export(model, proto.SerializeToString(), checks, winograd=True)
    assert wide.bound == pytest.approx(ref.bound(32)) and wide.error == got.error
    half = check_export(model, proto.SerializeToString(), checks, fp16=True)
    assert half.bound >= 1e-3 and half.reference.float32_error is None
    pre = WithPreprocessing(net, 1).eval()
    pixels = [(torch.randint(0, 256, (1, 8, 8, 3), dtype=torch.uint8),)]
    pre_proto = to_onnx(pre, pixels[0][0], size_multiple=1)
    assert check_export(pre, pre_proto.SerializeToString(), pixels, with_preprocessing=True).bound == 1
    # a bias moved by 1e-3 in the graph: beyond every float32 bound, one line naming both errors
    bias = next(t for t in proto.graph.initializer if len(t.dims) == 1)
    bias.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(bias) + 1e-3, bias.name))
    with pytest.raises(ExportError, match=r"while PyTorch float32 is off by .* more than 8 x that .* not written"):
        check_export(model, proto.SerializeToString(), checks)
