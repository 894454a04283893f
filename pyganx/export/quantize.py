"""``pyganx export --int8 --calibrate DIR``: onnxruntime static QDQ quantisation of an
exported float32 generator, for CPU deployment, and what it costs in quality.

Only the convolutions (Conv) are quantised: int8 weights per output channel, uint8
activations calibrated (MinMax) on up to 64 sample images. Instance norm, padding, the
residual adds and tanh stay float32; that is where the time is not, and quantising them
broke ONNX Runtime's shape inference on the reflect pads (tried with onnxruntime 1.32).
Two kinds of layer stay float32 because int8 made them slower on CPU: ConvTranspose,
which onnxruntime has no int8 CPU kernel for (it ran dequantised, in float32, behind
extra Q/DQ nodes), and convolutions with fewer than 8 output channels (the output
layer). Rewriting the upsampling as a Conv plus DepthToSpace, so that it quantises,
gained nothing: DepthToSpace took what the int8 Conv saved.

The cost is measured, not assumed: PSNR and SSIM of the int8 model's outputs against
the float32 model's on the calibration images (the outputs mapped to [0, 1]).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pyganx_runtime import metadata as keys

from ..data import EvalTransform, ImageError, list_images, load_image
from ..errors import DataError, ExportError
from .convert import custom_domains, ort_session

MAX_CALIBRATION_IMAGES = 64


def calibration_images(folder: str | os.PathLike, channels: int, size: int) -> np.ndarray:
    """Up to 64 images of ``folder`` (evenly spread, sorted by name) as (N, C, S, S)
    float32 in [-1, 1]."""
    paths = list_images(folder)
    if not paths:
        raise DataError(f"{folder}: no images to calibrate on")
    step = max(1, len(paths) // MAX_CALIBRATION_IMAGES)
    t = EvalTransform(size)
    try:
        return np.stack([t(load_image(p, channels)).numpy() for p in paths[::step][:MAX_CALIBRATION_IMAGES]])
    except ImageError as e:
        raise ImageError(f"calibration image {e}", e.path) from None


def quantize(fp32_model: bytes, images: np.ndarray) -> bytes:
    """The QDQ int8 model of ``fp32_model`` (serialized ONNX) calibrated on ``images``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(images[i:i + 1] for i in range(len(images)))

        def get_next(self):
            x = next(self.items, None)
            return None if x is None else {"image": x}

    with tempfile.TemporaryDirectory() as tmp:
        src, pre, dst = (os.path.join(tmp, n) for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        Path(src).write_bytes(fp32_model)
        quant_pre_process(src, pre, skip_symbolic_shape=True)
        quantize_static(pre, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["Conv"], nodes_to_exclude=_narrow_convs(pre))
        return Path(dst).read_bytes()


def int8_model(fp32: bytes, calibrate: str | os.PathLike, channels: int, size: int) -> tuple[bytes, dict[str, float]]:
    """The checked int8 model of the serialized float32 model ``fp32``, calibrated on the
    images of the folder ``calibrate`` (``channels``, ``size``), and its cost: PSNR/SSIM
    and the largest difference against float32 on those images."""
    import onnx

    images = calibration_images(calibrate, channels, size)
    proto = onnx.load_from_string(quantize(fp32, images))
    proto.metadata_props.add(key=keys.PRECISION, value="int8 QDQ (Conv, ConvTranspose), float32 elsewhere")
    onnx.checker.check_model(proto, full_check=True)
    if custom_domains(proto):
        raise ExportError(f"the int8 graph uses non-standard domains {custom_domains(proto)}")
    blob = proto.SerializeToString()
    ref, got = (_run_batches(ort_session(m), images) for m in (fp32, blob))
    return blob, {"images": float(len(images)), "psnr_db": psnr(got, ref), "ssim": ssim(got, ref),
                  "max_abs_diff": float(np.abs(got - ref).max())}


def _run_batches(session, images: np.ndarray, batch: int = 8) -> np.ndarray:
    return np.concatenate([session.run(None, {"image": images[i:i + batch]})[0]
                           for i in range(0, len(images), batch)])


def _narrow_convs(path: str) -> list[str]:
    """The Conv nodes with fewer than 8 output channels (a generator's last layer):
    onnxruntime's int8 convolution pads its output channels to whole blocks, and ran the
    64-to-3 7x7 output layer 1.4x slower than float32 (benchmarks/RESULTS.md)."""
    import onnx
    model = onnx.load(path)
    dims = {t.name: list(t.dims) for t in model.graph.initializer}
    return [n.name for n in model.graph.node
            if n.op_type == "Conv" and len(n.input) > 1 and n.input[1] in dims and dims[n.input[1]][0] < 8]


def _gaussian(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-r ** 2 / (2 * sigma ** 2))
    g /= g.sum()
    return g[:, None] * g[None, :]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two image batches in [-1, 1] (peak: the [0, 1] range)."""
    mse = float(np.mean(((a.astype(np.float64) - b) / 2) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03)
    of two (N, C, H, W) batches in [-1, 1], per channel, on the [0, 1] range."""
    x = torch.from_numpy((a.astype(np.float64) + 1) / 2)
    y = torch.from_numpy((b.astype(np.float64) + 1) / 2)
    n, c = x.shape[:2]
    w = _gaussian().expand(c, 1, 11, 11)

    def blur(t):
        return F.conv2d(t, w, groups=c)
    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return float(s.mean())
