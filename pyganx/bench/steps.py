"""`pyganx bench steps`: one training step of each unpaired-translation variant (its
plugin's ``train_step``: forwards, losses, backwards, optimizer steps), timed round-robin
in one process at the same generator and discriminator width, image size and batch.

Rows: best and median milliseconds per step, and each variant's ratio to the first
(CycleGAN by default). The batches are random images in [-1, 1] of the given size;
the engine's data loading is not part of the step.
"""
from __future__ import annotations

import argparse
import dataclasses

import torch

from .ops import machine_description
from .timing import fmt, report, round_robin


def step_of(name: str, width: int, size: int, batch: int, channels: int, device: torch.device, **overrides):
    """A function that runs one training step of the registered variant ``name``."""
    from .. import registry
    from ..data import DataInfo
    from ..engine.context import TrainContext

    cls = registry.get(name)
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    config = cls.Config(**{k: v for k, v in {"ngf": width, "ndf": width, **overrides}.items() if k in fields})
    plugin = cls(config, DataInfo(channels, size, 0, ("A", "B")))
    for net in plugin.networks().values():
        net.to(device).train()
    ctx = TrainContext(device, plugin.optimizers(), None)
    g = torch.Generator().manual_seed(0)
    data = {k: (torch.rand(batch, channels, size, size, generator=g) * 2 - 1).to(device) for k in "AB"}

    def step():
        plugin.train_step(data, ctx)
        ctx.end_iteration()
    return step


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pyganx bench steps", description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="cyclegan,cut,fastcut", help="comma-separated; the first is the baseline")
    ap.add_argument("--width", type=int, default=32, help="ngf = ndf")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--channels", type=int, default=1, choices=[1, 3])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    steps = {v: step_of(v, args.width, args.image_size, args.batch_size, args.channels, device) for v in names}
    times = round_robin(steps, rounds=args.rounds, warmup=3, device=device)
    base = times[names[0]].best_ms
    rows = [{"variant": v, "best_ms": round(t.best_ms, 2), "median_ms": round(t.median_ms, 2),
             "x_" + names[0]: round(t.best_ms / base, 3)} for v, t in times.items()]
    table = "\n".join([f"| variant | best ms | median ms | step time x {names[0]} |", "|---|---|---|---|"]
                      + [f"| {r['variant']} | {fmt(r['best_ms'], '.2f')} | {fmt(r['median_ms'], '.2f')} "
                         f"| {fmt(r['x_' + names[0]], '.3f')} |" for r in rows])
    report(f"training step, width {args.width}, {args.image_size} px, batch {args.batch_size}, "
           f"{args.channels} channel(s), {machine_description(device)}", args.rounds, False, table, rows, args.json)
    return 0
