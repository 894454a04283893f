"""Reading files saved with ``torch.save`` safely: ``torch.load(weights_only=True)``
(tensors and plain values; a file that refers to any other Python code is refused), and
a few words of why a file could not be read, never torch's advice, which ends in
"re-running with weights_only=False will likely succeed" and would run whatever code
the file holds. Checkpoints, foreign generator weights, the Inception weights of
``pyganx eval`` and the cached judges are all read through :func:`load_weights_only`."""
from __future__ import annotations

import os
import re
import warnings
from typing import Any

import torch


class UnreadableWeights(Exception):
    """``torch.load(weights_only=True)`` refused a file. ``kind`` is ``"os"`` (the system
    could not read it), ``"code"`` (it refers to Python code outside the allowed tensors
    and plain values) or ``"damaged"`` (damaged, truncated, or not written by
    ``torch.save``); ``str(e)`` says why in a few words, with no advice to load it
    unsafely."""

    def __init__(self, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.kind = kind


def os_reason(e: OSError) -> str:
    """The system's words for ``e`` (ENOSPC: "no space left on device"), without errno and path."""
    return e.strerror[:1].lower() + e.strerror[1:] if e.strerror else str(e)


def load_weights_only(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """What ``torch.save`` wrote to ``path``, loaded with ``weights_only=True``;
    :class:`UnreadableWeights` when the file cannot be read, is damaged, or is not one."""
    try:
        with warnings.catch_warnings():
            # torch's note on pickle protocols of foreign files points to weights_only=False
            warnings.filterwarnings("ignore", message=".*weights_only", category=UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt or foreign file: a reason in a few words
        raise _unreadable(e, path) from None


def _unreadable(e: Exception, path: str | os.PathLike) -> UnreadableWeights:
    """Why ``torch.load`` could not read ``path``: a few words of our own and the reason
    torch gives, without its advice."""
    if isinstance(e, OSError):
        return UnreadableWeights(os_reason(e), "os")
    text = str(e)
    blocked = re.search(r"\bGLOBAL ([\w.]*\w)", text)       # a class or function outside the allowlist
    if blocked:
        return UnreadableWeights(f"it refers to {blocked.group(1)}, Python code that pyganx does not load", "code")
    # the weights-only unpickler's own reason follows "WeightsUnpickler error:"; elsewhere
    # the reason is the first sentence, after the "[enforce fail at FILE:LINE] ." of C++ checks
    detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    first = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", text.strip()).split("\n")[0]
    reason = re.split(r"(?<=\.)\s", detail.group(1) if detail else first)[0].strip().rstrip(".")
    if "weights" in reason.lower():
        reason = ""
    elif len(reason) > 120:
        reason = reason[:117] + "..."
    if isinstance(e, EOFError) or not reason:
        empty = os.path.isfile(path) and os.path.getsize(path) == 0
        reason = "the file is empty" if empty else reason or "it ends too early"
    return UnreadableWeights(reason, "damaged")


__all__ = ["UnreadableWeights", "load_weights_only", "os_reason"]
