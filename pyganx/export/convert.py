"""The ONNX conversion itself: ``torch.onnx.export(dynamo=True)`` at opset 18 of a wrapped
generator, pyganx's compiled ops translated into standard ONNX ops (translations.py),
with dynamic batch, height and width; and the onnxruntime session that runs the result."""
from __future__ import annotations

import logging
import os
import re
import tempfile
import warnings

import torch
from torch import nn

from ..errors import ExportError
from .translations import translation_table

OPSET = 18
STANDARD_DOMAINS = ("", "ai.onnx")


def image_dims(multiple: int, min_size: int, nhwc: bool = False, batch=None) -> dict:
    """torch.export dynamic dimensions of an image input: batch (``batch``, or a new Dim),
    and H and W as dynamic multiples of ``multiple``, at least ``min_size`` (NCHW: dims 2
    and 3; uint8 NHWC: dims 1 and 2)."""
    d = torch.export.Dim
    lo = max(2, -(-min_size // multiple))
    h, w = d("h", min=lo, max=8192 // multiple), d("w", min=lo, max=8192 // multiple)
    hh, ww = (h, w) if multiple == 1 else (multiple * h, multiple * w)
    spatial = (1, 2) if nhwc else (2, 3)
    return {0: batch if batch is not None else d("batch", min=1, max=4096), spatial[0]: hh, spatial[1]: ww}


def to_onnx(model: nn.Module, example, dynamic=None, min_size: int = 2,
            norm_in_float32: bool = False, input_names: list[str] | None = None, *,
            size_multiple: int | None = None):
    """``model(*example)`` as an ONNX ModelProto (opset 18, pyganx ops translated).
    ``dynamic``: torch.export dynamic shapes by input name (None: static). For a single
    image input, ``size_multiple`` builds them instead (:func:`image_dims`, at least
    ``min_size``)."""
    import onnx

    if isinstance(example, torch.Tensor):
        example = (example,)
    input_names = input_names or ["image"]
    if size_multiple is not None:
        dynamic = {"image": image_dims(size_multiple, min_size, nhwc=example[0].dtype == torch.uint8)}
    if isinstance(dynamic, dict):   # by position: wrappers may take *inputs
        dynamic = tuple(dynamic.get(name) for name in input_names)
    table = translation_table(norm_in_float32)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)       # e.g. "torchvision is not installed. Skipping ..."
    try:
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            # two inputs sharing the batch dimension: the exporter notes it keeps one name
            warnings.filterwarnings("ignore", message=".*shares the same shape constraints.*")
            program = torch.onnx.export(model, tuple(example), dynamo=True, opset_version=OPSET,
                                        input_names=input_names, output_names=["output"],
                                        dynamic_shapes=dynamic, custom_translation_table=table,
                                        verbose=False, report=False)
            program.save(os.path.join(tmp, "m.onnx"))
            return onnx.load(os.path.join(tmp, "m.onnx"))
    except Exception as e:  # noqa: BLE001 - the exporter's errors are long; keep what says why
        raise ExportError(f"torch.onnx.export failed: {_export_reason(e)}") from None
    finally:
        quiet.setLevel(level)


def _export_reason(e: Exception) -> str:
    """Why an export failed, in a line: the underlying error's first line when there is one
    (the exporter wraps it in advice and step banners), without terminal colour codes."""
    def first_line(x: BaseException) -> str:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(x))
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()
                 and not re.match(r"^(This is step|Failed to export the model with|- )", ln.strip())]
        return lines[0] if lines else type(x).__name__
    return first_line(e.__cause__) if e.__cause__ is not None else first_line(e)


def custom_domains(model) -> list[str]:
    """Domains of nodes (and of local functions) that are not standard ONNX."""
    found = {n.domain for n in model.graph.node if n.domain not in STANDARD_DOMAINS}
    found |= {f.domain for f in model.functions}
    return sorted(found)


def ort_session(model_bytes: bytes, providers: tuple[str, ...] = ("CPUExecutionProvider",)):
    """A quiet onnxruntime session (warnings off) on ``providers``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model_bytes, opts, providers=list(providers))


__all__ = ["OPSET", "STANDARD_DOMAINS", "custom_domains", "image_dims", "ort_session", "to_onnx"]
