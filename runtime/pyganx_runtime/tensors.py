"""A model's input and output tensors as the Open Inference Protocol ("v2": KServe,
Triton) describes them: a name, a datatype (``FP32``, ``UINT8``, ``INT64``, ...) and a
shape with -1 for each dynamic dimension. Read from an onnxruntime session or from the
ONNX file itself; serve's v2 endpoints and the Triton model repository both use it."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

#: v2 datatype by the element type onnxruntime names ("tensor(float)" -> "float")
_ORT_TYPES = {"float": "FP32", "float16": "FP16", "double": "FP64", "uint8": "UINT8", "int8": "INT8",
              "uint16": "UINT16", "int16": "INT16", "int32": "INT32", "int64": "INT64", "bool": "BOOL"}
#: v2 datatype by ONNX TensorProto element type number
_ONNX_TYPES = {1: "FP32", 10: "FP16", 11: "FP64", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16",
               6: "INT32", 7: "INT64", 9: "BOOL"}
#: the numpy dtype of each v2 datatype
NUMPY_TYPES = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64, "UINT8": np.uint8, "INT8": np.int8,
               "UINT16": np.uint16, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: ``shape`` holds -1 where the model takes any size."""
    name: str
    datatype: str
    shape: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        """The tensor's entry in v2 model metadata."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def _dim(d: Any) -> int:
    return d if isinstance(d, int) and d > 0 else -1


def specs_from_session(args: Iterable[Any]) -> list[TensorSpec]:
    """From onnxruntime's ``session.get_inputs()`` or ``get_outputs()``."""
    out = []
    for a in args:
        kind = a.type.removeprefix("tensor(").removesuffix(")")
        if kind not in _ORT_TYPES:
            raise ValueError(f"tensor {a.name!r} has type {a.type}, which the v2 protocol does not carry here")
        out.append(TensorSpec(a.name, _ORT_TYPES[kind], tuple(_dim(d) for d in a.shape)))
    return out


def specs_from_onnx(values: Iterable[Any]) -> list[TensorSpec]:
    """From an ONNX graph's ``input`` or ``output`` (ValueInfoProto)."""
    out = []
    for v in values:
        t = v.type.tensor_type
        if not t.HasField("shape"):
            raise ValueError(f"tensor {v.name!r} has no shape in the model (its rank is unknown)")
        if t.elem_type not in _ONNX_TYPES:
            raise ValueError(f"tensor {v.name!r} has ONNX element type {t.elem_type}, which the v2 protocol "
                             f"does not carry here")
        dims = tuple(_dim(d.dim_value if d.HasField("dim_value") else None) for d in t.shape.dim)
        out.append(TensorSpec(v.name, _ONNX_TYPES[t.elem_type], dims))
    return out


__all__ = ["NUMPY_TYPES", "TensorSpec", "specs_from_onnx", "specs_from_session"]
