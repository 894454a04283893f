"""Op benchmark: instance norm + ReLU, eager PyTorch vs torch.compile vs pyganx.

Every case times, round-robin in one process: the eager composition
``F.relu(F.instance_norm(x))``, the same function under ``torch.compile``, pyganx's
fused op, and ``x.clone()`` (a copy of the same bytes, also allocating its output) as
the bandwidth reference. GB/s counts one read and one write of the tensor (forward),
or two reads and one write (forward+backward: x and grad_out in, grad_x out; the
forward's own traffic is in the time too, so that column is a lower bound there).
"""
from __future__ import annotations

import argparse
import os
import platform
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .._extension import build_info
from ..ops import instance_norm_relu
from .timing import add_common_args, allocator_for, fmt, report, round_robin

FULL_SHAPES = [(1, 256, 64, 64), (1, 64, 256, 256), (4, 128, 128, 128), (16, 64, 128, 128)]
QUICK_SHAPES = [(1, 64, 64, 64), (4, 128, 32, 32)]


@dataclass
class OpRow:
    shape: tuple[int, ...]
    dtype: str
    layout: str
    mode: str
    eager_ms: float
    compile_ms: float | None
    pyganx_ms: float
    copy_ms: float
    vs_eager: float
    vs_compile: float | None
    gbps: float
    frac_of_copy: float
    pyganx_median_ms: float


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cap = build_info().get("cpu_capability") or torch.backends.cpu.get_cpu_capability()
    return (f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}, pyganx CPU kernels {cap}")


def eager_fn(x: torch.Tensor) -> torch.Tensor:
    return F.relu(F.instance_norm(x))


def _fwd_bwd(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, g: torch.Tensor):
    def run():
        x.grad = None
        fn(x).backward(g)
    return run


def bench_case(shape, dtype: torch.dtype, channels_last: bool, mode: str, device: torch.device,
               rounds: int, use_compile: bool) -> OpRow:
    torch.manual_seed(0)
    x = torch.randn(shape, device=device, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    nbytes = x.numel() * x.element_size()
    compiled = None
    if use_compile:
        torch._dynamo.reset()
        compiled = torch.compile(eager_fn, dynamic=False)
    if mode == "fwd":
        with torch.no_grad():
            cands = {"eager": lambda: eager_fn(x), "pyganx": lambda: instance_norm_relu(x)}
            if compiled is not None:
                cands["compile"] = lambda: compiled(x)
            cands["copy"] = lambda: x.clone()
            t = round_robin(cands, rounds=rounds, device=device)
        traffic = 2 * nbytes
    else:
        xg = x.detach().clone().requires_grad_()
        g = torch.randn_like(x)
        cands = {"eager": _fwd_bwd(eager_fn, xg, g), "pyganx": _fwd_bwd(instance_norm_relu, xg, g)}
        if compiled is not None:
            cands["compile"] = _fwd_bwd(compiled, xg, g)
        cands["copy"] = lambda: x.clone()
        t = round_robin(cands, rounds=rounds, device=device)
        traffic = 3 * nbytes
    p = t["pyganx"].best_ms
    comp = t["compile"].best_ms if "compile" in t else None
    gbps = traffic / (p * 1e-3) / 1e9
    copy_gbps = 2 * nbytes / (t["copy"].best_ms * 1e-3) / 1e9
    return OpRow(
        shape=tuple(shape), dtype=str(dtype).replace("torch.", ""),
        layout="channels_last" if channels_last else "contiguous", mode=mode,
        eager_ms=t["eager"].best_ms, compile_ms=comp, pyganx_ms=p, copy_ms=t["copy"].best_ms,
        vs_eager=t["eager"].best_ms / p, vs_compile=(comp / p) if comp else None,
        gbps=gbps, frac_of_copy=gbps / copy_gbps, pyganx_median_ms=t["pyganx"].median_ms,
    )


def run(shapes: Iterable[tuple[int, ...]] = FULL_SHAPES, device: str = "cpu", rounds: int = 30,
        modes=("fwd", "fwd+bwd"), layouts=(False, True), dtypes=None,
        use_compile: bool = True) -> list[OpRow]:
    dev = torch.device(device)
    if dtypes is None:
        dtypes = [torch.float32] + ([torch.bfloat16] if dev.type == "cuda" else [])
    rows = []
    for shape in shapes:
        for dtype in dtypes:
            for cl in layouts:
                for mode in modes:
                    rows.append(bench_case(shape, dtype, cl, mode, dev, rounds, use_compile))
    return rows


def format_table(rows: list[OpRow]) -> str:
    def f(v, spec=".3f"):
        return fmt(v, spec)
    out = ["| shape | dtype | layout | mode | eager ms | compile ms | pyganx ms | copy ms "
           "| x eager | x compile | GB/s | of copy |",
           "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(
            f"| {'x'.join(map(str, r.shape))} | {r.dtype} | {r.layout} | {r.mode} | {f(r.eager_ms)} "
            f"| {f(r.compile_ms)} | {f(r.pyganx_ms)} | {f(r.copy_ms)} | {f(r.vs_eager, '.2f')} "
            f"| {f(r.vs_compile, '.2f')} | {f(r.gbps, '.1f')} | {f(r.frac_of_copy, '.0%')} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pyganx bench ops", description=__doc__.splitlines()[0])
    add_common_args(ap)
    args = ap.parse_args(argv)
    tuned = allocator_for(args)
    shapes = QUICK_SHAPES if args.quick else FULL_SHAPES
    rounds = args.rounds or (10 if args.quick else 30)
    rows = run(shapes, device=args.device, rounds=rounds, use_compile=not args.no_compile)
    report(f"instance_norm_relu on {machine_description(torch.device(args.device))}", rounds, tuned,
           format_table(rows), rows, args.json)
    return 0
