"""Command options as dataclasses: the flags pyganx.flags generates from their fields
(positional arguments, renamed flags, comma-separated lists), and each command's
``check()`` of flags that do not combine."""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field

import pytest

from pyganx.flags import add_dataclass_arguments, dataclass_from_arguments, option


@dataclass
class _Opts:
    source: str = field(metadata={"help": "what to read", "positional": True, "metavar": "SRC"})
    extra: str | None = field(default=None, metadata={"help": "optional second", "positional": True})
    from_format: str | None = option(None, "the other format", flag="--from", choices=["a", "b"])
    names: tuple[str, ...] | None = option(None, "comma-separated names", metavar="A,B")
    n: int = option(8, "how many")


def _parser(cls=_Opts) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="t")
    add_dataclass_arguments(ap, cls)
    return ap


def test_positional_renamed_and_list_flags_are_generated_from_fields():
    ap = _parser()
    got = dataclass_from_arguments(_Opts, ap.parse_args(["in.pt", "--from", "b", "--names", "x,y,z", "--n", "3"]))
    assert got == _Opts(source="in.pt", extra=None, from_format="b", names=("x", "y", "z"), n=3)
    assert dataclass_from_arguments(_Opts, ap.parse_args(["in.pt", "two"])) == _Opts("in.pt", "two")
    text = ap.format_help()
    for words in ("SRC", "what to read", "[extra]", "optional second", "--from {a,b}", "the other format",
                  "--names A,B", "comma-separated names", "how many (default: 8)"):
        assert words in text, (words, text)
    assert "--from-format" not in text
    with pytest.raises(SystemExit):
        ap.parse_args([])                     # SRC is required


def test_a_bool_positional_or_a_list_of_other_things_is_refused():
    @dataclass
    class BoolPositional:
        flag: bool = field(default=False, metadata={"positional": True})

    @dataclass
    class Ints:
        sizes: tuple[int, ...] = ()

    with pytest.raises(TypeError, match="BoolPositional.flag: a bool field cannot be a positional"):
        _parser(BoolPositional)
    with pytest.raises(TypeError, match="Ints.sizes: config fields must be bool, int, float or str"):
        _parser(Ints)


@pytest.mark.parametrize("flags,message", [
    ({"int8": True}, "--int8 needs --calibrate DIR"),
    ({"fp16": True, "int8": True, "calibrate": "d"}, "--fp16 and --int8 are alternatives"),
    ({"int8": True, "calibrate": "d", "with_preprocessing": True}, "--int8 with --with-preprocessing"),
    ({"winograd": True, "fp16": True}, "--winograd is a float32 graph"),
    ({"winograd": True, "int8": True, "calibrate": "d"}, "--winograd is a float32 graph"),
    ({"domains": ("a", "b")}, "--domains names the labels of a --from yunjey-stargan generator"),
    ({"triton_name": "g", "triton_instance_count": 2}, "--triton-name, --triton-instance-count: only with "
                                                       "--triton-repository DIR"),
    ({"triton_repository": "r", "triton_max_batch_size": -1}, "--triton-repository: max batch size must be 0"),
    ({"triton_repository": "r", "triton_name": "../g"}, "--triton-repository: '../g' cannot name a model folder"),
    ({"triton_repository": "r", "triton_instance_group": "tpu"}, "instance group must be one of auto, cpu, gpu"),
])
def test_export_flags_that_do_not_combine_are_refused_before_anything_is_read(tmp_path, flags, message):
    from pyganx.errors import UsageError
    from pyganx.export import ExportOptions, export_generator
    opts = ExportOptions(str(tmp_path / "missing"), str(tmp_path / "m.onnx"), **flags)
    with pytest.raises(UsageError, match=message):
        opts.check()
    pytest.importorskip("onnx")
    for call in (lambda: export_generator(opts), lambda: export_generator(tmp_path / "missing", tmp_path / "m.onnx",
                                                                          **flags)):
        with pytest.raises(UsageError, match=message):      # not "no such run directory"
            call()
    ExportOptions("run", "m.onnx", domains=("a", "b"), from_format="yunjey-stargan").check()


def test_export_generator_takes_options_or_keywords_not_both(tmp_path):
    from pyganx.export import ExportOptions, export_generator
    with pytest.raises(TypeError, match="not both"):
        export_generator(ExportOptions("run", "m.onnx"), static=True)
    with pytest.raises(TypeError, match="needs out"):
        export_generator("run")
    with pytest.raises(TypeError, match="unexpected keyword argument 'foreign'"):
        export_generator("run", "m.onnx", foreign=True)


def test_export_generators_earlier_arguments_still_work():
    """The generator as the third argument, and foreign_domains (now domains) with a
    deprecation warning: both reach ExportOptions."""
    from pyganx.export import ExportOptions
    from pyganx.export.exporter import _options

    assert _options("run", "m.onnx", "G_BA", {"static": True}) == ExportOptions("run", "m.onnx", "G_BA", static=True)
    with pytest.warns(DeprecationWarning, match="foreign_domains is deprecated; use domains"):
        opts = _options("g.ckpt", "m.onnx", None, {"from_format": "yunjey-stargan", "foreign_domains": ("a", "b")})
    assert opts == ExportOptions("g.ckpt", "m.onnx", from_format="yunjey-stargan", domains=("a", "b"))
    with pytest.raises(TypeError, match="not both"):
        _options("g.ckpt", "m.onnx", None, {"domains": ("a",), "foreign_domains": ("b",)})
    with pytest.raises(TypeError, match="not both"):
        _options(ExportOptions("run", "m.onnx"), None, "G_BA", {})


@pytest.mark.parametrize("flags,message", [
    ({"real": "r"}, "give RUN_DIR, or --real DIR and --fake DIR (two image folders), not both"),
    ({"run": "run", "real": "r", "fake": "f"}, "give RUN_DIR, or --real DIR and --fake DIR (two image folders)"),
    ({}, "give RUN_DIR, or --real DIR --fake DIR"),
    ({"run": "run", "out": "f.json"}, "--out names the JSON file of --real/--fake"),
    ({"run": "run", "all_checkpoints": True, "model": "m.onnx"}, "--all-checkpoints evaluates the run's"),
])
def test_eval_arguments_that_do_not_combine_are_one_line_before_anything_loads(tmp_path, capsys, flags, message):
    from pyganx.cli import main as cli_main
    from pyganx.errors import UsageError
    from pyganx.metrics.options import EvalOptions
    with pytest.raises(UsageError, match=re.escape(message)):
        EvalOptions(**flags).check()
    argv = ["eval", "--inception-weights", str(tmp_path / "nowhere.pth")]       # never read
    for key, value in flags.items():
        argv += [value] if key == "run" else [f"--{key.replace('_', '-')}"] + ([] if value is True else [value])
    assert cli_main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "nowhere" not in err, err


def test_sample_and_train_options_refuse_what_cannot_run(tmp_path, capsys):
    from pyganx.cli import main as cli_main
    from pyganx.engine import TrainOptions
    from pyganx.engine.sample import SampleOptions
    from pyganx.errors import UsageError
    with pytest.raises(UsageError, match="--n must be at least 1, got 0"):
        SampleOptions("run", n=0).check()
    assert cli_main(["sample", str(tmp_path / "nope"), "--n", "0"]) == 1
    assert "--n must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(UsageError, match="give --data DIR, --data-a DIR --data-b DIR, or --demo NAME"):
        TrainOptions(out="r", steps=1, data_a="a").check()
    with pytest.raises(UsageError, match="give exactly one of --steps N and --epochs N"):
        TrainOptions(out="r", demo="digits").check()
    # on the command line, what is missing is a usage error (status 2), what is out of range is not
    for argv, message in ((["--demo", "digits"], "give exactly one of --steps N and --epochs N"),
                          (["--steps", "1", "--data-a", "a"], "give --data DIR, --data-a DIR --data-b DIR")):
        with pytest.raises(SystemExit) as e:
            cli_main(["train", "cyclegan", "-o", str(tmp_path / "r"), *argv])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and message in err and "--help" in err, err
    assert not (tmp_path / "r").exists()


def test_every_command_lists_every_option_with_its_help(capsys):
    import dataclasses

    from pyganx.cli import COMMANDS
    from pyganx.cli import main as cli_main
    from pyganx.flags import flag_name
    for name, cmd in COMMANDS.items():
        with pytest.raises(SystemExit) as e:
            cli_main([name, "--help"])
        text = re.sub(r"\s+", " ", capsys.readouterr().out)
        assert e.value.code == 0 and "--debug show tracebacks" in text, (name, text)
        if not dataclasses.is_dataclass(cmd.arguments):
            continue
        for f in dataclasses.fields(cmd.arguments):
            shown = f.metadata.get("metavar") if f.metadata.get("positional") else \
                f.metadata.get("flag", flag_name(f.name))
            assert f" {shown}" in text and re.sub(r"\s+", " ", f.metadata["help"]) in text, (name, f.name)
