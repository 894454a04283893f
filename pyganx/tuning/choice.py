"""The entry point of the layers: :func:`choose`, which takes the mode, a resumed run's
pins, the cache or a measurement, and remembers the decision for the process."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .. import _extension
from ..errors import UsageError
from . import cache
from .keys import autocast_dtype, is_training, key_text
from .measurement import REFERENCE, Candidate, measure
from .state import MODE_ENV, STATE, Decision


def choose(op: str, options: str, x: Tensor, params: Sequence[Tensor | None],
           offer: Callable[[], tuple[dict[str, Candidate], str]]) -> str:
    """The candidate to run for this call. ``offer()`` gives the candidates, names mapped
    to functions of (input, params) including :data:`REFERENCE` (plain PyTorch), and the
    name of what the built-in gates run (the choice of mode ``fused`` and of ``auto``
    without measuring); it is called only when a decision is made, not on every call."""
    if STATE.mode == "reference":
        return REFERENCE
    if not _extension.supports(x.device.type):
        check_device(x.device)
        return REFERENCE     # plain PyTorch is the only candidate here; nothing to measure
    if STATE.mode == "fused":
        return offer()[1]
    training = is_training(x, params)
    full = (op, options, tuple(x.shape), x.dtype, x.stride(), x.device, autocast_dtype(x),
            torch.get_num_threads(), training, STATE.measuring)
    found = STATE.decisions.get(full)
    if found is None:
        text = key_text(op, options, x, training)
        found = (text, _decide(text, x, params, *offer(), training))
        STATE.decisions[full] = found
    text, decision = found
    if text not in STATE.used:
        STATE.used[text] = decision
    return decision.choice


def check_device(device: torch.device | str, mode: str | None = None) -> None:
    """A UsageError when ``mode`` (default: the current one) is ``fused`` and pyganx's
    compiled ops have no kernels for ``device``."""
    device = torch.device(device)
    if (mode or STATE.mode) == "fused" and not _extension.supports(device.type):
        why = _extension.build_info()["reason"] or "no kernels for this device"
        raise UsageError(f"implementation 'fused' ({MODE_ENV}, --impl): pyganx's compiled ops do not "
                         f"run on {device.type} ({why}); use auto or reference")


def _decide(text: str, x: Tensor, params, candidates, gates: str, training: bool) -> Decision:
    pinned = STATE.pinned.get(text)
    if pinned is not None and pinned in candidates:
        return Decision(pinned, "run")
    if not STATE.measuring:
        return Decision(gates, "gates")
    cached = cache.lookup(x.device, text, candidates)
    if cached is not None:
        return cached
    decision = measure(x, params, candidates, training)
    cache.store(x.device, text, decision)
    return decision
