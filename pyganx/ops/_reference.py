"""Pure-PyTorch reference of the compiled ops.

Used where the extension is missing (or disabled), and by every test as the value to
compare against. The statistics dtype is float64 for float64 input, float32 otherwise.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _batched(x: Tensor) -> Tensor:
    return x.unsqueeze(0) if x.dim() == 3 else x


def instance_norm_relu(x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None,
                       eps: float = 1e-5, relu: bool = True) -> Tensor:
    """relu(instance_norm(x)) as PyTorch computes it (training mode, no running stats)."""
    if x.dim() not in (3, 4):
        raise ValueError(f"instance_norm_relu: expected a 4-D (N, C, H, W) or 3-D (C, H, W) "
                         f"tensor, got shape {list(x.shape)}")
    y = F.instance_norm(_batched(x), weight=weight, bias=bias, eps=eps)
    if relu:
        y = F.relu(y)
    return y.squeeze(0) if x.dim() == 3 else y


def instance_norm_stats(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Per-plane mean and 1/sqrt(var + eps), shape [N, C] (N = 1 for 3-D input)."""
    var, mean = torch.var_mean(_batched(x).to(acc_dtype(x.dtype)), dim=(2, 3), correction=0)
    return mean, torch.rsqrt(var + eps)


def instance_norm_relu_backward(grad_out: Tensor, x: Tensor, mean: Tensor, rstd: Tensor,
                                weight: Tensor | None, bias: Tensor | None, relu: bool,
                                output_mask: list[bool]) -> tuple[Tensor | None, ...]:
    """Gradients of instance_norm_relu from x and the saved statistics."""
    acc = acc_dtype(x.dtype)
    x4, g4 = _batched(x).to(acc), _batched(grad_out).to(acc)
    n, c = x4.shape[:2]
    L = x4.shape[2] * x4.shape[3]
    mean4 = mean.reshape(n, c, 1, 1).to(acc)
    rstd4 = rstd.reshape(n, c, 1, 1).to(acc)
    w = (weight.to(acc) if weight is not None else torch.ones(c, dtype=acc, device=x.device)).reshape(1, c, 1, 1)
    b = (bias.to(acc) if bias is not None else torch.zeros(c, dtype=acc, device=x.device)).reshape(1, c, 1, 1)
    xhat = (x4 - mean4) * rstd4
    gm = torch.where(xhat * w + b > 0, g4, torch.zeros_like(g4)) if relu else g4
    s_gm = gm.sum(dim=(2, 3), keepdim=True)
    s_gmx = (gm * xhat).sum(dim=(2, 3), keepdim=True)
    dx = dw = db = None
    if output_mask[0]:
        dx = (w * rstd4 * (gm - s_gm / L - xhat * s_gmx / L)).to(x.dtype)
        dx = dx.squeeze(0) if x.dim() == 3 else dx
    if output_mask[1] and weight is not None:
        dw = s_gmx.sum(dim=(0, 2, 3)).to(weight.dtype)
    if output_mask[2] and bias is not None:
        db = s_gm.sum(dim=(0, 2, 3)).to(bias.dtype)
    return dx, dw, db


def residual_block(x: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None,
                   gamma1: Tensor | None = None, beta1: Tensor | None = None,
                   gamma2: Tensor | None = None, beta2: Tensor | None = None,
                   padding: str = "reflect", eps: float = 1e-5) -> Tensor:
    """x + IN2(conv3x3(pad(ReLU(IN1(conv3x3(pad(x))))))) in plain PyTorch."""
    if padding not in ("reflect", "zero"):
        raise ValueError(f"residual_block: padding must be 'reflect' or 'zero', got {padding!r}")
    if x.dim() != 4 or x.shape[-1] < 2 or x.shape[-2] < 2:
        raise ValueError(f"residual_block: expected a 4-D input with H and W at least 2, got "
                         f"shape {list(x.shape)}")

    def conv(t: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        if padding == "reflect":
            return F.conv2d(F.pad(t, (1, 1, 1, 1), mode="reflect"), w, b)
        return F.conv2d(t, w, b, padding=1)

    h = F.relu(F.instance_norm(conv(x, w1, b1), weight=gamma1, bias=beta1, eps=eps))
    return x + F.instance_norm(conv(h, w2, b2), weight=gamma2, bias=beta2, eps=eps)
