"""Normalisation layers backed by pyganx's fused ops."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ops import instance_norm_relu, reference


class InstanceNormReLU(nn.Module):
    """``nn.Sequential(nn.InstanceNorm2d(C, affine=affine, eps=eps), nn.ReLU())`` in one op.

    Statistics are always computed from the input (instance norm in training mode, no
    running statistics, as in CycleGAN and StarGAN). The state_dict keys are those of
    ``nn.InstanceNorm2d`` (``weight`` and ``bias`` when ``affine``), so weights move
    between the two freely. ``relu=False`` gives a plain instance norm; ``fused=False``
    computes with ``F.instance_norm`` and ``F.relu`` instead of the compiled op.
    """

    def __init__(self, num_features: int, affine: bool = False, eps: float = 1e-5,
                 relu: bool = True, fused: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        self.num_features = num_features
        self.fused = fused
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
        fn = instance_norm_relu if self.fused else reference.instance_norm_relu
        return fn(x, self.weight, self.bias, self.eps, self.relu)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, affine={self.affine}, relu={self.relu}, "
                f"fused={self.fused}")
