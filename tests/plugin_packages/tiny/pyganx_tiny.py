"""A minimal noise-to-image GAN written against pyganx's public plugin API only."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pyganx.plugin import DataInfo, ExportSpec, GANPlugin, field


@dataclass
class TinyConfig:
    z_dim: int = field(default=8, metadata={"help": "noise dimension"})
    lr: float = field(default=2e-4, metadata={"help": "Adam learning rate"})
    hinge: bool = field(default=False, metadata={"help": "hinge loss instead of BCE"})


class TinyGAN(GANPlugin):
    """Tiny MLP GAN for tests."""

    api_version = 1
    Config = TinyConfig
    data_kind = "noise"

    def __init__(self, config: TinyConfig, data_info: DataInfo) -> None:
        super().__init__(config, data_info)
        n = data_info.channels * data_info.image_size ** 2
        self.G = nn.Sequential(nn.Linear(config.z_dim, n), nn.Tanh())
        self.D = nn.Linear(n, 1)
        self.opt = {name: torch.optim.Adam(m.parameters(), lr=config.lr)
                    for name, m in (("G", self.G), ("D", self.D))}

    def networks(self):
        return {"G": self.G, "D": self.D}

    def optimizers(self):
        return self.opt

    def train_step(self, batch, ctx):
        return {}

    def export_specs(self):
        return {"G": ExportSpec("G", inputs=("z",), z_dim=self.config.z_dim)}
