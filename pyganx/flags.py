"""Command-line flags from dataclass fields: one ``--kebab-case`` flag per field, so that
a configuration is written once, as a typed dataclass with its defaults, and the
command line follows it (plugin configs and the training options alike).

A field's ``metadata`` may refine its flag:

- ``help``: the help text;
- ``flags``: extra option strings, e.g. ``("-o",)``;
- ``flag``: the option's name instead of ``--kebab-case``, e.g. ``"--from"`` for
  ``from_format``;
- ``positional``: True makes the field a positional argument (optional when the field
  has a default);
- ``choices``, ``metavar``, ``required``: as for ``argparse``;
- ``optional_value``: the flag may be given without a value, which then means this
  value (``--resume`` alone resumes from the latest checkpoint);
- ``exclusive``: fields naming the same group are mutually exclusive;
- ``cli``: False keeps the field off the command line.

Field types are bool (``--flag`` / ``--no-flag``), int, float and str, each optionally
``| None``, and ``tuple[str, ...]`` (``| None``), given as one comma-separated value
(``--domains happy,sad``). :func:`option` writes such a field in one line.
:func:`check_choices` holds a dataclass built in Python (not parsed from the command
line, where argparse refuses them) to its fields' ``choices``; inside
:func:`choices_unchecked` it lets every value through (a trained run whose config holds
a value a later version no longer offers still loads).
"""
from __future__ import annotations

import argparse
import contextlib
import contextvars
import dataclasses
import types
import typing
from collections.abc import Iterator
from typing import Any

from .errors import UsageError

_SCALARS = (int, float, str)
_CHECKING = contextvars.ContextVar("pyganx_flags_check_choices", default=True)


def option(default: Any, help: str, **meta: Any) -> Any:
    """A dataclass field with ``default`` whose flag has the help text ``help`` and the
    other ``meta`` keys of the module doc."""
    return dataclasses.field(default=default, metadata={"help": help, **meta})


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _names(value: str) -> tuple[str, ...]:
    """A ``tuple[str, ...]`` field's value from its comma-separated flag."""
    return tuple(value.split(","))


def _scalar_type(kind: Any) -> Any:
    """``int`` for ``int`` and ``int | None`` (likewise float, str and bool), the parser of
    a comma-separated value for ``tuple[str, ...]`` (``| None``); None otherwise."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        kind = args[0] if len(args) == 1 else None
    if typing.get_origin(kind) is tuple and typing.get_args(kind) == (str, ...):
        return _names
    return kind if kind is bool or kind in _SCALARS else None


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type,
                            title: str | None = None) -> argparse._ArgumentGroup:
    """Adds one flag per field of the dataclass ``cls`` (see the module doc) to a new
    argument group of ``parser``, and returns the group. A field of another type is a
    TypeError naming it."""
    group = parser.add_argument_group(title or f"{cls.__name__} options")
    exclusive: dict[str, argparse._MutuallyExclusiveGroup] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if meta.get("cli", True) is False:
            continue
        kind = _scalar_type(hints.get(f.name, f.type))
        if kind is None:
            raise TypeError(f"{cls.__name__}.{f.name}: config fields must be bool, int, float or str "
                            f"(or one of them | None), or tuple[str, ...], to become CLI flags, "
                            f"got {hints.get(f.name, f.type)!r}")
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        if meta.get("positional"):
            _add_positional(group, cls, f, kind, default if has_default else dataclasses.MISSING)
            continue
        where = group
        if "exclusive" in meta:
            name = meta["exclusive"]
            if name not in exclusive:
                exclusive[name] = group.add_mutually_exclusive_group()
            where = exclusive[name]
        names = [*meta.get("flags", ()), meta.get("flag", flag_name(f.name))]
        kw: dict[str, Any] = {"dest": f.name, "default": default}
        help_text = meta.get("help", "")
        if kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = kind
            for key in ("choices", "metavar"):
                if key in meta:
                    kw[key] = meta[key]
            if "optional_value" in meta:
                kw.update(nargs="?", const=meta["optional_value"])
        if meta.get("required"):
            kw["required"] = True
        elif default is not None:
            help_text = f"{help_text} (default: %(default)s)".strip()
        where.add_argument(*names, help=help_text, **kw)
    return group


def _add_positional(group: argparse._ArgumentGroup, cls: type, f: dataclasses.Field, kind: Any,
                    default: Any) -> None:
    """The positional argument of field ``f`` (optional when it has a ``default``)."""
    if kind is bool:
        raise TypeError(f"{cls.__name__}.{f.name}: a bool field cannot be a positional argument")
    kw: dict[str, Any] = {"type": kind, "help": f.metadata.get("help", "")}
    if "metavar" in f.metadata:
        kw["metavar"] = f.metadata["metavar"]
    if default is not dataclasses.MISSING:
        kw.update(nargs="?", default=default)
    group.add_argument(f.name, **kw)


def dataclass_from_arguments(cls: type, args: argparse.Namespace, **fixed: Any) -> Any:
    """``cls`` built from parsed arguments: the fields given on the command line (not
    None), the defaults for the rest, and ``fixed`` values over both."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
              if getattr(args, f.name, None) is not None}
    return cls(**{**values, **fixed})


def check_choices(obj: Any) -> None:
    """A UsageError naming the flag when a field of the dataclass instance ``obj`` holds a
    value outside its metadata's ``choices`` (None, for an optional field, is allowed)."""
    if not _CHECKING.get():
        return
    for f in dataclasses.fields(obj):
        choices = f.metadata.get("choices")
        value = getattr(obj, f.name)
        if choices is not None and value is not None and value not in choices:
            flag = f.metadata.get("flag", flag_name(f.name))
            raise UsageError(f"{flag} must be one of {', '.join(map(str, choices))}, got {value!r}")


@contextlib.contextmanager
def choices_unchecked() -> Iterator[None]:
    """:func:`check_choices` lets every value through inside this block (in this thread
    or task)."""
    token = _CHECKING.set(False)
    try:
        yield
    finally:
        _CHECKING.reset(token)


__all__ = ["add_dataclass_arguments", "check_choices", "choices_unchecked", "dataclass_from_arguments", "flag_name",
           "option"]
