"""``pyganx export``: a trained generator as a self-checked ONNX model.

The generator is exported with ``torch.onnx.export(dynamo=True)`` at opset 18, pyganx's
compiled ops translated into standard ONNX ops (translations.py). Batch, height and
width are dynamic (height and width as multiples of the generator's size multiple)
unless ``static``. Every model carries the metadata keys of docs/contracts.md, passes
``onnx.checker``, holds no custom-domain node, and is run with onnxruntime on sample
inputs and compared with PyTorch before it is written; a mismatch is an error.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..engine.checkpoint import atomic_write_bytes
from ..engine.run import load_run
from ..engine.trainer import TrainError
from .translations import translation_table

OPSET = 18
#: Largest |ONNX - PyTorch| accepted for a float32 export, outputs being in [-1, 1]:
#: two implementations of the same convolutions differ by float32 rounding only.
FP32_TOLERANCE = 1e-4
#: With preprocessing the outputs are 8-bit: a value on a rounding boundary may land one
#: level apart.
UINT8_TOLERANCE = 1
STANDARD_DOMAINS = ("", "ai.onnx")


@dataclass
class ExportResult:
    path: Path
    metadata: dict[str, str]
    max_abs_error: float                      # ONNX vs PyTorch over the checked inputs
    checked_shapes: list[tuple[int, ...]] = field(default_factory=list)
    quality: dict[str, float] = field(default_factory=dict)   # int8 against float32


def size_multiple(net: nn.Module) -> int:
    """2 ** (number of stride-2 convolutions): H and W must be multiples of it."""
    downs = sum(1 for m in net.modules() if isinstance(m, nn.Conv2d) and tuple(m.stride) == (2, 2))
    return 2 ** downs


class _ImageGenerator(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)


class _Half(nn.Module):
    """A half-precision copy of a generator behind float32 inputs and outputs."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = copy.deepcopy(net).half()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image.half()).float()


class _WithPreprocessing(nn.Module):
    """uint8 NHWC in and out, any H and W: scaling to [-1, 1], reflect padding to the size
    multiple, cropping back and the mapping to [0, 255] (rounded half to even, like ONNX
    Round) all inside the graph."""

    def __init__(self, net: nn.Module, multiple: int) -> None:
        super().__init__()
        self.net, self.multiple = net, multiple

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.permute(0, 3, 1, 2).float() / 127.5 - 1
        h, w = x.shape[2], x.shape[3]
        m = self.multiple
        x = torch.nn.functional.pad(x, (0, (m - w % m) % m, 0, (m - h % m) % m), mode="reflect")
        y = self.net(x)[:, :, :h, :w]
        return ((y + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


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


def export_generator(source: str | os.PathLike, out: str | os.PathLike, generator: str | None = None,
                     static: bool = False, with_preprocessing: bool = False,
                     from_format: str | None = None, image_size: int | None = None,
                     int8: bool = False, calibrate: str | os.PathLike | None = None,
                     fp16: bool = False) -> ExportResult:
    """Exports the generator ``generator`` (default: the plugin's first export spec) of a
    run directory or checkpoint to ``out``, or, with ``from_format`` (see foreign.py), a
    generator checkpoint saved by other code; see the module doc."""
    try:
        import onnx
    except ImportError:
        raise TrainError("ONNX export needs onnx, onnxscript and onnxruntime: pip install 'pyganx[cpu]' (or [gpu])") from None
    if int8 and not calibrate:
        raise TrainError("--int8 needs --calibrate DIR: sample images to calibrate the activations on")
    if fp16 and (int8 or with_preprocessing):
        raise TrainError("--fp16 goes with neither --int8 nor --with-preprocessing yet: export one of them")
    if int8 and with_preprocessing:
        raise TrainError("--int8 with --with-preprocessing is not supported yet: export one or the other")
    if from_format:
        from .foreign import load_foreign
        f = load_foreign(source, from_format, image_size or 256)
        net, c, s = f.net, f.channels, f.image_size
        meta = {"pyganx.plugin": f.plugin, "pyganx.generator": f.generator,
                "pyganx.domains": json.dumps(list(f.domains)), "pyganx.source": f.description}
    else:
        run = load_run(source, device="cpu")
        key, spec = run.spec(generator)
        if tuple(spec.inputs) != ("image",):
            raise TrainError(f"{run.name}'s {key} takes {', '.join(spec.inputs)}: only image-to-image "
                             f"generators can be exported so far")
        net = run.plugin.networks()[spec.network]
        c, s = run.info.channels, image_size or run.info.image_size
        meta = {"pyganx.plugin": run.name, "pyganx.generator": key,
                "pyganx.domains": json.dumps(list(spec.domains)), "pyganx.step": str(run.step),
                "pyganx.weights": run.weights}
    net = net.float().eval()
    mult = size_multiple(net)
    if s % mult:
        raise TrainError(f"image size {s} is not a multiple of the generator's size multiple {mult}")
    n = 1 if static else 2
    if with_preprocessing:
        model = _WithPreprocessing(net, mult).eval()
        example = torch.randint(0, 256, (n, s, s, c), dtype=torch.uint8)
        proto = to_onnx(model, example, None if static else 1, min_size=2 * mult)
        shapes = [(1, s, s, c)] if static else [(1, s, s, c), (2, s + 3, max(2 * mult, s - 5), c)]
    else:
        model = _ImageGenerator(net).eval()
        example = torch.rand(n, c, s, s) * 2 - 1
        exported = _Half(net).eval() if fp16 else model
        proto = to_onnx(exported, example, None if static else mult, norm_in_float32=fp16)
        shapes = [(1, c, s, s)] if static else [(1, c, s, s), (2, c, s + mult, max(2 * mult, s - mult))]
    meta = {
        "pyganx.version": __version__, **meta, "pyganx.image_size": str(s),
        "pyganx.normalization": ("in the graph: uint8 [0, 255] in and out" if with_preprocessing
                                 else "[-1, 1]: x / 127.5 - 1 in, (y + 1) * 127.5 out"),
        "pyganx.io_layout": "NHWC uint8" if with_preprocessing else "NCHW float32",
        "pyganx.size_multiple": "1" if with_preprocessing else str(mult),
        "pyganx.channels": str(c),
    }
    del proto.metadata_props[:]
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(proto, full_check=True)
    bad = custom_domains(proto)
    if bad:
        raise TrainError(f"the exported graph uses non-standard domains {bad}: a pyganx op lacks a translation")
    if fp16:
        proto.metadata_props.add(key="pyganx.precision",
                                 value="float16 weights and compute, instance norm in float32, float32 in/out")
    blob = proto.SerializeToString()
    err = verify(model, blob, shapes)
    tol = UINT8_TOLERANCE if with_preprocessing else FP32_TOLERANCE
    if fp16:
        # twice what PyTorch's own half-precision run of the generator is off, at least 1e-3
        tol = max(2 * half_error(net, shapes), 1e-3)
    if err > tol:
        raise TrainError(f"the ONNX model differs from PyTorch by up to {err:.2e} (> {tol:g}); not written")
    quality: dict[str, float] = {}
    if int8:
        blob, quality = _int8(blob, calibrate, c, s)
    atomic_write_bytes(Path(out), lambda f: f.write(blob))
    return ExportResult(Path(out), meta, err, shapes, quality)


def _int8(fp32: bytes, calibrate, channels: int, size: int) -> tuple[bytes, dict[str, float]]:
    """The int8 model of ``fp32`` and its cost: PSNR/SSIM against float32 on the
    calibration images."""
    import onnx

    from .quantize import calibration_images, psnr, quantize, ssim

    images = calibration_images(calibrate, channels, size)
    proto = onnx.load_from_string(quantize(fp32, images))
    proto.metadata_props.add(key="pyganx.precision", value="int8 QDQ (Conv, ConvTranspose), float32 elsewhere")
    onnx.checker.check_model(proto, full_check=True)
    if custom_domains(proto):
        raise TrainError(f"the int8 graph uses non-standard domains {custom_domains(proto)}")
    blob = proto.SerializeToString()
    ref, got = (_run_batches(ort_session(m), images) for m in (fp32, blob))
    return blob, {"images": float(len(images)), "psnr_db": psnr(got, ref), "ssim": ssim(got, ref),
                  "max_abs_diff": float(np.abs(got - ref).max())}


def _run_batches(session, images: np.ndarray, batch: int = 8) -> np.ndarray:
    return np.concatenate([session.run(None, {"image": images[i:i + batch]})[0]
                           for i in range(0, len(images), batch)])


def to_onnx(model: nn.Module, example: torch.Tensor, size_multiple: int | None, min_size: int = 2,
            norm_in_float32: bool = False):
    """``model(image)`` as an ONNX ModelProto (opset 18, pyganx ops translated). With a
    ``size_multiple``, batch is dynamic and the spatial dimensions are dynamic multiples of
    it (NCHW: dims 2 and 3; uint8 NHWC examples: dims 1 and 2), at least ``min_size``."""
    import onnx

    dynamic = None
    if size_multiple is not None:
        d, m = torch.export.Dim, size_multiple
        lo = max(2, -(-min_size // m))
        h, w = d("h", min=lo, max=8192 // m), d("w", min=lo, max=8192 // m)
        hh, ww = (h, w) if m == 1 else (m * h, m * w)
        spatial = (1, 2) if example.dtype == torch.uint8 else (2, 3)
        dynamic = {"image": {0: d("batch", min=1, max=4096), spatial[0]: hh, spatial[1]: ww}}
    table = translation_table(norm_in_float32)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)       # e.g. "torchvision is not installed. Skipping ..."
    try:
        with tempfile.TemporaryDirectory() as tmp:
            program = torch.onnx.export(model, (example,), dynamo=True, opset_version=OPSET,
                                        input_names=["image"], output_names=["output"],
                                        dynamic_shapes=dynamic, custom_translation_table=table,
                                        verbose=False, report=False)
            program.save(os.path.join(tmp, "m.onnx"))
            return onnx.load(os.path.join(tmp, "m.onnx"))
    except Exception as e:  # noqa: BLE001 - the exporter's errors are long; keep the first line
        raise TrainError(f"torch.onnx.export failed: {str(e).strip().splitlines()[0]}") from None
    finally:
        quiet.setLevel(level)


def half_error(net: nn.Module, shapes: list[tuple[int, ...]], seed: int = 0) -> float:
    """Largest |PyTorch float16 - PyTorch float32| of ``net`` over the inputs ``verify`` uses."""
    half = _Half(net).eval()
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    with torch.no_grad():
        for shape in shapes:
            x = torch.rand(shape, generator=g) * 2 - 1
            worst = max(worst, float((half(x) - net(x)).abs().max()))
    return worst


def verify(model: nn.Module, blob: bytes, shapes: list[tuple[int, ...]], seed: int = 0) -> float:
    """Largest |ONNX Runtime - PyTorch| over seeded inputs of ``shapes``: in [-1, 1], or
    uint8 when the model takes uint8 NHWC."""
    sess = ort_session(blob)
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    uint8 = sess.get_inputs()[0].type == "tensor(uint8)"
    for shape in shapes:
        x = (torch.randint(0, 256, shape, generator=g, dtype=torch.uint8) if uint8
             else torch.rand(shape, generator=g) * 2 - 1)
        with torch.no_grad():
            ref = model(x).numpy().astype(np.float64)
        got = sess.run(None, {"image": x.numpy()})[0].astype(np.float64)
        if got.shape != ref.shape:
            raise TrainError(f"the ONNX model gives shape {got.shape} for input {shape}, PyTorch {ref.shape}")
        worst = max(worst, float(np.abs(got - ref).max()))
    return worst


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in m.metadata_props}


__all__ = ["ExportResult", "FP32_TOLERANCE", "OPSET", "custom_domains", "export_generator",
           "read_metadata", "size_multiple", "to_onnx", "verify"]
