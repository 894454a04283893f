"""A training run's full state, as a checkpoint holds it, and putting it back: weights
(and EMA weights), optimizers, schedulers, the AMP scaler, the plugin's extra state
(image pools), every RNG, the implementation each layer ran (pyganx.tuning), and where
the loop stands. Under torchrun every rank's RNG
and extra state are gathered, and a run resumed on another number of processes goes on
from the same global sample."""
from __future__ import annotations

import dataclasses
import sys
from typing import Any

import torch

from .. import tuning
from .._version import __version__
from ..errors import CheckpointError
from .distributed import gather, rank_seed
from .seeding import rng_state, seed_everything, set_rng_state


def to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor in it on the CPU (to gather it from other ranks' GPUs)."""
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def training_state(t) -> dict:
    """The checkpoint of the Trainer ``t``. A collective under torchrun: every rank's RNG
    states and plugin extra state are gathered into ``ranks``; the top-level ``rng`` and
    ``extra`` are rank 0's (what one process writes)."""
    ranks = gather(to_cpu({"rng": rng_state(), "extra": t.plugin.extra_state(),
                           "implementation": tuning.used()}), t.world)
    st = {
        "pyganx_version": __version__, "plugin": t.name,
        "config": dataclasses.asdict(t.config),
        "data_info": dataclasses.asdict(t.data.info),
        "step": t.step, "epoch": t.epoch, "batch_index": t.batch_index,
        "networks": {k: m.state_dict() for k, m in t.nets.items()},
        "ema": {k: m.state_dict() for k, m in t.ema_nets.items()},
        "optimizers": {k: o.state_dict() for k, o in t.optimizers.items()},
        "schedulers": {k: s.state_dict() for k, s in t.schedulers.items()},
        "scaler": t.ctx.scaler.state_dict() if t.ctx.scaler is not None else {},
        "extra": ranks[0]["extra"],
        "rng": ranks[0]["rng"],
        "implementation": ranks[0]["implementation"],
        "world_size": t.world.size,
        "samples_in_epoch": t.batch_index * t.opts.batch_size * t.world.size,
    }
    if t.world.distributed:
        st["ranks"] = ranks
    return st


def restore_training_state(t, st: dict) -> None:
    """Puts the checkpoint ``st`` back into the Trainer ``t``; a CheckpointError naming
    the settings that differ when its networks do not fit."""
    if st.get("plugin") != t.name:
        raise CheckpointError(f"the checkpoint is of plugin {st.get('plugin')!r}, not {t.name!r}")
    for k, m in t.nets.items():
        if k not in st.get("networks", {}):
            raise mismatch(t, st, f"it has no network {k!r}")
        _load_weights(t, st, k, m, st["networks"][k])
    for k, m in t.ema_nets.items():
        if k in st.get("ema", {}):
            _load_weights(t, st, k, m, st["ema"][k])
    for k, o in t.optimizers.items():
        o.load_state_dict(st["optimizers"][k])
    for k, s in t.schedulers.items():
        s.load_state_dict(st["schedulers"][k])
    if t.ctx.scaler is not None and st.get("scaler"):
        t.ctx.scaler.load_state_dict(st["scaler"])
    t.step, t.epoch, t.batch_index = st["step"], st["epoch"], st["batch_index"]
    saved_world, world = int(st.get("world_size", 1)), t.world
    ranks = st.get("ranks") or [{"rng": st["rng"], "extra": st.get("extra", {}),
                                 "implementation": st.get("implementation", {})}]
    # the implementations the run used, so that it goes on along the same path
    tuning.pin(ranks[world.rank % len(ranks)].get("implementation", {}))
    if saved_world == world.size:
        t.plugin.load_extra_state(ranks[world.rank]["extra"])
        set_rng_state(ranks[world.rank]["rng"])
        return
    # another number of processes: the same data order from the same global sample on,
    # fresh per-rank random numbers, each rank's extra state from the rank it replaces
    t.plugin.load_extra_state(ranks[world.rank % len(ranks)]["extra"])
    seen = int(st.get("samples_in_epoch", t.batch_index * t.opts.batch_size * saved_world))
    t.batch_index = seen // (t.opts.batch_size * world.size)
    seed_everything(rank_seed(t.opts.seed * 1_000_033 + t.step, world.rank), t.opts.deterministic)
    if world.main:
        print(f"pyganx train: the checkpoint was written by {saved_world} process(es) and this run has "
              f"{world.size}: each process re-seeded its random numbers from (seed {t.opts.seed}, "
              f"step {t.step}, rank); the data order goes on from sample {seen} of epoch {t.epoch}",
              file=sys.stderr)


def _load_weights(t, st: dict, name: str, net: torch.nn.Module, weights: dict) -> None:
    try:
        net.load_state_dict(weights)
    except RuntimeError as e:  # shapes or names differ: its message lists every tensor
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise mismatch(t, st, f"{name}: {lines[1] if len(lines) > 1 else lines[0]}") from None


def mismatch(t, st: dict, detail: str) -> CheckpointError:
    """The one-line error for a checkpoint whose networks do not fit the Trainer ``t``'s:
    the settings that differ (plugin config, image size, channels), else ``detail``."""
    ours = dataclasses.asdict(t.config)
    theirs = st.get("config") or {}
    diff = [(k, theirs[k], v) for k, v in ours.items() if k in theirs and theirs[k] != v]
    info = st.get("data_info") or {}
    for k in ("image_size", "channels"):
        if k in info and info[k] != getattr(t.data.info, k):
            diff.append((k, info[k], getattr(t.data.info, k)))
    why = ("the checkpoint has " + ", ".join(f"{k}={a!r}" for k, a, _ in diff)
           + ", this run " + ", ".join(f"{k}={b!r}" for k, _, b in diff)) if diff else detail
    return CheckpointError(f"the checkpoint's networks do not match this run ({why}); resume with "
                           f"the checkpoint's settings, or train into another --out")


__all__ = ["mismatch", "restore_training_state", "to_cpu", "training_state"]
