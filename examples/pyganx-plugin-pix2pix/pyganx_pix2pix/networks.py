"""The pix2pix generator: an encoder-decoder with skip connections ("U-Net").

Isola et al. 2017, appendix 6.1.1: encoder C64-C128-C256-C512-C512-C512-C512-C512 (4x4
convolutions, stride 2, BatchNorm, LeakyReLU 0.2, no BatchNorm on the first layer),
decoder CD512-CD1024-CD1024-C1024-C1024-C512-C256-C128 (4x4 transposed convolutions,
stride 2, BatchNorm, ReLU, dropout 0.5 in the first three), each decoder layer taking
the encoder layer of the same resolution concatenated to its input, then a transposed
convolution to the output channels and tanh.

Here the number of stride-2 levels is a parameter: the paper's 8 at 256 px bring the
image to 1 x 1; ``depth_for(size)`` gives that for other sizes. As in the authors' code,
the innermost encoder layer has no BatchNorm (it sees a 1 x 1 map at depth log2(size))
and the convolutions followed by BatchNorm have no bias.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

MAX_DEPTH = 8


def depth_for(image_size: int) -> int:
    """log2(image_size), at most 8: the paper's depth at 256 px, a 1 x 1 bottleneck below."""
    if image_size < 2:
        raise ValueError(f"image size must be at least 2, got {image_size}")
    return min(MAX_DEPTH, int(math.log2(image_size)))


class UNetGenerator(nn.Module):
    """The pix2pix U-Net with ``depth`` stride-2 levels; H and W must be multiples of
    ``2 ** depth``. Level ``i`` has ``min(ngf * 2**i, 8 * ngf)`` channels. The first
    ``dropout_layers`` decoder layers (counted from the bottleneck, the output layer
    never) apply dropout ``dropout``, the paper's only source of noise."""

    def __init__(self, in_ch: int = 3, out_ch: int = 3, ngf: int = 64, depth: int = 8,
                 dropout: float = 0.5, dropout_layers: int = 3) -> None:
        """Builds the ``depth`` encoder and decoder levels; a depth below 1 is a ValueError."""
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self.depth = depth
        widths = [min(ngf * 2 ** i, ngf * 8) for i in range(depth)]
        self.down = nn.ModuleList()
        for i in range(depth):
            layers: list[nn.Module] = [] if i == 0 else [nn.LeakyReLU(0.2)]
            norm = 0 < i < depth - 1
            layers.append(nn.Conv2d(in_ch if i == 0 else widths[i - 1], widths[i], 4, 2, 1,
                                    bias=not norm))
            if norm:
                layers.append(nn.BatchNorm2d(widths[i]))
            self.down.append(nn.Sequential(*layers))
        # up[k] undoes down[depth - 1 - k]; all but the first take a skip beside their input
        self.up = nn.ModuleList()
        for k, i in enumerate(reversed(range(depth))):
            cin = widths[i] if i == depth - 1 else 2 * widths[i]
            layers = [nn.ReLU()]
            if i == 0:
                layers += [nn.ConvTranspose2d(cin, out_ch, 4, 2, 1), nn.Tanh()]
            else:
                layers += [nn.ConvTranspose2d(cin, widths[i - 1], 4, 2, 1, bias=False),
                           nn.BatchNorm2d(widths[i - 1])]
                if k < dropout_layers and dropout > 0:
                    layers.append(nn.Dropout(dropout))
            self.up.append(nn.Sequential(*layers))

    def forward(self, x: Tensor) -> Tensor:
        """G(x) for x (N, in_ch, H, W), H and W multiples of ``2 ** depth`` (else a ValueError):
        (N, out_ch, H, W) in [-1, 1]."""
        m = 2 ** self.depth
        if x.dim() != 4 or x.shape[-2] % m or x.shape[-1] % m:
            raise ValueError(f"UNetGenerator of depth {self.depth}: expected (N, C, H, W) with H "
                             f"and W multiples of {m}, got shape {list(x.shape)}")
        skips = []
        h = x
        for layer in self.down:
            h = layer(h)
            skips.append(h)
        h = self.up[0](skips[-1])
        for k in range(1, self.depth):
            h = self.up[k](torch.cat([skips[self.depth - 1 - k], h], dim=1))
        return h
