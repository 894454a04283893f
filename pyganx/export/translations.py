"""pyganx's compiled ops as standard ONNX ops, for ``torch.onnx.export(dynamo=True,
custom_translation_table=TABLE)``: the exported graph holds no custom domain, so any
ONNX runtime runs it.

- ``pyganx::instance_norm_relu`` -> InstanceNormalization (+ Relu)
- ``pyganx::residual_block``     -> Pad (reflect, or Conv's own zero padding), Conv,
  InstanceNormalization, Relu, Pad, Conv, InstanceNormalization, Add

InstanceNormalization needs a scale and a bias; without affine parameters they are ones
and zeros of the channel count, taken from the input's shape so that the graph stays
shape-generic.
"""
from __future__ import annotations

import torch

from ..errors import DependencyError


def _table(norm_in_float32: bool) -> dict:
    from onnxscript import ir
    from onnxscript import opset18 as op

    def channels(x):
        return op.Shape(x, start=1, end=2)

    def instance_norm(x, weight, bias, eps):
        if norm_in_float32:   # half-precision models: statistics and normalisation in float32
            like = x
            x = op.Cast(x, to=ir.DataType.FLOAT)
            weight = None if weight is None else op.Cast(weight, to=ir.DataType.FLOAT)
            bias = None if bias is None else op.Cast(bias, to=ir.DataType.FLOAT)
        if weight is None:
            weight = op.Expand(op.CastLike(op.Constant(value_float=1.0), x), channels(x))
        if bias is None:
            bias = op.Expand(op.CastLike(op.Constant(value_float=0.0), x), channels(x))
        y = op.InstanceNormalization(x, weight, bias, epsilon=eps)
        return op.CastLike(y, like) if norm_in_float32 else y

    def instance_norm_relu(x, weight=None, bias=None, eps: float = 1e-5, relu: bool = True):
        y = instance_norm(x, weight, bias, eps)
        return op.Relu(y) if relu else y

    def conv3x3(x, w, b, padding: str):
        if padding == "reflect":
            pads = op.Constant(value_ints=[0, 0, 1, 1, 0, 0, 1, 1])
            x = op.Pad(x, pads, mode="reflect")
            return op.Conv(x, w, b) if b is not None else op.Conv(x, w)
        return (op.Conv(x, w, b, pads=[1, 1, 1, 1]) if b is not None
                else op.Conv(x, w, pads=[1, 1, 1, 1]))

    def residual_block(x, w1, b1=None, w2=None, b2=None, gamma1=None, beta1=None, gamma2=None,
                       beta2=None, padding: str = "reflect", eps: float = 1e-5):
        h = op.Relu(instance_norm(conv3x3(x, w1, b1, padding), gamma1, beta1, eps))
        return op.Add(x, instance_norm(conv3x3(h, w2, b2, padding), gamma2, beta2, eps))

    return {
        torch.ops.pyganx.instance_norm_relu.default: instance_norm_relu,
        torch.ops.pyganx.residual_block.default: residual_block,
    }


def translation_table(norm_in_float32: bool = False) -> dict:
    """The custom translation table (needs the ``onnxscript`` package and pyganx._C).
    ``norm_in_float32``: instance norms of half-precision tensors run in float32 (casts
    around each InstanceNormalization), where half would lose the statistics' accuracy."""
    try:
        return _table(norm_in_float32)
    except ImportError as e:
        raise DependencyError(f"ONNX export needs onnx and onnxscript: pip install 'pyganx[cpu]' "
                              f"(or [gpu]) ({e})") from None
