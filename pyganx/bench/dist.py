"""`pyganx bench dist`: training throughput with 1 and with K processes (torchrun).

Trains CycleGAN on the bundled digits (or ``--variant``) for ``--steps`` steps with
``--batch-size`` images per process, once in one process and once under
``torchrun --standalone --nproc-per-node K``, and reports images per second over the
steps after the first few (from the run's losses.csv). On CPU the processes share the
machine's cores (gloo): a functional check of the distributed path, not a speed claim.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

SMALL = {"cyclegan": ["--ngf", "32", "--ndf", "32"], "stargan": ["--g-conv-dim", "32", "--d-conv-dim", "32"],
         "dcgan": ["--ngf", "32", "--ndf", "32"], "cgan": ["--ngf", "32", "--ndf", "32"]}


def _images_per_second(run: Path, batch: int, procs: int, skip: int) -> float:
    with open(run / "losses.csv") as f:
        rows = list(csv.DictReader(f))
    t0, t1 = float(rows[skip - 1]["seconds"]), float(rows[-1]["seconds"])
    return (len(rows) - skip) * batch * procs / (t1 - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pyganx bench dist", description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="cyclegan", choices=sorted(SMALL))
    ap.add_argument("--nproc", type=int, default=2, help="processes of the distributed run")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=4, help="per process")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args(argv)
    skip = max(1, args.steps // 5)
    rows = []
    threads = max(1, (os.cpu_count() or 1) // args.nproc)
    with tempfile.TemporaryDirectory() as tmp:
        for procs in (1, args.nproc):
            run = Path(tmp) / f"p{procs}"
            cmd = ["-m", "pyganx", "train", args.variant, "--demo", "digits", "--steps", str(args.steps),
                   "--batch-size", str(args.batch_size), "-o", str(run), "--no-progress", "--device", args.device,
                   "--sample-every", str(10 ** 9), "--checkpoint-every", str(10 ** 9), *SMALL[args.variant]]
            if procs > 1:
                cmd = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs), *cmd]
            env = {**os.environ, "OMP_NUM_THREADS": str(os.cpu_count() if procs == 1 else threads)}
            r = subprocess.run([sys.executable, *cmd], env=env, capture_output=True, text=True)
            if r.returncode != 0:
                print((r.stdout + r.stderr)[-3000:], file=sys.stderr)
                return 1
            rows.append({"processes": procs, "batch_per_process": args.batch_size,
                         "images_per_s": round(_images_per_second(run, args.batch_size, procs, skip), 1)})
    base = rows[0]["images_per_s"]
    print(f"{args.variant} on the digits, {args.steps} steps (the first {skip} not timed), device {args.device}, "
          f"{os.cpu_count()} cores, torch {torch.__version__}")
    print("| processes | batch per process | images/s | vs 1 process |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['processes']} | {r['batch_per_process']} | {r['images_per_s']} | "
              f"{r['images_per_s'] / base:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0
