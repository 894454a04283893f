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

The modules: ``state`` (the settings, decisions and pins of this process), ``keys``
(what a decision is made for), ``measurement`` (the accuracy contract and the timing),
``cache`` (the decisions on disk) and ``choice`` (:func:`choose`, which the layers call).
"""
from .cache import CACHE_VERSION, cache_path, describe, read_cache
from .choice import check_device, choose
from .keys import device_name, key_text
from .measurement import BUDGET_S, MAX_ROUNDS, MIN_ROUNDS, NOISE, REFERENCE, Candidate, measure
from .state import (
    ERROR_MULTIPLE,
    MEASURE_ENV,
    MODE_ENV,
    MODES,
    MULTIPLE_ENV,
    Decision,
    decisions,
    error_multiple,
    implementation,
    measuring,
    mode,
    pin,
    reset,
    session,
    set_measuring,
    set_mode,
    used,
)

__all__ = ["BUDGET_S", "CACHE_VERSION", "ERROR_MULTIPLE", "MAX_ROUNDS", "MEASURE_ENV", "MIN_ROUNDS", "MODES",
           "MODE_ENV", "MULTIPLE_ENV", "NOISE", "REFERENCE", "Candidate", "Decision", "cache_path", "check_device",
           "choose", "decisions", "describe", "device_name", "error_multiple", "implementation", "key_text",
           "measure", "measuring", "mode", "pin", "read_cache", "reset", "session", "set_measuring", "set_mode",
           "used"]
