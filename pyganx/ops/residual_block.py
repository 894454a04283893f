"""Python face of pyganx::residual_block: the wrapper and the fake kernels.

The op computes ``x + IN2(conv3x3(pad(ReLU(IN1(conv3x3(pad(x)))))))``; how it is fused
(padding folded into the convolutions, IN2 + residual add in one pass, a backward that
keeps only h1 and the statistics) is described in docs/ops.md. Autograd is registered
in C++ (csrc/ops/autograd/residual_block_kernel.cpp).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

from .. import _extension
from . import _reference
from .layout import empty_output


def residual_block(x: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None,
                   gamma1: Tensor | None = None, beta1: Tensor | None = None,
                   gamma2: Tensor | None = None, beta2: Tensor | None = None,
                   padding: str = "reflect", eps: float = 1e-5) -> Tensor:
    """The CycleGAN/StarGAN residual block as one op.

    ``x``: (N, C, H, W), H and W >= 2, contiguous or channels_last (the output keeps
    the layout); ``w1``/``w2``: (C, C, 3, 3) convolution weights with optional biases
    ``b1``/``b2``; ``gamma``/``beta``: optional instance-norm affine parameters;
    ``padding``: ``"reflect"`` (CycleGAN) or ``"zero"`` (StarGAN).
    """
    if not _extension.supports(x.device.type):
        return _reference.residual_block(x, w1, b1, w2, b2, gamma1, beta1, gamma2, beta2,
                                         padding, eps)
    return torch.ops.pyganx.residual_block(x, w1, b1, w2, b2, gamma1, beta1, gamma2, beta2,
                                           padding, eps)


def cpu_winograd_enabled() -> bool:
    """The setting that lets the CPU op run its large 3x3 convolutions (float32 NCHW,
    >= 128 channels, planes >= 48 x 48) with NNPACK's Winograd transforms (about 1.5e-5
    of the largest output in float32) instead of oneDNN's direct algorithm; where NNPACK
    is not usable the op stays on oneDNN whatever it says. On by default;
    ``PYGANX_CPU_WINOGRAD=0`` turns it off for a process. False without the compiled
    extension."""
    mod = _extension._module
    return bool(mod is not None and mod.cpu_winograd_enabled())


def set_cpu_winograd(enabled: bool) -> bool:
    """Turns the CPU Winograd convolutions on or off for this process; returns the previous
    setting. A no-op (returning False) without the compiled extension."""
    mod = _extension._module
    if mod is None:
        return False
    return bool(mod.set_cpu_winograd(bool(enabled)))


@contextlib.contextmanager
def cpu_winograd(enabled: bool) -> Iterator[None]:
    """``with cpu_winograd(False): ...`` runs a block with oneDNN's direct convolutions
    (and restores the previous setting after it)."""
    previous = set_cpu_winograd(enabled)
    try:
        yield
    finally:
        set_cpu_winograd(previous)


@contextlib.contextmanager
def winograd_local(enabled: bool) -> Iterator[None]:
    """On this thread, the residual block runs its convolutions with (True) or without
    Winograd; its backward follows what its forward used."""
    mod = _extension._module
    if mod is None:
        yield
        return
    previous = mod._set_cpu_winograd_local(1 if enabled else 0)
    try:
        yield
    finally:
        mod._set_cpu_winograd_local(previous)


def winograd_applies(x: Tensor) -> bool:
    """Whether the residual block's built-in gate sends this input's convolutions to
    NNPACK's Winograd (mirrors use_winograd() in csrc/ops/residual_block.cpp)."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or not x.is_contiguous():
        return False
    if x.shape[1] < 128 or min(x.shape[2], x.shape[3]) < 48:
        return False
    return cpu_winograd_enabled() and torch.backends.nnpack.is_available()


def training_convolutions(checkpoint_activations: bool,
                          device: torch.device) -> contextlib.AbstractContextManager:
    """The convolutions a training run uses: with activation checkpointing on CPU (memory
    over speed) the direct ones, since the Winograd path's NNPACK workspace (21 MiB at
    256 px, 36 MiB at 512 px) would put a 512 px step above an eager one at 256 px;
    otherwise the current setting. Used by the trainer and by ``pyganx bench memory``."""
    if checkpoint_activations and device.type == "cpu":
        return cpu_winograd(False)
    return contextlib.nullcontext()


def _check(x: Tensor, w1: Tensor, w2: Tensor, padding: str) -> None:
    torch._check(x.dim() == 4, lambda: f"residual_block: expected a 4-D (N, C, H, W) input, got shape {list(x.shape)}")
    torch._check(x.shape[2] >= 2 and x.shape[3] >= 2,
                 lambda: f"residual_block: H and W must be at least 2, got shape {list(x.shape)}")
    torch._check(padding in ("reflect", "zero"),
                 lambda: f'residual_block: padding must be "reflect" or "zero", got "{padding}"')
    c = x.shape[1]
    for w in (w1, w2):
        torch._check(tuple(w.shape) == (c, c, 3, 3),
                     lambda: f"residual_block: weights must have shape (C, C, 3, 3) with C = {c}")


def _keeps_h2(x: Tensor, gamma2: Tensor | None, beta2: Tensor | None) -> bool:
    # Mirrors recover_h2() in csrc/ops/residual_block.cpp.
    return not (gamma2 is None and beta2 is None and x.dtype in (torch.float32, torch.float64))


def _register() -> None:
    lib = "pyganx::"

    @torch.library.register_fake(lib + "residual_block")
    def _(x, w1, b1, w2, b2, g1, be1, g2, be2, padding, eps):
        _check(x, w1, w2, padding)
        return empty_output(x)

    @torch.library.register_fake(lib + "_residual_block_forward")
    def _(x, w1, b1, w2, b2, g1, be1, g2, be2, padding, eps):
        _check(x, w1, w2, padding)
        acc = _reference.acc_dtype(x.dtype)
        stats = [x.new_empty((x.shape[0], x.shape[1]), dtype=acc) for _ in range(4)]
        h2 = empty_output(x) if _keeps_h2(x, g2, be2) else x.new_empty((0,))
        return (empty_output(x), empty_output(x), h2, *stats)

    @torch.library.register_fake(lib + "_residual_block_backward")
    def _(gy, x, y, w1, b1, w2, b2, g1, be1, g2, be2, h1, h2, m1, r1, m2, r2, padding, eps,
          mask):
        _check(x, w1, w2, padding)
        like = (x, w1, b1, w2, b2, g1, be1, g2, be2)
        out = []
        for i, t in enumerate(like):
            if not mask[i] or t is None:
                out.append(None)
            elif i == 0:
                out.append(empty_output(x))
            else:
                out.append(torch.empty_like(t, memory_format=torch.contiguous_format))
        return tuple(out)

    # Under autocast the block runs in the autocast dtype, as a convolution does: every
    # floating-point argument is cast to it (the kernels accumulate in float32 anyway).
    for device in ("cpu", "cuda"):
        _AUTOCAST.impl("residual_block", _autocast_kernel(device), "Autocast" + device.upper())


def _autocast_kernel(device: str):
    def kernel(*args):
        dtype = torch.get_autocast_dtype(device)
        cast = [a.to(dtype) if isinstance(a, Tensor) and a.is_floating_point() and a.device.type == device
                else a for a in args]
        with torch.autocast(device, enabled=False):
            return torch.ops.pyganx.residual_block(*cast)
    return kernel


_AUTOCAST = torch.library.Library("pyganx", "IMPL")   # kept alive: it holds the autocast kernels

if _extension.extension_available():
    _register()
