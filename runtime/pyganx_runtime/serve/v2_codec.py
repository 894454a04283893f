"""The Open Inference Protocol's request and response bodies ("v2": KServe, Triton).

A request body is a JSON object, optionally followed by binary tensor data (the binary
tensor data extension): the header ``Inference-Header-Content-Length`` then gives the
JSON part's length, and each input whose ``parameters`` hold ``binary_data_size`` takes
that many bytes of the rest, in the order of the inputs, little-endian and row-major.
Other inputs carry their elements in ``data`` (a flat or nested list).

An answer holds the outputs the request names in ``outputs`` (all of them when it names
none), each as JSON ``data`` or, where the output's ``binary_data`` parameter (or the
request's ``binary_data_output``) asks for it, as binary data after the JSON part.

The JSON part of a request is held to ``max_json_bytes`` (413 beyond it: send images
as binary data), and so are the JSON outputs of an answer, counted as 4 bytes an element
before the model runs (:func:`json_output_fits`). JSON elements must have the tensor's
kind (numbers for FP*, integers for INT*/UINT*, true/false for BOOL); NaN and infinity,
which JSON does not have, are refused in requests and answered only as binary data.

Everything else a client can get wrong is a :class:`ServeError` with status 400, and a
message naming the tensor: the protocol's ``{"error": "..."}`` answer.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..tensors import NUMPY_TYPES, TensorSpec
from .limits import ServeError

HEADER_LENGTH = "inference-header-content-length"
#: the largest dimension, and the largest element count, a request may name
MAX_DIM = 2**31 - 1
MAX_ELEMENTS = 2**40
#: the JSON kinds (numpy's, of the list as parsed) each datatype takes
_KINDS = {"FP": "fiu", "IN": "iu", "UI": "iu", "BO": "b"}


@dataclass
class InferRequest:
    """A decoded request: its input arrays by name, the outputs it asks for (name ->
    binary?), and its ``id``."""
    inputs: dict[str, np.ndarray]
    outputs: dict[str, bool]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


def _bad(message: str) -> ServeError:
    return ServeError(400, message)


def _split(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON part and the binary part of a body (a view: the tensors are not copied)."""
    if header_length is None:
        return body, memoryview(b"")
    if not re.fullmatch(r"[0-9]{1,15}", header_length.strip()):
        raise _bad(f"Inference-Header-Content-Length must be a byte count, got {header_length[:40]!r}")
    n = int(header_length.strip())
    if n > len(body):
        raise _bad(f"Inference-Header-Content-Length says {n} bytes of JSON, but the body has {len(body)} bytes")
    return body[:n], memoryview(body)[n:]


def _object(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise _bad(f"{what} must be a JSON object")
    return value


def _shape(entry: dict, name: str) -> tuple[int, ...]:
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_DIM
                                              for d in shape):
        raise _bad(f"input {name!r}: shape must be a list of non-negative integers, got {str(shape)[:80]}")
    if math.prod(max(d, 1) for d in shape) > MAX_ELEMENTS:
        raise _bad(f"input {name!r}: shape {shape} names more than {MAX_ELEMENTS} elements")
    return tuple(shape)


def _check_against(spec: TensorSpec, datatype: Any, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The datatype and the shape the model takes (``-1``: any size); the shape to run.
    A one-dimensional input (StarGAN's ``domain``, ``[N]``) may also come as ``[N, 1]``,
    as clients of a Triton model repository send it (its config reshapes it)."""
    if len(spec.shape) == 1 and len(shape) == 2 and shape[1] == 1:
        shape = shape[:1]
    if datatype != spec.datatype:
        raise _bad(f"input {spec.name!r}: datatype {datatype!r}, the model takes {spec.datatype}")
    fits = len(shape) == len(spec.shape) and all(s == -1 or s == d for s, d in zip(spec.shape, shape))
    if not fits:
        want = "[" + ", ".join("-1" if s == -1 else str(s) for s in spec.shape) + "]"
        raise _bad(f"input {spec.name!r}: shape {list(shape)}, the model takes {want} (-1: any size)")
    return shape


def _array(entry: dict, spec: TensorSpec, shape: tuple[int, ...], binary: memoryview, offset: int
           ) -> tuple[np.ndarray, int]:
    """An input's array, from its binary data at ``offset`` or its JSON ``data``; and the
    offset after it."""
    dtype = np.dtype(NUMPY_TYPES[spec.datatype]).newbyteorder("<")
    count = math.prod(shape)
    params = entry.get("parameters") or {}
    if not isinstance(params, dict):
        raise _bad(f"input {spec.name!r}: parameters must be a JSON object")
    size = params.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise _bad(f"input {spec.name!r}: binary_data_size must be a byte count, got {size!r}")
        if size != count * dtype.itemsize:
            raise _bad(f"input {spec.name!r}: binary_data_size is {size} bytes, but shape {list(shape)} of "
                       f"{spec.datatype} takes {count * dtype.itemsize}")
        if offset + size > len(binary):
            raise _bad(f"input {spec.name!r}: binary_data_size {size} runs past the end of the body's binary "
                       f"data ({len(binary) - offset} bytes left)")
        arr = np.frombuffer(binary[offset:offset + size], dtype=dtype).reshape(shape)
        return arr.astype(dtype.newbyteorder("="), copy=False), offset + size
    if "data" not in entry:
        raise _bad(f"input {spec.name!r} has neither data nor parameters.binary_data_size")
    wrong = _bad(f"input {spec.name!r}: data must be a (nested) list of {spec.datatype} values")
    try:
        raw = np.asarray(entry["data"])
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise wrong from None
    if raw.dtype.kind not in _KINDS[spec.datatype[:2]] and raw.size:
        raise wrong
    arr = raw.astype(NUMPY_TYPES[spec.datatype])
    if arr.size != count:
        raise _bad(f"input {spec.name!r}: data holds {arr.size} elements, shape {list(shape)} takes {count}")
    return arr.reshape(shape), offset


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode_request(body: bytes, header_length: str | None, inputs: list[TensorSpec],
                   outputs: list[TensorSpec], max_json_bytes: int) -> InferRequest:
    """A request for a model with these input and output tensors."""
    head, binary = _split(body, header_length)
    if len(head) > max_json_bytes:
        raise ServeError(413, f"the request's JSON part is {len(head)} bytes, more than the limit of "
                              f"{max_json_bytes}: send the tensors as binary data")
    try:
        doc = json.loads(head, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _bad("the request is not JSON (with binary tensor data, Inference-Header-Content-Length "
                   "must give the length of the JSON part)") from None
    doc = _object(doc, "the request")
    entries = doc.get("inputs")
    if not isinstance(entries, list) or not entries:
        raise _bad("the request has no inputs (a list of tensors)")
    specs = {s.name: s for s in inputs}
    arrays: dict[str, np.ndarray] = {}
    view, offset = binary, 0
    for entry in entries:
        entry = _object(entry, "each input")
        name = entry.get("name")
        if not isinstance(name, str) or name not in specs:
            raise _bad(f"unknown input {str(name)[:80]!r}; the model takes {', '.join(specs)}")
        if name in arrays:
            raise _bad(f"input {name!r} is given twice")
        spec = specs[name]
        shape = _check_against(spec, entry.get("datatype"), _shape(entry, name))
        arrays[name], offset = _array(entry, spec, shape, view, offset)
    missing = [n for n in specs if n not in arrays]
    if missing:
        raise _bad(f"missing input {missing[0]!r}; the model takes {', '.join(specs)}")
    if offset != len(binary):
        raise _bad(f"the body holds {len(binary)} bytes of binary data, but the inputs' binary_data_size add "
                   f"up to {offset}")
    params = _object(doc.get("parameters") or {}, "parameters")
    return InferRequest(arrays, _requested(doc, params, outputs), _id(doc), params)


def _id(doc: dict) -> str | None:
    rid = doc.get("id")
    if rid is not None and not isinstance(rid, str):
        raise _bad("id must be a string")
    return rid


def _requested(doc: dict, params: dict, outputs: list[TensorSpec]) -> dict[str, bool]:
    """The outputs to answer with (name -> as binary data)."""
    default = params.get("binary_data_output", False) is True
    asked = doc.get("outputs")
    if not asked:           # absent or empty: all of them
        return {s.name: default for s in outputs}
    if not isinstance(asked, list):
        raise _bad("outputs must be a list")
    names = [s.name for s in outputs]
    wanted: dict[str, bool] = {}
    for entry in asked:
        entry = _object(entry, "each requested output")
        name = entry.get("name")
        if not isinstance(name, str) or name not in names:
            raise _bad(f"unknown output {str(name)[:80]!r}; the model gives {', '.join(names)}")
        p = _object(entry.get("parameters") or {}, f"output {name!r}: parameters")
        wanted[name] = p.get("binary_data", default) is True
    return wanted


def json_output_fits(request: InferRequest, elements: int, max_json_bytes: int) -> None:
    """413 when the request asks for an output of ``elements`` elements as JSON and that
    would pass ``max_json_bytes`` at 4 bytes an element."""
    if any(not binary for binary in request.outputs.values()) and 4 * elements > max_json_bytes:
        raise ServeError(413, f"an output of {elements} elements is too large to answer as JSON (the limit is "
                              f"{max_json_bytes // 4}): ask for it as binary data")


def datatype_of(arr: np.ndarray) -> str:
    """The v2 datatype of an array."""
    for name, t in NUMPY_TYPES.items():
        if arr.dtype == np.dtype(t):
            return name
    raise TypeError(f"no v2 datatype for {arr.dtype}")


def encode_response(model: str, request: InferRequest, results: dict[str, np.ndarray]
                    ) -> tuple[bytes, dict[str, str]]:
    """The answer's body and its headers (``Inference-Header-Content-Length`` and the
    content type when it carries binary data)."""
    outputs, chunks = [], []
    for name, binary in request.outputs.items():
        arr = np.ascontiguousarray(results[name])
        entry: dict[str, Any] = {"name": name, "datatype": datatype_of(arr), "shape": list(arr.shape)}
        if binary:
            data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            entry["data"] = arr.ravel().tolist()
        outputs.append(entry)
    doc: dict[str, Any] = {"model_name": model, "model_version": "1", "outputs": outputs}
    if request.id is not None:
        doc["id"] = request.id
    try:
        head = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
    except ValueError:
        raise _bad("an output holds NaN or infinity, which JSON cannot carry: ask for it as binary data "
                   "(the output's binary_data parameter)") from None
    if not chunks:
        return head, {"content-type": "application/json"}
    return b"".join([head, *chunks]), {"content-type": "application/octet-stream",
                                        "inference-header-content-length": str(len(head))}


__all__ = ["HEADER_LENGTH", "InferRequest", "datatype_of", "decode_request", "encode_response", "json_output_fits"]
