"""Generators trained with other code, loaded into pyganx's networks.

``junyanz-cyclegan``: a generator saved by junyanz/pytorch-CycleGAN-and-pix2pix
(``latest_net_G_A.pth`` / ``*_net_G_B.pth``): its ``ResnetGenerator`` with instance
norm (the CycleGAN default, no affine, convolutions with bias), 6 or 9 blocks, any
width. The state dict's keys are ``model.<i>.weight`` for the outer convolutions and
``model.<i>.conv_block.<j>.weight`` inside the residual blocks; pyganx's
``ResnetGenerator`` has the same operations in the same order, so each convolution is
mapped by its place in that order, and every shape is checked. Old checkpoints'
instance-norm running statistics (which the norm never uses) are dropped.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..engine.trainer import TrainError
from ..nn import ResnetGenerator

FORMATS = ("junyanz-cyclegan",)

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


def _load_state(path: Path) -> dict:
    try:
        st = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - one clear line for a foreign or broken file
        raise TrainError(f"{path}: cannot read a state dict ({type(e).__name__}: {e})") from None
    if isinstance(st, dict) and "state_dict" in st and isinstance(st["state_dict"], dict):
        st = st["state_dict"]
    if not isinstance(st, dict) or not all(isinstance(v, torch.Tensor) for v in st.values()):
        raise TrainError(f"{path}: expected a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in st.items()}


def junyanz_cyclegan(path: str | os.PathLike, image_size: int = 256) -> ForeignGenerator:
    """A junyanz/pytorch-CycleGAN-and-pix2pix ResNet generator as pyganx's ResnetGenerator."""
    path = Path(path)
    st = {k: v for k, v in _load_state(path).items() if not k.endswith(_NORM_STATS)}
    outer: dict[int, dict[str, torch.Tensor]] = {}
    blocks: dict[int, dict[int, dict[str, torch.Tensor]]] = {}
    for k, v in st.items():
        if m := _OUTER.match(k):
            outer.setdefault(int(m[1]), {})[m[2]] = v
        elif m := _BLOCK.match(k):
            blocks.setdefault(int(m[1]), {}).setdefault(int(m[2]), {})[m[3]] = v
        else:
            raise TrainError(f"{path}: unexpected key {k!r} for a junyanz-cyclegan ResNet generator "
                             f"(U-Net generators and other layouts are not supported)")
    if any(v["weight"].ndim == 1 for v in outer.values()) or \
            any(c["weight"].ndim == 1 for b in blocks.values() for c in b.values()):
        raise TrainError(f"{path}: the generator has affine norm layers (--norm batch?); pyganx's "
                         f"CycleGAN generator uses instance norm without affine (--norm instance)")
    convs = [outer[i] for i in sorted(outer)]
    if len(convs) != 6 or not blocks:
        raise TrainError(f"{path}: expected 6 outer convolutions and residual blocks, found "
                         f"{len(convs)} and {len(blocks)} blocks: not a ResnetGenerator")
    in_ch, ngf = convs[0]["weight"].shape[1], convs[0]["weight"].shape[0]
    out_ch = convs[-1]["weight"].shape[0]
    net = ResnetGenerator(in_ch, out_ch, ngf, len(blocks))
    # pyganx's parameters in module order, and junyanz's in the same order: outer 0-2,
    # the blocks, outer 3-5
    ours = [(k, p) for k, p in net.state_dict().items()]
    theirs: list[torch.Tensor] = []
    for c in convs[:3]:
        theirs += [c["weight"], c["bias"]]
    for i in sorted(blocks):
        for j in sorted(blocks[i]):
            theirs += [blocks[i][j]["weight"], blocks[i][j]["bias"]]
    for c in convs[3:]:
        theirs += [c["weight"], c["bias"]]
    if len(theirs) != len(ours):
        raise TrainError(f"{path}: {len(theirs)} tensors where pyganx's {len(blocks)}-block generator "
                         f"has {len(ours)} (dropout layers or a different layout?)")
    mapped = {}
    for (k, p), t in zip(ours, theirs):
        if t.shape != p.shape:
            raise TrainError(f"{path}: shape {tuple(t.shape)} where pyganx's {k} is {tuple(p.shape)}")
        mapped[k] = t
    net.load_state_dict(mapped)
    reverse = "G_B" in path.name
    return ForeignGenerator(net.eval(), "cyclegan", "G_BA" if reverse else "G_AB",
                            ("B", "A") if reverse else ("A", "B"), in_ch, image_size,
                            f"junyanz-cyclegan {path.name}")


def load_foreign(path: str | os.PathLike, fmt: str, image_size: int = 256) -> ForeignGenerator:
    if fmt == "junyanz-cyclegan":
        return junyanz_cyclegan(path, image_size)
    raise TrainError(f"unknown --from format {fmt!r}; known: {', '.join(FORMATS)}")
