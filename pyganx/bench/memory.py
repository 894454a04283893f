"""`pyganx bench memory`: peak memory of a CycleGAN generator training step (forward, L1
loss, backward) with and without pyganx's fused blocks and activation checkpointing.

On CUDA the peak is torch.cuda.max_memory_allocated. On CPU (Linux/glibc) it is the
largest number of bytes malloc has handed out, sampled before and after every aten op
(a TorchDispatchMode), above what was in use when the step began: the parameters and
their (preallocated) gradients are not counted, everything the step allocates is,
including what checkpointing recomputes in backward. What a fused op allocates and frees
inside its own kernel is not seen on CPU.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..nn import ResnetGenerator
from ..ops.residual_block import training_convolutions


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]


def _libc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


def malloc_in_use() -> int | None:
    """Bytes malloc has handed out and not taken back (all arenas and mmapped chunks)."""
    if _LIBC is None:
        return None
    m = _LIBC.mallinfo2()
    return m.uordblks + m.hblkhd


class _Peak(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.peak = malloc_in_use() or 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.peak = max(self.peak, malloc_in_use())
        out = func(*args, **(kwargs or {}))
        self.peak = max(self.peak, malloc_in_use())
        return out


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    """The peak memory ``fn`` allocates above what is in use when it starts; None where
    it cannot be measured (CPU without glibc)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    if malloc_in_use() is None:
        return None
    with _Peak():                   # the first op under a dispatch mode allocates about 26 MiB
        torch.zeros(1) + 1          # of Python-side state once per process: not the step's
    gc.collect()
    base = malloc_in_use()
    with _Peak() as p:
        fn()
    return p.peak - base


def generator_step_peak(size: int, fused: bool, checkpoint: bool, device: torch.device, n_blocks: int = 9,
                        ngf: int = 64, dtype: torch.dtype | None = None, batch: int = 1) -> int | None:
    """Peak bytes of one generator training step at ``size`` x ``size`` (batch ``batch``);
    ``dtype``: autocast dtype, or None for float32."""
    torch.manual_seed(0)
    g = ResnetGenerator(3, 3, ngf, n_blocks, fused=fused).to(device)
    g.checkpoint_activations = checkpoint
    for p in g.parameters():                  # gradients exist before the step, as after the first
        p.grad = torch.zeros_like(p)
    x = torch.rand(batch, 3, size, size, device=device) * 2 - 1

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            y = g(x)
        torch.nn.functional.l1_loss(y.float(), x).backward()
    with training_convolutions(checkpoint, device):   # as `pyganx train` runs it
        return peak_bytes(step, device)


CASES = [  # (label, size, fused, checkpoint, autocast dtype)
    ("eager", 256, False, False, None),
    ("pyganx fused", 256, True, False, None),
    ("pyganx fused + checkpointing", 256, True, True, None),
    ("eager", 512, False, False, None),
    ("pyganx fused + checkpointing", 512, True, True, None),
    ("pyganx fused + checkpointing, bf16 autocast", 512, True, True, torch.bfloat16),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pyganx bench memory", description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    rows = []
    print("| generator (9 blocks, batch 1) | size | peak MiB above the weights |\n|---|---|---|")
    for label, size, fused, ck, dtype in CASES:
        if dtype is not None and dev.type != "cuda":
            continue                    # bf16 convolutions without AMX take minutes at 512 px
        b = generator_step_peak(size, fused, ck, dev, dtype=dtype)
        mib = None if b is None else round(b / 2**20, 1)
        rows.append({"case": label, "size": size, "peak_mib": mib})
        print(f"| {label} | {size} | {mib if mib is not None else 'n/a'} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0
