"""The paper networks in pyganx.nn: sizes, shapes, and fused == unfused."""
from __future__ import annotations

import pytest
import torch
from conftest import requires_ext

from pyganx.nn import (
    DCGANDiscriminator,
    DCGANGenerator,
    PatchDiscriminator,
    ResidualBlock,
    ResnetGenerator,
    StarGANDiscriminator,
    StarGANGenerator,
    count_parameters,
    init_weights,
)


@pytest.mark.parametrize("net, expected", [
    # CycleGAN's ResNet generator (9 blocks at 256 px, 6 at 128 px) and the 70x70 PatchGAN,
    # ngf = ndf = 64, 3 -> 3 channels: the counts of the paper architecture.
    (lambda: ResnetGenerator(n_blocks=9), 11_378_179),
    (lambda: ResnetGenerator(n_blocks=6), 7_837_699),
    (lambda: PatchDiscriminator(), 2_764_737),
], ids=["resnet9", "resnet6", "patchgan"])
def test_parameter_counts_match_the_papers(net, expected):
    assert count_parameters(net()) == expected


def test_resnet_generator_parameters_in_paper_layer_order():
    shapes = [tuple(p.shape) for p in ResnetGenerator(n_blocks=9).parameters()]
    assert shapes[:2] == [(64, 3, 7, 7), (64,)]           # c7s1-64
    assert shapes[2:6] == [(128, 64, 3, 3), (128,), (256, 128, 3, 3), (256,)]  # d128, d256
    assert shapes[6:6 + 36] == [(256, 256, 3, 3), (256,)] * 18  # R256 x 9
    assert shapes[42:46] == [(256, 128, 3, 3), (128,), (128, 64, 3, 3), (64,)]  # u128, u64
    assert shapes[46:] == [(3, 64, 7, 7), (3,)]            # c7s1-3


def test_output_shapes():
    x = torch.randn(1, 3, 64, 64)
    assert ResnetGenerator(n_blocks=2)(x).shape == x.shape
    assert PatchDiscriminator()(torch.randn(1, 3, 70, 70)).shape == (1, 1, 6, 6)
    g, d = StarGANGenerator(c_dim=4, n_blocks=2), StarGANDiscriminator(image_size=64, c_dim=4, n_layers=5)
    c = torch.eye(4)[[1, 2]]
    y = g(torch.randn(2, 3, 64, 64), c)
    assert y.shape == (2, 3, 64, 64) and y.abs().max() <= 1
    src, cls = d(y)
    assert src.shape == (2, 1, 2, 2) and cls.shape == (2, 4)
    for size, ch in ((32, 1), (64, 3)):
        G, D = DCGANGenerator(ngf=32, out_ch=ch, img_size=size), DCGANDiscriminator(ch, 16, size)
        img = G(torch.randn(3, 100))
        assert img.shape == (3, ch, size, size) and D(img).shape == (3, 1)
    assert DCGANGenerator().model[0].weight.shape == (100, 1024, 4, 4)  # 4x4x1024 projection


def test_conditional_dcgan_uses_the_label():
    torch.manual_seed(0)
    G = DCGANGenerator(ngf=16, out_ch=1, img_size=32, num_classes=10).eval()
    D = DCGANDiscriminator(1, 16, 32, num_classes=10).eval()
    z = torch.randn(1, 100).expand(2, 100)
    img = G(z, torch.tensor([3, 7]))
    assert not torch.allclose(img[0], img[1])
    assert not torch.allclose(D(img[:1].expand(2, -1, -1, -1), torch.tensor([3, 7]))[0],
                              D(img[:1].expand(2, -1, -1, -1), torch.tensor([3, 7]))[1])
    with pytest.raises(ValueError, match="needs labels"):
        G(z)


def test_bad_sizes_are_clear_errors():
    with pytest.raises(ValueError, match="at least 2"):
        ResidualBlock(4)(torch.randn(1, 4, 1, 5))
    with pytest.raises(ValueError, match="power of two"):
        DCGANGenerator(img_size=48)
    with pytest.raises(ValueError, match=r"labels of shape \(N, 5\)"):
        StarGANGenerator()(torch.randn(1, 3, 16, 16), torch.zeros(1, 4))


@requires_ext
@pytest.mark.parametrize("make", [
    lambda fused: ResidualBlock(8, "reflect", affine=False, bias=True, fused=fused),
    lambda fused: ResidualBlock(8, "zero", affine=True, bias=False, fused=fused),
    lambda fused: ResnetGenerator(3, 3, ngf=8, n_blocks=2, fused=fused),
    lambda fused: StarGANGenerator(3, c_dim=0, conv_dim=8, n_blocks=2, fused=fused),
], ids=["cyclegan-block", "stargan-block", "resnet-generator", "stargan-generator"])
def test_fused_equals_unfused_with_shared_weights(make):
    torch.manual_seed(0)
    ref = init_weights(make(False))
    fused = make(True)
    assert list(fused.state_dict()) == list(ref.state_dict())
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(2, 8 if isinstance(ref, ResidualBlock) else 3, 13, 11)
    args = (x,) if not isinstance(ref, StarGANGenerator) else (x, torch.zeros(2, 0))
    xr, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_r = ref(xr, *args[1:])
    out_f = fused(xf, *args[1:])
    torch.testing.assert_close(out_f, out_r, rtol=1e-4, atol=1e-5)
    g = torch.randn_like(out_r)
    out_r.backward(g)
    out_f.backward(g)
    torch.testing.assert_close(xf.grad, xr.grad, rtol=1e-4, atol=1e-4)
    for (name, pr), pf in zip(ref.named_parameters(), fused.parameters()):
        torch.testing.assert_close(pf.grad, pr.grad, rtol=1e-3, atol=1e-4, msg=name)


def test_init_weights_follows_the_papers():
    torch.manual_seed(0)
    net = init_weights(PatchDiscriminator())
    w = torch.cat([m.weight.flatten() for m in net.modules() if isinstance(m, torch.nn.Conv2d)])
    assert abs(w.std().item() - 0.02) < 1e-3 and abs(w.mean().item()) < 1e-3
    assert all(m.bias.abs().max() == 0 for m in net.modules() if isinstance(m, torch.nn.Conv2d))
