"""Network benchmark: the residual block and the ResNet generators under every
implementation choice, timed round-robin in one process with the same weights.

Candidates (columns):
  eager      plain PyTorch modules (``fused=False``)
  fused      pyganx's compiled ops with their built-in gates (``fused=True``)
  reference  pyganx's modules with ``PYGANX_IMPL=reference`` (plain PyTorch computation)
  auto       pyganx's modules as shipped (``fused="auto"``): pyganx.tuning measures and
             picks per shape; the row says what it picked
  compile    ``torch.compile`` of the eager modules (default mode)
Rows: the block (1x256x64x64, 4x256x32x32) forward and forward+backward; the 6-block
generator at 32, 64 and 128 px and the 9-block one at 256 px, batch 1: inference, and a
training step (forward, L1 loss, backward, Adam).

Conditions: by default the suite runs in a child process started as users start theirs
(``import torch`` before ``import pyganx``, glibc's default allocator, none of pyganx's
environment settings). ``--conditions user,pyganx`` adds rows measured as pyganx's
other benchmark suites run (pyganx imported first, freed memory kept for reuse with
mallopt).
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .. import tuning
from ..nn import ResidualBlock, ResnetGenerator
from .ops import machine_description
from .timing import add_common_args, fmt, keep_freed_memory, round_robin

BLOCK_SHAPES = [(1, 256, 64, 64), (4, 256, 32, 32)]
GENERATORS = [(32, 6), (64, 6), (128, 6), (256, 9)]
QUICK_BLOCK_SHAPES = [(1, 64, 32, 32)]
QUICK_GENERATORS = [(32, 2)]
FIXED = ("eager", "fused", "reference")
CONDITIONS = {"user": "torch imported first, default allocator",
              "pyganx": "pyganx imported first, freed memory kept (mallopt)"}


@dataclass
class NetRow:
    conditions: str
    case: str
    mode: str
    ms: dict[str, float]
    auto_choice: str
    auto_vs_best_fixed: float
    auto_vs_eager: float
    auto_vs_compile: float | None
    saved_mib: dict[str, float] = field(default_factory=dict)
    peak_mib: dict[str, float | None] = field(default_factory=dict)


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


def variants(make: Callable[[bool | str], torch.nn.Module], device, use_compile: bool):
    """Twins of one model with the same weights: ``eager`` (fused=False), ``pyganx``
    (fused=True), and with ``use_compile`` a torch.compile of the eager one; returns
    (models, runners)."""
    cands = candidates(make, device, use_compile, names=("fused",))
    cands = {"pyganx" if k == "fused" else k: v for k, v in cands.items()}
    return {k: m for k, (m, _) in cands.items()}, {k: r for k, (_, r) in cands.items()}


def _in_mode(fn: Callable[[], object], mode: str) -> Callable[[], object]:
    def run():
        with tuning.implementation(mode):
            return fn()
    return run


_FUSED_ARG = {"fused": True, "reference": "auto", "auto": "auto"}


def candidates(make: Callable[[bool | str], torch.nn.Module], device, use_compile: bool,
               names: tuple[str, ...] = ("fused", "reference", "auto")):
    """``eager`` and the candidates ``names`` (of fused, reference, auto) of one model with
    the same weights, plus ``compile`` with ``use_compile``: name -> (module, runner)."""
    torch.manual_seed(0)
    eager = make(False).to(device)
    out: dict[str, tuple[torch.nn.Module, Callable]] = {"eager": (eager, eager)}
    for name in names:
        m = make(_FUSED_ARG[name]).to(device)
        m.load_state_dict(eager.state_dict())
        out[name] = (m, m)
    if use_compile:
        torch._dynamo.reset()
        comp = copy.deepcopy(eager)
        out["compile"] = (comp, torch.compile(comp))
    return out


def train_step(model: Callable, opt: torch.optim.Optimizer, x: torch.Tensor, target: torch.Tensor,
               set_to_none: bool = True) -> Callable[[], None]:
    """One generator training step as a closure: forward, L1 to ``target``, backward, Adam."""
    def run():
        opt.zero_grad(set_to_none=set_to_none)
        (model(x) - target).abs().mean().backward()
        opt.step()
    return run


def _peak_mib(fn: Callable[[], object], device) -> float | None:
    if device.type != "cuda":
        return None
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def _choices(decisions: dict[str, tuning.Decision]) -> str:
    """What auto picked for these keys (a summary)."""
    picked: dict[str, set[str]] = {}
    for text, d in decisions.items():
        op = text.split("(", 1)[0].replace("instance_norm_relu", "norm").replace("residual_block", "block")
        picked.setdefault(op, set()).add(d.choice)
    return "; ".join(f"{op}: {'/'.join(sorted(v))}" for op, v in sorted(picked.items())) or "-"


def _row(cond: str, case: str, mode: str, times, choice: str, **extra) -> NetRow:
    ms = {k: t.best_ms for k, t in times.items()}
    best_fixed = min(ms[k] for k in FIXED)
    comp = ms.get("compile")
    return NetRow(cond, case, mode, ms, choice, best_fixed / ms["auto"], ms["eager"] / ms["auto"],
                  comp / ms["auto"] if comp else None, **extra)


def _timed(cands, make_call, rounds, device, warmup=2) -> tuple[dict, str]:
    """Round-robin timing of make_call(runner) for each candidate, each in its mode."""
    calls = {}
    for name, (_, runner) in cands.items():
        fn = make_call(name, runner)
        calls[name] = _in_mode(fn, "reference") if name == "reference" else fn
    with tuning.session():                   # its own record of the decisions used
        calls["auto"]()                      # the first call decides (measures) for auto
        choice = _choices(tuning.decisions())
    return round_robin(calls, rounds=rounds, warmup=warmup, device=device), choice


def bench_block(shape, device, rounds, use_compile, cond, dtype=torch.float32) -> list[NetRow]:
    C = shape[1]
    cands = candidates(lambda fused: ResidualBlock(C, fused=fused).to(dtype), device, use_compile)
    x = torch.randn(shape, device=device, dtype=dtype)
    case = f"ResidualBlock {'x'.join(map(str, shape))} {str(dtype).replace('torch.', '')}"
    rows = []
    with torch.no_grad():
        t, choice = _timed(cands, lambda n, r: (lambda: r(x)), rounds, device)
    rows.append(_row(cond, case, "fwd", t, choice))
    xg = x.clone().requires_grad_()
    g = torch.randn_like(x)

    def step(name, r):
        def run():
            xg.grad = None
            r(xg).backward(g)
        return run

    t, choice = _timed(cands, step, rounds, device)
    saved = {k: saved_bytes(cands[k][0], xg) / 2**20 for k in ("eager", "fused")}
    rows.append(_row(cond, case, "fwd+bwd", t, choice, saved_mib=saved))
    return rows


def bench_generator(size, n_blocks, device, rounds, use_compile, cond) -> list[NetRow]:
    cands = candidates(lambda fused: ResnetGenerator(n_blocks=n_blocks, fused=fused), device, use_compile)
    x = torch.randn(1, 3, size, size, device=device)
    target = torch.rand_like(x) * 2 - 1
    case = f"ResnetGenerator {n_blocks} blocks {size}x{size} b1"
    rows = []
    with torch.no_grad():
        t, choice = _timed(cands, lambda n, r: (lambda: r(x)), rounds, device)
    rows.append(_row(cond, case, "inference", t, choice))
    opts = {k: torch.optim.Adam(m.parameters(), lr=2e-4, betas=(0.5, 0.999)) for k, (m, _) in cands.items()}
    t, choice = _timed(cands, lambda n, r: train_step(r, opts[n], x, target), rounds, device)
    xg = x.clone().requires_grad_()
    saved = {k: saved_bytes(cands[k][0], xg) / 2**20 for k in ("eager", "fused")}
    peak = {k: _peak_mib(_in_mode(train_step(cands[k][1], opts[k], x, target),
                                  "reference" if k == "reference" else tuning.mode()), device)
            for k in cands}
    rows.append(_row(cond, case, "train step", t, choice, saved_mib=saved, peak_mib=peak))
    return rows


def format_table(rows: list[NetRow]) -> str:
    names = ["eager", "fused", "reference", "auto", "compile"]
    out = ["| conditions | case | mode | " + " | ".join(f"{n} ms" for n in names)
           + " | auto / best fixed | auto x eager | auto x compile | auto picked |",
           "|---|---|---|" + "---:|" * (len(names) + 3) + "---|"]
    for r in rows:
        cells = " | ".join(fmt(r.ms.get(n), ".1f") for n in names)
        out.append(f"| {r.conditions} | {r.case} | {r.mode} | {cells} | {r.auto_vs_best_fixed:.2f} "
                   f"| {r.auto_vs_eager:.2f} | {fmt(r.auto_vs_compile, '.2f')} | {r.auto_choice} |")
    return "\n".join(out)


def _rounds(args, dev: torch.device) -> int:
    """Best of how many round-robin rounds: on a 2-core CPU the best of 5 still moves by
    3 % from run to run, the best of 10 by about 1 %."""
    return args.rounds or (3 if args.quick else (20 if dev.type == "cuda" else 10))


def run_suite(args, cond: str) -> list[NetRow]:
    """The measurements of one condition, in this process."""
    dev = torch.device(args.device)
    use_compile = not args.no_compile
    rounds = _rounds(args, dev)
    rows: list[NetRow] = []
    if args.only in (None, "block"):
        for shape in QUICK_BLOCK_SHAPES if args.quick else BLOCK_SHAPES:
            rows += bench_block(shape, dev, rounds, use_compile, cond)
            if dev.type == "cuda" and not args.quick and not args.no_bf16:
                rows += bench_block(shape, dev, rounds, use_compile, cond, torch.bfloat16)
    if args.only in (None, "generator"):
        for size, blocks in QUICK_GENERATORS if args.quick else GENERATORS:
            if args.max_size and size > args.max_size:
                continue
            rows += bench_generator(size, blocks, dev, rounds, use_compile, cond)
    return rows


def child_main() -> int:
    """The child process: ``python -c 'import torch; from pyganx.bench import nets; nets.child_main()' ARGS``."""
    argv = sys.argv[1:]
    cond, out, rest = argv[0], argv[1], argv[2:]
    if cond == "pyganx":
        keep_freed_memory()
    args = _parser().parse_args(rest)
    rows = run_suite(args, cond)
    Path(out).write_text(json.dumps([asdict(r) for r in rows]))
    return 0




def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pyganx bench nets", description=__doc__.splitlines()[0])
    add_common_args(ap)
    ap.add_argument("--only", choices=["block", "generator"], help="run one part")
    ap.add_argument("--max-size", type=int, default=None, help="skip generators above this size")
    ap.add_argument("--no-bf16", action="store_true", help="on CUDA, skip the bfloat16 block rows")
    ap.add_argument("--conditions", default="user",
                    help="comma-separated: user (torch first, default allocator; the default), "
                         "pyganx (pyganx first, mallopt)")
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    conds = [c.strip() for c in args.conditions.split(",") if c.strip()]
    unknown = [c for c in conds if c not in CONDITIONS]
    if unknown:
        print(f"pyganx bench nets: unknown conditions {', '.join(unknown)} (known: {', '.join(CONDITIONS)})",
              file=sys.stderr)
        return 2
    rows: list[NetRow] = []
    with tempfile.TemporaryDirectory() as tmp:
        for cond in conds:
            out = Path(tmp) / f"{cond}.json"
            first = "import torch, pyganx" if cond == "user" else "import pyganx, torch"
            code = f"{first}; from pyganx.bench import nets; raise SystemExit(nets.child_main())"
            proc = subprocess.run([sys.executable, "-c", code, cond, str(out), *argv])
            if proc.returncode != 0:
                print(f"pyganx bench nets: the {cond} run failed (exit {proc.returncode})", file=sys.stderr)
                return proc.returncode
            rows += [NetRow(**r) for r in json.loads(out.read_text())]
    dev = torch.device(args.device)
    rounds = _rounds(args, dev)
    print(f"networks on {machine_description(dev)}; best of {rounds} round-robin rounds; conditions: "
          + "; ".join(f"{c} = {CONDITIONS[c]}" for c in conds) + f"; tuning mode auto, cache {tuning.cache_path(dev)}")
    print(format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return 0
