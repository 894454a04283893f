"""Feeding the loop: the data loader, its per-epoch order (the same on resume and on
every rank, each rank taking its share) and batches moved to the device."""
from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from .distributed import World, shard
from .stop import worker_leaves_sigint_to_the_trainer


def to_device(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    """A batch (tensors, or dicts, lists and tuples of them) on ``device``; 4-D float
    tensors in channels_last memory format when asked."""
    if isinstance(batch, torch.Tensor):
        if channels_last and batch.dim() == 4 and batch.is_floating_point():
            return batch.to(device, memory_format=torch.channels_last, non_blocking=True)
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device, channels_last) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device, channels_last) for v in batch)
    return batch


class EpochSampler(torch.utils.data.Sampler):
    """A shuffled order per epoch, derived from (seed, epoch): the same on resume and on
    every rank, of which each takes its share (distributed.shard)."""

    def __init__(self, n: int, seed: int, world: World | None = None) -> None:
        self.n, self.seed, self.epoch = n, seed, 0
        self.world = world or World()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(shard(torch.randperm(self.n, generator=g).tolist(), self.world))

    def __len__(self) -> int:
        return self.n // self.world.size


def make_loader(dataset: Dataset, batch_size: int, seed: int, world: World, workers: int,
                pin_memory: bool) -> DataLoader:
    """The run's loader: EpochSampler order, full batches only where the rank's share
    holds one, workers that leave Ctrl-C to the trainer."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False,
                      sampler=EpochSampler(len(dataset), seed, world),
                      drop_last=len(dataset) // world.size >= batch_size,
                      num_workers=workers, pin_memory=pin_memory, persistent_workers=workers > 0,
                      worker_init_fn=worker_leaves_sigint_to_the_trainer,
                      # each new iterator draws a worker seed: from this generator, not the
                      # global RNG that plugins draw noise from, so that a resumed run (one
                      # iterator more) draws the same noise
                      generator=torch.Generator().manual_seed(seed))


__all__ = ["EpochSampler", "make_loader", "to_device"]
