"""Command options as dataclasses: the flags pyganx.flags generates from their fields
(positional arguments, renamed flags, comma-separated lists), and each command's
``check()`` of flags that do not combine."""
from __future__ import annotations

import argparse
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
