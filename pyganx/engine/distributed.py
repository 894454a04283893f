"""Training on several processes with torch.distributed: `torchrun ... -m pyganx train`.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; with a world of more than one process
the trainer joins the process group (nccl on GPUs, gloo on CPU), and every network that
trains is wrapped in DistributedDataParallel. Plugins keep calling their networks as
attributes (``self.G(x)``); the engine points those attributes at a ``Synced`` wrapper
that sends training forward passes (grad enabled, parameters that require grad) through
DDP, and everything else (a frozen discriminator in the generator's step, sampling under
no_grad) to the plain module, so that DDP's reducer only waits for gradients that the
step really computes. Decisions: docs/distributed.md.
"""
from __future__ import annotations

import atexit
import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..errors import UsageError


@dataclass(frozen=True)
class World:
    """This process's place in the run: ``rank`` of ``size`` processes."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def world_from_env() -> World:
    """The world torchrun (or any launcher setting its variables) started this process in."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))


def join(world: World, device: torch.device) -> None:
    """Joins the process group (nccl for CUDA devices, gloo otherwise) for the rest of the
    process: a second run in the same processes uses it again, and it is left at exit."""
    if not world.distributed or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    atexit.register(_leave)


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    """Waits for every rank (after rank 0 wrote a checkpoint that all of them may read next)."""
    if world.distributed:
        dist.barrier()


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``: the run's seed on rank 0 (so that one process and rank 0
    draw alike), a distinct one derived from (seed, rank) elsewhere."""
    return seed if rank == 0 else (seed * 1_000_003 + rank * 7_919 + 1) % 2**63


def shard(indices: list[int], world: World) -> list[int]:
    """This rank's share of one epoch's order: every ``size``-th index from ``rank``, after
    trimming to a multiple of ``size`` so that every rank runs the same number of steps.
    Batch b of the ranks together holds the same items as batch b of one process with a
    ``size`` times larger batch."""
    usable = len(indices) - len(indices) % world.size
    return indices[:usable][world.rank::world.size]


class Synced(nn.Module):
    """A network that trains through DistributedDataParallel; see the module docstring."""

    def __init__(self, module: nn.Module, ddp: nn.Module) -> None:
        super().__init__()
        self.module = module
        object.__setattr__(self, "ddp", ddp)   # not a submodule: it holds the same parameters

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.module.parameters()):
            return self.ddp(*args, **kwargs)
        return self.module(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def wrap_networks(plugin: Any, nets: dict[str, nn.Module], device: torch.device, sync_bn: bool) -> dict[str, Synced]:
    """Wraps every network with trainable parameters in DDP and points the plugin's
    attributes that hold it at the wrapper. A network the plugin does not hold as an
    attribute cannot be synchronised this way: that is an error, not a silent
    unsynchronised run."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    wrapped = {}
    for name, net in nets.items():
        if not any(p.requires_grad for p in net.parameters()):
            continue
        if sync_bn:
            if device.type != "cuda":
                raise UsageError("--sync-bn needs GPUs (SyncBatchNorm runs on CUDA only); on CPU each "
                                 "process keeps its own batch statistics")
            converted = nn.SyncBatchNorm.convert_sync_batchnorm(net)
            if converted is not net:
                raise UsageError(f"network {name!r} is a batch norm itself; --sync-bn cannot convert it in place")
        holders = [k for k, v in vars(plugin).items() if v is net]
        if not holders:
            raise UsageError(f"{type(plugin).__name__} does not keep network {name!r} as an attribute "
                             f"(self.{name} = ...), so distributed training cannot route it through DDP")
        # buffers (batch-norm running statistics) follow rank 0's at every training forward
        ddp = DDP(net, device_ids=[device.index] if device.type == "cuda" else None)
        wrapped[name] = Synced(net, ddp)
        for k in holders:
            setattr(plugin, k, wrapped[name])
    return wrapped


def _device() -> torch.device:
    """Where collectives of this group take tensors: the current GPU for nccl."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sync_step(losses: dict[str, float], stop: bool, world: World) -> tuple[dict[str, float], bool]:
    """After a step, in one all-reduce: the losses averaged over the ranks (what one
    process on the global batch logs), and whether any rank was asked to stop (a Ctrl-C
    reaches every rank, not always in the same step)."""
    if not world.distributed:
        return losses, stop
    keys = list(losses)          # the plugin's order (the CSV's columns); the same on every rank
    t = torch.tensor([float(losses[k]) for k in keys] + [1.0 if stop else 0.0], dtype=torch.float64,
                     device=_device())
    dist.all_reduce(t)
    *sums, stops = t.tolist()
    return {k: v / world.size for k, v in zip(keys, sums)}, stops > 0


def gather(obj: Any, world: World) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not world.distributed:
        return [obj]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out
