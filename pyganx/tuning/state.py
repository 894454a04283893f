"""The process's tuning state: the mode and measuring settings, the accuracy contract's
multiple, the decisions made and used, and the pins of a resumed run."""
from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..errors import UsageError

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
            return f"{MODE_ENV}={STATE.mode} forces it"
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


#: This process's state (one object, changed in place; the other modules of the package read it).
STATE = _State()


def warn_once(tag: str, message: str) -> None:
    """A RuntimeWarning, once per process for each ``tag``."""
    if tag not in STATE.warned:
        STATE.warned.add(tag)
        warnings.warn(f"pyganx: {message}", RuntimeWarning, stacklevel=4)


def mode() -> str:
    """The current mode: ``auto``, ``fused`` or ``reference``."""
    return STATE.mode


def set_mode(value: str) -> str:
    """Sets the mode for this process; returns the previous one."""
    if value not in MODES:
        raise UsageError(f"implementation must be one of {', '.join(MODES)}, got {value!r}")
    previous, STATE.mode = STATE.mode, value
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
    return STATE.measuring


def set_measuring(enabled: bool) -> bool:
    """Turns measuring on or off for this process; returns the previous setting."""
    previous, STATE.measuring = STATE.measuring, bool(enabled)
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
        warn_once(f"multiple:{text}", f"{MULTIPLE_ENV}={text!r} is not a number >= 1; using {ERROR_MULTIPLE:g}")
    return ERROR_MULTIPLE


def pin(decisions: dict[str, str]) -> None:
    """Makes these decisions (key text -> choice, as :func:`used` returns them) win over
    measuring and the cache: a resumed run takes the path of the run it continues."""
    STATE.pinned.update(decisions)
    _forget(lambda text, d: text in decisions)


def _forget(which: Callable[[str, Decision], bool]) -> None:
    for key in [k for k, (text, d) in STATE.decisions.items() if which(text, d)]:
        del STATE.decisions[key]
    for text in [t for t, d in STATE.used.items() if which(t, d)]:
        del STATE.used[text]


def used() -> dict[str, str]:
    """The decisions used since the process started or the current :func:`session` began
    (key text -> choice), for a run's checkpoint."""
    return {k: d.choice for k, d in STATE.used.items()}


@contextlib.contextmanager
def session(mode: str | None = None, measuring: bool | None = None) -> Iterator[None]:
    """A training run's settings (None: keep the process's), its own :func:`used` record
    and its own pins; all are put back when it ends."""
    saved = (STATE.mode, STATE.measuring, dict(STATE.pinned), dict(STATE.used))
    if mode is not None:
        set_mode(mode)
    if measuring is not None:
        STATE.measuring = bool(measuring)
    STATE.used.clear()
    try:
        yield
    finally:
        STATE.mode, STATE.measuring = saved[0], saved[1]
        STATE.pinned = saved[2]
        _forget(lambda text, d: d.source == "run")      # re-decided under the restored pins
        STATE.used = {**saved[3], **STATE.used}


def decisions() -> dict[str, Decision]:
    """This process's decisions by key text, with their reasons."""
    return dict(STATE.used)


def reset() -> None:
    """Forgets this process's decisions and pins (the disk cache stays)."""
    STATE.decisions.clear()
    STATE.pinned.clear()
    STATE.used.clear()
    STATE.disk = None
