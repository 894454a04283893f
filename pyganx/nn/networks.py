"""Generators and discriminators of the papers pyganx implements.

Each network follows its paper's definition (see docs/contracts.md and the design
notes): CycleGAN's ResNet generator and 70x70 PatchGAN, StarGAN's generator and
two-headed discriminator, and DCGAN's generator/discriminator (optionally
class-conditional, as in the conditional GAN). Residual blocks and instance norm (+ ReLU)
take ``fused``: ``"auto"`` (the default) lets pyganx.tuning pick the compiled op or
plain PyTorch per shape by measuring, ``True`` always runs the compiled op, ``False``
always plain PyTorch; the parameters and state_dict keys are the same either way.
"""
from __future__ import annotations

import functools
import math
from typing import TypeVar

import torch
from torch import Tensor, nn

from .. import tuning
from ..ops import reference, residual_block, winograd_applies, winograd_local
from .norm import InstanceNormReLU, check_fused

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def _norm_act(channels: int, affine: bool, fused: bool | str) -> nn.Module:
    return InstanceNormReLU(channels, affine=affine, fused=fused)


def _norm(channels: int, affine: bool, fused: bool | str) -> nn.Module:
    return InstanceNormReLU(channels, affine=affine, relu=False, fused=fused)


def _pad(padding: str) -> tuple[nn.Module | None, int]:
    """(padding module, conv padding) for a 3x3 conv."""
    if padding == "reflect":
        return nn.ReflectionPad2d(1), 0
    if padding == "zero":
        return None, 1
    raise ValueError(f"padding must be 'reflect' or 'zero', got {padding!r}")


class ResidualBlock(nn.Module):
    """``x + IN(conv3x3(pad(ReLU(IN(conv3x3(pad(x)))))))`` (CycleGAN: reflection padding,
    no affine, conv bias; StarGAN: zero padding, affine, no bias).

    ``fused=True`` runs the whole block as pyganx's compiled ``residual_block`` op
    (padding folded into the convolutions, the second norm and the residual add in one
    pass, a backward that keeps about one plane per block); ``fused=False`` is the plain
    PyTorch composition; ``"auto"`` (the default) picks one of them per device and shape
    by measuring (pyganx.tuning). All have the same parameters and state_dict keys. ``dropout``
    > 0 adds dropout between the two convolutions, as CycleGAN's ``--use_dropout``;
    that case always runs the composition.
    """

    def __init__(self, dim: int, padding: str = "reflect", affine: bool = False,
                 bias: bool = True, dropout: float = 0.0, fused: bool | str = "auto") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(2):
            pad, p = _pad(padding)
            if pad is not None:
                layers.append(pad)
            layers.append(nn.Conv2d(dim, dim, 3, padding=p, bias=bias))
            if i == 0:
                layers.append(_norm_act(dim, affine, fused))
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
            else:
                layers.append(_norm(dim, affine, fused))
        self.block = nn.Sequential(*layers)
        self.padding = padding
        self.fused = check_fused(fused) if dropout == 0 else False

    def _parts(self) -> tuple[nn.Conv2d, nn.Conv2d, InstanceNormReLU, InstanceNormReLU]:
        convs = [m for m in self.block if isinstance(m, nn.Conv2d)]
        norms = [m for m in self.block if isinstance(m, InstanceNormReLU)]
        return convs[0], convs[1], norms[0], norms[1]

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[-1] < 2 or x.shape[-2] < 2:
            raise ValueError(f"ResidualBlock: expected (N, C, H, W) input with H and W at "
                             f"least 2, got shape {list(x.shape)}")
        if self.fused is False:
            return x + self.block(x)
        c1, c2, n1, n2 = self._parts()
        params = (c1.weight, c1.bias, c2.weight, c2.bias, n1.weight, n1.bias, n2.weight, n2.bias)
        if self.fused is True or torch.compiler.is_compiling():
            return residual_block(x, *params, self.padding, n1.eps)
        options = f"{self.padding}, affine={n1.affine}, bias={c1.bias is not None}"
        choice = tuning.choose("residual_block", options, x, params, lambda: self._offer(x, n1.eps))
        return self._run(choice, x, params, n1.eps)

    def _offer(self, x: Tensor, eps: float) -> tuple[dict, str]:
        """pyganx.tuning's candidates for input x, and what the built-in gates run."""
        gates = "fused+winograd" if winograd_applies(x) else "fused"
        names = ["reference", "fused"] + ([gates] if gates != "fused" else [])
        return {n: functools.partial(self._run, n, eps=eps) for n in names}, gates

    def _run(self, name: str, x: Tensor, params, eps: float) -> Tensor:
        """The block by candidate ``name`` of :meth:`_offer`."""
        if name == "reference":
            return reference.residual_block(x, *params, self.padding, eps)
        if name == "fused+winograd":
            # the built-in gate, so that a process that turned Winograd off since the
            # decision (train --checkpoint-activations, cpu_winograd(False)) stays direct
            return residual_block(x, *params, self.padding, eps)
        with winograd_local(False):
            return residual_block(x, *params, self.padding, eps)


class _Segmented(nn.Module):
    """A generator whose ``self.model`` runs as segments. With ``checkpoint_activations``
    set (``pyganx train --checkpoint-activations``), a training forward keeps only each
    segment's input for backward and recomputes the segment in backward
    (torch.utils.checkpoint, non-reentrant, RNG state preserved).

    The segments: the encoder (everything before the first residual block); the blocks in
    groups of about sqrt(n_blocks), so that fewer block inputs wait for the decoder's
    backward; the decoder, cut before its last norm + activation, so that the
    full-resolution tail (norm, padding, 7x7 conv) is recomputed apart from the
    upsampling before it. docs/distributed.md has the measured peaks."""

    checkpoint_activations: bool = False

    def _segments(self) -> list[tuple[int, int]]:
        layers = list(self.model)
        blocks = [i for i, m in enumerate(layers) if isinstance(m, ResidualBlock)]
        if not blocks:
            return [(0, len(layers))]
        first, end = blocks[0], blocks[-1] + 1
        group = max(1, round(math.sqrt(len(blocks))))
        cuts = {0, end, len(layers), *range(first, end, group)}
        norms = [i for i in range(end, len(layers)) if isinstance(layers[i], InstanceNormReLU)]
        if norms:
            cuts.add(norms[-1])
        ordered = sorted(cuts)
        return [(a, b) for a, b in zip(ordered, ordered[1:]) if b > a]

    def _run_model(self, x: Tensor) -> Tensor:
        if not (self.checkpoint_activations and self.training and torch.is_grad_enabled()):
            return self.model(x)
        from torch.utils.checkpoint import checkpoint
        for a, b in self._segments():
            # early_stop=False: stopping the recomputation early (by an exception out of
            # the saved-tensor hook) strands the recomputed outputs of pyganx's C++
            # autograd functions until the whole graph is freed, 32 MiB per 512 px block.
            x = checkpoint(self.model[a:b], x, use_reentrant=False, early_stop=False)
        return x


class ResnetGenerator(_Segmented):
    """CycleGAN generator (Zhu et al. 2017): 7x7 reflect-padded conv, two stride-2
    downsamplings, ``n_blocks`` residual blocks, two fractionally strided upsamplings,
    7x7 conv, tanh; instance norm without affine, convs with bias."""

    def __init__(self, in_ch: int = 3, out_ch: int = 3, ngf: int = 64, n_blocks: int = 9,
                 fused: bool | str = "auto", dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(in_ch, ngf, 7, bias=True),
                                   _norm_act(ngf, False, fused)]
        ch = ngf
        for _ in range(2):
            layers += [nn.Conv2d(ch, ch * 2, 3, stride=2, padding=1, bias=True),
                       _norm_act(ch * 2, False, fused)]
            ch *= 2
        layers += [ResidualBlock(ch, "reflect", affine=False, bias=True, dropout=dropout,
                                 fused=fused) for _ in range(n_blocks)]
        for _ in range(2):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 3, stride=2, padding=1, output_padding=1,
                                          bias=True),
                       _norm_act(ch // 2, False, fused)]
            ch //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ch, out_ch, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        self.n_blocks = n_blocks

    def forward(self, x: Tensor, layers: list[int] | None = None) -> Tensor | list[Tensor]:
        """The translated image; with ``layers`` (indices into ``self.model``, ascending),
        the outputs of those modules instead, the model run only as far as the last of
        them (CUT's encoder features)."""
        if layers is None:
            return self._run_model(x)
        feats, wanted = [], set(layers)
        for i, module in enumerate(self.model[:max(layers) + 1]):
            x = module(x)
            if i in wanted:
                feats.append(x)
        return feats

    def encoder_index(self, cut_layer: int) -> int:
        """The module index of CUT's layer numbering (its ResnetGenerator with
        antialiased downsampling): 0 the padded input, 1 the 7x7 conv, 4 and 8 the
        downsampling convs, 12 + k the output of residual block k + 1; the norm, ReLU and
        blur indices in between map to the norm + ReLU that follows."""
        table = {0: 0, 1: 1, 2: 2, 3: 2, 4: 3, 5: 4, 6: 4, 7: 4, 8: 5, 9: 6, 10: 6, 11: 6}
        if cut_layer in table:
            return table[cut_layer]
        if 12 <= cut_layer < 12 + self.n_blocks:
            return 7 + cut_layer - 12
        raise ValueError(f"layer {cut_layer} is not in the encoder of a {self.n_blocks}-block generator "
                         f"(0-11, or 12-{11 + self.n_blocks} for the residual blocks)")


class PatchSampleMLP(nn.Module):
    """CUT's feature projector (netF, "mlp_sample"): from each feature map, the same
    randomly chosen locations (``num_patches`` per image, or the given ones), each
    feature vector through a two-layer MLP (``nc`` wide, ReLU between) and L2-normalised.
    One MLP per layer, built for ``channels`` (the encoder's widths at the NCE layers)
    when the plugin is built, not at the first step."""

    def __init__(self, channels: list[int], nc: int = 256) -> None:
        super().__init__()
        self.mlps = nn.ModuleList(nn.Sequential(nn.Linear(c, nc), nn.ReLU(), nn.Linear(nc, nc)) for c in channels)

    def forward(self, feats: list[Tensor], num_patches: int,
                patch_ids: list[Tensor] | None = None) -> tuple[list[Tensor], list[Tensor]]:
        """(projected features, each (N * patches, nc)), and the locations drawn."""
        out, ids = [], []
        for k, (feat, mlp) in enumerate(zip(feats, self.mlps)):
            flat = feat.permute(0, 2, 3, 1).flatten(1, 2)                 # (N, H*W, C)
            if patch_ids is not None:
                idx = patch_ids[k]
            else:
                idx = torch.randperm(flat.shape[1], device=feat.device)[:min(num_patches, flat.shape[1])]
            x = mlp(flat[:, idx, :].flatten(0, 1))
            out.append(x / (x.norm(p=2, dim=1, keepdim=True) + 1e-7))
            ids.append(idx)
        return out, ids


class PatchDiscriminator(nn.Module):
    """The 70x70 PatchGAN (C64-C128-C256-C512, LeakyReLU 0.2, no norm on the first
    layer, a 1-channel output map). ``norm="none"`` drops the norms (for WGAN-GP)."""

    def __init__(self, in_ch: int = 3, ndf: int = 64, n_layers: int = 3,
                 norm: str = "instance") -> None:
        super().__init__()
        if norm not in ("instance", "none"):
            raise ValueError(f"norm must be 'instance' or 'none', got {norm!r}")

        def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
            mods: list[nn.Module] = [nn.Conv2d(cin, cout, 4, stride=stride, padding=1, bias=True)]
            if norm == "instance":
                mods.append(nn.InstanceNorm2d(cout))
            return mods + [nn.LeakyReLU(0.2, inplace=True)]

        layers: list[nn.Module] = [nn.Conv2d(in_ch, ndf, 4, stride=2, padding=1),
                                   nn.LeakyReLU(0.2, inplace=True)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2 ** n, 8)
            layers += block(ndf * prev, ndf * mult, 2)
        prev, mult = mult, min(2 ** n_layers, 8)
        layers += block(ndf * prev, ndf * mult, 1)
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class StarGANGenerator(_Segmented):
    """StarGAN generator (Choi et al. 2018): the target label broadcast as extra input
    channels, 7x7 conv, two 4x4 stride-2 downsamplings, residual blocks with zero
    padding, two 4x4 stride-2 transposed convs, 7x7 conv, tanh; affine instance norm,
    convs without bias."""

    def __init__(self, in_ch: int = 3, c_dim: int = 5, conv_dim: int = 64, n_blocks: int = 6,
                 fused: bool | str = "auto") -> None:
        super().__init__()
        self.c_dim = c_dim
        layers: list[nn.Module] = [nn.Conv2d(in_ch + c_dim, conv_dim, 7, padding=3, bias=False),
                                   _norm_act(conv_dim, True, fused)]
        ch = conv_dim
        for _ in range(2):
            layers += [nn.Conv2d(ch, ch * 2, 4, stride=2, padding=1, bias=False),
                       _norm_act(ch * 2, True, fused)]
            ch *= 2
        layers += [ResidualBlock(ch, "zero", affine=True, bias=False, fused=fused)
                   for _ in range(n_blocks)]
        for _ in range(2):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, stride=2, padding=1, bias=False),
                       _norm_act(ch // 2, True, fused)]
            ch //= 2
        layers += [nn.Conv2d(ch, in_ch, 7, padding=3, bias=False), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """x: images (N, C, H, W); c: target labels (N, c_dim), one-hot or attribute vector."""
        if c.dim() != 2 or c.shape[1] != self.c_dim:
            raise ValueError(f"StarGANGenerator: expected labels of shape (N, {self.c_dim}), "
                             f"got {list(c.shape)}")
        c = c.to(x.dtype)[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
        return self._run_model(torch.cat([x, c], dim=1))


class StarGANDiscriminator(nn.Module):
    """StarGAN discriminator: ``n_layers`` 4x4 stride-2 convs with LeakyReLU 0.01 and no
    norm, then two heads on the shared trunk: a 3x3 conv giving the real/fake patch map
    and a conv with kernel ``image_size / 2**n_layers`` giving the domain logits.

    ``src_per_domain``: the patch-map head has one channel per domain instead of one (the
    multi-task critic of StarGAN v2, Choi et al. 2020): the caller reads the channel of
    each image's domain, so every domain has its own real/fake critic."""

    def __init__(self, image_size: int = 128, c_dim: int = 5, conv_dim: int = 64,
                 n_layers: int = 6, in_ch: int = 3, src_per_domain: bool = False) -> None:
        super().__init__()
        if image_size % (2 ** n_layers) != 0:
            raise ValueError(f"image_size {image_size} must be a multiple of 2**n_layers = "
                             f"{2 ** n_layers}")
        layers: list[nn.Module] = [nn.Conv2d(in_ch, conv_dim, 4, stride=2, padding=1),
                                   nn.LeakyReLU(0.01)]
        ch = conv_dim
        for _ in range(1, n_layers):
            layers += [nn.Conv2d(ch, ch * 2, 4, stride=2, padding=1), nn.LeakyReLU(0.01)]
            ch *= 2
        self.main = nn.Sequential(*layers)
        self.conv_src = nn.Conv2d(ch, c_dim if src_per_domain else 1, 3, padding=1, bias=False)
        self.conv_cls = nn.Conv2d(ch, c_dim, image_size // 2 ** n_layers, bias=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.main(x)
        return self.conv_src(h), self.conv_cls(h).flatten(1)


def one_hot(labels: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """(N,) class indices -> (N, num_classes) one-hot rows of ``dtype``; written as a
    comparison so that it exports to plain ONNX (Equal, Cast) with a dynamic batch.
    Indices outside [0, num_classes) give all-zero rows (check them before, where it matters)."""
    classes = torch.arange(num_classes, device=labels.device)
    return (labels.long()[:, None] == classes[None, :]).to(dtype)


def _dcgan_levels(img_size: int) -> int:
    levels = int(round(math.log2(img_size / 4)))
    if img_size < 8 or 4 * 2 ** levels != img_size:
        raise ValueError(f"DCGAN img_size must be a power of two >= 8, got {img_size}")
    return levels


class DCGANGenerator(nn.Module):
    """DCGAN generator (Radford et al. 2016): z projected to 4x4x(ngf*2**(levels-1)) by a
    transposed conv (4x4x1024 at ngf=128, 64 px), fractionally strided convs halving the
    channels, BatchNorm + ReLU except at the output, tanh. ``num_classes`` > 0 makes it
    the conditional GAN's generator: a one-hot label joined to z."""

    def __init__(self, z_dim: int = 100, ngf: int = 128, out_ch: int = 3, img_size: int = 64,
                 num_classes: int = 0) -> None:
        super().__init__()
        self.z_dim, self.num_classes = z_dim, num_classes
        levels = _dcgan_levels(img_size)
        ch = ngf * 2 ** (levels - 1)
        layers: list[nn.Module] = [nn.ConvTranspose2d(z_dim + num_classes, ch, 4, 1, 0, bias=False),
                                   nn.BatchNorm2d(ch), nn.ReLU(True)]
        for _ in range(levels - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, out_ch, 4, 2, 1, bias=False), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        if z.dim() == 2:
            z = z[:, :, None, None]
        if self.num_classes:
            if labels is None:
                raise ValueError("DCGANGenerator: this conditional generator needs labels")
            z = torch.cat([z, one_hot(labels, self.num_classes, z.dtype)[:, :, None, None]], dim=1)
        return self.model(z)


class DCGANDiscriminator(nn.Module):
    """DCGAN discriminator: strided convs doubling the channels down to 4x4, BatchNorm
    except on the input layer, LeakyReLU 0.2, a 4x4 conv to one logit (no sigmoid: use
    a with-logits loss). ``num_classes`` > 0 joins the one-hot label to the image as
    extra channels (conditional GAN). ``norm="none"`` drops the batch norm (a WGAN-GP
    critic: the per-sample gradient penalty is void when samples are normalised together;
    ``"layer"`` uses a per-sample GroupNorm(1) instead)."""

    def __init__(self, in_ch: int = 3, ndf: int = 64, img_size: int = 64,
                 num_classes: int = 0, norm: str = "batch") -> None:
        super().__init__()
        if norm not in ("batch", "layer", "none"):
            raise ValueError(f"DCGANDiscriminator: norm must be batch, layer or none, got {norm!r}")
        self.num_classes = num_classes
        levels = _dcgan_levels(img_size)
        layers: list[nn.Module] = [nn.Conv2d(in_ch + num_classes, ndf, 4, 2, 1, bias=False),
                                   nn.LeakyReLU(0.2, True)]
        ch = ndf
        for _ in range(levels - 1):
            layers.append(nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=norm == "none"))
            if norm == "batch":
                layers.append(nn.BatchNorm2d(ch * 2))
            elif norm == "layer":
                layers.append(nn.GroupNorm(1, ch * 2))
            layers.append(nn.LeakyReLU(0.2, True))
            ch *= 2
        layers.append(nn.Conv2d(ch, 1, 4, 1, 0, bias=False))
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.num_classes:
            if labels is None:
                raise ValueError("DCGANDiscriminator: this conditional discriminator needs labels")
            onehot = one_hot(labels, self.num_classes, x.dtype)
            x = torch.cat([x, onehot[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])], 1)
        return self.model(x).flatten(1)


def init_weights(module: ModuleT, std: float = 0.02) -> ModuleT:
    """The papers' initialisation: conv weights N(0, std), norm weights N(1, std), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm, InstanceNormReLU)):
            if getattr(m, "weight", None) is not None:
                nn.init.normal_(m.weight, 1.0, std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
    return module


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those that require gradients)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
