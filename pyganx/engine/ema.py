"""An exponential moving average of the generators (``--ema DECAY``): the weights that
sample grids, ``pyganx sample``, ``eval`` and ``export`` use when a run kept them."""
from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn


class GeneratorEMA:
    """Frozen copies of the networks ``names`` of ``nets``, moved towards the trained
    weights by ``update`` after every step (buffers are copied as they are)."""

    def __init__(self, nets: dict[str, nn.Module], names: list[str], decay: float) -> None:
        self.nets = nets
        self.decay = decay
        self.averages = {n: copy.deepcopy(nets[n]).eval().requires_grad_(False) for n in names}

    def update(self) -> None:
        with torch.no_grad():
            for k, e in self.averages.items():
                for pe, p in zip(e.parameters(), self.nets[k].parameters()):
                    pe.lerp_(p, 1 - self.decay)
                for be, b in zip(e.buffers(), self.nets[k].buffers()):
                    be.copy_(b)

    @contextlib.contextmanager
    def swapped_into(self, plugin):
        """Within the block, the plugin's generator attributes are the averages (for
        sampling); they point at the trained networks again afterwards."""
        saved = {k: getattr(plugin, k) for k in self.averages}
        for k, m in self.averages.items():
            setattr(plugin, k, m)
        try:
            yield
        finally:
            for k, m in saved.items():
                setattr(plugin, k, m)


__all__ = ["GeneratorEMA"]
