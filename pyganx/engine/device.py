"""Which device a run trains on."""
from __future__ import annotations

import torch

from ..errors import UsageError
from .distributed import World


def pick_device(name: str | None = None, world: World | None = None) -> torch.device:
    """The device asked for, else the first available; under torchrun, GPU LOCAL_RANK."""
    if world is not None and world.distributed:
        if name in (None, "cuda") and torch.cuda.is_available():
            return torch.device("cuda", world.local_rank)
        if name in (None, "cpu"):
            return torch.device("cpu")
        if name == "cuda":
            raise UsageError("--device cuda under torchrun, but torch sees no GPU")
        raise UsageError(f"distributed training runs on cuda or cpu, not {name}")
    if name:
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def configure_backends(device: torch.device, deterministic: bool) -> None:
    """On CUDA, cuDNN's benchmark mode (it times the convolution algorithms for each new
    shape once and keeps the fastest) unless ``deterministic`` asks for repeatable ones."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic


__all__ = ["configure_backends", "pick_device"]
