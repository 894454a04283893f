"""``pyganx export``: a trained generator as a self-checked ONNX model.

The generator is exported with ``torch.onnx.export(dynamo=True)`` at opset 18, pyganx's
compiled ops translated into standard ONNX ops (translations.py). Batch, height and
width are dynamic (height and width as multiples of the generator's size multiple)
unless ``static``. Every model carries the metadata keys of docs/contracts.md, passes
``onnx.checker``, holds no custom-domain node, and is run with onnxruntime on sample
inputs and compared with the exact result, the same network in float64, before it is
written; a mismatch is an error (docs/export.md, "The self-check").
"""
from __future__ import annotations

import copy
import json
import logging
import math
import os
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pyganx_runtime import metadata as keys
from pyganx_runtime.files import atomic_write_bytes
from pyganx_runtime.metadata import read_metadata

from .._version import __version__
from ..engine.run import LoadedRun, load_run
from ..errors import CheckpointError, DependencyError, ExportError, UsageError
from ..nn import one_hot
from ..nn.foreign import FORMAT_PROJECTS, guess_format, load_foreign
from .translations import translation_table

OPSET = 18
# The self-check's reference is exact: the network in float64 (its pyganx ops run their
# float64 paths, direct convolutions: NNPACK's Winograd is float32 only, docs/ops.md).
# A float32 graph is accepted when onnxruntime's output is within a multiple of
# float32's own error of it, that error being the plain PyTorch float32 composition's
# (fused ops unfused, direct convolutions) against float64 on the same inputs, plus an
# absolute floor:  max|ORT - f64| <= multiple * max|f32 - f64| + FP32_FLOOR * max|f64|.
# The bound follows the network: deep, wide or large-input generators accumulate more
# rounding than small ones, and a fixed number is too tight for the first or too loose
# for the second.
#: The plain graph: onnxruntime measured 0.67-1.18x float32's own error (CycleGAN and
#: StarGAN generators, 2-9 blocks, 8-64 filters, 32-256 px, random and N(0, 0.05)
#: weights; benchmarks/RESULTS.md). 8 leaves room for other summation orders (another
#: CPU, other kernels) while a real mistake (a wrong padding, weight or norm) is off by
#: 1e-3 and more, hundreds of times float32's error.
FP32_MULTIPLE = 8
#: ``--winograd``: F(4x4, 3x3)'s transforms (points 0, +-1, +-2, infinity) round more
#: than a direct convolution; measured 2.4-8.8x float32's own error on the same
#: generators, so 32.
WINOGRAD_MULTIPLE = 32
#: The floor, times the largest |output| of the float64 reference: about 8 float32 ulps
#: there, for networks so shallow that float32's own error is a few ulps.
FP32_FLOOR = 1e-6
#: Largest |ONNX - PyTorch float32| accepted for a float32 graph of a network that cannot
#: run in float64 (a plugin's op without a double kernel), outputs in [-1, 1]. The tests
#: also use it for small generators, whose convolutions are all direct.
FP32_TOLERANCE = 1e-4
#: With preprocessing the outputs are 8-bit: a value on a rounding boundary may land one
#: level apart from the float64 reference's rounding.
UINT8_TOLERANCE = 1
STANDARD_DOMAINS = ("", "ai.onnx")


@dataclass
class ExportResult:
    path: Path
    metadata: dict[str, str]
    max_abs_error: float                      # ONNX vs the reference over the checked inputs
    checked_shapes: list[tuple[int, ...]] = field(default_factory=list)
    quality: dict[str, float] = field(default_factory=dict)   # int8 against float32
    float32_error: float | None = None        # plain float32 PyTorch vs float64 (float32 graphs)
    bound: float = 0.0                        # the largest max_abs_error accepted
    reference: str = "float64"                # "float64", or "float32" for a network without one


def size_multiple(net: nn.Module) -> int:
    """2 ** (number of stride-2 convolutions): H and W must be multiples of it."""
    downs = sum(1 for m in net.modules() if isinstance(m, nn.Conv2d) and tuple(m.stride) == (2, 2))
    return 2 ** downs


class ImageGenerator(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)


class DomainGenerator(nn.Module):
    """``(image, domain)`` with the target domain as int64 indices (N,), one-hot inside
    the graph (StarGAN)."""

    def __init__(self, net: nn.Module, num_domains: int) -> None:
        super().__init__()
        self.net, self.num_domains = net, num_domains

    def forward(self, image: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        return self.net(image, one_hot(domain, self.num_domains, image.dtype))


class NoiseGenerator(nn.Module):
    """``(z)`` or ``(z, label)`` with z (N, z_dim) and class indices (N,) (DCGAN, cGAN)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, z: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(z, label)


class HalfPrecision(nn.Module):
    """A half-precision copy of a generator behind float32 inputs and outputs (integer
    inputs pass through)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = copy.deepcopy(net).half()

    def forward(self, first: torch.Tensor, second: torch.Tensor | None = None) -> torch.Tensor:
        inputs = (first,) if second is None else (first, second)
        return self.net(*(t.half() if t.is_floating_point() else t for t in inputs)).float()


class WithPreprocessing(nn.Module):
    """uint8 NHWC in and out, any H and W: scaling to [-1, 1], reflect padding to the size
    multiple, cropping back and the mapping to [0, 255] (rounded half to even, like ONNX
    Round) all inside the graph."""

    def __init__(self, net: nn.Module, multiple: int) -> None:
        super().__init__()
        self.net, self.multiple = net, multiple
        self.compute_dtype = torch.float32     # float64 in the self-check's reference

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.permute(0, 3, 1, 2).to(self.compute_dtype) / 127.5 - 1
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
                     fp16: bool = False, foreign_domains: tuple[str, ...] | None = None,
                     winograd: bool = False) -> ExportResult:
    """Exports the generator ``generator`` (default: the plugin's first export spec) of a
    run directory or checkpoint to ``out``, or, with ``from_format`` (see foreign.py), a
    generator checkpoint saved by other code (``foreign_domains`` names its labels);
    see the module doc. ``winograd``: 3x3 convolutions as Winograd F(4x4, 3x3) for
    onnxruntime's CPU provider (winograd.py); checked against the plain generator."""
    try:
        import onnx
    except ImportError:
        raise DependencyError("ONNX export needs onnx, onnxscript and onnxruntime: "
                              "pip install 'pyganx[cpu]' (or [gpu])") from None
    if int8 and not calibrate:
        raise UsageError("--int8 needs --calibrate DIR: sample images to calibrate the activations on")
    if fp16 and int8:
        raise UsageError("--fp16 and --int8 are alternatives (half precision for GPUs, int8 for CPUs): "
                         "export one of them")
    if int8 and with_preprocessing:
        raise UsageError("--int8 with --with-preprocessing is not supported yet: export one or the other")
    if winograd and (fp16 or int8):
        raise UsageError("--winograd is a float32 graph for onnxruntime's CPU provider: it does not "
                         "combine with --fp16 (GPUs) or --int8 (which quantises convolutions)")
    if foreign_domains and not from_format:
        raise UsageError("--domains names the labels of a --from yunjey-stargan generator; a pyganx "
                         "run knows its own")
    if from_format:
        f = load_foreign(source, from_format, image_size, domains=foreign_domains)
        net, c, s = f.net, f.channels, f.image_size
        meta = {keys.PLUGIN: f.plugin, keys.GENERATOR: f.generator,
                keys.DOMAINS: json.dumps(list(f.domains)), keys.SOURCE: f.description}
        inputs: tuple[str, ...] = tuple(f.inputs)
        domains: tuple[str, ...] = tuple(f.domains)
    else:
        run = _load_run(source)
        key, spec = run.spec(generator)
        inputs, domains = tuple(spec.inputs), tuple(spec.domains)
        net = run.plugin.networks()[spec.network]
        c, s = run.info.channels, image_size or run.info.image_size
        meta = {keys.PLUGIN: run.name, keys.GENERATOR: key,
                keys.DOMAINS: json.dumps(list(domains)), keys.STEP: str(run.step),
                keys.WEIGHTS: run.weights}
        if spec.z_dim:
            meta[keys.Z_DIM] = str(spec.z_dim)
    net = net.float().eval()
    graph = _graph(net, inputs, domains, c, s, static, with_preprocessing, fp16)
    model, checks, mult = graph.model, graph.checks, graph.multiple
    exported = graph.exported
    if winograd:
        from .winograd import winograd as to_winograd
        fast, replaced = to_winograd(net)
        if not replaced:
            raise UsageError("--winograd: the generator has no 3x3 stride-1 convolution with enough "
                             "channels to compute as Winograd F(4x4, 3x3)")
        # traced from the rewritten copy, checked against the generator as trained (in
        # float64) with WINOGRAD_MULTIPLE
        exported = _graph(fast, inputs, domains, c, s, static, with_preprocessing, fp16).exported
        meta[keys.WINOGRAD] = f"F(4x4,3x3) on {replaced} convolutions (for onnxruntime's CPU provider)"
    proto = to_onnx(exported, graph.example, None if static else graph.dynamic,
                    norm_in_float32=fp16, input_names=graph.names)
    shapes = [tuple(t[0].shape) for t in checks]
    meta = {
        keys.VERSION: __version__, **meta, keys.IMAGE_SIZE: str(s),
        keys.FORMAT: str(keys.FORMAT_VERSION),
        keys.NORMALIZATION: ("in the graph: uint8 [0, 255] in and out" if with_preprocessing
                              else "[-1, 1]: x / 127.5 - 1 in, (y + 1) * 127.5 out"),
        keys.IO_LAYOUT: "NHWC uint8" if with_preprocessing else "NCHW float32",
        keys.SIZE_MULTIPLE: "1" if with_preprocessing else str(mult),
        keys.CHANNELS: str(c),
        keys.INPUTS: json.dumps(list(inputs)),
    }
    del proto.metadata_props[:]
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(proto, full_check=True)
    bad = custom_domains(proto)
    if bad:
        raise ExportError(f"the exported graph uses non-standard domains {bad}: a pyganx op lacks a translation")
    if fp16:
        proto.metadata_props.add(key=keys.PRECISION,
                                 value="float16 weights and compute, instance norm in float32, float32 in/out")
    blob = proto.SerializeToString()
    # the self-check (module doc; the constants above): every kind against the float64 run.
    # float32 graphs: a multiple of float32's own error; float16 graphs: twice PyTorch's
    # float16 error (both errors against float64); uint8 outputs: one 8-bit level (more
    # with float16). An int8 model is not bounded: its float32 graph passes this check
    # and _int8 reports what quantising costs against that graph (PSNR, SSIM).
    ref = reference(model, checks, float32_error=not (fp16 or with_preprocessing))
    err = verify(model, blob, checks, ref)
    against = ("the exact result (the network in float64)" if ref.exact else
               "PyTorch float32 (the network does not run in float64)")
    if with_preprocessing:
        tol = UINT8_TOLERANCE
        if fp16:
            # the float16 bound below in 8-bit levels, plus the one level of rounding
            floats = [(t[0].permute(0, 3, 1, 2).float() / 127.5 - 1,) for t in checks]
            tol += math.ceil(127.5 * max(2 * half_error(ImageGenerator(net).eval(), floats), 1e-3))
        if not err <= tol:                # NaN too
            raise ExportError(f"the ONNX model's 8-bit output differs from {against}, rounded, by up "
                              f"to {err:g} levels (> {tol}); not written")
    elif fp16:
        # twice what PyTorch's own half-precision run of the generator is off, at least 1e-3
        tol = max(2 * half_error(model, checks, reference=ref), 1e-3)
        if not err <= tol:
            raise ExportError(f"the float16 ONNX model is off {against} by up to {err:.2e}, more than "
                              f"{tol:.2e} (twice PyTorch's own float16 error, at least 1e-3); not written")
    elif not ref.exact:
        tol = FP32_TOLERANCE
        if not err <= tol:
            raise ExportError(f"the ONNX model differs from {against} by up to {err:.2e} "
                              f"(> {tol:g}); not written")
    else:
        k = WINOGRAD_MULTIPLE if winograd else FP32_MULTIPLE
        tol = ref.bound(k)
        if not err <= tol:
            raise ExportError(f"the ONNX model is off {against} by up to {err:.2e}, while PyTorch float32 "
                              f"is off by {ref.float32_error:.2e}: more than {k} x that + "
                              f"{FP32_FLOOR * ref.scale:.1e} = {tol:.2e}; not written")
    quality: dict[str, float] = {}
    if int8:
        if inputs != ("image",):
            raise UsageError(f"--int8 is calibrated on images: it takes image-only generators, not "
                             f"one with inputs {', '.join(inputs)}")
        blob, quality = _int8(blob, calibrate, c, s)
    atomic_write_bytes(Path(out), lambda f: f.write(blob))
    return ExportResult(Path(out), meta, err, shapes, quality, ref.float32_error, tol,
                        "float64" if ref.exact else "float32")


def _load_run(source) -> LoadedRun:
    """load_run on CPU; a checkpoint file that is not pyganx's but has the layout of a
    generator ``--from`` reads gets that hint in its error."""
    try:
        return load_run(source, device="cpu")
    except CheckpointError as e:
        fmt = guess_format(source) if Path(source).is_file() else None
        if fmt is None:
            raise
        raise CheckpointError(f"{e}; this looks like a {FORMAT_PROJECTS[fmt]} generator: "
                              f"add --from {fmt}") from None


@dataclass
class _Graph:
    model: nn.Module            # float32 PyTorch reference, the graph's inputs in order
    exported: nn.Module         # what is traced (the half copy with --fp16)
    example: tuple              # tracing inputs
    names: list[str]            # ONNX input names
    dynamic: dict | None        # torch.export dynamic shapes by input name
    checks: list[tuple]         # inputs that ONNX and PyTorch must agree on
    multiple: int               # H and W multiple (1 for noise models)


def _graph(net: nn.Module, inputs: tuple[str, ...], domains: tuple[str, ...], c: int, s: int,
           static: bool, with_preprocessing: bool, fp16: bool) -> _Graph:
    """The wrapper, example inputs, dynamic dimensions and check inputs for a generator
    with ``inputs`` (docs/contracts.md: image; image + domain; z; z + label)."""
    g = torch.Generator().manual_seed(0)
    batch = torch.export.Dim("batch", min=1, max=4096)
    if inputs and inputs[0] == "z":
        z_dim = getattr(net, "z_dim", None)
        if inputs not in (("z",), ("z", "label")) or not z_dim:
            raise ExportError(f"cannot export a noise generator with inputs {', '.join(inputs)}")
        if with_preprocessing:
            raise UsageError("--with-preprocessing is for image-to-image generators; this one takes noise")
        k = max(1, len(domains))

        def make(n: int) -> tuple:
            z = torch.randn(n, z_dim, generator=g)
            return (z, torch.randint(k, (n,), generator=g)) if len(inputs) == 2 else (z,)
        model = NoiseGenerator(net).eval()
        names = list(inputs)
        dynamic = {name: {0: batch} for name in names}
        example = make(1 if static else 2)
        checks = [example] if static else [make(1), make(3)]
        return _Graph(model, HalfPrecision(model).eval() if fp16 else model, example, names, dynamic, checks, 1)
    if inputs not in (("image",), ("image", "domain")):
        raise ExportError(f"cannot export a generator with inputs {', '.join(inputs)}")
    mult = size_multiple(net)
    if s % mult:
        raise UsageError(f"image size {s} is not a multiple of the generator's size multiple {mult}")
    # trace at no less than twice the multiple, the least dynamic H and W allowed
    t = s if static else max(s, 2 * mult)
    n = 1 if static else 2
    if with_preprocessing:
        if len(inputs) > 1:
            raise UsageError("--with-preprocessing takes image-only generators so far")
        model = WithPreprocessing(net, mult).eval()
        exported = WithPreprocessing(HalfPrecision(net), mult).eval() if fp16 else model
        example = (torch.randint(0, 256, (n, t, t, c), dtype=torch.uint8, generator=g),)
        dyn = {"image": image_dims(1, 2 * mult, nhwc=True, batch=batch)}
        shapes = [(1, s, s, c)] if static else [(1, s, s, c), (2, s + 3, max(2 * mult, s - 5), c)]
        checks = [(torch.randint(0, 256, sh, dtype=torch.uint8, generator=g),) for sh in shapes]
        return _Graph(model, exported, example, ["image"], dyn, checks, mult)
    shapes = [(1, c, s, s)] if static else [(1, c, s, s), (2, c, s + mult, max(2 * mult, s - mult))]
    if inputs == ("image",):
        model = ImageGenerator(net).eval()
        extra = lambda n: ()  # noqa: E731
        dynamic = {"image": image_dims(mult, 2 * mult, batch=batch)}
    else:
        k = len(domains)
        if k < 2:
            raise UsageError(f"a generator with a domain input needs the domain names, got {list(domains)}")
        model = DomainGenerator(net, k).eval()
        extra = lambda n: (torch.randint(k, (n,), generator=g),)  # noqa: E731
        dynamic = {"image": image_dims(mult, 2 * mult, batch=batch), "domain": {0: batch}}
    example = (torch.rand(n, c, t, t, generator=g) * 2 - 1, *extra(n))
    checks = [(torch.rand(sh, generator=g) * 2 - 1, *extra(sh[0])) for sh in shapes]
    return _Graph(model, HalfPrecision(model).eval() if fp16 else model, example, list(inputs), dynamic, checks, mult)


def _int8(fp32: bytes, calibrate, channels: int, size: int) -> tuple[bytes, dict[str, float]]:
    """The int8 model of ``fp32`` and its cost: PSNR/SSIM against float32 on the
    calibration images."""
    import onnx

    from .quantize import calibration_images, psnr, quantize, ssim

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


def _as_inputs(checks, seed: int) -> list[tuple]:
    """Check inputs: tuples of tensors as given, or image shapes filled with seeded values
    in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    return [c if isinstance(c, tuple) and c and isinstance(c[0], torch.Tensor)
            else (torch.rand(c, generator=g) * 2 - 1,) for c in checks]


def plain_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose pyganx modules (residual blocks, instance norm + ReLU) run
    as their plain PyTorch composition (``fused=False``): no compiled op, no Winograd, no
    per-shape choice by measuring."""
    from ..nn import InstanceNormReLU, ResidualBlock

    out = copy.deepcopy(model)
    for m in out.modules():
        if isinstance(m, (ResidualBlock, InstanceNormReLU)):
            m.fused = False
    return out


def float64_copy(model: nn.Module) -> nn.Module:
    """``model`` in float64, its pyganx modules as their PyTorch composition: the
    self-check's exact reference (the compiled ops' float64 paths, direct convolutions,
    give the same within 1e-14 on a block; a test checks). A preprocessing wrapper
    scales its uint8 input in float64 too."""
    out = plain_copy(model).double()
    for m in out.modules():
        if isinstance(m, WithPreprocessing):
            m.compute_dtype = torch.float64
    return out


def _double(inputs: tuple) -> tuple:
    return tuple(t.double() if t.is_floating_point() else t for t in inputs)


@dataclass
class Reference:
    """The self-check's reference outputs of the check inputs (float64 arrays, uint8 for a
    preprocessing model), float32's own error against them and the output scale."""
    outputs: list[np.ndarray]
    float32_error: float | None     # max |plain float32 PyTorch - float64|; None: not measured
    scale: float                    # max |output| (1 for uint8 outputs)
    exact: bool = True              # False: the network has no float64 run, float32 stands in

    def bound(self, multiple: float) -> float:
        """``multiple`` x float32's own error + the floor (FP32_FLOOR of the scale)."""
        if self.float32_error is None:
            raise ValueError("the reference was computed without float32's error")
        return multiple * self.float32_error + FP32_FLOOR * self.scale


def reference(model: nn.Module, checks: list[tuple], float32_error: bool = True) -> Reference:
    """The float64 outputs of ``model`` (the graph's inputs in order) on the check inputs,
    and (``float32_error``) the largest |plain float32 - float64| over them. A network
    that cannot run in float64 (a plugin's op without a double kernel) gets its plain
    float32 outputs instead, marked ``exact=False``."""
    from ..ops import cpu_winograd

    outputs: list[np.ndarray] = []
    exact = True
    with torch.no_grad():
        try:
            m64 = float64_copy(model).eval()
            outputs = [m64(*_double(inputs)).numpy() for inputs in checks]
        except (RuntimeError, TypeError, NotImplementedError):
            exact = False
        worst = None
        if float32_error or not exact:
            with cpu_winograd(False):       # for compiled ops used outside pyganx's modules
                plain = plain_copy(model).eval()
                f32 = [plain(*inputs).numpy() for inputs in checks]
            if exact:
                worst = max(float(np.abs(a.astype(np.float64) - b).max()) for a, b in zip(f32, outputs))
            else:
                outputs = f32
    outputs = [o if o.dtype == np.uint8 else o.astype(np.float64) for o in outputs]
    scale = max(float(np.abs(o.astype(np.float64)).max()) for o in outputs) if outputs else 0.0
    return Reference(outputs, worst, 1.0 if outputs and outputs[0].dtype == np.uint8 else scale, exact)


def half_error(model: nn.Module, checks, seed: int = 0, reference: Reference | None = None) -> float:
    """Largest |PyTorch float16 - PyTorch float64| of ``model`` over the check inputs
    (tuples of tensors, or image shapes); ``reference``: the float64 outputs of those
    inputs, if already computed."""
    half = HalfPrecision(model).eval()
    inputs_list = _as_inputs(checks, seed)
    if reference is None:
        with torch.no_grad():
            m64 = float64_copy(model).eval()
            refs = [m64(*_double(inputs)).numpy() for inputs in inputs_list]
    else:
        refs = reference.outputs
    worst = 0.0
    with torch.no_grad():
        for inputs, ref in zip(inputs_list, refs):
            worst = max(worst, float(np.abs(half(*inputs).double().numpy() - ref).max()))
    return worst


def verify(model: nn.Module, blob: bytes, checks: list[tuple], ref: Reference | None = None) -> float:
    """Largest |ONNX Runtime - reference| over the check inputs, tuples of tensors in the
    graph's input order; the reference is the network in float64 (:func:`reference`),
    computed here unless given."""
    if ref is None:
        ref = reference(model, checks, float32_error=False)
    sess = ort_session(blob)
    names = [i.name for i in sess.get_inputs()]
    worst = 0.0
    for inputs, want in zip(checks, ref.outputs):
        got = sess.run(None, {n: t.numpy() for n, t in zip(names, inputs)})[0]
        if got.shape != want.shape:
            raise ExportError(f"the ONNX model gives shape {got.shape} for inputs "
                             f"{[tuple(t.shape) for t in inputs]}, PyTorch {want.shape}")
        worst = max(worst, float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max()))
    return worst


__all__ = ["ExportResult", "FP32_FLOOR", "FP32_MULTIPLE", "FP32_TOLERANCE", "OPSET", "Reference",
           "WINOGRAD_MULTIPLE", "custom_domains", "export_generator", "read_metadata", "reference",
           "size_multiple", "to_onnx", "verify"]
