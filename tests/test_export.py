"""ONNX export and the onnxruntime translator: standard ops only, metadata, self-check,
dynamic shapes, padding to the size multiple, the translate CLI. The reference is always
the PyTorch module the model was exported from."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime", reason="the ONNX extra (pip install 'pyganx[cpu]') is not installed")
onnx = pytest.importorskip("onnx")

import pyganx  # noqa: E402
from pyganx.cli import main as cli_main  # noqa: E402
from pyganx.data import load_image, to_pil, to_tensor  # noqa: E402
from pyganx.errors import CheckpointError  # noqa: E402
from pyganx.export import custom_domains, read_metadata  # noqa: E402
from pyganx.export.convert import ort_session, to_onnx  # noqa: E402
from pyganx.export.selfcheck import FP32_TOLERANCE  # noqa: E402
from pyganx.nn import InstanceNormReLU, ResidualBlock  # noqa: E402
from pyganx_runtime import Translator  # noqa: E402

SMALL = ["--ngf", "8", "--ndf", "8", "--n-blocks", "2", "--no-progress"]
KEYS = ("pyganx.version", "pyganx.plugin", "pyganx.generator", "pyganx.domains", "pyganx.image_size",
        "pyganx.normalization", "pyganx.io_layout", "pyganx.size_multiple")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "digits"
    assert cli_main(["train", "cyclegan", "--demo", "digits", "--steps", "3", "-o", str(out), *SMALL]) == 0
    return out


@pytest.fixture(scope="module")
def model(run, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "g_ab.onnx"
    assert cli_main(["export", str(run), "-o", str(path)]) == 0
    return path


def _ort(proto_or_path, x: torch.Tensor) -> np.ndarray:
    blob = proto_or_path.SerializeToString() if hasattr(proto_or_path, "SerializeToString") \
        else open(proto_or_path, "rb").read()
    return ort_session(blob).run(None, {"image": x.numpy()})[0]


class _Blocks(nn.Module):
    """Every configuration of the fused ops the translation table must cover."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.n1 = InstanceNormReLU(c, affine=False)
        self.r1 = ResidualBlock(c, padding="reflect", affine=False, bias=True)
        self.n2 = InstanceNormReLU(c, affine=True)
        self.r2 = ResidualBlock(c, padding="zero", affine=True, bias=False)
        with torch.no_grad():
            for p in self.parameters():       # affine parameters away from their 1/0 start
                p.add_(torch.randn_like(p) * 0.1)

    def forward(self, image):
        return self.r2(self.n2(self.r1(self.n1(image))))


def test_every_fused_op_becomes_standard_onnx_and_matches_pytorch():
    torch.manual_seed(0)
    m = _Blocks(4).eval()
    proto = to_onnx(m, torch.randn(2, 4, 8, 8), size_multiple=1)
    onnx.checker.check_model(proto, full_check=True)
    assert custom_domains(proto) == []
    ops = {n.op_type for n in proto.graph.node}
    assert {"InstanceNormalization", "Conv", "Pad", "Relu", "Add"} <= ops
    for shape in [(1, 4, 8, 8), (3, 4, 5, 11)]:              # dynamic batch and odd sizes
        x = torch.randn(shape)
        with torch.no_grad():
            ref = m(x).numpy()
        np.testing.assert_allclose(_ort(proto, x), ref, atol=FP32_TOLERANCE, rtol=0)


def test_export_writes_a_checked_model_with_the_contract_metadata(run, model):
    m = onnx.load(str(model))
    onnx.checker.check_model(m, full_check=True)
    assert custom_domains(m) == [] and m.opset_import[0].version >= 18
    meta = read_metadata(model)
    assert all(k in meta for k in KEYS)
    assert (meta["pyganx.plugin"], meta["pyganx.generator"], json.loads(meta["pyganx.domains"])) == \
        ("cyclegan", "G_AB", ["A", "B"])
    assert meta["pyganx.image_size"] == "32" and meta["pyganx.size_multiple"] == "4"
    g = pyganx.load_generator(run)
    for shape in [(1, 1, 32, 32), (4, 1, 32, 32), (2, 1, 48, 24)]:   # two batch sizes, two sizes
        x = torch.rand(shape) * 2 - 1
        with torch.no_grad():
            ref = g(x).numpy()
        np.testing.assert_allclose(_ort(model, x), ref, atol=FP32_TOLERANCE, rtol=0)
    dims = [d.dim_param or d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1] == 1 and all(isinstance(d, str) for d in (dims[0], dims[2], dims[3]))


def test_other_generator_and_static_export(run, tmp_path, capsys):
    path = tmp_path / "g_ba.onnx"
    assert cli_main(["export", str(run), "-o", str(path), "--generator", "G_BA", "--static"]) == 0
    assert read_metadata(path)["pyganx.generator"] == "G_BA"
    m = onnx.load(str(path))
    assert [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim] == [1, 1, 32, 32]
    g = pyganx.load_generator(run, "G_BA")
    x = torch.rand(1, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        np.testing.assert_allclose(_ort(path, x), g(x).numpy(), atol=FP32_TOLERANCE, rtol=0)
    with pytest.raises(ValueError, match="exported with --static"):
        Translator(path, device="cpu")(np.zeros((1, 1, 36, 32), np.float32))
    capsys.readouterr()
    assert cli_main(["export", str(tmp_path / "nope"), "-o", str(tmp_path / "x.onnx")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such run directory" in err and not (tmp_path / "x.onnx").exists()


def test_export_writes_the_triton_repository_the_runtime_writes(run, tmp_path, capsys):
    from pyganx_runtime.triton import write_repository

    path, repo = tmp_path / "g.onnx", tmp_path / "repo"
    assert cli_main(["export", str(run), "-o", str(path), "--triton-repository", str(repo), "--triton-name", "g-ab",
                     "--triton-max-batch-size", "4", "--triton-instance-group", "cpu"]) == 0
    assert f"tritonserver --model-repository={repo}" in capsys.readouterr().out
    ref = write_repository(path, tmp_path / "ref", "g-ab", max_batch_size=4, instance_kind="cpu")
    files = sorted(p.relative_to(ref).as_posix() for p in ref.rglob("*") if p.is_file())
    assert files == ["1/model.onnx", "config.pbtxt"]
    assert sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file()) == \
        [f"g-ab/{f}" for f in files]
    for f in files:
        assert (repo / "g-ab" / f).read_bytes() == (ref / f).read_bytes(), f
    assert (repo / "g-ab" / "1" / "model.onnx").read_bytes() == path.read_bytes()


def test_translator_pads_to_the_size_multiple_and_crops_back(run, model):
    tr = Translator(model, device="cpu")
    assert tr.providers == ["CPUExecutionProvider"] and tr.multiple == 4
    g = pyganx.load_generator(run)
    x = torch.rand(2, 1, 30, 33) * 2 - 1
    # the reference: PyTorch on the same reflect-padded input, cropped back
    padded = torch.nn.functional.pad(x, (0, 3, 0, 2), mode="reflect")
    with torch.no_grad():
        ref = g(padded)[:, :, :30, :33].numpy()
    out = tr(x.numpy())
    assert out.shape == (2, 1, 30, 33)
    np.testing.assert_allclose(out, ref, atol=FP32_TOLERANCE, rtol=0)


def test_io_binding_and_torch_tensors_in_and_out(run, model, tmp_path):
    # IO binding is what the CUDA provider uses; on CPU the same calls run against host
    # memory, so the bound paths are checked here against session.run.
    plain = Translator(model, device="cpu")
    bound = Translator(model, device="cpu", io_binding=True)
    assert not plain.io_binding and bound.io_binding and bound.device_type == "cpu"
    x = torch.rand(3, 1, 32, 28) * 2 - 1
    ref = plain(x.numpy())
    np.testing.assert_allclose(bound(x.numpy()), ref, atol=1e-6, rtol=0)
    y = plain.run_tensor(x)                      # onnxruntime writes into a torch tensor
    assert isinstance(y, torch.Tensor) and y.shape == x.shape and y.dtype == torch.float32
    np.testing.assert_allclose(y.numpy(), ref, atol=1e-6, rtol=0)
    np.testing.assert_allclose(plain.run_tensor(x[:, :, :, :16].clone())[1].numpy(),
                               plain(x[1:2, :, :, :16].numpy())[0], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="multiples of 4"):
        plain.run_tensor(x[:, :, :30, :30])
    with pytest.raises(ValueError, match="float32"):
        plain.run_tensor(x.double())
    pre_path = tmp_path / "pre.onnx"
    assert cli_main(["export", str(run), "-o", str(pre_path), "--with-preprocessing"]) == 0
    pre = Translator(pre_path, device="cpu")
    pixels = torch.randint(0, 256, (2, 20, 24, 1), dtype=torch.uint8)
    out = pre.run_tensor(pixels)
    assert out.dtype == torch.uint8 and out.shape == pixels.shape
    np.testing.assert_array_equal(out.numpy(), pre(pixels.numpy()))


def test_translate_cli_keeps_names_and_reports_corrupt_files(run, model, tmp_path, capsys):
    from PIL import Image
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.png", "sub/b.png", "c.png"):
        Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8), "L").save(src / name)
    Image.fromarray(rng.integers(0, 256, (40, 28), dtype=np.uint8), "L").save(src / "d.png")
    (src / "broken.png").write_bytes(b"not a png")
    rc = cli_main(["translate", str(model), str(src), "-o", str(tmp_path / "out"), "--batch-size", "2",
                   "--no-progress", "--device", "cpu"])
    cap = capsys.readouterr()
    assert rc == 1 and "broken.png" in cap.err and "translated 4 image(s)" in cap.out
    outs = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*.png"))
    assert outs == ["a.png", "c.png", "d.png", "sub/b.png"]
    g = pyganx.load_generator(run)
    for name in ("a.png", "d.png"):
        x = to_tensor(load_image(src / name, 1))[None]
        h, w = x.shape[-2:]
        xp = torch.nn.functional.pad(x, (0, (-w) % 4, 0, (-h) % 4), mode="reflect")
        with torch.no_grad():
            ref = np.asarray(to_pil(g(xp)[0, :, :h, :w]), dtype=np.int16)
        got = np.asarray(Image.open(tmp_path / "out" / name), dtype=np.int16)
        assert got.shape == ref.shape and np.abs(got - ref).max() <= 1     # one 8-bit rounding step


def test_with_preprocessing_equals_the_python_path(run, model, tmp_path):
    path = tmp_path / "pre.onnx"
    assert cli_main(["export", str(run), "-o", str(path), "--with-preprocessing"]) == 0
    meta = read_metadata(path)
    assert meta["pyganx.io_layout"] == "NHWC uint8" and meta["pyganx.size_multiple"] == "1"
    m = onnx.load(str(path))
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert m.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    pre, plain = Translator(path, device="cpu"), Translator(model, device="cpu")
    assert pre.preprocessed and not plain.preprocessed
    rng = np.random.default_rng(1)
    for shape in [(1, 32, 32, 1), (3, 30, 37, 1)]:     # any H and W: padding is in the graph
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        out = pre(pixels)
        assert out.dtype == np.uint8 and out.shape == shape
        # the Python path: scale, the float model (which pads and crops), map back
        ref = plain(pixels.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1)
        ref = np.clip(np.rint((ref + 1) * 127.5), 0, 255).transpose(0, 2, 3, 1)
        assert np.abs(out.astype(np.int16) - ref.astype(np.int16)).max() <= 1


@pytest.mark.parametrize("blocks,name", [(6, "latest_net_G_A.pth"), (9, "200_net_G_B.pth")])
def test_junyanz_cyclegan_weights_load_and_export(tmp_path, blocks, name):
    from foreign.junyanz_cyclegan import ResnetGenerator as Theirs
    torch.manual_seed(blocks)
    theirs = Theirs(3, 3, 8, blocks).eval()
    with torch.no_grad():                   # biases away from their init, so a swap would show
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path / name
    torch.save(theirs.state_dict(), path)
    x = torch.rand(2, 3, 32, 40) * 2 - 1
    with torch.no_grad():
        ref = theirs(x).numpy()
        ours = pyganx.load_generator(path, from_format="junyanz-cyclegan")(x).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)
    out = tmp_path / "m.onnx"
    assert cli_main(["export", str(path), "--from", "junyanz-cyclegan", "--image-size", "32",
                     "-o", str(out)]) == 0
    meta = read_metadata(out)
    assert meta["pyganx.generator"] == ("G_BA" if "G_B" in name else "G_AB")
    np.testing.assert_allclose(Translator(out, device="cpu")(x.numpy()), ref, atol=FP32_TOLERANCE, rtol=0)


def test_yunjey_stargan_weights_load_and_export_with_a_domain_input(tmp_path, capsys):
    from foreign.yunjey_stargan import Generator as Theirs

    from pyganx.nn import one_hot
    torch.manual_seed(3)
    theirs = Theirs(conv_dim=8, c_dim=3, repeat_num=2)
    with torch.no_grad():                   # affine norms and running statistics away from their init
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        for b in theirs.buffers():
            if b.is_floating_point():
                b.add_(torch.rand_like(b))
    path = tmp_path / "200000-G.ckpt"
    torch.save(theirs.state_dict(), path)
    x = torch.rand(2, 3, 32, 24) * 2 - 1
    c = one_hot(torch.tensor([2, 0]), 3)
    with torch.no_grad():                   # StarGAN's test code runs G in training mode
        ref = theirs.train()(x, c).numpy()
        ours = pyganx.load_generator(path, from_format="yunjey-stargan")(x, c).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)
    out = tmp_path / "star.onnx"
    assert cli_main(["export", str(path), "--from", "yunjey-stargan", "--image-size", "32",
                     "--domains", "happy,sad,angry", "-o", str(out)]) == 0
    tr = Translator(out, device="cpu")
    assert tr.domains == ["happy", "sad", "angry"] and read_metadata(out)["pyganx.plugin"] == "stargan"
    np.testing.assert_allclose(tr(x[:1].numpy(), "angry"), ref[:1], atol=FP32_TOLERANCE, rtol=0)
    np.testing.assert_allclose(tr(x[1:].numpy(), "happy"), ref[1:], atol=FP32_TOLERANCE, rtol=0)
    np.testing.assert_allclose(tr.run_tensor(x, ["angry", "happy"]).numpy(), ref, atol=FP32_TOLERANCE, rtol=0)
    capsys.readouterr()
    assert cli_main(["export", str(path), "--from", "yunjey-stargan", "--domains", "a,b",
                     "-o", str(tmp_path / "x.onnx")]) == 1
    assert "3 labels, 2 names" in capsys.readouterr().err
    torch.save(ResidualBlock(4).state_dict(), tmp_path / "D.ckpt")
    assert cli_main(["export", str(tmp_path / "D.ckpt"), "--from", "yunjey-stargan", "-o", str(out)]) == 1
    assert "unexpected key" in capsys.readouterr().err


def test_foreign_layouts_that_do_not_fit_are_one_line_errors(tmp_path, capsys):
    from foreign.junyanz_cyclegan import ResnetGenerator as Theirs
    st = Theirs(3, 3, 8, 2).state_dict()
    st["model.99.extra.weight"] = torch.zeros(1)
    torch.save(st, tmp_path / "odd.pth")
    assert cli_main(["export", str(tmp_path / "odd.pth"), "--from", "junyanz-cyclegan", "-o",
                     str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err
    assert "unexpected key 'model.99.extra.weight'" in err and err.count("\n") == 1
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="cannot read a state dict"):
        pyganx.load_generator(tmp_path / "junk.pth", from_format="junyanz-cyclegan")


def test_int8_quantises_the_convolutions_and_reports_its_cost(run, model, tmp_path, capsys):
    from pyganx.data import demo
    from pyganx.export.quantize import psnr
    calib = tmp_path / "calib"
    calib.mkdir()
    ds = demo.load("digits")
    for i, s in enumerate(ds.train_a[:24]):
        s.image.save(calib / f"{i}.png")
    path = tmp_path / "int8.onnx"
    assert cli_main(["export", str(run), "-o", str(path), "--int8", "--calibrate", str(calib)]) == 0
    out = capsys.readouterr().out
    assert "int8 against float32 on 24 calibration images: PSNR" in out
    m = onnx.load(str(path))
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("QuantizeLinear") > 0 and custom_domains(m) == []
    int8_weights = [t for t in m.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    # every Conv is int8 but the 8-to-1 output layer; ConvTranspose (no int8 CPU kernel) is float
    assert len(int8_weights) == ops.count("Conv") - 1 and ops.count("ConvTranspose") == 2
    float_weights = {t.name for t in m.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    assert all(n.input[1] in float_weights for n in m.graph.node if n.op_type == "ConvTranspose")
    assert read_metadata(path)["pyganx.precision"].startswith("int8")
    # held-out inputs (test images, not the calibration ones): close to the float model
    x = np.stack([to_tensor(s.image).numpy() for s in ds.test_a[:16]])
    assert psnr(Translator(path, device="cpu")(x), Translator(model, device="cpu")(x)) > 20
    assert cli_main(["export", str(run), "-o", str(tmp_path / "x.onnx"), "--int8"]) == 1
    assert "--int8 needs --calibrate DIR" in capsys.readouterr().err


def test_eval_judges_an_exported_model_like_its_generator(run, model, capsys):
    from pyganx.metrics.evaluate import evaluate_run
    torch_fig = evaluate_run(run)["translations"]["G_AB"]
    onnx_fig = evaluate_run(run, model=model)
    assert set(onnx_fig["translations"]) == {"G_AB"} and (run / "eval-g_ab.json").is_file()
    got = onnx_fig["translations"]["G_AB"]
    # the same function up to float rounding: at most one image may land across a boundary
    for k in ("target_domain", "digit_kept"):
        assert abs(got[k] - torch_fig[k]) <= 1 / got["n"] + 1e-12
    assert got["kid"] == pytest.approx(torch_fig["kid"], rel=1e-3, abs=1e-6)


def test_fp16_export_keeps_instance_norm_in_float32(run, tmp_path):
    from pyganx.export.selfcheck import half_error
    path = tmp_path / "h.onnx"
    assert cli_main(["export", str(run), "-o", str(path), "--fp16"]) == 0
    m = onnx.load(str(path))
    assert read_metadata(path)["pyganx.precision"].startswith("float16")
    weights = [t for t in m.graph.initializer if len(t.dims) == 4]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    producer = {o: n for n in m.graph.node for o in n.output}
    norms = [n for n in m.graph.node if n.op_type == "InstanceNormalization"]
    for n in norms:                              # every norm reads a float32 cast of its input
        src = producer[n.input[0]]
        assert src.op_type == "Cast" and src.attribute[0].i == onnx.TensorProto.FLOAT
    g = pyganx.load_generator(run)
    shapes = [(2, 1, 32, 32), (1, 1, 36, 28)]
    bound = max(2 * half_error(g, shapes, seed=5), 1e-3)
    tr = Translator(path, device="cpu")
    gen = torch.Generator().manual_seed(5)
    for shape in shapes:
        x = torch.rand(shape, generator=gen) * 2 - 1
        with torch.no_grad():
            ref = g(x).numpy()
        out = tr(x.numpy())
        assert out.dtype == np.float32 and np.abs(out - ref).max() <= bound
    # with the uint8 pre/post-processing in the graph too: within the same bound in 8-bit levels
    pre = tmp_path / "hp.onnx"
    assert cli_main(["export", str(run), "-o", str(pre), "--fp16", "--with-preprocessing"]) == 0
    pixels = np.random.default_rng(1).integers(0, 256, (2, 30, 34, 1), dtype=np.uint8)
    out = Translator(pre, device="cpu")(pixels)
    with torch.no_grad():
        ref = g(torch.nn.functional.pad(torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1,
                                        (0, 2, 0, 2), mode="reflect"))[:, :, :30, :34]
    ref = ((ref + 1) * 127.5).permute(0, 2, 3, 1).numpy()
    assert out.dtype == np.uint8 and np.abs(out - ref).max() <= 1 + 127.5 * bound


def test_winograd_export_matches_the_generator_and_keeps_the_file_size(run, model, tmp_path, capsys):
    import onnxruntime as ort
    path = tmp_path / "w.onnx"
    assert cli_main(["export", str(run), "-o", str(path), "--winograd"]) == 0
    m, plain = onnx.load(str(path)), onnx.load(str(model))
    assert custom_domains(m) == []
    blocks = 2                                                   # SMALL: --n-blocks 2
    assert read_metadata(path)["pyganx.winograd"].startswith(f"F(4x4,3x3) on {2 * blocks} convolutions")
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("Conv") == [n.op_type for n in plain.graph.node].count("Conv")   # transforms
    assert ops.count("MatMul") >= 2 * blocks
    # the file keeps the 3x3 weights, the 6x6 ones (36 x 32 x 32 floats, 144 KiB a conv)
    # being derived in the graph; only the fixed transforms (< 8 KiB a conv) are added ...
    size = lambda p: sum(onnx.numpy_helper.to_array(t).nbytes for t in p.graph.initializer)  # noqa: E731
    assert size(m) - size(plain) <= 2 * blocks * 8 * 1024
    # ... and onnxruntime folds that derivation when it loads: one product MatMul per conv
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    folded = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert folded.count("MatMul") == 2 * blocks
    g = pyganx.load_generator(run)
    tr = Translator(path, device="cpu")
    gen = torch.Generator().manual_seed(3)
    for shape in [(2, 1, 32, 32), (1, 1, 44, 28), (3, 1, 36, 40)]:
        x = torch.rand(shape, generator=gen) * 2 - 1
        with torch.no_grad():
            ref = g(x).numpy()
        assert np.abs(tr(x.numpy()) - ref).max() <= FP32_TOLERANCE
    for other in (["--fp16"], ["--int8", "--calibrate", str(tmp_path)]):
        assert cli_main(["export", str(run), "-o", str(tmp_path / "x.onnx"), "--winograd", *other]) == 1
        assert "--winograd is a float32 graph" in capsys.readouterr().err
