"""Triton model repositories (pyganx_runtime.triton, ``pyganx-runtime triton-repository``):
every config.pbtxt is parsed strictly with Triton's own ModelConfig protobuf (an unknown
field fails) and held against the tensors and metadata of the ONNX model it was written
for. No Triton server runs here."""
from __future__ import annotations

from pathlib import Path

import onnx
import pytest

text_format = pytest.importorskip("google.protobuf.text_format")
model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                       reason="tritonclient[grpc] (Triton's ModelConfig protobuf) is not installed")

from pyganx_runtime.cli import main as runtime_main  # noqa: E402
from pyganx_runtime.errors import ModelError, UsageError  # noqa: E402
from pyganx_runtime.metadata import read_metadata  # noqa: E402
from pyganx_runtime.tensors import specs_from_onnx  # noqa: E402
from pyganx_runtime.triton import INSTANCE_KINDS, model_config, write_repository  # noqa: E402

ModelConfig = model_config_pb2.ModelConfig
DataType = model_config_pb2.DataType
Kind = model_config_pb2.ModelInstanceGroup.Kind


def parse(folder: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse((folder / "config.pbtxt").read_text(encoding="utf-8"), ModelConfig())


def tensors(path: Path):
    """The model's inputs and outputs as the v2 protocol names them."""
    m = onnx.load(str(path), load_external_data=False)
    return specs_from_onnx(m.graph.input), specs_from_onnx(m.graph.output)


def check_tensors(entries, specs, batched: bool) -> None:
    assert [e.name for e in entries] == [s.name for s in specs]
    for e, s in zip(entries, specs):
        assert DataType.Name(e.data_type) == f"TYPE_{s.datatype}"
        dims = list(s.shape[1:] if batched else s.shape)
        if dims:
            assert list(e.dims) == dims and not e.HasField("reshape"), (e, s)
        else:           # one scalar per batch element (StarGAN's domain)
            assert list(e.dims) == [1] and e.HasField("reshape") and list(e.reshape.shape) == [], (e, s)


def check_repository(folder: Path, source: Path, name: str, max_batch_size: int = 8, kind: str = "KIND_AUTO",
                     count: int = 1, delay_us: int = 10000) -> model_config_pb2.ModelConfig:
    cfg = parse(folder)
    inputs, outputs = tensors(source)
    batched = max_batch_size > 0
    assert (cfg.name, cfg.platform, cfg.max_batch_size) == (name, "onnxruntime_onnx", max_batch_size)
    check_tensors(cfg.input, inputs, batched)
    check_tensors(cfg.output, outputs, batched)
    assert cfg.HasField("dynamic_batching") == batched
    if batched:
        assert cfg.dynamic_batching.max_queue_delay_microseconds == delay_us
    assert [(g.count, Kind.Name(g.kind)) for g in cfg.instance_group] == [(count, kind)]
    assert {k: p.string_value for k, p in cfg.parameters.items()} == read_metadata(source)
    assert (folder / "1" / "model.onnx").read_bytes() == source.read_bytes()
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == \
        ["1", "1/model.onnx", "config.pbtxt"]           # no temporary file left behind
    return cfg


@pytest.mark.parametrize("which", ["digits", "faces", "noise"])
def test_each_model_gets_a_config_triton_parses_that_matches_its_tensors(models, tmp_path, which):
    folder = write_repository(models[which], tmp_path / "repo")
    assert folder == tmp_path / "repo" / which
    cfg = check_repository(folder, models[which], which)
    assert cfg.parameters["pyganx.inputs"].string_value == read_metadata(models[which])["pyganx.inputs"]
    assert model_config(models[which], which) == (folder / "config.pbtxt").read_text(encoding="utf-8")


def test_a_translators_dims_are_its_channels_and_any_height_and_width(models, tmp_path):
    """Read from onnxruntime's session, not from the module's own reading of the file."""
    import onnxruntime as ort
    session = ort.InferenceSession(str(models["digits"]), providers=["CPUExecutionProvider"])
    channels = session.get_inputs()[0].shape[1]
    cfg = parse(write_repository(models["digits"], tmp_path))
    assert cfg.max_batch_size == 8 and isinstance(channels, int)
    assert [(t.name, list(t.dims)) for t in cfg.input] == [("image", [channels, -1, -1])]
    assert [(t.name, list(t.dims)) for t in cfg.output] == [(session.get_outputs()[0].name, [channels, -1, -1])]


def test_stargan_domain_is_one_scalar_per_batch_element(models, tmp_path):
    inputs, _ = tensors(models["faces"])
    assert [(s.name, s.datatype, len(s.shape)) for s in inputs][1] == ("domain", "INT64", 1)
    domain = parse(write_repository(models["faces"], tmp_path)).input[1]
    assert list(domain.dims) == [1] and domain.HasField("reshape") and list(domain.reshape.shape) == []
    static = parse(write_repository(models["faces"], tmp_path, "faces0", max_batch_size=0)).input[1]
    assert list(static.dims) == [-1] and not static.HasField("reshape")


def test_settings_reach_the_config(models, tmp_path):
    for kind, count, batch, delay in (("cpu", 2, 4, 0), ("gpu", 3, 16, 500), ("auto", 1, 0, 10000)):
        folder = write_repository(models["digits"], tmp_path, f"digits-{kind}", max_batch_size=batch,
                                  instance_kind=kind, instance_count=count, max_queue_delay_us=delay)
        check_repository(folder, models["digits"], f"digits-{kind}", batch, INSTANCE_KINDS[kind], count, delay)
    assert set(INSTANCE_KINDS.values()) <= set(Kind.keys())


def fixed_shape_copy(source: Path, out: Path) -> Path:
    """``source`` with every input and output dimension fixed (batch 1, H and W the
    image size): what ``pyganx export --static`` writes."""
    m = onnx.load(str(source))
    size = int(read_metadata(source)["pyganx.image_size"])
    for v in (*m.graph.input, *m.graph.output):
        dims = v.type.tensor_type.shape.dim
        for i, d in enumerate(dims):
            if not d.HasField("dim_value"):
                d.dim_value = 1 if i == 0 else size
    onnx.save(m, str(out))
    return out


def test_a_model_with_a_fixed_batch_gets_max_batch_size_0_and_full_dims(models, tmp_path):
    static = fixed_shape_copy(models["digits"], tmp_path / "static.onnx")
    inputs, _ = tensors(static)
    assert all(d > 0 for s in inputs for d in s.shape) and inputs[0].shape[0] == 1
    cfg = check_repository(write_repository(static, tmp_path / "repo", max_batch_size=8), static, "static",
                           max_batch_size=0)
    assert list(cfg.input[0].dims) == list(inputs[0].shape)


def test_metadata_values_round_trip_exactly(models, tmp_path):
    m = onnx.load(str(models["digits"]))
    tricky = {"pyganx.domains": '["horse \\"zebra\\"", "a\\\\b"]', "note": 'say "hi"\n\tback\\slash \x01 é ✓ \'q\'',
              'key "quoted"\\': "", "empty": ""}
    for k, v in tricky.items():
        m.metadata_props.add(key=k, value=v)
    path = tmp_path / "tricky.onnx"
    onnx.save(m, str(path))
    cfg = check_repository(write_repository(path, tmp_path / "repo"), path, "tricky")
    for k, v in tricky.items():
        assert cfg.parameters[k].string_value == v


def test_other_models_stay_and_a_model_of_the_same_name_is_replaced(models, tmp_path):
    repo = tmp_path / "repo"
    write_repository(models["noise"], repo)
    noise_before = {p: p.read_bytes() for p in (repo / "noise").rglob("*") if p.is_file()}
    write_repository(models["faces"], repo, "g")
    write_repository(models["digits"], repo, "g", max_batch_size=2)     # replaces faces
    check_repository(repo / "g", models["digits"], "g", max_batch_size=2)
    assert {p: p.read_bytes() for p in (repo / "noise").rglob("*") if p.is_file()} == noise_before
    (repo / "g" / "2").mkdir()
    with pytest.warns(UserWarning, match=r"keeps its other versions \(2\)"):
        write_repository(models["digits"], repo, "g")


@pytest.mark.parametrize("call,error,message", [
    (lambda m, d: write_repository(d / "missing.onnx", d / "repo"), ModelError, "no such model file"),
    (lambda m, d: write_repository(d / "text.onnx", d / "repo"), ModelError, "not an ONNX model"),
    (lambda m, d: write_repository(m["digits"], d / "repo", "../up"), UsageError, "cannot name a model folder"),
    (lambda m, d: write_repository(m["digits"], d / "repo", "a/b"), UsageError, "cannot name a model folder"),
    (lambda m, d: write_repository(m["digits"], d / "repo", ".hidden"), UsageError, "cannot name a model folder"),
    (lambda m, d: write_repository(m["digits"], d / "repo", ""), UsageError, "cannot name a model folder"),
    (lambda m, d: write_repository(m["digits"], d / "repo", max_batch_size=-1), UsageError, "got -1"),
    (lambda m, d: write_repository(m["digits"], d / "repo", instance_count=0), UsageError,
     "instance count must be at least 1"),
    (lambda m, d: write_repository(m["digits"], d / "repo", instance_kind="tpu"), UsageError, "auto, cpu, gpu"),
    (lambda m, d: model_config(d / "text.onnx", "x"), ModelError, "not an ONNX model"),
])
def test_errors_are_one_line_and_write_nothing(models, tmp_path, call, error, message):
    (tmp_path / "text.onnx").write_text("not a model\n")
    with pytest.raises(error, match=message) as e:
        call(models, tmp_path)
    assert "\n" not in str(e.value) and not (tmp_path / "repo").exists()


def test_cli_writes_the_repository_and_reports_errors_in_one_line(models, tmp_path, capsys):
    repo = tmp_path / "repo"
    assert runtime_main(["triton-repository", str(models["faces"]), str(repo), "--name", "stargan",
                         "--max-batch-size", "4", "--instance-group", "cpu", "--instance-count", "2",
                         "--max-queue-delay-us", "250"]) == 0
    assert "tritonserver --model-repository=" in capsys.readouterr().out
    check_repository(repo / "stargan", models["faces"], "stargan", 4, "KIND_CPU", 2, 250)
    for argv, message in (([str(tmp_path / "none.onnx"), str(repo)], "no such model file"),
                          ([str(models["digits"]), str(repo), "--max-batch-size", "-1"], "got -1"),
                          ([str(models["digits"]), str(repo), "--instance-count", "0"], "at least 1")):
        assert runtime_main(["triton-repository", *argv]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("pyganx-runtime triton-repository: ") and message in err
    assert sorted(p.name for p in repo.iterdir()) == ["stargan"]
