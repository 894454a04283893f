"""Normalisation layers backed by pyganx's fused ops."""
from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from .. import tuning
from ..ops import instance_norm_relu, reference


def check_fused(fused: bool | str) -> bool | str:
    """A layer's ``fused`` argument: True, False or "auto"."""
    if fused is True or fused is False or fused == "auto":
        return fused
    raise ValueError(f'fused must be True, False or "auto", got {fused!r}')


class InstanceNormReLU(nn.Module):
    """``nn.Sequential(nn.InstanceNorm2d(C, affine=affine, eps=eps), nn.ReLU())`` in one op.

    Statistics are always computed from the input (instance norm in training mode, no
    running statistics, as in CycleGAN and StarGAN). The state_dict keys are those of
    ``nn.InstanceNorm2d`` (``weight`` and ``bias`` when ``affine``), so weights move
    between the two freely. ``relu=False`` gives a plain instance norm. ``fused=True``
    always runs the compiled op, ``fused=False`` always ``F.instance_norm`` and
    ``F.relu``; ``"auto"`` (the default) picks one of them per device and shape by
    measuring (pyganx.tuning).
    """

    def __init__(self, num_features: int, affine: bool = False, eps: float = 1e-5,
                 relu: bool = True, fused: bool | str = "auto", device=None, dtype=None) -> None:
        super().__init__()
        self.num_features = num_features
        self.fused = check_fused(fused)
        self.affine = affine
        self.eps = eps
        self.relu = relu
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features, device=device, dtype=dtype))
            self.bias = nn.Parameter(torch.zeros(num_features, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() in (3, 4) and x.shape[-3] != self.num_features:
            raise ValueError(f"InstanceNormReLU: expected {self.num_features} channels, got "
                             f"input of shape {list(x.shape)}")
        if self.fused is False:
            return reference.instance_norm_relu(x, self.weight, self.bias, self.eps, self.relu)
        if self.fused is True or torch.compiler.is_compiling():
            return instance_norm_relu(x, self.weight, self.bias, self.eps, self.relu)
        params = (self.weight, self.bias)
        choice = tuning.choose("instance_norm_relu", f"affine={self.affine}, relu={self.relu}", x,
                               params, self._offer)
        return self._run(choice, x, params)

    def _offer(self) -> tuple[dict, str]:
        """pyganx.tuning's candidates, and what the built-in gates run."""
        return {n: functools.partial(self._run, n) for n in ("reference", "fused")}, "fused"

    def _run(self, name: str, x: Tensor, params) -> Tensor:
        fn = reference.instance_norm_relu if name == "reference" else instance_norm_relu
        return fn(x, params[0], params[1], self.eps, self.relu)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, affine={self.affine}, relu={self.relu}, "
                f"fused={self.fused}")
