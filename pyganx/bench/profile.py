"""`pyganx bench profile`: where the time of the residual block and of a generator training
step goes, eager PyTorch against pyganx, from torch.profiler.

For each case and variant (same weights, the same inputs):
  ms           the best wall time per iteration, timed round-robin outside the profiler
  calls        per iteration: on CPU the aten/pyganx operator calls (nested ones too), on
               CUDA the device activities (kernels, memcpy, memset): how many launches
  busy ms      CUDA only: the device's summed activity time per iteration. Well below
               the wall time means the case is bound by host-side work (launches,
               Python, the dispatcher), not by the GPU
  top entries  by self time: operators on CPU, kernels on CUDA
On CUDA also the memory of a generator step with preallocated gradients: what is
allocated before it (parameters, gradients, Adam state), its peak above that, the bytes
autograd saves for backward, and the rest of the peak (convolution workspaces and other
temporaries), together with the cuDNN / TF32 settings in effect.
"""
from __future__ import annotations

import argparse
import gc
import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch.autograd import DeviceType

from ..nn import ResidualBlock, ResnetGenerator
from .memory import peak_bytes
from .nets import saved_bytes, train_step, variants
from .ops import machine_description
from .timing import allocator_for, round_robin

VARIANTS = ("eager", "pyganx")


@dataclass
class Profile:
    case: str
    variant: str
    ms: float
    calls: float
    busy_ms: float | None
    top: list[dict] = field(default_factory=list)


@dataclass
class StepMemory:
    variant: str
    before_mib: float
    peak_above_mib: float
    saved_mib: float
    rest_mib: float


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _short(name: str, width: int = 90) -> str:
    return name if len(name) <= width else name[: width - 3] + "..."


def profile_iterations(fn: Callable[[], object], device: torch.device, iters: int,
                       top: int) -> tuple[float, float | None, list[dict]]:
    """(calls per iteration, device-busy ms per iteration or None, top entries) of
    ``iters`` calls of ``fn`` under torch.profiler."""
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    _sync(device)
    with profile(activities=acts) as prof:
        for _ in range(iters):
            fn()
        _sync(device)
    per_name: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    if device.type == "cuda":
        events = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
        for e in events:
            slot = per_name[e.name]
            slot[0] += 1
            slot[1] += e.time_range.elapsed_us()
        calls = len(events)
        busy = sum(v[1] for v in per_name.values()) / 1e3 / iters
    else:
        for e in prof.events():
            if e.device_type == DeviceType.CPU and e.name.startswith(("aten::", "pyganx::")):
                slot = per_name[e.name]
                slot[0] += 1
                slot[1] += e.self_cpu_time_total
        calls = sum(v[0] for v in per_name.values())
        busy = None
    total = sum(v[1] for v in per_name.values()) or 1.0
    ranked = sorted(per_name.items(), key=lambda kv: -kv[1][1])[:top]
    entries = [{"name": _short(name), "count": n / iters, "ms": us / 1e3 / iters,
                "share": us / total} for name, (n, us) in ranked]
    return calls / iters, busy, entries


def _pair(make: Callable[[bool], torch.nn.Module], device: torch.device) -> dict[str, torch.nn.Module]:
    """Eager and fused models with the same weights (as `bench nets` builds them)."""
    return variants(make, device, use_compile=False)[0]


def block_iterations(shape: tuple[int, ...], device: torch.device) -> dict[str, Callable[[], None]]:
    """One forward + backward of the residual block per call, per variant."""
    models = _pair(lambda fused: ResidualBlock(shape[1], fused=fused), device)
    x = torch.randn(shape, device=device, requires_grad=True)
    g = torch.randn(shape, device=device)

    def step(m):
        def run():
            x.grad = None
            m(x).backward(g)
        return run
    return {k: step(m) for k, m in models.items()}


def generator_iterations(size: int, n_blocks: int, device: torch.device,
                         set_to_none: bool = True):
    """One training step (forward, L1, backward, Adam) of the CycleGAN generator per
    call, per variant; also returns the models, optimisers and input."""
    models = _pair(lambda fused: ResnetGenerator(n_blocks=n_blocks, fused=fused), device)
    x = torch.rand(1, 3, size, size, device=device) * 2 - 1
    opts = {k: torch.optim.Adam(m.parameters(), lr=2e-4, betas=(0.5, 0.999)) for k, m in models.items()}
    return {k: train_step(models[k], opts[k], x, x, set_to_none) for k in models}, models, x


def step_memory(size: int, n_blocks: int, device: torch.device) -> list[StepMemory]:
    """CUDA: the memory of one generator training step, split as the module docstring says."""
    steps, models, x = generator_iterations(size, n_blocks, device, set_to_none=False)
    rows = []
    for k in VARIANTS:
        steps[k]()                                 # gradients and Adam state exist
        gc.collect()
        _sync(device)
        before = torch.cuda.memory_allocated(device)
        peak_above = peak_bytes(steps[k], device)
        saved = saved_bytes(models[k], x)
        mib = 2.0 ** -20
        rows.append(StepMemory(k, before * mib, peak_above * mib, saved * mib,
                               (peak_above - saved) * mib))
    return rows


def _profile_case(case: str, iterations: dict[str, Callable[[], None]], device: torch.device,
                  rounds: int, iters: int, top: int) -> list[Profile]:
    times = round_robin(iterations, rounds=rounds, warmup=2, device=device)
    out = []
    for k in VARIANTS:
        calls, busy, entries = profile_iterations(iterations[k], device, iters, top)
        out.append(Profile(case, k, times[k].best_ms, calls, busy, entries))
    return out


def format_report(profiles: list[Profile], memory: list[StepMemory]) -> str:
    lines = ["| case | variant | ms | calls / iter | busy ms / iter |", "|---|---|---:|---:|---:|"]
    for p in profiles:
        busy = "-" if p.busy_ms is None else f"{p.busy_ms:.2f}"
        lines.append(f"| {p.case} | {p.variant} | {p.ms:.2f} | {p.calls:.0f} | {busy} |")
    for p in profiles:
        lines += ["", f"{p.case}, {p.variant}: top entries by self time",
                  "| name | count / iter | ms / iter | share |", "|---|---:|---:|---:|"]
        lines += [f"| `{e['name']}` | {e['count']:.0f} | {e['ms']:.3f} | {e['share']:.1%} |"
                  for e in p.top]
    if memory:
        lines += ["", "generator step memory (MiB; gradients preallocated)",
                  "| variant | before the step | peak above that | saved for backward | rest |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {m.variant} | {m.before_mib:.1f} | {m.peak_above_mib:.1f} | {m.saved_mib:.1f} "
                  f"| {m.rest_mib:.1f} |" for m in memory]
    return "\n".join(lines)


def _settings(device: torch.device) -> dict:
    if device.type != "cuda":
        return {}
    return {"cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pyganx bench profile", description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--case", choices=["block", "generator", "all"], default="all")
    ap.add_argument("--shape", default="1,256,64,64", help="block input N,C,H,W")
    ap.add_argument("--size", type=int, default=256, help="generator image size")
    ap.add_argument("--blocks", type=int, default=9, help="generator residual blocks")
    ap.add_argument("--quick", action="store_true", help="block 1,32,16,16; generator 64 px, 2 blocks")
    ap.add_argument("--rounds", type=int, default=None, help="timed round-robin rounds")
    ap.add_argument("--iters", type=int, default=3, help="profiled iterations per variant")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--os-allocator", action="store_true", help="keep glibc's allocator defaults")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    tuned = allocator_for(args)
    shape = (1, 32, 16, 16) if args.quick else tuple(int(v) for v in args.shape.split(","))
    size, blocks = (64, 2) if args.quick else (args.size, args.blocks)
    rounds = args.rounds or (3 if args.quick or dev.type == "cpu" else 10)
    profiles: list[Profile] = []
    memory: list[StepMemory] = []
    if args.case in ("block", "all"):
        case = "ResidualBlock " + "x".join(map(str, shape)) + " fwd+bwd"
        profiles += _profile_case(case, block_iterations(shape, dev), dev, rounds, args.iters, args.top)
    if args.case in ("generator", "all"):
        case = f"ResnetGenerator {blocks} blocks {size} px b1 train step"
        steps, _, _ = generator_iterations(size, blocks, dev)
        profiles += _profile_case(case, steps, dev, rounds, args.iters, args.top)
        if dev.type == "cuda":
            memory = step_memory(size, blocks, dev)
    print(f"profile on {machine_description(dev)}; best of {rounds} rounds, {args.iters} profiled "
          f"iterations; freed memory {'kept' if tuned else 'returned to the OS'}; {_settings(dev)}")
    print(format_report(profiles, memory), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_description(dev), "settings": _settings(dev),
                       "profiles": [asdict(p) for p in profiles],
                       "memory": [asdict(m) for m in memory]}, f, indent=2)
    return 0
