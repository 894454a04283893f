"""Which implementation runs each pyganx layer: the compiled ops (and their variants) or
plain PyTorch, decided by measuring on the device at hand.

The layers that have a choice (``ResidualBlock`` and ``InstanceNormReLU`` built with
``fused="auto"``, the default of every network and plugin) ask :func:`choose` on each
call. A decision is made once per device, op, options, shape, dtype, memory layout and
training (forward + backward) or inference (forward), then reused:

* **mode** (``PYGANX_IMPL``, :func:`set_mode`, ``pyganx train --impl``): ``auto``
  measures; ``fused`` always runs the compiled op with its built-in gates (on CPU,
  NNPACK's Winograd convolutions for float32 NCHW blocks of >= 128 channels and planes
  of >= 48 x 48, docs/ops.md); ``reference`` always runs plain PyTorch.
* **measuring** (``auto``): every candidate runs on a copy of the real input and
  weights (the caller's tensors, autograd graph and random state are untouched), in
  round-robin turns within a small time budget; the fastest *admitted* candidate wins.
  ``PYGANX_TUNING=0`` (or :func:`set_measuring`) turns measuring off: ``auto`` then
  takes the built-in gates, as ``fused`` does. Runs with ``--deterministic`` do the
  same, so that their path never depends on timing.
* **accuracy contract**: a candidate is admitted only if its error against a float64
  evaluation of the same layer is at most :data:`ERROR_MULTIPLE` times the error of
  plain PyTorch in the same dtype (``PYGANX_TUNING_ERROR_MULTIPLE`` changes it). The
  error of the output is its largest deviation over the output's largest magnitude. In
  training the input and weight gradients count too, by relative L2 error, against a
  yardstick that allows for ReLU kinks: a candidate that rounds more than plain PyTorch
  moves more ReLU inputs across 0, which flips their gradients, and instance norm
  spreads each flip over its plane. So a gradient's yardstick is plain PyTorch's error
  there, or, if larger, plain PyTorch's error when its input carries a random relative
  perturbation as large as the candidate's own output error (the gradient of a point
  that close is as right). A gradient that is zero up to rounding (plain PyTorch's own
  error above :data:`NOISE`) is not compared. Plain PyTorch is always admitted.
* **cache**: decisions are written (atomically, merged with what other processes wrote)
  to ``<cache dir>/tuning/<device>.json``, keyed by the device, the torch and the pyganx
  version; the cache directory follows the judges' rules (``$PYGANX_CACHE_DIR``, else
  ``$XDG_CACHE_HOME/pyganx``, else ``~/.cache/pyganx``). A corrupt, unwritable or
  foreign file gives one warning and is measured anew.
* **runs**: the trainer stores the decisions it used in each checkpoint and pins them on
  ``--resume`` (:func:`pin`), so a resumed run takes the path of the run it continues.

Under ``torch.compile`` and ``torch.export`` tracing, ``auto`` layers run the compiled
op (registered, with fake kernels), never the measuring code.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from . import _extension
from ._paths import cache_dir
from ._version import __version__
from .errors import UsageError
from .ops.layout import channels_last_output

MODES = ("auto", "fused", "reference")
MODE_ENV = "PYGANX_IMPL"
MEASURE_ENV = "PYGANX_TUNING"
MULTIPLE_ENV = "PYGANX_TUNING_ERROR_MULTIPLE"

#: A candidate's error against float64 may be at most this multiple of plain PyTorch's
#: own error in the same dtype. 64 admits NNPACK's Winograd convolutions (measured
#: 30-70x float32's error per block, docs/ops.md) and still keeps every admitted result
#: within about 2^-18 of the output's scale in float32: about 50 times finer than the
#: TF32 convolutions PyTorch runs on NVIDIA GPUs by default.
ERROR_MULTIPLE = 64.0
#: A relative error of plain PyTorch above this marks a result that is zero up to rounding.
NOISE = 2.0 ** -10
#: Time budget of one decision's round-robin (after one warm-up call per candidate).
BUDGET_S = 0.4
MIN_ROUNDS, MAX_ROUNDS = 3, 15
CACHE_VERSION = 1

REFERENCE = "reference"

Candidate = Callable[[Tensor, Sequence[Tensor | None]], Tensor]


@dataclass
class Decision:
    """What runs for one key, and why."""
    choice: str
    source: str                      # measured | cache | run | gates | forced
    times_ms: dict[str, float] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)   # multiples of plain PyTorch's error
    refused: list[str] = field(default_factory=list)

    def why(self) -> str:
        if self.source == "forced":
            return f"{MODE_ENV}={_state.mode} forces it"
        if self.source == "gates":
            return "measuring is off (--deterministic or PYGANX_TUNING=0): the built-in gates"
        if self.source == "run":
            return "recorded in the run being resumed"
        times = ", ".join(f"{k} {v:.3g} ms" for k, v in sorted(self.times_ms.items(), key=lambda kv: kv[1]))
        text = f"fastest admitted ({times})"
        for name in self.refused:
            text += (f"; {name} refused: error {self.errors.get(name, float('nan')):.3g}x plain "
                     f"PyTorch's (limit {error_multiple():g}x)")
        return text + (" [from the cache]" if self.source == "cache" else "")


class _State:
    def __init__(self) -> None:
        self.mode = _env_mode()
        self.measuring = os.environ.get(MEASURE_ENV, "1").strip().lower() not in {"0", "off", "false", "no"}
        self.decisions: dict[tuple, tuple[str, Decision]] = {}   # full key -> (key text, decision)
        self.pinned: dict[str, str] = {}               # key text -> choice (resumed runs)
        self.used: dict[str, Decision] = {}            # key text -> decision, as used here
        self.disk: dict[str, dict] | None = None       # the cache file's entries, loaded once
        self.warned: set[str] = set()


def _env_mode() -> str:
    value = os.environ.get(MODE_ENV, "auto").strip().lower() or "auto"
    if value not in MODES:
        warnings.warn(f"pyganx: {MODE_ENV}={value!r} is not one of {', '.join(MODES)}; using auto",
                      RuntimeWarning, stacklevel=3)
        return "auto"
    return value


_state = _State()


def mode() -> str:
    """The current mode: ``auto``, ``fused`` or ``reference``."""
    return _state.mode


def set_mode(value: str) -> str:
    """Sets the mode for this process; returns the previous one."""
    if value not in MODES:
        raise UsageError(f"implementation must be one of {', '.join(MODES)}, got {value!r}")
    previous, _state.mode = _state.mode, value
    return previous


@contextlib.contextmanager
def implementation(value: str) -> Iterator[None]:
    """``with implementation("reference"): ...`` runs a block in that mode."""
    previous = set_mode(value)
    try:
        yield
    finally:
        set_mode(previous)


def measuring() -> bool:
    """Whether ``auto`` measures (else it takes the built-in gates)."""
    return _state.measuring


def set_measuring(enabled: bool) -> bool:
    """Turns measuring on or off for this process; returns the previous setting."""
    previous, _state.measuring = _state.measuring, bool(enabled)
    return previous


def error_multiple() -> float:
    """The accuracy contract's multiple (:data:`ERROR_MULTIPLE` unless the environment
    says otherwise)."""
    text = os.environ.get(MULTIPLE_ENV)
    if text:
        try:
            value = float(text)
            if value >= 1:
                return value
        except ValueError:
            pass
        _warn_once(f"multiple:{text}", f"{MULTIPLE_ENV}={text!r} is not a number >= 1; using {ERROR_MULTIPLE:g}")
    return ERROR_MULTIPLE


def pin(decisions: dict[str, str]) -> None:
    """Makes these decisions (key text -> choice, as :func:`used` returns them) win over
    measuring and the cache: a resumed run takes the path of the run it continues."""
    _state.pinned.update(decisions)
    _forget(lambda text, d: text in decisions)


def _forget(which: Callable[[str, Decision], bool]) -> None:
    for key in [k for k, (text, d) in _state.decisions.items() if which(text, d)]:
        del _state.decisions[key]
    for text in [t for t, d in _state.used.items() if which(t, d)]:
        del _state.used[text]


def used() -> dict[str, str]:
    """The decisions used since the process started or the current :func:`session` began
    (key text -> choice), for a run's checkpoint."""
    return {k: d.choice for k, d in _state.used.items()}


@contextlib.contextmanager
def session(mode: str | None = None, measuring: bool | None = None) -> Iterator[None]:
    """A training run's settings (None: keep the process's), its own :func:`used` record
    and its own pins; all are put back when it ends."""
    saved = (_state.mode, _state.measuring, dict(_state.pinned), dict(_state.used))
    if mode is not None:
        set_mode(mode)
    if measuring is not None:
        _state.measuring = bool(measuring)
    _state.used.clear()
    try:
        yield
    finally:
        _state.mode, _state.measuring = saved[0], saved[1]
        _state.pinned = saved[2]
        _forget(lambda text, d: d.source == "run")      # re-decided under the restored pins
        _state.used = {**saved[3], **_state.used}


def decisions() -> dict[str, Decision]:
    """This process's decisions by key text, with their reasons."""
    return dict(_state.used)


def reset() -> None:
    """Forgets this process's decisions and pins (the disk cache stays)."""
    _state.decisions.clear()
    _state.pinned.clear()
    _state.used.clear()
    _state.disk = None


# --- keys ----------------------------------------------------------------------------

def _layout(x: Tensor) -> str:
    if channels_last_output(x):
        return "channels_last"
    return "contiguous" if x.is_contiguous() else "strided"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


_device_names: dict[tuple, str] = {}


def device_name(device: torch.device) -> str:
    """The device as the cache knows it: the CPU model and thread count, or the GPU's name."""
    threads = torch.get_num_threads() if device.type == "cpu" else 0
    key = (device.type, device.index, threads)
    name = _device_names.get(key)
    if name is None:
        if device.type == "cpu":
            cap = torch.backends.cpu.get_cpu_capability()
            name = f"cpu {_cpu_name()} {cap} {threads} threads"
        elif device.type == "cuda":
            name = f"cuda {torch.cuda.get_device_name(device)}"
        else:
            name = device.type
        _device_names[key] = name
    return name


def _training(x: Tensor, params: Sequence[Tensor | None]) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or any(p is not None and p.requires_grad for p in params))


def _autocast(x: Tensor) -> torch.dtype | None:
    """The dtype autocast computes in for x's device, None when it is off."""
    kind = x.device.type
    try:
        return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None
    except RuntimeError:         # a device type without autocast
        return None


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def key_text(op: str, options: str, x: Tensor, training: bool) -> str:
    shape = "x".join(map(str, x.shape))
    cast = _autocast(x)
    dtype = _dtype_name(x.dtype) + (f" autocast {_dtype_name(cast)}" if cast is not None else "")
    return f"{op}({options}) {shape} {dtype} {_layout(x)} {'train' if training else 'inference'}"


# --- the choice ----------------------------------------------------------------------

def choose(op: str, options: str, x: Tensor, params: Sequence[Tensor | None],
           offer: Callable[[], tuple[dict[str, Candidate], str]]) -> str:
    """The candidate to run for this call. ``offer()`` gives the candidates, names mapped
    to functions of (input, params) including :data:`REFERENCE` (plain PyTorch), and the
    name of what the built-in gates run (the choice of mode ``fused`` and of ``auto``
    without measuring); it is called only when a decision is made, not on every call."""
    if _state.mode == "reference":
        return REFERENCE
    if not _extension.supports(x.device.type):
        check_device(x.device)
        return REFERENCE     # plain PyTorch is the only candidate here; nothing to measure
    if _state.mode == "fused":
        return offer()[1]
    training = _training(x, params)
    full = (op, options, tuple(x.shape), x.dtype, x.stride(), x.device, _autocast(x),
            torch.get_num_threads(), training, _state.measuring)
    found = _state.decisions.get(full)
    if found is None:
        text = key_text(op, options, x, training)
        found = (text, _decide(text, x, params, *offer(), training))
        _state.decisions[full] = found
    text, decision = found
    if text not in _state.used:
        _state.used[text] = decision
    return decision.choice


def check_device(device: torch.device | str, mode: str | None = None) -> None:
    """A UsageError when ``mode`` (default: the current one) is ``fused`` and pyganx's
    compiled ops have no kernels for ``device``."""
    device = torch.device(device)
    if (mode or _state.mode) == "fused" and not _extension.supports(device.type):
        why = _extension.build_info()["reason"] or "no kernels for this device"
        raise UsageError(f"implementation 'fused' ({MODE_ENV}, --impl): pyganx's compiled ops do not "
                         f"run on {device.type} ({why}); use auto or reference")


def _decide(text: str, x: Tensor, params, candidates, gates: str, training: bool) -> Decision:
    pinned = _state.pinned.get(text)
    if pinned is not None and pinned in candidates:
        return Decision(pinned, "run")
    if not _state.measuring:
        return Decision(gates, "gates")
    cached = _cache_lookup(x.device, text, candidates)
    if cached is not None:
        return cached
    decision = measure(x, params, candidates, training)
    _cache_store(x.device, text, decision)
    return decision


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


# --- the cache -----------------------------------------------------------------------

def cache_path(device: torch.device) -> Path:
    """The cache file of this device, torch and pyganx version."""
    ident = f"{device_name(device)}|torch {torch.__version__}|pyganx {__version__}"
    digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
    return cache_dir() / "tuning" / f"{device.type}-{digest}.json"


def _header(device: torch.device) -> dict:
    return {"version": CACHE_VERSION, "device": device_name(device), "torch": torch.__version__,
            "pyganx": __version__}


def _warn_once(tag: str, message: str) -> None:
    if tag not in _state.warned:
        _state.warned.add(tag)
        warnings.warn(f"pyganx: {message}", RuntimeWarning, stacklevel=4)


def read_cache(device: torch.device) -> dict[str, dict]:
    """The cache file's entries for this device (empty when missing; a corrupt or foreign
    file gives one warning and counts as empty)."""
    path = cache_path(device)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        _warn_once(f"read:{path}", f"ignoring the tuning cache {path} ({err}); measuring again")
        return {}
    header = _header(device)
    if not isinstance(data, dict) or any(data.get(k) != v for k, v in header.items()) \
            or not isinstance(data.get("decisions"), dict):
        _warn_once(f"foreign:{path}", f"ignoring the tuning cache {path}: it was not written for "
                                      f"{header['device']}, torch {header['torch']} and pyganx "
                                      f"{header['pyganx']}; measuring again")
        return {}
    return data["decisions"]


def _cache_lookup(device: torch.device, text: str, candidates) -> Decision | None:
    if _state.disk is None:
        _state.disk = read_cache(device)
    entry = _state.disk.get(text)
    try:
        if entry is not None and entry["choice"] in candidates:
            return Decision(entry["choice"], "cache", dict(entry.get("times_ms", {})),
                            dict(entry.get("errors", {})), list(entry.get("refused", [])))
    except (KeyError, TypeError):
        pass
    return None


def _cache_store(device: torch.device, text: str, decision: Decision) -> None:
    from pyganx_runtime.files import atomic_write_text
    path = cache_path(device)
    entries = read_cache(device)          # merge with what other processes wrote meanwhile
    entry = asdict(decision)
    del entry["source"]
    entries[text] = entry
    if _state.disk is not None:
        _state.disk[text] = entry
    try:
        atomic_write_text(path, json.dumps({**_header(device), "decisions": entries}, indent=1) + "\n")
    except OSError as err:
        _warn_once(f"write:{path}", f"cannot write the tuning cache {path} ({err}); decisions "
                                    f"are kept for this process only")


def describe(device: torch.device | str = "cpu") -> dict:
    """What ``pyganx info`` shows: the mode, whether measuring is on, the cache file and
    the decisions in it (with this process's own)."""
    device = torch.device(device)
    entries = read_cache(device)
    rows = {text: Decision(e.get("choice", "?"), "cache", e.get("times_ms", {}), e.get("errors", {}),
                           e.get("refused", []))
            for text, e in entries.items() if isinstance(e, dict)}
    rows.update({k: d for k, d in _state.used.items()})
    return {"mode": _state.mode, "measuring": _state.measuring, "error_multiple": error_multiple(),
            "device": device_name(device), "cache": str(cache_path(device)),
            "decisions": [{"key": k, "choice": d.choice, "why": d.why()} for k, d in sorted(rows.items())]}
