"""``pyganx train --compile`` and ``--cuda-graphs``: the networks' forward passes in the
training step run through ``torch.compile``.

The plugin keeps its own, uncompiled networks as attributes. Checkpoints, EMA copies,
sample grids, ``pyganx sample`` and ``export`` therefore see the very modules, and the
``state_dict`` keys, of an eager run (no ``_orig_mod.`` prefix anywhere). Only while
``train_step`` runs does the engine point those attributes at a :class:`CompiledCall` of
each network: calling it runs the compiled forward (and backward); every attribute,
method and parameter is the network's own, so ``self.D.requires_grad_(False)`` and the
like work as before. Under torchrun the compiled call is ``torch.compile`` of the DDP
module for a training forward pass, as PyTorch recommends, and of the plain module
otherwise (distributed.Synced's rule).

A call whose input is a leaf tensor that requires grad runs eagerly: that input is
about to be differentiated, as the interpolates of a WGAN-GP gradient penalty are with
``create_graph=True``, and a compiled graph's backward cannot be differentiated again.

Decisions: docs/distributed.md, "torch.compile and CUDA graphs".
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..errors import TrainingError, UsageError
from .distributed import Synced


def compile_mode(opts: Any, device: torch.device) -> str | None:
    """The ``torch.compile`` mode of a run with the TrainOptions ``opts``: ``"default"``
    for ``--compile``, ``"reduce-overhead"`` (CUDA graphs) for ``--cuda-graphs``, None for
    an eager run. A UsageError for ``--cuda-graphs`` on a device other than CUDA."""
    if opts.cuda_graphs:
        if device.type != "cuda":
            raise UsageError(f"--cuda-graphs needs a CUDA device, and this run is on {device.type}; "
                             f"use --compile alone")
        return "reduce-overhead"
    return "default" if opts.compile else None


def _differentiated_at_input(args: tuple, kwargs: dict) -> bool:
    """Whether an input is a leaf tensor that requires grad (a gradient penalty's
    interpolates): the caller differentiates with respect to it, maybe twice."""
    return any(isinstance(a, torch.Tensor) and a.requires_grad and a.is_leaf
               for a in (*args, *kwargs.values()))


class CompiledCall:
    """A network as the training step sees it: calls go to the compiled forward (eager
    for a gradient penalty's input, see the module docstring); everything else is the
    network's own."""

    def __init__(self, name: str, eager: nn.Module, compiled: nn.Module) -> None:
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_eager", eager)
        object.__setattr__(self, "_compiled", compiled)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if _differentiated_at_input(args, kwargs):
            return self._eager(*args, **kwargs)
        try:
            return self._compiled(*args, **kwargs)
        except torch._dynamo.exc.BackendCompilerFailed as e:   # inductor's errors too
            inner = getattr(e, "inner_exception", e)
            lines = str(inner).strip().splitlines()
            why = f"{type(inner).__name__}: {lines[0]}" if lines else type(inner).__name__
            raise TrainingError(f"torch.compile could not compile network {self._name!r} ({why}); "
                                f"train without --compile / --cuda-graphs") from e

    def __getattr__(self, name: str) -> Any:
        return getattr(self._eager, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._eager, name, value)

    def __repr__(self) -> str:
        return f"CompiledCall({self._eager!r})"


class CompiledNetworks:
    """The compiled calls of a plugin's networks and the switch that puts them in the
    plugin's attributes for one training step (:meth:`active`).

    ``nets`` are the plugin's networks by name; ``synced`` the DDP wrappers of those that
    have one (the plugin's attributes then hold the wrapper). A network the plugin does
    not keep as an attribute cannot be routed and runs eagerly: ``eager`` names them.
    ``torch.compile`` is lazy: each network compiles on its first call (and again for
    each new kind of call: a frozen discriminator, another batch shape, ...)."""

    def __init__(self, plugin: Any, nets: dict[str, nn.Module], synced: dict[str, Synced],
                 mode: str) -> None:
        self.plugin = plugin
        self.mode = mode
        self.calls: dict[str, CompiledCall] = {}     # plugin attribute -> its compiled call
        self.eager: list[str] = []
        for name, net in nets.items():
            held = synced.get(name, net)
            holders = [k for k, v in vars(plugin).items() if v is held]
            if not holders:
                self.eager.append(name)
                continue
            if isinstance(held, Synced):
                compiled: nn.Module = Synced(torch.compile(held.module, mode=mode),
                                             torch.compile(held.ddp, mode=mode))
            else:
                compiled = torch.compile(held, mode=mode)
            call = CompiledCall(name, held, compiled)
            for k in holders:
                self.calls[k] = call

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Within the block (one ``train_step``), the plugin's network attributes are the
        compiled calls; afterwards the networks themselves again."""
        if self.mode == "reduce-overhead":
            # a new iteration: CUDA graph outputs of the previous one may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        saved = {k: getattr(self.plugin, k) for k in self.calls}
        for k, call in self.calls.items():
            setattr(self.plugin, k, call)
        try:
            yield
        finally:
            for k, v in saved.items():
                setattr(self.plugin, k, v)


__all__ = ["CompiledCall", "CompiledNetworks", "compile_mode"]
