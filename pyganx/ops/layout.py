"""The memory layout the compiled ops write their outputs in."""
from __future__ import annotations

import torch
from torch import Tensor


def channels_last_output(x: Tensor) -> bool:
    """Whether the ops write a channels_last output for input ``x``: a 4-D input that is
    channels_last and not also NCHW-contiguous (a 1 x 1 plane or one channel is both);
    every other input gets a contiguous output. Mirrors ``prepare_input`` in
    csrc/ops/instance_norm_relu.cpp and ``layout_of`` in csrc/ops/residual_block.cpp."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def empty_output(x: Tensor) -> Tensor:
    """An uninitialised output of x's shape, dtype and device, in the layout the kernels write."""
    fmt = torch.channels_last if channels_last_output(x) else torch.contiguous_format
    return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=fmt)
