"""The measuring of ``auto``: the accuracy contract (every candidate against a float64
evaluation of plain PyTorch, with the ReLU-kink allowance of the package's docstring)
and the round-robin timing of the admitted candidates."""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .state import Decision, error_multiple

#: A relative error of plain PyTorch above this marks a result that is zero up to rounding.
NOISE = 2.0 ** -10
#: Time budget of one decision's round-robin (after one warm-up call per candidate).
BUDGET_S = 0.4
MIN_ROUNDS, MAX_ROUNDS = 3, 15

#: The name of plain PyTorch among the candidates; it is always admitted.
REFERENCE = "reference"

Candidate = Callable[[Tensor, Sequence[Tensor | None]], Tensor]


def _copy(t: Tensor | None, dtype: torch.dtype | None = None) -> Tensor | None:
    if t is None:
        return None
    c = t.detach().to(dtype) if dtype is not None else t.detach()
    c = c.clone(memory_format=torch.preserve_format)
    return c.requires_grad_(t.requires_grad)


def _run(fn: Candidate, x: Tensor, params, grad: Tensor | None):
    """One call of a candidate on its own copies; returns (output, input grad, param grads)."""
    xc = _copy(x)
    pc = [_copy(p) for p in params]
    if grad is None:
        with torch.no_grad():
            return fn(xc, pc), None, []
    with torch.enable_grad():
        y = fn(xc, pc)
        leaves = [t for t in [xc, *pc] if t is not None and t.requires_grad]
        grads = torch.autograd.grad(y, leaves, grad)
    gx = grads[0] if xc.requires_grad else None
    return y, gx, list(grads[1:] if xc.requires_grad else grads)


def _rel_max(a: Tensor, ref: Tensor) -> float:
    scale = ref.abs().max().item()
    return (a.double() - ref).abs().max().item() / scale if scale > 0 else 0.0


def _rel_l2(a: Tensor, ref: Tensor) -> float:
    scale = ref.norm().item()
    return (a.double() - ref).norm().item() / scale if scale > 0 else 0.0


def _errors(result, ref) -> list[float]:
    y, gx, gp = result
    ry, rgx, rgp = ref
    out = [_rel_max(y, ry)]
    if gx is not None:
        out.append(_rel_l2(gx, rgx))
    out += [_rel_l2(a, b) for a, b in zip(gp, rgp)]
    return out


def measure(x: Tensor, params: Sequence[Tensor | None], candidates: dict[str, Candidate],
            training: bool) -> Decision:
    """Times every candidate round-robin on copies of ``x`` and ``params`` (forward, plus
    backward when ``training``), checks each against a float64 evaluation of the
    reference, and returns the fastest admitted one. The candidates run under the
    caller's autocast, as they will afterwards; the float64 evaluation without it. The
    copies' autograd graphs keep their tensors themselves, whatever saved-tensor hooks
    the caller runs under (activation checkpointing, offloading)."""
    with torch.autograd.graph.saved_tensors_hooks(_keep, _keep):
        return _measure(x, params, candidates, training)


#: Seed of the incoming gradient the training measurements use: not a seed users pick
#: (with torch.manual_seed(0) and x = torch.randn(...) that gradient would equal x, to
#: which instance norm's input gradient is blind).
_GRAD_SEED = 0x9E3779B9


def _keep(t: Tensor) -> Tensor:
    return t


def _measure(x: Tensor, params: Sequence[Tensor | None], candidates: dict[str, Candidate],
             training: bool) -> Decision:
    device = x.device
    gen = torch.Generator(device=device)
    gen.manual_seed(_GRAD_SEED)
    grad = None
    if training:
        grad = _randn_like(x, gen)
    # Accuracy: float64 evaluation of plain PyTorch, against which plain PyTorch's own
    # error in x's dtype is the yardstick.
    x64 = _copy(x, torch.float64)
    p64 = [_copy(p, torch.float64) for p in params]
    with torch.autocast(device.type, enabled=False):
        ref = _run(candidates[REFERENCE], x64, p64, None if grad is None else grad.double())
    ref = (ref[0].double(), None if ref[1] is None else ref[1].double(), [g.double() for g in ref[2]])
    results = {name: _run(fn, x, params, grad) for name, fn in candidates.items()}   # also the warm-up
    base = _errors(results[REFERENCE], ref)
    floor = torch.finfo(x.dtype).eps / 2
    limit = error_multiple()
    errors: dict[str, float] = {}
    refused: list[str] = []
    for name, res in results.items():
        errs = _errors(res, ref)
        yard = list(base)
        if training and name != REFERENCE and errs[0] > base[0]:
            # the kink allowance (module doc): plain PyTorch at a point as far off as this
            # candidate's output is, its gradients against the exact ones at x
            r = min(errs[0], limit * max(base[0], floor))
            near = _perturbed(x, r, gen)
            moved = _errors(_run(candidates[REFERENCE], near, params, grad), ref)
            yard = [base[0]] + [max(b, m) for b, m in zip(base[1:], moved[1:])]
        # a gradient that plain PyTorch gets with under three correct digits is zero up to
        # rounding (a convolution bias followed by instance norm has exactly zero gradient):
        # every float32 result of it is noise, so it is not compared
        ratios = [e / max(y, floor) for e, y, b in zip(errs, yard, base) if not b > NOISE]
        errors[name] = max(ratios) if ratios else 0.0
        if name != REFERENCE and not errors[name] <= limit:
            refused.append(name)
    del results, ref
    admitted = {k: v for k, v in candidates.items() if k not in refused}
    times = _round_robin(admitted, x, params, grad)
    best = min(times, key=times.get)
    return Decision(best, "measured", {k: round(v, 4) for k, v in times.items()},
                    {k: round(v, 3) for k, v in errors.items()}, refused)


def _perturbed(x: Tensor, r: float, gen: torch.Generator) -> Tensor:
    """x with each element moved by a random relative amount of standard deviation r."""
    out = x.detach() * (1 + r * _randn_like(x, gen))
    return out.requires_grad_(x.requires_grad)


def _randn_like(x: Tensor, gen: torch.Generator) -> Tensor:
    """N(0, 1) numbers from ``gen`` in x's shape, dtype, device and memory layout."""
    return torch.empty_like(x, requires_grad=False).normal_(generator=gen)


def _round_robin(candidates: dict[str, Candidate], x: Tensor, params, grad) -> dict[str, float]:
    cuda = x.device.type == "cuda"
    best = {name: math.inf for name in candidates}
    start = time.perf_counter()
    rounds = 0
    while rounds < MAX_ROUNDS and (rounds < MIN_ROUNDS or time.perf_counter() - start < BUDGET_S):
        for name, fn in candidates.items():
            if cuda:
                torch.cuda.synchronize(x.device)
            t0 = time.perf_counter()
            _run(fn, x, params, grad)
            if cuda:
                torch.cuda.synchronize(x.device)
            best[name] = min(best[name], (time.perf_counter() - t0) * 1e3)
        rounds += 1
    return best
