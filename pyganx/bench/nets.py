"""Network benchmark: the residual block and the CycleGAN generator, eager vs compile vs pyganx.

Candidates, timed round-robin in one process with the same weights:
  eager    the plain PyTorch composition (``fused=False``)
  compile  ``torch.compile`` of that composition (default mode: no CUDA graphs)
  pyganx   ``fused=True``: the compiled residual_block op and InstanceNormReLU
Cases: the block forward and forward+backward at (1,256,64,64) and (4,256,32,32); the
9-block ResnetGenerator at 256x256, batch 1: inference, and a training step (forward,
L1 loss, backward, Adam). Memory: bytes saved for backward (unique storages, parameters
excluded) and, on CUDA, the peak allocated during a training step.
"""
from __future__ import annotations

import argparse
import copy
import gc
from dataclasses import dataclass
from typing import Callable

import torch

from ..nn import ResidualBlock, ResnetGenerator
from .ops import machine_description
from .timing import add_common_args, allocator_for, fmt, report, round_robin

BLOCK_SHAPES = [(1, 256, 64, 64), (4, 256, 32, 32)]
QUICK_BLOCK_SHAPES = [(1, 64, 32, 32)]


@dataclass
class NetRow:
    case: str
    mode: str
    eager_ms: float
    compile_ms: float | None
    pyganx_ms: float
    vs_eager: float
    vs_compile: float | None
    saved_eager_mib: float | None = None
    saved_pyganx_mib: float | None = None
    peak_eager_mib: float | None = None
    peak_compile_mib: float | None = None
    peak_pyganx_mib: float | None = None


def saved_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the unique storages autograd saves for backward, parameters excluded."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    del out
    return sum(seen.values())


def variants(make: Callable[[bool], torch.nn.Module], device, use_compile: bool):
    """The eager and fused twins of one model (same weights), and their runners (with
    torch.compile ones when asked)."""
    torch.manual_seed(0)
    eager = make(False).to(device)
    fused = make(True).to(device)
    fused.load_state_dict(eager.state_dict())
    models = {"eager": eager, "pyganx": fused}
    runners = {"eager": eager, "pyganx": fused}
    if use_compile:
        torch._dynamo.reset()
        comp_model = copy.deepcopy(eager)
        models["compile"] = comp_model
        runners["compile"] = torch.compile(comp_model)
    return models, runners


def _row(case, mode, t, **mem) -> NetRow:
    p = t["pyganx"].best_ms
    c = t["compile"].best_ms if "compile" in t else None
    return NetRow(case, mode, t["eager"].best_ms, c, p, t["eager"].best_ms / p,
                  (c / p) if c else None, **mem)


def _peak_mib(fn: Callable[[], object], device) -> float | None:
    if device.type != "cuda":
        return None
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def bench_block(shape, device, rounds, use_compile, dtype=torch.float32) -> list[NetRow]:
    C = shape[1]
    models, runners = variants(lambda fused: ResidualBlock(C, fused=fused), device, use_compile)
    for m in models.values():
        m.to(dtype)
    x = torch.randn(shape, device=device, dtype=dtype)
    case = f"ResidualBlock {'x'.join(map(str, shape))} {str(dtype).replace('torch.', '')}"
    rows = []
    with torch.no_grad():
        t = round_robin({k: (lambda r=r: r(x)) for k, r in runners.items()}, rounds=rounds,
                        device=device)
    rows.append(_row(case, "fwd", t))
    xg = x.clone().requires_grad_()
    g = torch.randn_like(x)

    def step(r):
        def run():
            xg.grad = None
            r(xg).backward(g)
        return run

    t = round_robin({k: step(r) for k, r in runners.items()}, rounds=rounds, device=device)
    rows.append(_row(case, "fwd+bwd", t,
                     saved_eager_mib=saved_bytes(models["eager"], xg) / 2**20,
                     saved_pyganx_mib=saved_bytes(models["pyganx"], xg) / 2**20))
    return rows


def train_step(model: Callable, opt: torch.optim.Optimizer, x: torch.Tensor, target: torch.Tensor,
               set_to_none: bool = True) -> Callable[[], None]:
    """One generator training step as a closure: forward, L1 to ``target``, backward, Adam."""
    def run():
        opt.zero_grad(set_to_none=set_to_none)
        (model(x) - target).abs().mean().backward()
        opt.step()
    return run


def bench_generator(size, n_blocks, device, rounds, use_compile) -> list[NetRow]:
    models, runners = variants(lambda fused: ResnetGenerator(n_blocks=n_blocks, fused=fused),
                                device, use_compile)
    x = torch.randn(1, 3, size, size, device=device)
    target = torch.rand_like(x) * 2 - 1
    case = f"ResnetGenerator {n_blocks} blocks {size}x{size} b1"
    rows = []
    with torch.no_grad():
        t = round_robin({k: (lambda r=r: r(x)) for k, r in runners.items()}, rounds=rounds,
                        device=device)
    rows.append(_row(case, "inference", t))
    opts = {k: torch.optim.Adam(m.parameters(), lr=2e-4, betas=(0.5, 0.999))
            for k, m in models.items()}

    steps = {k: train_step(runners[k], opts[k], x, target) for k in runners}
    t = round_robin(steps, rounds=rounds, warmup=2, device=device)
    xg = x.clone().requires_grad_()
    mem = dict(saved_eager_mib=saved_bytes(models["eager"], xg) / 2**20,
               saved_pyganx_mib=saved_bytes(models["pyganx"], xg) / 2**20)
    for k in steps:
        mem[f"peak_{k}_mib"] = _peak_mib(steps[k], device)
    rows.append(_row(case, "train step", t, **mem))
    return rows


def format_table(rows: list[NetRow]) -> str:
    def f(v, spec=".2f"):
        return fmt(v, spec)
    out = ["| case | mode | eager ms | compile ms | pyganx ms | x eager | x compile "
           "| saved MiB eager / pyganx | peak MiB eager / compile / pyganx |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        saved = (f"{f(r.saved_eager_mib, '.1f')} / {f(r.saved_pyganx_mib, '.1f')}"
                 if r.saved_eager_mib is not None else "-")
        peak = (f"{f(r.peak_eager_mib, '.0f')} / {f(r.peak_compile_mib, '.0f')} / "
                f"{f(r.peak_pyganx_mib, '.0f')}" if r.peak_eager_mib is not None else "-")
        out.append(f"| {r.case} | {r.mode} | {f(r.eager_ms)} | {f(r.compile_ms)} "
                   f"| {f(r.pyganx_ms)} | {f(r.vs_eager)} | {f(r.vs_compile)} | {saved} | {peak} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pyganx bench nets", description=__doc__.splitlines()[0])
    add_common_args(ap)
    ap.add_argument("--only", choices=["block", "generator"], help="run one part")
    ap.add_argument("--no-bf16", action="store_true", help="on CUDA, skip the bfloat16 block rows")
    args = ap.parse_args(argv)
    tuned = allocator_for(args)
    dev = torch.device(args.device)
    use_compile = not args.no_compile
    rounds = args.rounds or (3 if args.quick else (20 if dev.type == "cuda" else 5))
    rows: list[NetRow] = []
    if args.only in (None, "block"):
        for shape in QUICK_BLOCK_SHAPES if args.quick else BLOCK_SHAPES:
            rows += bench_block(shape, dev, rounds, use_compile)
            if dev.type == "cuda" and not args.quick and not args.no_bf16:
                rows += bench_block(shape, dev, rounds, use_compile, torch.bfloat16)
    if args.only in (None, "generator"):
        size, blocks = (64, 2) if args.quick else (256, 9)
        rows += bench_generator(size, blocks, dev, rounds, use_compile)
    report(f"networks on {machine_description(dev)}", rounds, tuned, format_table(rows), rows, args.json)
    return 0
