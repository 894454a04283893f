"""What a decision is made for: the device as the cache knows it, and the key text of
one call (op, options, shape, dtype, autocast, memory layout, training or inference)."""
from __future__ import annotations

import platform
from collections.abc import Sequence

import torch
from torch import Tensor

from ..ops.layout import channels_last_output


def _layout(x: Tensor) -> str:
    if channels_last_output(x):
        return "channels_last"
    return "contiguous" if x.is_contiguous() else "strided"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


_device_names: dict[tuple, str] = {}


def device_name(device: torch.device) -> str:
    """The device as the cache knows it: the CPU model and thread count, or the GPU's name."""
    threads = torch.get_num_threads() if device.type == "cpu" else 0
    key = (device.type, device.index, threads)
    name = _device_names.get(key)
    if name is None:
        if device.type == "cpu":
            cap = torch.backends.cpu.get_cpu_capability()
            name = f"cpu {_cpu_name()} {cap} {threads} threads"
        elif device.type == "cuda":
            name = f"cuda {torch.cuda.get_device_name(device)}"
        else:
            name = device.type
        _device_names[key] = name
    return name


def is_training(x: Tensor, params: Sequence[Tensor | None]) -> bool:
    """Whether this call will be differentiated: gradients on, and x or a parameter needs one."""
    return torch.is_grad_enabled() and (x.requires_grad or any(p is not None and p.requires_grad for p in params))


def autocast_dtype(x: Tensor) -> torch.dtype | None:
    """The dtype autocast computes in for x's device, None when it is off."""
    kind = x.device.type
    try:
        return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None
    except RuntimeError:         # a device type without autocast
        return None


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def key_text(op: str, options: str, x: Tensor, training: bool) -> str:
    """The decision's key as the cache and a run's checkpoint write it."""
    shape = "x".join(map(str, x.shape))
    cast = autocast_dtype(x)
    dtype = _dtype_name(x.dtype) + (f" autocast {_dtype_name(cast)}" if cast is not None else "")
    return f"{op}({options}) {shape} {dtype} {_layout(x)} {'train' if training else 'inference'}"
