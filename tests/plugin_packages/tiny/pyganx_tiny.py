"""A minimal unpaired translator written against pyganx's public plugin API only."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from pyganx.plugin import DataInfo, ExportSpec, GANPlugin


@dataclass
class TinyConfig:
    width: int = field(default=4, metadata={"help": "hidden channels"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate"})
    hinge: bool = field(default=False, metadata={"help": "an unused switch"})


class TinyGAN(GANPlugin):
    """Tiny translator for tests."""

    api_version = 1
    Config = TinyConfig
    data_kind = "unpaired"

    def __init__(self, config: TinyConfig, data_info: DataInfo) -> None:
        super().__init__(config, data_info)
        c = data_info.channels
        self.G = nn.Sequential(nn.Conv2d(c, config.width, 1), nn.ReLU(), nn.Conv2d(config.width, c, 1))
        self.opt = {"G": torch.optim.Adam(self.G.parameters(), lr=config.lr)}

    def networks(self):
        return {"G": self.G}

    def optimizers(self):
        return self.opt

    def train_step(self, batch, ctx):
        with ctx.autocast():
            loss = F.l1_loss(self.G(batch["A"]), batch["B"])
        ctx.backward(loss)
        ctx.step("G")
        return {"l1": loss.item()}

    def sample(self, batch):
        return {"A": batch["A"], "G(A)": torch.tanh(self.G(batch["A"]))}

    def export_specs(self):
        return {"G": ExportSpec("G", inputs=("image",))}
