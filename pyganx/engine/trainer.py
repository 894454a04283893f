"""The training loop for any plugin: builds the run (data, networks on the device,
optimizers, schedulers, EMA, DDP), then trains step by step with logging, sample grids,
atomic checkpoints and exact resume.

The run directory follows docs/contracts.md: config.json, checkpoints/step-*.pt with
latest.txt, samples/step-*.png, losses.csv and losses.png. Each part has its module:
options.py (the flags), pyganx.data.build (datasets), batches.py (loader and order),
state.py (checkpoint contents and resume), reporting.py (CSV, TensorBoard, plots,
grids), ema.py, stop.py (Ctrl-C), distributed.py (torchrun), compiling.py (--compile).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .. import tuning
from .._version import __version__
from ..data import build_dataset
from ..errors import CheckpointError, TrainingError, UsageError, values_refused_by
from ..ops.residual_block import training_convolutions
from ..plugin import GANPlugin
from .batches import make_loader, to_device
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .compiling import CompiledNetworks, compile_mode
from .context import TrainContext, resolve_precision
from .device import configure_backends, pick_device
from .distributed import barrier, join, rank_seed, sync_step, world_from_env, wrap_networks
from .ema import GeneratorEMA
from .options import TrainOptions
from .reporting import LossLog, save_grid
from .seeding import seed_everything
from .state import restore_training_state, training_state
from .stop import StopRequest


def build_plugin(name: str, plugin_cls: type[GANPlugin], config: Any, info) -> GANPlugin:
    """The plugin instance; a ValueError from its constructor (a config value it
    refuses) is a UsageError naming the plugin."""
    with values_refused_by(name):
        return plugin_cls(config, info)


def check_image_size(name: str, plugin_cls: type[GANPlugin], size: int, given: bool = True) -> None:
    """A UsageError naming ``--image-size`` when ``size`` is not among the plugin's
    ``image_sizes``; ``given``: the user gave it (else it is the data set's own)."""
    sizes = plugin_cls.image_sizes
    if size in sizes:
        return
    what, near = _sizes_text(sizes, size)
    nearest = f" (nearest: {', '.join(map(str, near))})" if near else ""
    if given:
        raise UsageError(f"--image-size {size}: {name} trains at {what}{nearest}")
    raise UsageError(f"{name} cannot train at the data's {size} px, only at {what}: give --image-size{nearest}")


def _sizes_text(sizes, size: int) -> tuple[str, list[int]]:
    """How to say which sizes the container ``sizes`` holds, and those nearest to ``size``."""
    if isinstance(sizes, range):
        start, step = sizes.start, sizes.step
        below = start + (size - start) // step * step
        near = ([start] if size < start else [sizes[-1]] if size > sizes[-1] else
                [v for v in (below, below + step) if v in sizes])
        what = (f"sizes from {start}" if step == 1 else f"multiples of {step} from {start}"
                if start % step == 0 else f"{start}, {start + step}, {start + 2 * step}, ...")
        return what + (f" to {sizes[-1]} px" if size > sizes[-1] else " px"), near
    try:
        ordered = sorted(sizes)
    except TypeError:         # a container that cannot list what it holds
        return "other sizes", []
    shown = ordered if len(ordered) <= 6 else [*ordered[:5], "...", ordered[-1]]
    near = [x for x in ordered if x < size][-1:] + [x for x in ordered if x > size][:1]
    return ", ".join(map(str, shown)) + " px", near


class Trainer:
    """Trains one plugin instance into a run directory."""

    def __init__(self, name: str, plugin_cls: type[GANPlugin], config: Any, opts: TrainOptions):
        opts.check()
        if opts.image_size is not None:      # before the data and the networks are built
            check_image_size(name, plugin_cls, opts.image_size)
        self.name, self.opts, self.config = name, opts, config
        self.run = Path(opts.out)
        #: this process's rank among torchrun's processes (one process: rank 0 of 1)
        self.world = world_from_env()
        self.device = pick_device(opts.device, self.world)
        #: the torch.compile mode of the training step (--compile, --cuda-graphs), None: eager
        self.compile_mode = compile_mode(opts, self.device)
        if opts.sync_bn and not self.world.distributed:
            raise UsageError("--sync-bn synchronises batch norm across processes: start the run with "
                             "torchrun --nproc-per-node K (K > 1)")
        join(self.world, self.device)
        # rank 0 draws as one process does; DDP gives every rank rank 0's initial weights
        seed_everything(rank_seed(opts.seed, self.world.rank), opts.deterministic)
        configure_backends(self.device, opts.deterministic)
        tuning.check_device(self.device, opts.impl)      # --impl fused where it cannot run
        self.data = build_dataset(plugin_cls, opts.data_source(), config)
        if opts.image_size is None:          # a demo set's own size (or the plugin's default)
            check_image_size(name, plugin_cls, self.data.info.image_size, given=False)
        self.plugin = build_plugin(name, plugin_cls, config, self.data.info)
        self.nets = self.plugin.networks()
        fmt = torch.channels_last if opts.channels_last else torch.preserve_format
        for m in self.nets.values():
            m.to(self.device, memory_format=fmt)
        if opts.checkpoint_activations:
            able = [k for k, m in self.nets.items() if hasattr(m, "checkpoint_activations")]
            if not able:
                raise UsageError(f"no network of {name} supports --checkpoint-activations "
                                 f"(pyganx's ResnetGenerator and StarGANGenerator do)")
            for k in able:
                self.nets[k].checkpoint_activations = True
        self.optimizers = self.plugin.optimizers()
        self.ctx = TrainContext(self.device, self.optimizers, resolve_precision(opts.precision, self.device))
        self.loader = make_loader(self.data.train, opts.batch_size, opts.seed, self.world, opts.workers,
                                  pin_memory=self.device.type == "cuda")
        per_epoch = max(1, len(self.loader))
        self.total_steps = opts.steps if opts.steps is not None else opts.epochs * per_epoch
        self.schedulers = self.plugin.schedulers(self.total_steps)
        gen_names = [s.network for s in self.plugin.export_specs().values()]
        self.ema = GeneratorEMA(self.nets, gen_names, opts.ema) if opts.ema else None
        #: the EMA copies of the generators by name (empty without --ema)
        self.ema_nets = self.ema.averages if self.ema else {}
        self.step = self.epoch = self.batch_index = 0
        self._saved: tuple[int, Path] | None = None   # (step, path) of the last checkpoint
        self.fixed = self._fixed_batch()
        self.synced = (wrap_networks(self.plugin, self.nets, self.device, opts.sync_bn)
                       if self.world.distributed else {})
        # the plugin keeps its eager networks; train_step alone calls the compiled ones
        self.compiled = (CompiledNetworks(self.plugin, self.nets, self.synced, self.compile_mode)
                         if self.compile_mode else None)
        if self.compiled is not None and self.compiled.eager and self.world.main:
            print(f"pyganx train: {name} does not keep network(s) {', '.join(self.compiled.eager)} as "
                  f"attributes (self.NAME = ...), so they run uncompiled", file=sys.stderr)

    def state(self) -> dict:
        """The checkpoint (state.training_state; a collective under torchrun)."""
        return training_state(self)

    def load_state(self, st: dict) -> None:
        restore_training_state(self, st)

    def _fixed_batch(self):
        """The test items every sample grid shows."""
        n = min(8, len(self.data.test))
        items = [self.data.test[i * max(1, len(self.data.test) // n)] for i in range(n)]
        return to_device(torch.utils.data.default_collate(items), self.device, self.opts.channels_last)

    def _write_config(self) -> None:
        self.run.mkdir(parents=True, exist_ok=True)
        cfg = {"plugin": self.name, "config": dataclasses.asdict(self.config),
               "data": self.data.description, "image_size": self.data.info.image_size,
               "channels": self.data.info.channels, "data_info": dataclasses.asdict(self.data.info),
               "pyganx_version": __version__,
               "options": dataclasses.asdict(self.opts)}
        (self.run / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")

    def _sample(self) -> None:
        with torch.no_grad():
            if self.ema is not None:
                with self.ema.swapped_into(self.plugin):
                    rows = self.plugin.sample(self.fixed)
            else:
                rows = self.plugin.sample(self.fixed)
        if rows:
            save_grid(rows, self.run / "samples" / f"step-{self.step:09d}.png")

    def _checkpoint(self) -> Path:
        state = self.state()            # every rank: gathering is a collective
        path = self.run / "checkpoints" / f"step-{self.step:09d}.pt"
        if self.world.main:
            path = save_checkpoint(self.run / "checkpoints", self.step, state, self.opts.keep)
        self._saved = (self.step, path)
        return path

    def _resume(self) -> None:
        """Loads the checkpoint --resume names (or the run's latest); refuses to train
        into a run directory that holds one without --resume."""
        checkpoints = self.run / "checkpoints"
        if self.opts.resume is not None:
            ck = Path(self.opts.resume) if self.opts.resume else latest_checkpoint(checkpoints)
            if ck is None or not ck.is_file():
                raise CheckpointError(f"nothing to resume: no checkpoint in {checkpoints}")
            self.load_state(load_checkpoint(ck))
            self._saved = (self.step, ck)
        elif checkpoints.is_dir() and latest_checkpoint(checkpoints):
            raise UsageError(f"{self.run} already holds a run; use --resume or another --out")

    def fit(self) -> dict:
        """Trains to the last step. A first Ctrl-C (SIGINT, when fit runs in the main
        thread) stops after the current step, checkpoints it and returns with
        ``"interrupted": True``; a second one raises KeyboardInterrupt at once.

        With ``checkpoint_activations`` on CPU the residual blocks keep oneDNN's direct
        convolutions: that option asks for memory over speed, and NNPACK's Winograd path
        holds a workspace (about 21 MiB at 256 px, 36 MiB at 512 px) that would put a
        512 px step above an eager one at 256 px (docs/ops.md, "CPU convolutions")."""
        # --impl forces an implementation; --deterministic takes the built-in gates instead
        # of measuring, so that the path never depends on timing (pyganx.tuning)
        measuring = False if self.opts.deterministic else None
        with tuning.session(self.opts.impl, measuring), \
                training_convolutions(self.opts.checkpoint_activations, self.device):
            return self._fit()

    def _fit(self) -> dict:
        opts = self.opts
        self._resume()
        main = self.world.main       # only rank 0 writes config, logs, samples and checkpoints
        if main:
            self._write_config()
        for m in self.nets.values():
            m.train()
        t0, last = time.time(), {}
        log = None
        stop = StopRequest()
        stopping = False
        try:
            if main:
                log = LossLog(self.run, self.step, self.total_steps, opts.resume is not None, opts.progress)
            stop.install()
            while self.step < self.total_steps and not stopping:
                if hasattr(self.data.train, "set_epoch"):
                    self.data.train.set_epoch(self.epoch)
                self.loader.sampler.set_epoch(self.epoch)
                for i, batch in enumerate(self.loader):
                    # one process stops at once; ranks only on the request they agreed on
                    if stopping or (stop.requested and not self.world.distributed):
                        stopping = True
                        break
                    if i < self.batch_index:
                        continue  # resuming mid-epoch: the order is the same, skip what was done
                    batch = to_device(batch, self.device, opts.channels_last)
                    with self.compiled.active() if self.compiled is not None else contextlib.nullcontext():
                        losses = self.plugin.train_step(batch, self.ctx)
                    self.ctx.end_iteration()
                    for s in self.schedulers.values():
                        s.step()
                    if self.ema is not None:
                        self.ema.update()
                    self.step += 1
                    self.batch_index = i + 1
                    # ranks log the global batch's losses and stop together
                    last, stopping = sync_step({k: float(v) for k, v in losses.items()}, stop.requested,
                                               self.world)
                    if log is not None:
                        log.log(self.step, self.epoch, time.time() - t0, last)
                    if any(not math.isfinite(v) for v in last.values()):
                        raise TrainingError(f"a loss became non-finite at step {self.step}: {last}")
                    done = self.step >= self.total_steps
                    if (self.step % opts.sample_every == 0 or done) and log is not None:
                        self._sample()
                        log.plot()
                    if self.step % opts.checkpoint_every == 0 or done:
                        self._checkpoint()
                    if done or stopping:
                        break
                else:
                    self.epoch += 1
                    self.batch_index = 0
                    continue
                break
            interrupted = stopping and self.step < self.total_steps
            if interrupted and self.step > (self._saved[0] if self._saved else 0):
                self._checkpoint()  # the state after the last completed step
        finally:
            stop.restore()
            if log is not None:
                log.close()
        barrier(self.world)      # every checkpoint is on disk before any rank goes on
        return {"steps": self.step, "seconds": time.time() - t0, "losses": last,
                "interrupted": interrupted,
                "checkpoint": str(self._saved[1]) if self._saved else None}


__all__ = ["Trainer", "build_plugin", "check_image_size"]
