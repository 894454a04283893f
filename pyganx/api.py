"""The notebook face of pyganx: ``pyganx.train`` and ``pyganx.load_generator``."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn


def train(variant: str, data: str | None = None, out: str | Path = "runs/run", **kwargs: Any) -> dict:
    """Trains ``variant`` (a registered plugin name) as ``pyganx train`` does.

    ``kwargs`` are engine options (``steps``, ``epochs``, ``demo``, ``data_a``, ``data_b``,
    ``image_size``, ``batch_size``, ``precision``, ``seed``, ``ema``, ``resume``, ...: the
    fields of :class:`pyganx.engine.TrainOptions`) and plugin config fields (e.g. CycleGAN's
    ``ngf``, ``lambda_cycle``); anything else is a TypeError. Returns the engine's result
    (``steps``, ``seconds``, last ``losses``, ``interrupted``)::

        pyganx.train("cyclegan", demo="digits", out="runs/digits", steps=400, ngf=32)
    """
    from . import registry
    from .engine import Trainer, TrainOptions

    cls = registry.get(variant)
    opt_fields = {f.name for f in dataclasses.fields(TrainOptions)}
    cfg_fields = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(kwargs) - opt_fields - cfg_fields)
    if unknown:
        raise TypeError(f"train({variant!r}) got unknown options {', '.join(unknown)}; engine options: "
                        f"{', '.join(sorted(opt_fields - {'out', 'data'}))}; {variant} options: "
                        f"{', '.join(sorted(cfg_fields))}")
    opts = TrainOptions(out=str(out), data=data, **{k: v for k, v in kwargs.items() if k in opt_fields})
    config = cls.Config(**{k: v for k, v in kwargs.items() if k in cfg_fields and k not in opt_fields})
    return Trainer(variant, cls, config, opts).fit()


def load_generator(run_dir: str | Path, name: str | None = None,
                   device: str | torch.device | None = "cpu", from_format: str | None = None) -> nn.Module:
    """A run's trained generator (default: the plugin's first export spec, e.g. CycleGAN's
    G_AB), in eval mode, with EMA weights when the run kept them. Takes and returns images
    in [-1, 1]. ``from_format="junyanz-cyclegan"`` loads a ``latest_net_G_A.pth`` saved by
    junyanz/pytorch-CycleGAN-and-pix2pix instead."""
    from .engine.run import load_generator as load
    return load(run_dir, name, device, from_format)
