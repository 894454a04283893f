"""The ops work with the PyTorch machinery: opcheck, gradcheck, torch.compile, export."""
from __future__ import annotations

import pytest
import torch
from conftest import devices, requires_ext

from pyganx.nn import InstanceNormReLU
from pyganx.ops import _reference, instance_norm_relu

pytestmark = requires_ext


def _samples(device):
    g = torch.Generator().manual_seed(0)
    out = []
    for shape, cl in [((2, 3, 5, 6), False), ((2, 4, 3, 5), True), ((3, 4, 7), False)]:
        x = torch.randn(shape, generator=g).to(device)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        c = shape[-3]
        w = (torch.rand(c, generator=g) + 0.5).to(device)
        b = torch.randn(c, generator=g).to(device)
        out.append((x, w, b))
    return out


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("relu", [True, False])
def test_opcheck_public_and_private_forward(device, relu):
    for x, w, b in _samples(device):
        for args in [(x, None, None, 1e-5, relu), (x, w, b, 1e-5, relu)]:
            req = tuple(t.clone().requires_grad_() if isinstance(t, torch.Tensor) else t for t in args)
            torch.library.opcheck(torch.ops.pyganx.instance_norm_relu.default, args)
            torch.library.opcheck(torch.ops.pyganx.instance_norm_relu.default, req)
            torch.library.opcheck(torch.ops.pyganx._instance_norm_relu_forward.default, req)


@pytest.mark.parametrize("device", devices())
def test_opcheck_backward(device):
    for x, w, b in _samples(device):
        _, mean, rstd = torch.ops.pyganx._instance_norm_relu_forward(x, w, b, 1e-5, True)
        g = torch.randn_like(x)
        for mask in ([True, True, True], [True, False, False], [False, True, True]):
            torch.library.opcheck(torch.ops.pyganx._instance_norm_relu_backward.default,
                                  (g, x, mean, rstd, w, b, True, mask))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gradcheck_float64(device, relu, channels_last):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = (torch.rand(3, generator=g, dtype=torch.float64) + 0.5).to(device)
    b = (torch.randn(3, generator=g, dtype=torch.float64) * 0.3).to(device)
    x, w, b = (t.requires_grad_() for t in (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w, b: instance_norm_relu(x, w, b, 1e-5, relu), (x, w, b))
    assert torch.autograd.gradcheck(lambda x: instance_norm_relu(x, None, None, 1e-5, relu), (x,))


def test_gradient_only_for_what_requires_it():
    x = torch.randn(1, 3, 4, 4)
    w = torch.ones(3, requires_grad=True)
    b = torch.zeros(3)
    instance_norm_relu(x, w, b).sum().backward()
    assert w.grad is not None and x.grad is None and b.grad is None
    # no node is recorded without gradients
    assert instance_norm_relu(x, torch.ones(3), b).grad_fn is None
    with torch.no_grad():
        assert instance_norm_relu(x, w, b).grad_fn is None


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.norm = InstanceNormReLU(8, affine=True)

    def forward(self, x):
        return self.norm(self.conv(x))


def test_torch_compile_fullgraph_forward_and_backward():
    torch.manual_seed(0)
    net = _Net()
    x = torch.randn(2, 3, 16, 16)
    compiled = torch.compile(net, fullgraph=True)
    out_c = compiled(x)
    out_e = net(x)
    torch.testing.assert_close(out_c, out_e)
    out_c.sum().backward()
    grads_c = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    out_e.sum().backward()
    for gc, p in zip(grads_c, net.parameters()):
        # conv weight gradients sum 512 products; Inductor may order them differently
        torch.testing.assert_close(gc, p.grad, rtol=1e-4, atol=1e-4)


def test_torch_compile_keeps_the_fused_op():
    from torch._dynamo.testing import EagerAndRecordGraphs

    backend = EagerAndRecordGraphs()
    fn = torch.compile(lambda x: instance_norm_relu(x) * 2, backend=backend, fullgraph=True)
    fn(torch.randn(1, 4, 8, 8))
    assert len(backend.graphs) == 1
    assert "pyganx.instance_norm_relu" in str(backend.graphs[0].code)


def test_torch_export():
    torch.manual_seed(0)
    net = _Net().eval()
    x = torch.randn(1, 3, 16, 16)
    ep = torch.export.export(net, (x,))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert "pyganx.instance_norm_relu.default" in targets
    torch.testing.assert_close(ep.module()(x), net(x))


def test_module_state_dict_is_instance_norm_compatible():
    torch.manual_seed(0)
    for affine in (False, True):
        ref = torch.nn.InstanceNorm2d(6, affine=affine)
        if affine:
            with torch.no_grad():
                ref.weight.uniform_(0.5, 1.5)
                ref.bias.normal_()
        ours = InstanceNormReLU(6, affine=affine)
        assert list(ours.state_dict()) == list(ref.state_dict())
        ours.load_state_dict(ref.state_dict())
        x = torch.randn(2, 6, 7, 9)
        torch.testing.assert_close(ours(x), torch.relu(ref(x)))
        ref.load_state_dict(ours.state_dict())
        no_relu = InstanceNormReLU(6, affine=affine, relu=False)
        no_relu.load_state_dict(ref.state_dict())
        torch.testing.assert_close(no_relu(x), ref(x))


def test_module_matches_sequential_in_training():
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.InstanceNorm2d(5, affine=True), torch.nn.ReLU())
    with torch.no_grad():
        ref[0].weight.uniform_(0.5, 1.5)
        ref[0].bias.normal_()
    ours = InstanceNormReLU(5, affine=True)
    ours.load_state_dict(ref[0].state_dict())
    x = torch.randn(3, 5, 8, 8)
    xr, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn(3, 5, 8, 8)
    ref(xr).backward(g)
    ours(xo).backward(g)
    torch.testing.assert_close(xo.grad, xr.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.weight.grad, ref[0].weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.bias.grad, ref[0].bias.grad, rtol=1e-4, atol=1e-4)


def test_module_rejects_wrong_channel_count():
    with pytest.raises(ValueError, match="expected 4 channels"):
        InstanceNormReLU(4)(torch.randn(1, 3, 5, 5))


def test_reference_backward_matches_autograd():
    # The reference backward (used by the public op's docs and the C++ kernels' tests)
    # equals autograd through F.instance_norm.
    torch.manual_seed(1)
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    w = torch.rand(3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    _reference.instance_norm_relu(x, w, b).backward(g)
    mean, rstd = _reference.instance_norm_stats(x.detach(), 1e-5)
    dx, dw, db = _reference.instance_norm_relu_backward(g, x.detach(), mean, rstd, w.detach(), b.detach(), True,
                                                        [True] * 3)
    torch.testing.assert_close(dx, x.grad)
    torch.testing.assert_close(dw, w.grad)
    torch.testing.assert_close(db, b.grad)
    # and the compiled backward op equals the reference backward
    dxo, dwo, dbo = torch.ops.pyganx._instance_norm_relu_backward(g, x.detach(), mean, rstd, w.detach(), b.detach(),
                                                                  True, [True] * 3)
    torch.testing.assert_close(dxo, dx)
    torch.testing.assert_close(dwo, dw)
    torch.testing.assert_close(dbo, db)
