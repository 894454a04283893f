"""Compiled pyganx operators (torch.ops.pyganx.*) and their Python wrappers.

Each op has a pure-PyTorch reference in pyganx.ops._reference (public as
``pyganx.ops.reference``) that is used where the extension is not available, by the
modules' unfused mode, and that the tests compare against.
"""
from . import _reference as reference
from .instance_norm_relu import instance_norm_relu
from .residual_block import (
    cpu_winograd,
    cpu_winograd_enabled,
    residual_block,
    set_cpu_winograd,
    winograd_applies,
    winograd_local,
)

__all__ = ["cpu_winograd", "cpu_winograd_enabled", "instance_norm_relu", "reference", "residual_block",
           "set_cpu_winograd", "winograd_applies", "winograd_local"]
