"""Triton Inference Server model repositories for ONNX models exported by pyganx (or any
ONNX model): ``REPOSITORY/NAME/config.pbtxt`` and ``REPOSITORY/NAME/1/model.onnx``, for
Triton's onnxruntime backend and for KServe's Triton runtime.

The config (Triton's ``ModelConfig`` protobuf in text format) is written from the
model's own tensors (:func:`pyganx_runtime.tensors.specs_from_onnx`):

- a model whose every input and output has a dynamic first dimension batches:
  ``max_batch_size`` as asked, dims without the batch dimension, and a dynamic batcher;
  any other model (``pyganx export --static``: batch fixed at 1) gets
  ``max_batch_size: 0`` and its full dims;
- a tensor with no dimension left once the batch dimension is taken off (StarGAN's
  ``domain``, ONNX shape [N]) is ``dims: [ 1 ]`` with ``reshape: { shape: [ ] }``, one
  scalar per batch element;
- -1 stands for a dynamic dimension (H and W of a translator);
- the model's ONNX metadata (pyganx's ``pyganx.*`` keys and any other) becomes the
  config's ``parameters``, as string values.

Only the text is checked here, against Triton's ModelConfig protobuf (the tests parse
it); no Triton server was run to write this module.
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import ModelError, UsageError
from .files import atomic_write_bytes, atomic_write_text
from .tensors import TensorSpec, specs_from_onnx

#: ``instance_kind`` by the CLI's ``--instance-group`` (Triton's ModelInstanceGroup.Kind)
INSTANCE_KINDS = {"auto": "KIND_AUTO", "cpu": "KIND_CPU", "gpu": "KIND_GPU"}
DEFAULT_MAX_BATCH_SIZE = 8
DEFAULT_INSTANCE_KIND = "auto"
DEFAULT_INSTANCE_COUNT = 1
DEFAULT_MAX_QUEUE_DELAY_US = 10000
#: the version folder written; Triton serves the highest numbered version by default
VERSION = "1"

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}")


def check_settings(name: str | None = None, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                   instance_kind: str = DEFAULT_INSTANCE_KIND, instance_count: int = DEFAULT_INSTANCE_COUNT,
                   max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US) -> None:
    """A one-line UsageError for a setting of :func:`model_config` or
    :func:`write_repository` that cannot be used (``name`` None: not checked)."""
    if name is not None and (not _NAME.fullmatch(name) or name.strip(".") == ""):
        raise UsageError(f"{name!r} cannot name a model folder: use letters, digits, '_', '-' and '.', "
                         f"not starting with '.' or '-' (200 characters at most)")
    if max_batch_size < 0:
        raise UsageError(f"max batch size must be 0 (no batching) or more, got {max_batch_size}")
    if instance_kind not in INSTANCE_KINDS:
        raise UsageError(f"instance group must be one of {', '.join(INSTANCE_KINDS)}, got {instance_kind!r}")
    if instance_count < 1:
        raise UsageError(f"instance count must be at least 1, got {instance_count}")
    if max_queue_delay_us < 0:
        raise UsageError(f"max queue delay must be 0 microseconds or more, got {max_queue_delay_us}")


def _read(path: str | Path) -> tuple[bytes, Any]:
    """The bytes of the ONNX model at ``path`` and its parsed graph, or a ModelError."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    blob = path.read_bytes()
    try:
        model = onnx.load_model_from_string(blob)
    except Exception as e:  # noqa: BLE001 - whatever protobuf says of bytes that are no model
        raise ModelError(f"{path}: not an ONNX model ({type(e).__name__}: {str(e).strip()[:200]})") from None
    if model.ir_version < 1 or not model.graph.input or not model.graph.output:
        raise ModelError(f"{path}: not an ONNX model (it has no graph inputs or outputs)")
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise ModelError(f"{path}: its weights are in external data files, which the repository does not copy; "
                         f"save the model as one file")
    return blob, model


def _quote(text: str) -> str:
    """``text`` as a protobuf text-format string literal: quotes, backslashes and control
    characters escaped, other characters kept (the file is UTF-8)."""
    out = []
    for ch in text:
        if ch in "\"\\":
            out.append("\\" + ch)
        elif ch in "\n\r\t":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\{ord(ch):03o}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _dims(values: Sequence[int]) -> str:
    return "[ " + ", ".join(str(v) for v in values) + " ]"


def _tensors(specs: list[TensorSpec], batched: bool) -> str:
    """The entries of ``input [ ... ]`` or ``output [ ... ]``."""
    entries = []
    for s in specs:
        dims = s.shape[1:] if batched else s.shape
        lines = [f"    name: {_quote(s.name)}", f"    data_type: TYPE_{s.datatype}"]
        if dims:
            lines.append(f"    dims: {_dims(dims)}")
        else:       # Triton wants at least one dim: one element, given to the model as a scalar
            lines += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
        entries.append("  {\n" + "\n".join(lines) + "\n  }")
    return "[\n" + ",\n".join(entries) + "\n]"


def _config(model: Any, name: str, max_batch_size: int, instance_kind: str, instance_count: int,
            max_queue_delay_us: int) -> str:
    """config.pbtxt for the parsed ONNX ``model`` (see the module doc)."""
    initializers = {t.name for t in model.graph.initializer}
    try:
        inputs = specs_from_onnx(v for v in model.graph.input if v.name not in initializers)
        outputs = specs_from_onnx(model.graph.output)
    except ValueError as e:
        raise ModelError(f"{name}: {e}") from None
    can_batch = all(s.shape and s.shape[0] == -1 for s in (*inputs, *outputs))
    batch = max_batch_size if can_batch else 0
    parts = [f"name: {_quote(name)}", 'platform: "onnxruntime_onnx"', f"max_batch_size: {batch}",
             f"input {_tensors(inputs, batch > 0)}", f"output {_tensors(outputs, batch > 0)}",
             f"instance_group [\n  {{\n    count: {instance_count}\n    kind: {INSTANCE_KINDS[instance_kind]}\n"
             f"  }}\n]"]
    if batch > 0:
        parts.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: {max_queue_delay_us}\n}}")
    metadata = {p.key: p.value for p in model.metadata_props}     # a repeated key: the last, as read_metadata
    parts += [f"parameters {{\n  key: {_quote(k)}\n  value: {{ string_value: {_quote(v)} }}\n}}"
              for k, v in metadata.items()]
    return "\n".join(parts) + "\n"


def model_config(model_path: str | Path, name: str, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                 instance_kind: str = DEFAULT_INSTANCE_KIND, instance_count: int = DEFAULT_INSTANCE_COUNT,
                 max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US) -> str:
    """The ``config.pbtxt`` text of the ONNX model at ``model_path``, served as ``name``.

    Args:
        max_batch_size: the largest batch Triton's dynamic batcher forms (0: no batching);
            a model whose batch dimension is fixed gets 0 whatever is asked.
        instance_kind: ``auto`` (GPU where Triton has one, else CPU), ``cpu`` or ``gpu``.
        instance_count: model instances (per GPU, for ``gpu`` and ``auto`` on a GPU).
        max_queue_delay_us: how long the batcher holds a request for others to join it.

    Raises:
        ModelError: no such file, or not an ONNX model Triton can take as it is.
        UsageError: a setting out of range (see :func:`check_settings`).
    """
    check_settings(name, max_batch_size, instance_kind, instance_count, max_queue_delay_us)
    _, model = _read(model_path)
    return _config(model, name, max_batch_size, instance_kind, instance_count, max_queue_delay_us)


def write_repository(model_path: str | Path, repository: str | Path, name: str | None = None,
                     **config_kwargs: Any) -> Path:
    """Writes the ONNX model at ``model_path`` into the Triton model repository
    ``repository`` (created if missing) as ``NAME/config.pbtxt`` and
    ``NAME/1/model.onnx``, a byte-for-byte copy; returns the folder ``repository/NAME``.

    ``name`` defaults to the model file's name without its suffix. ``config_kwargs`` are
    :func:`model_config`'s settings. Other models in the repository are left alone. An
    existing model folder ``NAME`` is replaced: its ``config.pbtxt`` and version ``1``
    are overwritten, each file atomically (the model first); other version folders in it
    are kept, with a warning, since Triton serves the highest version by default.

    Raises:
        ModelError: no such file, or not an ONNX model Triton can take as it is.
        UsageError: a name that cannot be a folder, or a setting out of range.
    """
    model_path = Path(model_path)
    name = model_path.stem if name is None else name
    settings = {"max_batch_size": DEFAULT_MAX_BATCH_SIZE, "instance_kind": DEFAULT_INSTANCE_KIND,
                "instance_count": DEFAULT_INSTANCE_COUNT, "max_queue_delay_us": DEFAULT_MAX_QUEUE_DELAY_US,
                **config_kwargs}
    check_settings(name, **settings)
    blob, model = _read(model_path)
    text = _config(model, name, **settings)
    folder = Path(repository) / name
    others = sorted(p.name for p in folder.glob("*") if p.is_dir() and p.name.isdecimal() and p.name != VERSION) \
        if folder.is_dir() else []
    if others:
        warnings.warn(f"{folder} keeps its other versions ({', '.join(others)}): Triton serves the highest "
                      f"by default, not the version {VERSION} written now", stacklevel=2)
    atomic_write_bytes(folder / VERSION / "model.onnx", lambda f: f.write(blob))
    atomic_write_text(folder / "config.pbtxt", text)
    return folder


__all__ = ["DEFAULT_INSTANCE_COUNT", "DEFAULT_INSTANCE_KIND", "DEFAULT_MAX_BATCH_SIZE", "DEFAULT_MAX_QUEUE_DELAY_US",
           "INSTANCE_KINDS", "VERSION", "check_settings", "model_config", "write_repository"]
