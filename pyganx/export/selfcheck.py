"""The export's self-check (docs/export.md, "The self-check"): onnxruntime's outputs on
sample inputs against the exact result, the network in float64, within a bound that
follows the kind of graph (:func:`check_export`).

The reference is exact: the network in float64 (its pyganx ops run their float64 paths,
direct convolutions: NNPACK's Winograd is float32 only, docs/ops.md). A float32 graph is
accepted when onnxruntime's output is within a multiple of float32's own error of it,
that error being the plain PyTorch float32 composition's (fused ops unfused, direct
convolutions) against float64 on the same inputs, plus an absolute floor:
max|ORT - f64| <= multiple * max|f32 - f64| + FP32_FLOOR * max|f64|. The bound follows
the network: deep, wide or large-input generators accumulate more rounding than small
ones, and a fixed number is too tight for the first or too loose for the second.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import ExportError
from .convert import ort_session
from .wrappers import HalfPrecision, ImageGenerator, WithPreprocessing

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


@dataclass
class SelfCheck:
    """What the self-check found: the largest |ONNX - reference|, the largest accepted,
    and the reference itself."""
    error: float
    bound: float
    reference: Reference


def check_export(model: nn.Module, blob: bytes, checks: list[tuple], *, with_preprocessing: bool = False,
                 fp16: bool = False, winograd: bool = False) -> SelfCheck:
    """Runs the serialized model ``blob`` with onnxruntime on the check inputs and compares
    it with ``model`` (the graph's PyTorch twin, float32) in float64. The bound: a multiple
    of float32's own error for a float32 graph (:data:`WINOGRAD_MULTIPLE` with
    ``winograd``, else :data:`FP32_MULTIPLE`), or :data:`FP32_TOLERANCE` against float32
    for a network without a float64 run; twice PyTorch's float16 error (at least 1e-3)
    for ``fp16``; one 8-bit level (more with float16) for ``with_preprocessing``. An
    ExportError beyond the bound."""
    ref = reference(model, checks, float32_error=not (fp16 or with_preprocessing))
    err = verify(model, blob, checks, ref)
    against = ("the exact result (the network in float64)" if ref.exact else
               "PyTorch float32 (the network does not run in float64)")
    if with_preprocessing:
        tol: float = UINT8_TOLERANCE
        if fp16:
            # the float16 bound below in 8-bit levels, plus the one level of rounding
            floats = [(t[0].permute(0, 3, 1, 2).float() / 127.5 - 1,) for t in checks]
            tol += math.ceil(127.5 * max(2 * half_error(ImageGenerator(model.net).eval(), floats), 1e-3))
        why = (f"the ONNX model's 8-bit output differs from {against}, rounded, by up to {err:g} levels "
               f"(> {tol})")
    elif fp16:
        # twice what PyTorch's own half-precision run of the generator is off, at least 1e-3
        tol = max(2 * half_error(model, checks, reference=ref), 1e-3)
        why = (f"the float16 ONNX model is off {against} by up to {err:.2e}, more than {tol:.2e} "
               f"(twice PyTorch's own float16 error, at least 1e-3)")
    elif not ref.exact:
        tol = FP32_TOLERANCE
        why = f"the ONNX model differs from {against} by up to {err:.2e} (> {tol:g})"
    else:
        k = WINOGRAD_MULTIPLE if winograd else FP32_MULTIPLE
        tol = ref.bound(k)
        why = (f"the ONNX model is off {against} by up to {err:.2e}, while PyTorch float32 is off by "
               f"{ref.float32_error:.2e}: more than {k} x that + {FP32_FLOOR * ref.scale:.1e} = {tol:.2e}")
    if not err <= tol:                    # NaN too
        raise ExportError(f"{why}; not written")
    return SelfCheck(err, tol, ref)


__all__ = ["FP32_FLOOR", "FP32_MULTIPLE", "FP32_TOLERANCE", "Reference", "SelfCheck", "UINT8_TOLERANCE",
           "WINOGRAD_MULTIPLE", "check_export", "float64_copy", "half_error", "plain_copy", "reference",
           "verify"]
