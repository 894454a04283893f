"""Generators trained with other code, loaded into pyganx's networks.

``junyanz-cyclegan``: a generator saved by junyanz/pytorch-CycleGAN-and-pix2pix
(``latest_net_G_A.pth`` / ``*_net_G_B.pth``): its ``ResnetGenerator`` with instance
norm (the CycleGAN default, no affine, convolutions with bias), 6 or 9 blocks, any
width. The state dict's keys are ``model.<i>.weight`` for the outer convolutions and
``model.<i>.conv_block.<j>.weight`` inside the residual blocks; pyganx's
``ResnetGenerator`` has the same operations in the same order, so each convolution is
mapped by its place in that order, and every shape is checked. Old checkpoints'
instance-norm running statistics (which the norm never uses) are dropped.

``yunjey-stargan``: a generator saved by yunjey/stargan (``<iteration>-G.ckpt``): its
``Generator`` (``main.<i>`` outer layers, ``main.<i>.main.<j>`` inside the residual
blocks; affine instance norm, bias-free convolutions, the target label concatenated
after the image's channels), any width, block count and label size. The weights map
onto pyganx's StarGANGenerator in module order. Its norms track running statistics,
which StarGAN's own test code never switches to (the generator stays in training mode),
so pyganx drops them and normalises per image, as that code does. The label size comes
from the first convolution; name the labels with ``domains`` (CelebA's default five
attributes, RaFD's eight expressions, ...), else they are ``label0``, ``label1``, ...
The exported model takes one target label as an index (one-hot inside), which is
StarGAN's use for single-label data sets; attribute combinations (several CelebA
attributes at once) need the PyTorch generator (``pyganx.load_generator``).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, UsageError
from ..weights_file import UnreadableWeights, load_weights_only
from .networks import ResnetGenerator, StarGANGenerator

FORMATS = ("junyanz-cyclegan", "yunjey-stargan")
#: The code base each format comes from, for messages.
FORMAT_PROJECTS = {"junyanz-cyclegan": "junyanz/pytorch-CycleGAN-and-pix2pix",
                   "yunjey-stargan": "yunjey/stargan"}

_OUTER = re.compile(r"^model\.(\d+)\.(weight|bias)$")
_BLOCK = re.compile(r"^model\.(\d+)\.conv_block\.(\d+)\.(weight|bias)$")
_NORM_STATS = ("running_mean", "running_var", "num_batches_tracked")


@dataclass
class ForeignGenerator:
    net: nn.Module
    plugin: str
    generator: str
    domains: tuple[str, ...]
    channels: int
    image_size: int
    description: str
    inputs: tuple[str, ...] = ("image",)


def _load_state(path: Path) -> dict:
    try:
        st = load_weights_only(path)
    except UnreadableWeights as e:
        raise CheckpointError(f"{path}: cannot read a state dict ({e})") from None
    if isinstance(st, dict) and "state_dict" in st and isinstance(st["state_dict"], dict):
        st = st["state_dict"]
    if not isinstance(st, dict) or not all(isinstance(v, torch.Tensor) for v in st.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in st.items()}


def _layers(path: Path, outer_key: re.Pattern, block_key: re.Pattern, what: str):
    """A foreign state dict (norm running statistics dropped) split into its outer layers
    {index: {"weight", "bias"}} and residual blocks {index: {sub-index: {...}}} by the two
    key patterns (groups: index, [sub-index,] weight|bias); any other key is an error."""
    outer: dict[int, dict[str, torch.Tensor]] = {}
    blocks: dict[int, dict[int, dict[str, torch.Tensor]]] = {}
    for k, v in _load_state(path).items():
        if k.endswith(_NORM_STATS):
            continue
        if m := outer_key.match(k):
            outer.setdefault(int(m[1]), {})[m[2]] = v
        elif m := block_key.match(k):
            blocks.setdefault(int(m[1]), {}).setdefault(int(m[2]), {})[m[3]] = v
        else:
            raise CheckpointError(f"{path}: unexpected key {k!r} for {what}")
    return outer, blocks


def junyanz_cyclegan(path: str | os.PathLike, image_size: int = 256) -> ForeignGenerator:
    """A junyanz/pytorch-CycleGAN-and-pix2pix ResNet generator as pyganx's ResnetGenerator."""
    path = Path(path)
    outer, blocks = _layers(path, _OUTER, _BLOCK, "a junyanz-cyclegan ResNet generator (U-Net generators "
                                                   "and other layouts are not supported)")
    if any(v["weight"].ndim == 1 for v in outer.values()) or \
            any(c["weight"].ndim == 1 for b in blocks.values() for c in b.values()):
        raise CheckpointError(f"{path}: the generator has affine norm layers (--norm batch?); pyganx's "
                         f"CycleGAN generator uses instance norm without affine (--norm instance)")
    convs = [outer[i] for i in sorted(outer)]
    if len(convs) != 6 or not blocks:
        raise CheckpointError(f"{path}: expected 6 outer convolutions and residual blocks, found "
                         f"{len(convs)} and {len(blocks)} blocks: not a ResnetGenerator")
    in_ch, ngf = convs[0]["weight"].shape[1], convs[0]["weight"].shape[0]
    out_ch = convs[-1]["weight"].shape[0]
    net = ResnetGenerator(in_ch, out_ch, ngf, len(blocks))
    # junyanz's parameters in pyganx's module order: outer 0-2, the blocks, outer 3-5
    theirs: list[torch.Tensor] = []
    for c in convs[:3]:
        theirs += [c["weight"], c["bias"]]
    for i in sorted(blocks):
        for j in sorted(blocks[i]):
            theirs += [blocks[i][j]["weight"], blocks[i][j]["bias"]]
    for c in convs[3:]:
        theirs += [c["weight"], c["bias"]]
    _load_in_order(net, theirs, path, f"{len(blocks)}-block generator")
    reverse = "G_B" in path.name
    return ForeignGenerator(net.eval(), "cyclegan", "G_BA" if reverse else "G_AB",
                            ("B", "A") if reverse else ("A", "B"), in_ch, image_size,
                            f"junyanz-cyclegan {path.name}")


def _load_in_order(net: nn.Module, theirs: list[torch.Tensor], path: Path, what: str) -> None:
    """Loads ``theirs``, tensors in ``net``'s state-dict order, checking count and shapes."""
    ours = list(net.state_dict().items())
    if len(theirs) != len(ours):
        raise CheckpointError(f"{path}: {len(theirs)} tensors where pyganx's {what} has {len(ours)} "
                         f"(dropout layers or a different layout?)")
    mapped = {}
    for (k, p), t in zip(ours, theirs):
        if t.shape != p.shape:
            raise CheckpointError(f"{path}: shape {tuple(t.shape)} where pyganx's {k} is {tuple(p.shape)}")
        mapped[k] = t
    net.load_state_dict(mapped)


_STAR = re.compile(r"^main\.(\d+)\.(weight|bias)$")
_STAR_BLOCK = re.compile(r"^main\.(\d+)\.main\.(\d+)\.(weight|bias)$")


def yunjey_stargan(path: str | os.PathLike, image_size: int = 128,
                   domains: tuple[str, ...] | None = None) -> ForeignGenerator:
    """A yunjey/stargan Generator as pyganx's StarGANGenerator (see the module doc)."""
    path = Path(path)
    outer, blocks = _layers(path, _STAR, _STAR_BLOCK, "a yunjey-stargan Generator (is it the "
                                                      "discriminator, *-D.ckpt?)")
    layers = [outer[i] for i in sorted(outer)]
    convs = [c for c in layers if c["weight"].ndim == 4]
    if len(convs) != 6 or not blocks:
        raise CheckpointError(f"{path}: expected 6 outer convolutions and residual blocks, found "
                         f"{len(convs)} and {len(blocks)} blocks: not a StarGAN Generator")
    first = convs[0]["weight"]
    conv_dim, out_ch = first.shape[0], convs[-1]["weight"].shape[0]
    c_dim = first.shape[1] - out_ch
    if c_dim < 1:
        raise CheckpointError(f"{path}: the first convolution takes {first.shape[1]} channels for "
                         f"{out_ch}-channel images: no label channels")
    names = tuple(domains) if domains else tuple(f"label{i}" for i in range(c_dim))
    if len(names) != c_dim:
        raise UsageError(f"{path}: the generator takes {c_dim} labels, {len(names)} names were given")
    net = StarGANGenerator(out_ch, c_dim, conv_dim, len(blocks))
    theirs: list[torch.Tensor] = []
    order = sorted(list(outer) + list(blocks))
    for i in order:
        if i in blocks:
            for j in sorted(blocks[i]):
                theirs += [blocks[i][j][n] for n in ("weight", "bias") if n in blocks[i][j]]
        else:
            theirs += [outer[i][n] for n in ("weight", "bias") if n in outer[i]]
    _load_in_order(net, theirs, path, f"{len(blocks)}-block StarGAN generator")
    return ForeignGenerator(net.eval(), "stargan", "G", names, out_ch, image_size,
                            f"yunjey-stargan {path.name}", ("image", "domain"))


def guess_format(path: str | os.PathLike) -> str | None:
    """The ``--from`` format whose layout a state dict file has (every key an outer layer's
    or a residual block's of that format, at least one of each), else None (also for a
    file that is not a state dict of tensors)."""
    try:
        keys = [k for k in _load_state(Path(path)) if not k.endswith(_NORM_STATS)]
    except CheckpointError:
        return None
    for fmt, outer, block in (("junyanz-cyclegan", _OUTER, _BLOCK), ("yunjey-stargan", _STAR, _STAR_BLOCK)):
        kinds = [bool(block.match(k)) for k in keys if outer.match(k) or block.match(k)]
        if keys and len(kinds) == len(keys) and any(kinds) and not all(kinds):
            return fmt
    return None


def load_foreign(path: str | os.PathLike, fmt: str, image_size: int | None = None,
                 domains: tuple[str, ...] | None = None) -> ForeignGenerator:
    if fmt == "junyanz-cyclegan":
        return junyanz_cyclegan(path, image_size or 256)
    if fmt == "yunjey-stargan":
        return yunjey_stargan(path, image_size or 128, domains)
    raise UsageError(f"unknown --from format {fmt!r}; known: {', '.join(FORMATS)}")
