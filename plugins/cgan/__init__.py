"""Conditional GAN (Mirza & Osindero 2014) with DCGAN networks: the class label y, one-hot,
is joined to z at G's input and to the image (as constant channels) at D's input, and the
minimax objective is conditioned on it. Everything else (losses, optimiser, ``--loss``)
is the DCGAN plugin's. Trains on labelled data: one sub-folder per class, or
``--demo digits`` (10 classes). ``pyganx sample RUN --label 7`` draws one class; the
sample grids have one row per class.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pyganx.errors import UsageError
from pyganx.plugin import Batch, ExportSpec
from pyganx_plugins.dcgan import DCGAN, DCGANConfig


@dataclass
class CGANConfig(DCGANConfig):
    """The DCGAN plugin's options."""


class CGAN(DCGAN):
    """Class-conditional GAN (Mirza & Osindero 2014) on DCGAN networks."""

    Config = CGANConfig
    data_kind = "labelled"

    @property
    def num_classes(self) -> int:
        """The data's number of classes; fewer than 2 is a UsageError."""
        n = self.data_info.num_classes
        if n < 2:
            raise UsageError(f"the conditional GAN needs labelled data with at least 2 classes, got {n}")
        return n

    @property
    def classes(self) -> tuple[str, ...]:
        """The class names (the data's sub-folders), else the class indices as strings."""
        return tuple(self.data_info.domains) or tuple(str(k) for k in range(self.num_classes))

    def _labels(self, batch: Batch) -> torch.Tensor:
        """The batch's class labels."""
        return batch["label"]

    def class_index(self, label: str | int) -> int:
        """A class given by name (its folder) or by index."""
        names = self.classes
        if str(label) in names:
            return names.index(str(label))
        try:
            k = int(label)
        except (TypeError, ValueError):
            k = -1
        if 0 <= k < len(names):
            return k
        raise UsageError(f"unknown class {label!r}; the classes are {', '.join(names)}")

    def sample(self, batch: Batch, label: str | int | None = None) -> dict[str, torch.Tensor]:
        """One row per class, the same z down each column; with ``label`` (a class name or index;
        ``pyganx sample --label``), one row of that class."""
        n = batch["image"].shape[0]
        dev = next(self.G.parameters()).device
        if label is not None:
            k = self.class_index(label)
            return {self.classes[k]: self.generate(n, torch.full((n,), k, device=dev))}
        # one row per class, the same z down each column
        return {name: self.generate(n, torch.full((n,), k, device=dev)) for k, name in enumerate(self.classes)}

    def export_specs(self) -> dict[str, ExportSpec]:
        """``G``: noise z and a class index -> image, with the class names."""
        return {"G": ExportSpec("G", ("z", "label"), self.classes, z_dim=self.config.z_dim,
                                description="noise + class -> image")}
