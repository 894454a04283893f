"""pyganx::instance_norm_relu against PyTorch's instance norm + ReLU."""
from __future__ import annotations

import pytest
import torch
from conftest import ALL_DTYPES, LOW_PRECISION, assert_matches_reference, devices, requires_ext

from pyganx.ops import _reference, instance_norm_relu, residual_block
from pyganx.ops.layout import channels_last_output, empty_output

pytestmark = requires_ext

SHAPES = [
    (2, 3, 5, 7),      # odd plane
    (1, 4, 3, 5),
    (3, 2, 1, 7),      # 1x7 planes
    (2, 3, 2, 1),      # 2x1 planes
    (1, 70, 9, 9),     # channels not a multiple of any vector width
    (2, 2, 300, 300),  # large planes: several chunks per plane (90000 > 65536)
    (1, 1, 257, 301),  # one large plane: fewer planes than threads (split path)
]


def make_input(shape, dtype, device, channels_last=False, offset=0.0, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * scale + offset).to(dtype)
    x = x.to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def make_affine(c, dtype, device, seed=1):
    g = torch.Generator().manual_seed(seed)
    w = (torch.rand(c, generator=g, dtype=torch.float64) + 0.5).to(dtype).to(device)
    b = (torch.randn(c, generator=g, dtype=torch.float64) * 0.5).to(dtype).to(device)
    return w, b


def reference_pair(x, w, b, eps, relu):
    """(PyTorch in x's dtype, PyTorch in float64), computed on contiguous copies."""
    x = x.contiguous()
    same = _reference.instance_norm_relu(x, w, b, eps, relu)
    ref64 = _reference.instance_norm_relu(
        x.double(), None if w is None else w.double(), None if b is None else b.double(), eps, relu)
    return same, ref64


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("affine", [False, True], ids=["plain", "affine"])
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "norm"])
def test_forward_matches_pytorch(device, dtype, channels_last, shape, affine, relu):
    x = make_input(shape, dtype, device, channels_last, offset=0.3, scale=2.0)
    w, b = make_affine(shape[1], dtype, device) if affine else (None, None)
    out = instance_norm_relu(x, w, b, eps=1e-5, relu=relu)
    same, ref64 = reference_pair(x, w, b, 1e-5, relu)
    assert_matches_reference(out, same, ref64)
    expect_cl = channels_last and not x.is_contiguous()
    assert out.is_contiguous(memory_format=torch.channels_last if expect_cl else torch.contiguous_format)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 70, 9, 9), (2, 2, 300, 300), (1, 1, 257, 301)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "norm"])
def test_backward_matches_pytorch(device, dtype, channels_last, shape, relu):
    x = make_input(shape, dtype, device, channels_last, offset=0.3, scale=2.0)
    w, b = make_affine(shape[1], dtype, device)
    g = make_input(shape, dtype, device, channels_last, seed=5)

    def grads(fn, x, w, b, g):
        x, w, b = (t.detach().clone().requires_grad_() for t in (x, w, b))
        fn(x, w, b, 1e-5, relu).backward(g)
        return x.grad, w.grad, b.grad

    ours = grads(instance_norm_relu, x, w, b, g)
    # The references run on contiguous copies: PyTorch 2.14's CPU instance-norm backward
    # is wrong for a channels_last input with a channels_last gradient (no ReLU).
    xc, gc = x.contiguous(), g.contiguous()
    same = grads(_reference.instance_norm_relu, xc, w, b, gc)
    ref64 = grads(_reference.instance_norm_relu, xc.double(), w.double(), b.double(), gc.double())
    for name, o, s, r in zip(("grad_x", "grad_weight", "grad_bias"), ours, same, ref64):
        if dtype in LOW_PRECISION or name == "grad_x":
            assert_matches_reference(o, s, r, name)
        else:
            # weight/bias gradients are sums over N*H*W terms: compare relative to their scale
            torch.testing.assert_close(o.double().cpu(), r.double().cpu(), rtol=1e-4,
                                       atol=1e-4 * r.abs().max().item())
    if channels_last and not x.is_contiguous():
        assert ours[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_large_offset_is_numerically_safe(device, dtype):
    # Planes of 1000 + N(0, 0.01): E[x^2] - E[x]^2 in float32 would lose everything.
    x = make_input((2, 3, 64, 64), dtype, device, offset=1000.0, scale=0.01)
    out = instance_norm_relu(x)
    ref64 = _reference.instance_norm_relu(x.double())
    torch.testing.assert_close(out.double().cpu(), ref64.cpu(), rtol=1e-3, atol=2e-3)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("affine", [False, True])
def test_unbatched_input(device, affine):
    x = make_input((3, 6, 5), torch.float32, device)
    w, b = make_affine(3, torch.float32, device) if affine else (None, None)
    out = instance_norm_relu(x, w, b)
    assert out.shape == (3, 6, 5)
    expect = instance_norm_relu(x.unsqueeze(0), w, b).squeeze(0)
    torch.testing.assert_close(out, expect, rtol=0, atol=0)
    same, ref64 = reference_pair(x, w, b, 1e-5, True)
    assert_matches_reference(out, same, ref64)


def test_non_dense_input_is_handled():
    x = make_input((2, 4, 10, 12), torch.float32, "cpu")[:, :, ::2, 1::3]  # strided view
    out = instance_norm_relu(x)
    same, ref64 = reference_pair(x, None, None, 1e-5, True)
    assert_matches_reference(out, same, ref64)
    assert out.is_contiguous()


#: name -> (shape, how the input is laid out, whether the ops write channels_last for it)
LAYOUT_CASES = {
    "contiguous": ((2, 4, 5, 6), lambda x: x, False),
    "channels_last": ((2, 4, 5, 6), lambda x: x.contiguous(memory_format=torch.channels_last), True),
    "one channel (both layouts)": ((2, 1, 5, 6), lambda x: x.contiguous(memory_format=torch.channels_last), False),
    "transposed planes": ((2, 4, 5, 6), lambda x: x.transpose(2, 3), False),
    "unbatched": ((4, 5, 6), lambda x: x, False),
}


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("case", list(LAYOUT_CASES))
def test_the_python_layout_rule_is_the_kernels(device, case):
    """channels_last_output (the rule of the fake kernels and of the tuning keys) names
    the layout both compiled ops write."""
    shape, lay_out, expected = LAYOUT_CASES[case]
    x = lay_out(torch.randn(shape, device=device))
    assert channels_last_output(x) is expected
    outs = [instance_norm_relu(x)]
    if x.dim() == 4:
        w = torch.randn(x.shape[1], x.shape[1], 3, 3, device=device)
        outs.append(residual_block(x, w, None, w, None))
    for out in outs:
        assert out.stride() == empty_output(x).stride()


def test_eps_is_used():
    x = make_input((1, 2, 4, 4), torch.float64, "cpu", scale=1e-3)
    for eps in (1e-5, 1e-1):
        same, ref64 = reference_pair(x, None, None, eps, False)
        torch.testing.assert_close(instance_norm_relu(x, eps=eps, relu=False), ref64)


def test_empty_batch_returns_empty():
    for shape in [(0, 3, 4, 4), (2, 0, 4, 4), (0, 3, 1, 1)]:
        x = torch.randn(shape)
        out = instance_norm_relu(x)
        assert out.shape == x.shape
        mean_out = torch.ops.pyganx._instance_norm_relu_forward(x, None, None, 1e-5, True)
        assert mean_out[1].shape == (shape[0], shape[1])


@pytest.mark.parametrize("bad, match", [
    (lambda: instance_norm_relu(torch.randn(3, 64)), r"4-D \(N, C, H, W\) or 3-D \(C, H, W\).*\[3, 64\]"),
    (lambda: instance_norm_relu(torch.randn(1, 2, 3, 4, 5)), r"got shape \[1, 2, 3, 4, 5\]"),
    (lambda: instance_norm_relu(torch.ones(1, 2, 3, 3, dtype=torch.int64)),
     r"float32, float64, float16 or bfloat16.*Long"),
    (lambda: instance_norm_relu(torch.randn(1, 3, 4, 4), torch.ones(4)), r"weight must be a 1-D tensor of size C = 3"),
    (lambda: instance_norm_relu(torch.randn(1, 3, 4, 4), None, torch.ones(3, 1)),
     r"bias must be a 1-D tensor of size C = 3"),
    (lambda: instance_norm_relu(torch.randn(2, 3, 1, 1)), r"more than 1 spatial element"),
    (lambda: instance_norm_relu(torch.randn(3, 1, 1)), r"more than 1 spatial element"),
    (lambda: instance_norm_relu(torch.randn(1, 3, 4, 4), torch.ones(3, dtype=torch.int32)),
     r"weight must be a floating-point tensor"),
    (lambda: instance_norm_relu(torch.randn(1, 3, 4, 4), eps=-1.0), r"eps must be non-negative"),
], ids=["rank2", "rank5", "int-dtype", "weight-size", "bias-shape", "one-pixel", "one-pixel-unbatched",
        "int-weight", "negative-eps"])
def test_bad_input_is_a_clear_error(bad, match):
    with pytest.raises(RuntimeError, match=match):
        bad()


@pytest.mark.skipif("cuda" not in devices(), reason="needs a CUDA device and a CUDA build")
def test_mixed_devices_is_a_clear_error():
    x = torch.randn(1, 3, 4, 4, device="cuda")
    with pytest.raises(RuntimeError, match=r"weight is on cpu but the input is on cuda"):
        instance_norm_relu(x, torch.ones(3), None)


def test_backward_saves_only_input_and_statistics():
    # Saved-for-backward bytes (parameters excluded): x plus two float32 [N, C] tensors.
    x = torch.randn(2, 8, 16, 16, requires_grad=True)
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = instance_norm_relu(x)
    assert sum(saved.values()) == x.numel() * 4 + 2 * (2 * 8) * 4
    y.sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize("shape, dtype", [
    ((2, 16, 384, 384), torch.float32),   # 18.9 MB
    ((1, 5, 1001, 1003), torch.float32),  # odd planes: unaligned plane starts
    ((2, 5, 1001, 1003), torch.bfloat16),
    ((1, 3, 999, 1001), torch.float64),
], ids=["f32-aligned", "f32-odd", "bf16-odd", "f64-odd"])
def test_outputs_large_enough_for_streaming_stores(shape, dtype):
    # Above 16 MiB the CPU kernels write with non-temporal stores after a scalar
    # prologue up to the store alignment; check every element against the reference.
    x = make_input(shape, dtype, "cpu", offset=0.5, scale=1.5)
    w, b = make_affine(shape[1], dtype, "cpu")
    g = make_input(shape, dtype, "cpu", seed=9)
    assert x.numel() * x.element_size() >= 16 << 20
    xr = x.detach().requires_grad_()
    out = instance_norm_relu(xr, w, b)
    same, ref64 = reference_pair(x, w, b, 1e-5, True)
    assert_matches_reference(out, same, ref64)
    out.backward(g)
    x64 = x.double().requires_grad_()
    _reference.instance_norm_relu(x64, w.double(), b.double()).backward(g.double())
    xs = x.detach().requires_grad_()
    _reference.instance_norm_relu(xs, w, b).backward(g)
    assert_matches_reference(xr.grad, xs.grad, x64.grad, "grad_x")
