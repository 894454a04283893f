"""Python face of pyganx::instance_norm_relu: the wrapper and the fake kernels.

Autograd is registered in C++ (csrc/ops/autograd/): with gradients enabled the op saves
x and the per-plane statistics only, and the backward op recomputes the rest.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import _extension
from . import _reference
from .layout import empty_output


def instance_norm_relu(x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None,
                       eps: float = 1e-5, relu: bool = True) -> Tensor:
    """relu(instance_norm(x, weight, bias, eps)) in one fused pass.

    Same numbers as ``F.relu(F.instance_norm(x, weight=weight, bias=bias, eps=eps))``
    (training-mode statistics, biased variance). Accepts (N, C, H, W) and unbatched
    (C, H, W) input in float32/float64/float16/bfloat16, contiguous or channels_last;
    the output keeps the input's memory format. ``relu=False`` gives the plain norm.
    """
    if not _extension.supports(x.device.type):
        return _reference.instance_norm_relu(x, weight, bias, eps, relu)
    return torch.ops.pyganx.instance_norm_relu(x, weight, bias, eps, relu)


def _check_input(x: Tensor, weight: Tensor | None, bias: Tensor | None) -> None:
    torch._check(x.dim() in (3, 4), lambda: "instance_norm_relu: expected a 4-D (N, C, H, W) or 3-D (C, H, W) "
                 f"tensor, got shape {list(x.shape)}")
    torch._check(x.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16),
                 lambda: f"instance_norm_relu: expected a floating-point tensor, got {x.dtype}")
    c = x.shape[-3]
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None:
            torch._check(t.dim() == 1 and t.shape[0] == c,
                         lambda name=name: f"instance_norm_relu: {name} must be a 1-D tensor of size C = {c}")


def _stats_shape(x: Tensor) -> tuple[int, int]:
    return (1, x.shape[0]) if x.dim() == 3 else (x.shape[0], x.shape[1])


def _register() -> None:
    lib = "pyganx::"

    @torch.library.register_fake(lib + "instance_norm_relu")
    def _(x, weight, bias, eps, relu):
        _check_input(x, weight, bias)
        return empty_output(x)

    @torch.library.register_fake(lib + "_instance_norm_relu_forward")
    def _(x, weight, bias, eps, relu):
        _check_input(x, weight, bias)
        acc = _reference.acc_dtype(x.dtype)
        mean = x.new_empty(_stats_shape(x), dtype=acc)
        return empty_output(x), mean, torch.empty_like(mean)

    @torch.library.register_fake(lib + "_instance_norm_relu_backward")
    def _(grad_out, x, mean, rstd, weight, bias, relu, output_mask):
        _check_input(x, weight, bias)
        dx = empty_output(x) if output_mask[0] else None
        dw = torch.empty_like(weight) if output_mask[1] and weight is not None else None
        db = torch.empty_like(bias) if output_mask[2] and bias is not None else None
        return dx, dw, db


if _extension.extension_available():
    _register()
