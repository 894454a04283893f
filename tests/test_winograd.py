"""Winograd F(4x4, 3x3) convolutions (pyganx/export/winograd.py): the transforms, the
module against F.conv2d, the rewrite of whole generators. The reference is always the
direct convolution or the generator as built."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyganx.export.winograd import WinogradConv2d, eligible, transforms, winograd
from pyganx.nn import ResnetGenerator
from pyganx.nn.networks import StarGANGenerator


@pytest.mark.parametrize("m", [2, 4, 6])
def test_transforms_compute_the_valid_correlation(m):
    at, g, bt = transforms(m)
    gen = torch.Generator().manual_seed(m)
    for _ in range(5):
        k = torch.randn(3, dtype=torch.float64, generator=gen)
        d = torch.randn(m + 2, dtype=torch.float64, generator=gen)
        direct = torch.stack([(d[i:i + 3] * k).sum() for i in range(m)])
        assert torch.allclose(at @ ((g @ k) * (bt @ d)), direct, atol=1e-12)


@pytest.mark.parametrize("padding", [0, 1])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(2, 32, 18, 18), (1, 32, 13, 7), (3, 32, 4, 3)])
def test_winograd_conv_equals_the_direct_convolution(padding, bias, shape):
    torch.manual_seed(0)
    conv = nn.Conv2d(32, 48, 3, padding=padding, bias=bias)
    x = torch.randn(shape)
    with torch.no_grad():
        ref = conv(x)
        out = WinogradConv2d(conv)(x)
    assert out.shape == ref.shape
    # float32 rounding of the transforms: about 1e-5 of the output's scale
    assert (out - ref).abs().max() <= 1e-4 * ref.abs().max()


def test_winograd_conv_shares_the_parameters_and_trains_like_the_conv():
    torch.manual_seed(1)
    conv = nn.Conv2d(32, 32, 3, padding=1)
    w = WinogradConv2d(conv)
    assert w.weight is conv.weight and w.bias is conv.bias
    x = torch.randn(2, 32, 9, 11)
    conv(x).square().sum().backward()
    ref = conv.weight.grad.clone()
    conv.weight.grad = None
    w(x).square().sum().backward()
    assert torch.allclose(conv.weight.grad, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_only_3x3_stride1_ungrouped_zero_padded_convolutions_qualify():
    assert eligible(nn.Conv2d(64, 64, 3, padding=1))
    assert eligible(nn.Conv2d(64, 64, 3))
    assert not eligible(nn.Conv2d(64, 64, 3, stride=2, padding=1))
    assert not eligible(nn.Conv2d(64, 64, 7, padding=3))
    assert not eligible(nn.Conv2d(64, 64, 3, padding=1, groups=2))
    assert not eligible(nn.Conv2d(64, 64, 3, padding=1, dilation=2))
    assert not eligible(nn.Conv2d(64, 64, 3, padding=1, padding_mode="reflect"))
    assert not eligible(nn.Conv2d(8, 64, 3, padding=1))             # too few channels to gain
    assert not eligible(nn.ConvTranspose2d(64, 64, 3, padding=1))
    with pytest.raises(ValueError, match="3x3, stride-1"):
        WinogradConv2d(nn.Conv2d(64, 64, 3, stride=2))


@pytest.mark.parametrize("kind", ["cyclegan", "stargan"])
def test_rewritten_generators_match_the_originals(kind):
    torch.manual_seed(2)
    if kind == "cyclegan":
        net = ResnetGenerator(3, 3, 16, 3, fused=True).eval()          # blocks at 64 channels
        args = (torch.rand(2, 3, 36, 44) * 2 - 1,)
    else:
        net = StarGANGenerator(1, 4, 16, 2, fused=True).eval()
        args = (torch.rand(2, 1, 32, 24) * 2 - 1, F.one_hot(torch.tensor([1, 3]), 4).float())
    fast, replaced = winograd(net)
    assert replaced == 2 * (3 if kind == "cyclegan" else 2)
    assert sum(isinstance(m, WinogradConv2d) for m in fast.modules()) == replaced
    assert not any(isinstance(m, WinogradConv2d) for m in net.modules())   # the original is untouched
    with torch.no_grad():
        ref, out = net(*args), fast(*args)
    assert (out - ref).abs().max() <= 1e-4
