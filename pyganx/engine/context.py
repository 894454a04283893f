"""What a plugin's train_step gets as ``ctx``: backward, optimizer steps and autocast,
so that the engine owns mixed precision and, through the networks it wraps, DDP.
:class:`TrainContext` is the engine's implementation of :class:`pyganx.plugin.StepContext`
(mypy checks that it satisfies the protocol)."""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import torch

from ..errors import UsageError

if TYPE_CHECKING:
    from ..plugin import StepContext


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for --precision, or None for float32."""
    if precision == "fp32":
        return None
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    raise UsageError(f"--precision must be auto, fp32, bf16 or fp16, got {precision!r}")


class TrainContext:
    """The step context of a run on ``device`` with ``optimizers`` (by name), autocast in
    ``amp_dtype`` (None: float32) and, for float16 on CUDA, a gradient scaler."""

    def __init__(self, device: torch.device, optimizers: dict[str, torch.optim.Optimizer],
                 amp_dtype: torch.dtype | None) -> None:
        self.device = device
        self.optimizers = optimizers
        self.amp_dtype = amp_dtype
        use_scaler = amp_dtype == torch.float16 and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast in the run's dtype; nothing in float32."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, through the gradient scaler when there is one."""
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, name: str) -> None:
        """Steps optimizer ``name`` and clears its gradients."""
        opt = self.optimizers[name]
        if self.scaler is not None:
            self.scaler.step(opt)
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)

    def zero_grad(self, name: str) -> None:
        """Clears the gradients of optimizer ``name``'s parameters."""
        self.optimizers[name].zero_grad(set_to_none=True)

    def end_iteration(self) -> None:
        """The engine's end of a step: the gradient scaler's update."""
        if self.scaler is not None:
            self.scaler.update()


if TYPE_CHECKING:
    def _satisfies_the_plugin_protocol(ctx: TrainContext) -> StepContext:
        return ctx
