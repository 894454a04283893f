"""Compiled pyganx operators (torch.ops.pyganx.*) and their Python wrappers.

Each op has a pure-PyTorch reference in pyganx.ops._reference that is used where the
extension is not available and that the tests compare against.
"""
from .instance_norm_relu import instance_norm_relu
from .residual_block import residual_block

__all__ = ["instance_norm_relu", "residual_block"]
