"""pyganx-runtime on its own: `pyganx-runtime translate` writes what `pyganx translate`
writes, neither translate nor serve loads torch, models from a newer pyganx or from other
exporters are refused or accepted as docs/export.md says, and errors are one line."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from pyganx_runtime import ForeignModelWarning, Translator, __version__
from pyganx_runtime.errors import ImageError, ModelError
from pyganx_runtime.images import image_channels, load_image
from pyganx_runtime.metadata import FORMAT, FORMAT_VERSION, VERSION, check, read_metadata

#: prints whether torch was loaded once the command ran (a fresh interpreter each time)
PROBE = ("import sys; from pyganx_runtime.cli import main; rc = main(sys.argv[1:]); "
         "print('torch loaded' if 'torch' in sys.modules else 'torch not loaded'); sys.exit(rc)")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=300)


def test_the_environment_is_torch_free_where_ci_says_so():
    """make runtime-test runs these tests in a venv holding only pyganx-runtime and its
    test needs; there neither torch nor pyganx may be importable."""
    if os.environ.get("PYGANX_TORCH_FREE") == "1":
        assert importlib.util.find_spec("torch") is None
        installed = {d.metadata["Name"] for d in importlib.metadata.distributions()}
        assert "pyganx-runtime" in installed and "pyganx" not in installed and "torch" not in installed
    r = subprocess.run([sys.executable, "-m", "pyganx_runtime", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == f"pyganx-runtime {__version__}"


def test_translate_writes_what_pyganx_translate_writes_without_loading_torch(model_dir, tmp_path):
    out = tmp_path / "out"
    r = _run("translate", str(model_dir / "digits.onnx"), str(model_dir / "inputs"), "-o", str(out),
             "--no-progress", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("torch not loaded")
    ref = sorted(p.relative_to(model_dir / "reference") for p in (model_dir / "reference").rglob("*.*"))
    assert ref and sorted(p.relative_to(out) for p in out.rglob("*.*")) == ref
    for rel in ref:
        got, want = (out / rel).read_bytes(), (model_dir / "reference" / rel).read_bytes()
        if rel.suffix == ".png":
            assert got == want, rel                    # PNG: the same bytes
        else:                                          # JPEG: the same pixels once decoded
            want = np.asarray(Image.open(model_dir / "reference" / rel))
            assert np.array_equal(np.asarray(Image.open(out / rel)), want)


def test_serve_starts_without_loading_torch(models):
    code = f"""
import sys, threading, time, urllib.request
from pyganx_runtime.cli import main
from pyganx_runtime.serve.process import free_port
port = free_port()
threading.Thread(target=main, args=(["serve", {str(models['digits'])!r}, {str(models['faces'])!r},
                 "--port", str(port), "--log-level", "warning", "--device", "cpu"],), daemon=True).start()
for _ in range(300):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{{port}}/healthz", timeout=1) as r:
            if r.status == 200:
                break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("serve did not start")
with urllib.request.urlopen(f"http://127.0.0.1:{{port}}/v1/models") as r:
    print(len(__import__("json").load(r)["models"]), "models;",
          "torch loaded" if "torch" in sys.modules else "torch not loaded")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "pyganx-runtime serve: digits, faces at http://127.0.0.1:" in r.stdout
    assert r.stdout.strip().splitlines()[-1] == "2 models; torch not loaded"


def _with_metadata(src: Path, dst: Path, drop: tuple[str, ...] = (), **changes: str) -> Path:
    """A copy of model ``src`` at ``dst`` with the metadata keys ``drop`` removed and
    ``changes`` set."""
    m = onnx.load(str(src))
    props = {p.key: p.value for p in m.metadata_props if p.key not in drop}
    props.update(changes)
    del m.metadata_props[:]
    for k, v in props.items():
        m.metadata_props.add(key=k, value=v)
    onnx.save(m, str(dst))
    return dst


def test_a_model_from_a_newer_pyganx_with_unknown_metadata_is_refused_in_one_line(models, model_dir, tmp_path):
    newer = _with_metadata(models["digits"], tmp_path / "newer.onnx",
                           **{VERSION: "99.1.0", FORMAT: "1", "pyganx.colour_space": "oklab"})
    with pytest.raises(ModelError, match=r"pyganx 99\.1\.0 .*pyganx-runtime " + __version__.replace(".", r"\.")
                       + r" does not know \(pyganx\.colour_space\)"):
        Translator(newer, device="cpu")
    r = _run("translate", str(newer), str(model_dir / "inputs"), "-o", str(tmp_path / "o"), "--no-progress")
    assert r.returncode == 1
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "99.1.0" in err[0] and __version__ in err[0] and "Traceback" not in r.stderr
    # a newer pyganx whose keys this runtime knows: translated as usual
    same_keys = _with_metadata(models["digits"], tmp_path / "newer-known.onnx", **{VERSION: "99.1.0", FORMAT: "1"})
    img = Image.open(model_dir / "inputs" / "a.png")
    assert Translator(same_keys, device="cpu").translate(img).tobytes() == \
        Translator(models["digits"], device="cpu").translate(img).tobytes()
    # an older pyganx's unknown key (since removed) is no reason to refuse
    older = _with_metadata(models["digits"], tmp_path / "older.onnx",
                           **{VERSION: "0.0.1", "pyganx.retired_key": "x"})
    Translator(older, device="cpu")


def test_pyganx_export_writes_the_metadata_format(models):
    for name in ("digits", "faces", "noise"):
        assert read_metadata(models[name])[FORMAT] == str(FORMAT_VERSION) == "1"


NEWER = "99.0.0"


@pytest.mark.parametrize("meta, words", [
    ({VERSION: NEWER, FORMAT: "2"}, ["pyganx 99.0.0", "metadata format 2", "reads format 1 at most",
                                      "install pyganx-runtime 99.0.0 or newer"]),
    ({VERSION: "0.0.1", FORMAT: "2"}, ["metadata format 2", "install pyganx-runtime 0.0.1 or newer"]),
    ({FORMAT: "2"}, ["metadata format 2", "install a newer pyganx-runtime"]),
    ({VERSION: NEWER, FORMAT: "one"}, ["metadata format one", "reads format 1 at most"]),
    ({VERSION: NEWER}, ["pyganx 99.0.0", "no pyganx.format key", "inconsistent or not pyganx's",
                        "install pyganx-runtime 99.0.0 or newer"]),
])
def test_metadata_in_a_newer_format_or_newer_without_a_format_is_refused(meta, words):
    with pytest.raises(ModelError) as e:
        check({"pyganx.plugin": "cyclegan", **meta}, "m.onnx")
    message = str(e.value)
    assert len(message.splitlines()) == 1 and message.startswith("m.onnx ")
    assert f"pyganx-runtime {__version__}" in message
    for w in words:
        assert w in message, (w, message)


@pytest.mark.parametrize("meta", [
    {VERSION: __version__},                 # no format key: exported before it existed, format 1
    {VERSION: "0.0.1"},
    {VERSION: NEWER, FORMAT: "1"},          # a newer pyganx in this format, with known keys
    {VERSION: __version__, FORMAT: "1"},
    {VERSION: "0.0.1", FORMAT: "0"},
])
def test_metadata_in_a_format_this_runtime_reads_is_accepted(meta):
    check({"pyganx.plugin": "cyclegan", **meta}, "m.onnx")


def test_models_are_refused_or_run_by_their_metadata_format(models, model_dir, tmp_path):
    img = Image.open(model_dir / "inputs" / "a.png")
    want = Translator(models["digits"], device="cpu").translate(img).tobytes()
    newer_format = _with_metadata(models["digits"], tmp_path / "f2.onnx", **{VERSION: NEWER, FORMAT: "2"})
    with pytest.raises(ModelError, match=r"^f2\.onnx was exported by pyganx 99\.0\.0 in metadata format 2"):
        Translator(newer_format, device="cpu")
    r = _run("translate", str(newer_format), str(model_dir / "inputs"), "-o", str(tmp_path / "o"), "--no-progress")
    err = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(err) == 1 and "f2.onnx" in err[0] and "format 2" in err[0]
    no_format = _with_metadata(models["digits"], tmp_path / "nf.onnx", drop=(FORMAT,), **{VERSION: NEWER})
    with pytest.raises(ModelError, match=r"^nf\.onnx says it was exported by pyganx 99\.0\.0.* no pyganx\.format"):
        Translator(no_format, device="cpu")
    # exported before the key existed (no key, an older version): format 1, run as usual
    before = _with_metadata(models["digits"], tmp_path / "old.onnx", drop=(FORMAT,), **{VERSION: "0.0.1"})
    assert Translator(before, device="cpu").translate(img).tobytes() == want


def _foreign(path: Path, inputs: list, outputs: list, nodes: list) -> Path:
    graph = helper.make_graph(nodes, "foreign", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_a_foreign_image_to_image_model_is_run_with_a_warning(tmp_path):
    # y = -x: an image model written by someone else's exporter, with its own names and no metadata
    neg = _foreign(tmp_path / "negate.onnx",
                   [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["n", 3, "h", "w"])],
                   [helper.make_tensor_value_info("result", TensorProto.FLOAT, ["n", 3, "h", "w"])],
                   [helper.make_node("Neg", ["pixels"], ["result"])])
    with pytest.warns(ForeignModelWarning, match="not a pyganx export"):
        tr = Translator(neg, device="cpu")
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 5, 7)).astype(np.float32)
    np.testing.assert_array_equal(tr(x), -x)
    img = Image.fromarray(np.full((4, 6, 3), 255, np.uint8))
    assert np.asarray(tr.translate(img)).max() == 0            # white -> black
    src = tmp_path / "in.png"
    img.save(src)
    r = _run("translate", str(neg), str(src), "-o", str(tmp_path / "out"), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "warning: negate.onnx is not a pyganx export" in r.stderr and "Traceback" not in r.stderr
    from pyganx_runtime.serve import ServeConfig, load_models
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ForeignModelWarning)
        served = load_models([neg], ServeConfig(device="cpu"))
    assert served["negate"].info["translates"] and served["negate"].info["inputs"] == ["pixels"]


@pytest.mark.parametrize("case", ["two inputs", "not an image"])
def test_a_foreign_model_that_is_not_image_to_image_is_a_one_line_error(tmp_path, case):
    if case == "two inputs":
        ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n", 3, "h", "w"]) for n in ("a", "b")]
        path = _foreign(tmp_path / "m.onnx", ins, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                        [helper.make_node("Add", ["a", "b"], ["y"])])
    else:
        path = _foreign(tmp_path / "m.onnx", [helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["n", 16])],
                        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 16])],
                        [helper.make_node("Relu", ["tokens"], ["y"])])
    with pytest.raises(ModelError, match="not a pyganx export, and it does not take one batch of images"):
        Translator(path, device="cpu")
    for command in (["translate", str(path), str(tmp_path), "-o", str(tmp_path / "o")], ["serve", str(path)]):
        r = _run(*command)
        assert r.returncode == 1
        assert len(r.stderr.strip().splitlines()) == 1 and "not a pyganx export" in r.stderr, r.stderr


def test_read_metadata_gives_every_key_and_refuses_a_non_model(models):
    meta = read_metadata(models["faces"])
    assert json.loads(meta["pyganx.domains"]) == ["happy", "sad", "angry"] and meta[VERSION]
    with pytest.raises(ModelError, match="cannot read the model"):
        read_metadata(Path(__file__))


def test_a_decompression_bomb_is_an_image_error_and_translate_skips_it_by_name(model_dir, tmp_path):
    # a valid PNG whose header says 20000 x 20000: more pixels than Pillow decodes
    src = tmp_path / "in"
    src.mkdir()
    Image.open(model_dir / "inputs" / "a.png").save(src / "a.png")
    bomb = src / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb)
    limit = 2 * Image.MAX_IMAGE_PIXELS
    want = rf"^{re.escape(str(bomb))}: cannot read image \(too many pixels: .*400000000 pixels.*{limit} pixels"
    with pytest.raises(ImageError, match=want) as e:
        load_image(bomb)
    assert e.value.path == bomb
    assert image_channels([bomb, src / "a.png"]) == 1        # the bomb does not count; a.png is grey

    out = tmp_path / "out"
    r = _run("translate", str(model_dir / "digits.onnx"), str(src), "-o", str(out), "--no-progress",
             "--device", "cpu")
    assert r.returncode == 1
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"pyganx-runtime translate: skipped {bomb}: "), err
    assert "400000000" in err[0] and str(limit) in err[0] and "unexpected" not in err[0]
    assert "translated 1 image(s)" in r.stdout and "1 unreadable input(s) skipped" in r.stdout
    assert sorted(p.name for p in out.iterdir()) == ["a.png"]


def test_every_error_is_one_line_and_only_a_pyganx_error_or_oserror_reads_as_the_users(capsys):
    import argparse

    from pyganx_runtime.cli import run_command
    from pyganx_runtime.errors import UsageError

    oom = type("OutOfMemoryError", (RuntimeError,), {})     # torch's CUDA OOM has this name
    cases = [
        (UsageError("--tile must be a multiple of 4"), "prog: --tile must be a multiple of 4"),
        (FileNotFoundError("g.onnx: no such model"), "prog: g.onnx: no such model"),
        (RuntimeError("boom\nsecond line"),
         "prog: unexpected RuntimeError: boom (a bug or a broken installation; --debug shows the traceback)"),
        (MemoryError(), "prog: out of memory (MemoryError); try a smaller batch or image size"),
        (oom("CUDA out of memory. Tried to allocate 2.00 GiB"),
         "prog: out of memory (OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB)"),
    ]
    for exc, want in cases:
        def handler(_args, exc=exc):
            raise exc
        assert run_command("prog", handler, argparse.Namespace(debug=False)) == 1
        err = capsys.readouterr().err
        assert err.startswith(want) and err.count("\n") == 1, (want, err)
    with pytest.raises(RuntimeError, match="boom"):              # --debug: the traceback
        run_command("prog", lambda a: (_ for _ in ()).throw(RuntimeError("boom")), argparse.Namespace(debug=True))
