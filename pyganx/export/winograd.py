"""3x3 convolutions as Winograd F(4x4, 3x3) in standard ONNX ops, for onnxruntime's CPU
provider (``pyganx export --winograd``).

onnxruntime runs a Conv on CPU as a direct convolution (MLAS, NCHWc blocks), which on the
residual blocks of a CycleGAN/StarGAN generator already reaches most of the CPU's
float32 peak: the only way to go faster is to do fewer multiplications. Winograd's
F(4x4, 3x3) computes each 4x4 output tile from a 6x6 input tile with 36 products per
channel pair instead of 144, at the cost of transforms on the way in and out
(Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural Networks"). Here it is
written in ops any ONNX runtime has, so that onnxruntime's fast kernels do each part:

- input transform: one Conv with 36 fixed 6x6 kernels at stride 4 over every channel
  (the channels folded into the batch), giving ``B^T d B`` for every tile;
- the products: one batched MatMul per tile position, ``U[36, Co, Ci] @ V[36, Ci, P]``,
  with ``U = G w G^T`` computed in the graph from the 3x3 weights (an initializer-only
  subgraph that onnxruntime folds when it loads the model, so the file keeps the 3x3
  weights and its size);
- output transform: one ConvTranspose with 36 fixed 4x4 kernels at stride 4
  (``A^T M A`` placed into the output), then the bias.

Only onnxruntime's CPU provider gains: GPU libraries pick Winograd or implicit GEMM
themselves, and would run these ops slower than one Conv. The float32 result differs
from the direct convolution by about 1e-5 relative (the transform points 0, +-1, +-2
and infinity); ``pyganx export`` checks the whole model against the generator in float64,
allowing 32 times float32's own error instead of 8 (selfcheck.WINOGRAD_MULTIPLE).
docs/export.md has the measured speed.
"""
from __future__ import annotations

import copy
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn

#: The output tile: F(M x M, 3 x 3), input tiles of M + 2.
M = 4
#: Convolutions with fewer input or output channels stay direct: their transforms would
#: cost about as much as the products they save.
MIN_CHANNELS = 32


def _poly_from_roots(roots: list[Fraction]) -> list[Fraction]:
    """Coefficients (lowest power first) of prod (x - r)."""
    coef = [Fraction(1)]
    for r in roots:
        nxt = [Fraction(0)] * (len(coef) + 1)
        for i, c in enumerate(coef):
            nxt[i] -= r * c
            nxt[i + 1] += c
        coef = nxt
    return coef


def transforms(m: int = M, r: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(A^T [m, a], G [a, r], B^T [a, a])`` of the Toom-Cook algorithm F(m, r), a = m + r - 1,
    interpolating at 0, 1, -1, 2, -2, 1/2, -1/2 (as many as needed) and infinity:
    ``A^T ((G g) * (B^T d))`` is the valid correlation of ``d`` (length a) with ``g``."""
    a = m + r - 1
    pts = [Fraction(0), Fraction(1), Fraction(-1), Fraction(2), Fraction(-2),
           Fraction(1, 2), Fraction(-1, 2)][: a - 1]
    if len(pts) < a - 1:
        raise ValueError(f"F({m}, {r}) needs {a - 1} finite points; {len(pts)} are defined")
    at = [[p ** j for p in pts] + [Fraction(int(j == m - 1))] for j in range(m)]
    g = []
    for i, p in enumerate(pts):
        denom = Fraction(1)
        for k, q in enumerate(pts):
            if k != i:
                denom *= p - q
        g.append([p ** j / denom for j in range(r)])
    g.append([Fraction(0)] * (r - 1) + [Fraction(1)])
    bt = []
    for i in range(len(pts)):
        row = _poly_from_roots([q for k, q in enumerate(pts) if k != i])
        bt.append(row + [Fraction(0)] * (a - len(row)))
    bt.append(_poly_from_roots(pts))

    def t(rows):
        return torch.tensor([[float(v) for v in row] for row in rows], dtype=torch.float64)
    return t(at), t(g), t(bt)


class WinogradConv2d(nn.Module):
    """The 3x3, stride-1 ``conv`` (zero padding ``p``, any bias) computed as F(4x4, 3x3),
    written for export (module doc). It shares ``conv``'s weight and bias tensors."""

    def __init__(self, conv: nn.Conv2d, m: int = M) -> None:
        super().__init__()
        if not eligible(conv, min_channels=1):
            raise ValueError(f"WinogradConv2d takes 3x3, stride-1, ungrouped convolutions with zero "
                             f"padding, got {conv}")
        at, g, bt = transforms(m)
        a = m + 2
        self.m, self.a = m, a
        self.pad = int(conv.padding[0])
        self.weight = conv.weight
        self.bias = conv.bias
        self.register_buffer("g", g.float(), persistent=False)
        self.register_buffer("gt", g.t().contiguous().float(), persistent=False)
        # input transform: out channel (i, j) of a 6x6 tile d is (B^T d B)[i, j]
        self.register_buffer("b_in", torch.kron(bt, bt).reshape(a * a, 1, a, a).float(), persistent=False)
        # output transform as a transposed convolution: in channel (i, j) of the 6x6
        # product spreads (A^T M A) over the 4x4 output tile
        self.register_buffer("a_out", torch.kron(at, at).t().reshape(a * a, 1, m, m).float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, a, p = self.m, self.a, self.pad
        n, c, h, w = x.shape
        ho, wo = h + 2 * p - 2, w + 2 * p - 2
        th, tw = (ho + m - 1) // m, (wo + m - 1) // m
        # zero padding: the convolution's own, then up to whole tiles (right and bottom)
        x = F.pad(x, (p, m * tw + 2 - w - p, p, m * th + 2 - h - p))
        v = F.conv2d(x.reshape(n * c, 1, m * th + 2, m * tw + 2), self.b_in, stride=m)
        v = v.reshape(n, c, a * a, th * tw).transpose(1, 2)                  # (N, 36, Ci, P)
        co = self.weight.shape[0]
        u = (self.g @ self.weight @ self.gt).reshape(co, c, a * a).permute(2, 0, 1)   # (36, Co, Ci)
        prod = torch.matmul(u, v)                                            # (N, 36, Co, P)
        prod = prod.transpose(1, 2).reshape(n * co, a * a, th, tw)
        y = F.conv_transpose2d(prod, self.a_out, stride=m).reshape(n, co, m * th, m * tw)
        y = y[:, :, :ho, :wo]
        return y if self.bias is None else y + self.bias.reshape(1, co, 1, 1)


def eligible(conv: nn.Module, min_channels: int = MIN_CHANNELS) -> bool:
    """Whether ``conv`` is a convolution :class:`WinogradConv2d` computes and gains on."""
    return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros"
            and isinstance(conv.padding, tuple) and conv.padding[0] == conv.padding[1]
            and conv.padding[0] in (0, 1) and conv.in_channels >= min_channels
            and conv.out_channels >= min_channels)


def winograd(net: nn.Module, min_channels: int = MIN_CHANNELS) -> tuple[nn.Module, int]:
    """A copy of ``net`` whose eligible 3x3 convolutions are :class:`WinogradConv2d`, and
    how many were replaced. Fused residual blocks of the copy run as their plain
    composition, whose convolutions are modules that can be replaced."""
    from ..nn.networks import ResidualBlock

    out = copy.deepcopy(net)
    for mod in out.modules():
        if isinstance(mod, ResidualBlock):
            mod.fused = False
    count = 0
    for parent in list(out.modules()):
        for name, child in list(parent.named_children()):
            if eligible(child, min_channels):
                setattr(parent, name, WinogradConv2d(child))
                count += 1
    return out, count
