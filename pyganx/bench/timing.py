"""Round-robin timing of several candidates in one process.

Timing candidates one after the other lets first-touch page faults, frequency changes
and neighbours on a shared machine decide the ranking. Here every candidate is warmed
up, then the candidates take turns for N rounds, and each one's best and median are
reported. On CUDA each call is bracketed by events and synchronised.
"""
from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path

import torch


@dataclass
class Timing:
    best_ms: float
    median_ms: float
    samples: int


def _time_once(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def round_robin(candidates: dict[str, Callable[[], object]], rounds: int = 30, warmup: int = 3,
                device: torch.device | str = "cpu") -> dict[str, Timing]:
    """Best and median milliseconds of each candidate, timed in alternation."""
    device = torch.device(device)
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            samples[name].append(_time_once(fn, device))
    return {name: Timing(min(v), statistics.median(v), len(v)) for name, v in samples.items()}


def keep_freed_memory() -> bool:
    """Make glibc keep freed blocks of up to 32 MiB for reuse (no return to the OS).

    With glibc's defaults, large tensors freed between calls are unmapped, and every
    later allocation pays a page fault per 4 KiB page on first touch: on a small VM
    that costs more than the kernels themselves (a 4 MiB clone: 1.8 ms with faults,
    0.3 ms without) and hides what the candidates compute. A training process reaches
    that steady state anyway through its caching of same-sized tensors. The same
    setting is available without code: MALLOC_MMAP_THRESHOLD_=33554432
    MALLOC_TRIM_THRESHOLD_=68719476736. Returns whether it could be applied.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 32 << 20) == 1
        ok = libc.mallopt(m_trim_threshold, ctypes.c_int(2**31 - 1)) == 1 and ok
        return ok
    except (OSError, AttributeError):
        return False


def fmt(value, spec: str) -> str:
    """A table cell: '-' for a missing value."""
    return "-" if value is None else format(value, spec)


def add_common_args(ap) -> None:
    """The options every `pyganx bench` suite takes."""
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="small shapes, few rounds")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    ap.add_argument("--os-allocator", action="store_true",
                    help="keep glibc's defaults (freed large blocks go back to the OS, and "
                         "every allocation then pays page faults)")


def allocator_for(args) -> bool:
    """Applies keep_freed_memory() unless ``--os-allocator``; whether it is in effect."""
    return False if args.os_allocator else keep_freed_memory()


def report(what: str, rounds: int, tuned: bool, table: str, rows: list, json_path: str | None) -> None:
    """A suite's output: one line saying what ran where and how, the table, and the rows
    (dataclasses or dicts) as JSON to ``json_path`` when given."""
    print(f"{what}; best of {rounds} round-robin rounds; freed memory "
          f"{'kept for reuse (mallopt)' if tuned else 'returned to the OS'}")
    print(table)
    if json_path:
        Path(json_path).write_text(json.dumps([asdict(r) if is_dataclass(r) else r for r in rows], indent=1))
