"""pytest-benchmark suite over pyganx.bench.ops: the fused op is the timed body, and the
harness's round-robin figures (eager, torch.compile, copy, ratios, GB/s) for the same
case are recorded in extra_info, so `--benchmark-json` keeps the whole comparison.

Run with `make bench` (or `pytest benchmarks --benchmark-only`). Not a test of speed:
nothing here asserts a time.
"""
from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from pyganx.bench import ops
from pyganx.ops import instance_norm_relu

CASES = [(shape, cl, mode) for shape in ops.FULL_SHAPES for cl in (False, True)
         for mode in ("fwd", "fwd+bwd")]


@pytest.mark.parametrize("shape, channels_last, mode", CASES,
                         ids=[f"{'x'.join(map(str, s))}-{'cl' if c else 'nchw'}-{m}" for s, c, m in CASES])
def test_instance_norm_relu(benchmark, device, shape, channels_last, mode):
    row = ops.bench_case(shape, torch.float32, channels_last, mode, torch.device(device),
                         rounds=15, use_compile=True)
    benchmark.extra_info.update({k: v for k, v in asdict(row).items() if k != "shape"})
    x = torch.randn(shape, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if mode == "fwd":
        def body():
            with torch.no_grad():
                instance_norm_relu(x)
    else:
        xg = x.requires_grad_()
        g = torch.randn_like(x)

        def body():
            xg.grad = None
            instance_norm_relu(xg).backward(g)
    if device == "cuda":
        inner = body

        def body():
            inner()
            torch.cuda.synchronize()
    benchmark.pedantic(body, rounds=15, warmup_rounds=3)
