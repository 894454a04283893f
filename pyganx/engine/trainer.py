"""The training loop for any plugin: data, devices, precision, seeds, schedules, EMA,
progress, CSV/plot logging, sample grids, atomic checkpoints and exact resume.

The run directory follows docs/contracts.md: config.json, checkpoints/step-*.pt with
latest.txt, samples/step-*.png, losses.csv and losses.png.
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .. import __version__
from ..data import EvalTransform, Images, LabelledImages, PairedImages, TrainTransform, UnpairedImages
from ..data import demo as demo_data
from ..data.images import ImageError, to_pil
from ..ops.residual_block import training_convolutions
from ..plugin import DataInfo, GANPlugin
from .checkpoint import (atomic_write_bytes, latest_checkpoint, load_checkpoint, rng_state,
                         save_checkpoint, set_rng_state)
from .context import TrainContext, resolve_precision
from .distributed import World, barrier, gather, join, rank_seed, shard, sync_step, world_from_env, wrap_networks


class TrainError(RuntimeError):
    """A problem with the run's inputs, for a one-line message."""


@dataclass
class TrainOptions:
    out: str
    data: str | None = None
    data_a: str | None = None
    data_b: str | None = None
    demo: str | None = None
    steps: int | None = None
    epochs: int | None = None
    resume: str | None = None          # "" = the run's latest checkpoint
    image_size: int | None = None
    batch_size: int = 1
    precision: str = "auto"
    seed: int = 0
    deterministic: bool = False
    workers: int = 0
    ema: float | None = None
    sample_every: int = 200
    checkpoint_every: int = 500
    keep: int = 3
    device: str | None = None
    progress: bool = True
    skip_bad_images: bool = False     # warn about and skip unreadable images
    channels: int | None = None       # 1 (grey) or 3 (RGB); default: what the data are
    channels_last: bool = False       # networks and batches in channels_last memory format
    checkpoint_activations: bool = False   # recompute generator segments in backward
    sync_bn: bool = False             # SyncBatchNorm across processes (GPU, torchrun)


def pick_device(name: str | None = None, world: World | None = None) -> torch.device:
    """The device asked for, else the first available; under torchrun, GPU LOCAL_RANK."""
    if world is not None and world.distributed:
        if name in (None, "cuda") and torch.cuda.is_available():
            return torch.device("cuda", world.local_rank)
        if name in (None, "cpu"):
            return torch.device("cpu")
        if name == "cuda":
            raise TrainError("--device cuda under torchrun, but torch sees no GPU")
        raise TrainError(f"distributed training runs on cuda or cpu, not {name}")
    if name:
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


@dataclass
class RunData:
    train: Dataset
    test: Dataset
    info: DataInfo
    description: str


def _flip_allowed(config: Any) -> bool:
    return bool(getattr(config, "flip", True))


def build_data(plugin_cls: type[GANPlugin], opts: TrainOptions, config: Any) -> RunData:
    """Datasets for the plugin's ``data_kind`` from --demo, --data or --data-a/--data-b;
    folder images are trained at --image-size, else at the plugin's ``default_image_size``;
    training images get the resize-and-crop jitter where the plugin's ``random_crop`` says."""
    kind = plugin_cls.data_kind

    def transforms(size: int, flip: bool) -> tuple[TrainTransform, EvalTransform]:
        load = None if plugin_cls.random_crop else size
        return TrainTransform(size, load, flip), EvalTransform(size)

    if kind not in ("noise", "unpaired", "paired", "labelled", "multi_domain"):
        raise TrainError(f"data kind {kind!r} has no built-in dataset yet")
    skip = opts.skip_bad_images
    if opts.channels not in (None, 1, 3):
        raise TrainError(f"--channels must be 1 (grey) or 3 (RGB), got {opts.channels}")
    want = opts.channels
    if opts.demo:
        try:
            ds = demo_data.load(opts.demo)
        except (ValueError, RuntimeError) as e:
            raise TrainError(str(e)) from None
        size = opts.image_size or ds.size
        tr, ev = transforms(size, ds.flip and _flip_allowed(config))
        if kind == "unpaired":
            train = UnpairedImages([s.image for s in ds.train_a], [s.image for s in ds.train_b], tr,
                                   channels=want or ds.channels, seed=opts.seed, skip_bad_images=skip)
            test = UnpairedImages([s.image for s in ds.test_a], [s.image for s in ds.test_b], ev,
                                  channels=want or ds.channels, seed=opts.seed, skip_bad_images=skip)
            info = DataInfo(want or ds.channels, size, 0, ("A", "B"), ds.description)
        elif kind == "noise":
            train = Images([s.image for s in ds.train_a + ds.train_b], tr, channels=want or ds.channels,
                           seed=opts.seed, skip_bad_images=skip)
            test = Images([s.image for s in ds.test_a + ds.test_b], ev, channels=want or ds.channels,
                          seed=opts.seed, skip_bad_images=skip)
            info = DataInfo(want or ds.channels, size, 0, (), ds.description)
        elif kind == "labelled":
            if not ds.labelled("train"):
                raise TrainError(f"the demo set {opts.demo!r} has no class labels; use --demo digits "
                                 f"or --data DIR with one sub-folder per class")
            train = LabelledImages(samples=ds.labelled("train"), transform=tr,
                                   channels=want or ds.channels, classes=[str(d) for d in range(10)],
                                   skip_bad_images=skip)
            test = LabelledImages(samples=ds.labelled("test"), transform=ev,
                                  channels=want or ds.channels, classes=[str(d) for d in range(10)],
                                  skip_bad_images=skip)
            info = DataInfo(want or ds.channels, size, 10, tuple(train.classes), ds.description)
        elif kind == "multi_domain":
            train = LabelledImages(samples=ds.domains("train"), classes=ds.styles, transform=tr,
                                   channels=want or ds.channels, skip_bad_images=skip)
            test = LabelledImages(samples=ds.domains("test"), classes=ds.styles, transform=ev,
                                  channels=want or ds.channels, skip_bad_images=skip)
            info = DataInfo(want or ds.channels, size, 0, tuple(ds.styles), ds.description)
        else:
            raise TrainError(f"the demo sets have no paired view; use --data with {kind} data")
        return RunData(train, test, info, f"demo {opts.demo}: {ds.description}")
    size = opts.image_size or plugin_cls.default_image_size
    tr, ev = transforms(size, _flip_allowed(config))
    try:
        if kind == "noise":
            if not opts.data:
                raise TrainError("noise-to-image GANs train on --data DIR (a folder of images, "
                                 "searched recursively) or --demo NAME")
            train = Images(opts.data, tr, channels=want, seed=opts.seed, skip_bad_images=skip)
            test = Images(opts.data, ev, channels=train.channels, skip_bad_images=skip)
            desc = f"images {opts.data}"
            info = DataInfo(train.channels, size, 0, (), desc)
        elif kind == "unpaired":
            if opts.data:
                root = Path(opts.data)
                a, b = root / "trainA", root / "trainB"
                ta = root / "testA" if (root / "testA").is_dir() else a
                tb = root / "testB" if (root / "testB").is_dir() else b
            elif opts.data_a and opts.data_b:
                a, b, ta, tb = Path(opts.data_a), Path(opts.data_b), Path(opts.data_a), Path(opts.data_b)
            else:
                raise TrainError("unpaired data needs --data DIR (with trainA/ trainB/) or "
                                 "--data-a DIR --data-b DIR, or --demo NAME")
            train = UnpairedImages(a, b, tr, channels=want, seed=opts.seed, skip_bad_images=skip)
            test = UnpairedImages(ta, tb, ev, channels=train.channels, seed=opts.seed,
                                  skip_bad_images=skip)
            desc = f"unpaired {a} | {b}"
            info = DataInfo(train.channels, size, 0, ("A", "B"), desc)
        elif kind == "paired":
            if not opts.data:
                raise TrainError("paired data needs --data DIR (with train/ [test/] of A|B "
                                 "images, or trainA/ trainB/ of matching names)")
            root = Path(opts.data)
            if (root / "trainA").is_dir():
                train = PairedImages(root / "trainA", root / "trainB", tr, channels=want,
                                     seed=opts.seed, skip_bad_images=skip)
                test = train
            else:
                train = PairedImages(root / "train", None, tr, channels=want, seed=opts.seed,
                                     skip_bad_images=skip)
                test = PairedImages(root / "test" if (root / "test").is_dir() else root / "train",
                                    None, ev, channels=train.channels, skip_bad_images=skip)
            desc = f"paired {root}"
            info = DataInfo(train.channels, size, 0, ("A", "B"), desc)
        else:
            if not opts.data:
                raise TrainError(f"{kind} data needs --data DIR with one sub-folder per "
                                 f"{'class' if kind == 'labelled' else 'domain'}")
            train = LabelledImages(opts.data, tr, channels=want, seed=opts.seed, skip_bad_images=skip)
            test = LabelledImages(opts.data, ev, channels=train.channels, skip_bad_images=skip)
            desc = f"{kind} {opts.data}"
            if len(train.classes) < 2:
                raise TrainError(f"{opts.data}: {kind} data needs at least two sub-folders "
                                 f"(one per {'class' if kind == 'labelled' else 'domain'}), found "
                                 f"{len(train.classes)}")
            info = DataInfo(train.channels, size, len(train.classes) if kind == "labelled" else 0,
                            tuple(train.classes), desc)
    except ImageError as e:
        raise TrainError(str(e)) from None
    return RunData(train, test, info, desc)


def _batch_to(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    if isinstance(batch, torch.Tensor):
        if channels_last and batch.dim() == 4 and batch.is_floating_point():
            return batch.to(device, memory_format=torch.channels_last, non_blocking=True)
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _batch_to(v, device, channels_last) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_batch_to(v, device, channels_last) for v in batch)
    return batch


def save_grid(rows: dict[str, torch.Tensor], path: Path) -> None:
    """One row per entry of ``rows`` (each (N, C, H, W) in [-1, 1]), written atomically."""
    from PIL import Image

    tiles = [[to_pil(t) for t in row] for row in rows.values()]
    n = max(len(r) for r in tiles)
    w, h = tiles[0][0].size
    mode = "RGB" if any(t.mode == "RGB" for r in tiles for t in r) else "L"
    grid = Image.new(mode, (n * w, len(tiles) * h))
    for i, r in enumerate(tiles):
        for j, t in enumerate(r):
            grid.paste(t.convert(mode), (j * w, i * h))
    atomic_write_bytes(path, lambda f: grid.save(f, format="PNG"))


def plot_losses(csv_path: Path, png_path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    keys = [k for k in rows[0] if k not in ("step", "epoch", "seconds")]
    steps = [int(r["step"]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    for k in keys:
        vals = np.array([float(r[k]) if r[k] else np.nan for r in rows])
        win = max(1, len(vals) // 50)
        smooth = np.convolve(np.nan_to_num(vals), np.ones(win) / win, mode="same") if win > 1 else vals
        ax.plot(steps, smooth, label=k, linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write_bytes(png_path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


class Trainer:
    """Trains one plugin instance into a run directory."""

    def __init__(self, name: str, plugin_cls: type[GANPlugin], config: Any, opts: TrainOptions):
        if (opts.steps is None) == (opts.epochs is None):
            raise TrainError("give exactly one of --steps N and --epochs N")
        for flag, value, least in (("steps", opts.steps, 1), ("epochs", opts.epochs, 1),
                                   ("batch-size", opts.batch_size, 1),
                                   ("sample-every", opts.sample_every, 1),
                                   ("checkpoint-every", opts.checkpoint_every, 1),
                                   ("keep", opts.keep, 0), ("workers", opts.workers, 0)):
            if value is not None and value < least:
                raise TrainError(f"--{flag} must be at least {least}, got {value}")
        self.name, self.opts, self.config = name, opts, config
        self.run = Path(opts.out)
        #: this process's rank among torchrun's processes (one process: rank 0 of 1)
        self.world = world_from_env()
        self.device = pick_device(opts.device, self.world)
        if opts.sync_bn and not self.world.distributed:
            raise TrainError("--sync-bn synchronises batch norm across processes: start the run with "
                             "torchrun --nproc-per-node K (K > 1)")
        join(self.world, self.device)
        # rank 0 draws as one process does; DDP gives every rank rank 0's initial weights
        seed_everything(rank_seed(opts.seed, self.world.rank), opts.deterministic)
        self.data = build_data(plugin_cls, opts, config)
        self.plugin = plugin_cls(config, self.data.info)
        self.nets = self.plugin.networks()
        fmt = torch.channels_last if opts.channels_last else torch.preserve_format
        for m in self.nets.values():
            m.to(self.device, memory_format=fmt)
        if opts.checkpoint_activations:
            able = [k for k, m in self.nets.items() if hasattr(m, "checkpoint_activations")]
            if not able:
                raise TrainError(f"no network of {name} supports --checkpoint-activations "
                                 f"(pyganx's ResnetGenerator and StarGANGenerator do)")
            for k in able:
                self.nets[k].checkpoint_activations = True
        self.optimizers = self.plugin.optimizers()
        self.ctx = TrainContext(self.device, self.optimizers,
                                resolve_precision(opts.precision, self.device))
        self.loader = DataLoader(self.data.train, batch_size=opts.batch_size, shuffle=False,
                                 sampler=_EpochSampler(len(self.data.train), opts.seed, self.world),
                                 drop_last=len(self.data.train) // self.world.size >= opts.batch_size,
                                 num_workers=opts.workers, pin_memory=self.device.type == "cuda",
                                 persistent_workers=opts.workers > 0,
                                 worker_init_fn=_worker_leaves_sigint_to_the_trainer,
                                 # each new iterator draws a worker seed: from this generator,
                                 # not the global RNG that plugins draw noise from, so that a
                                 # resumed run (one iterator more) draws the same noise
                                 generator=torch.Generator().manual_seed(opts.seed))
        per_epoch = max(1, len(self.loader))
        self.total_steps = opts.steps if opts.steps is not None else opts.epochs * per_epoch
        self.schedulers = self.plugin.schedulers(self.total_steps)
        gen_names = [s.network for s in self.plugin.export_specs().values()]
        self.ema = ({n: copy.deepcopy(self.nets[n]).eval().requires_grad_(False) for n in gen_names}
                    if opts.ema else {})
        self.step = self.epoch = self.batch_index = 0
        self._saved: tuple[int, Path] | None = None   # (step, path) of the last checkpoint
        self.fixed = self._fixed_batch()
        try:
            self.synced = (wrap_networks(self.plugin, self.nets, self.device, opts.sync_bn)
                           if self.world.distributed else {})
        except ValueError as e:
            raise TrainError(str(e)) from None

    # --- state ---------------------------------------------------------------------
    def state(self) -> dict:
        """The checkpoint. A collective under torchrun: every rank's RNG states and plugin
        extra state (image pools) are gathered into ``ranks``; the top-level ``rng`` and
        ``extra`` are rank 0's (what one process writes)."""
        ranks = gather(_to_cpu({"rng": rng_state(), "extra": self.plugin.extra_state()}), self.world)
        st = {
            "pyganx_version": __version__, "plugin": self.name,
            "config": dataclasses.asdict(self.config),
            "data_info": dataclasses.asdict(self.data.info),
            "step": self.step, "epoch": self.epoch, "batch_index": self.batch_index,
            "networks": {k: m.state_dict() for k, m in self.nets.items()},
            "ema": {k: m.state_dict() for k, m in self.ema.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "scaler": self.ctx.scaler.state_dict() if self.ctx.scaler is not None else {},
            "extra": ranks[0]["extra"],
            "rng": ranks[0]["rng"],
            "world_size": self.world.size,
            "samples_in_epoch": self.batch_index * self.opts.batch_size * self.world.size,
        }
        if self.world.distributed:
            st["ranks"] = ranks
        return st

    def load_state(self, st: dict) -> None:
        if st.get("plugin") != self.name:
            raise TrainError(f"the checkpoint is of plugin {st.get('plugin')!r}, not {self.name!r}")
        for k, m in self.nets.items():
            if k not in st.get("networks", {}):
                raise self._mismatch(st, f"it has no network {k!r}")
            self._load_weights(st, k, m, st["networks"][k])
        for k, m in self.ema.items():
            if k in st.get("ema", {}):
                self._load_weights(st, k, m, st["ema"][k])
        for k, o in self.optimizers.items():
            o.load_state_dict(st["optimizers"][k])
        for k, s in self.schedulers.items():
            s.load_state_dict(st["schedulers"][k])
        if self.ctx.scaler is not None and st.get("scaler"):
            self.ctx.scaler.load_state_dict(st["scaler"])
        self.step, self.epoch, self.batch_index = st["step"], st["epoch"], st["batch_index"]
        saved_world, world = int(st.get("world_size", 1)), self.world
        ranks = st.get("ranks") or [{"rng": st["rng"], "extra": st.get("extra", {})}]
        if saved_world == world.size:
            self.plugin.load_extra_state(ranks[world.rank]["extra"])
            set_rng_state(ranks[world.rank]["rng"])
            return
        # another number of processes: the same data order from the same global sample on,
        # fresh per-rank random numbers, each rank's extra state from the rank it replaces
        self.plugin.load_extra_state(ranks[world.rank % len(ranks)]["extra"])
        seen = int(st.get("samples_in_epoch", self.batch_index * self.opts.batch_size * saved_world))
        self.batch_index = seen // (self.opts.batch_size * world.size)
        seed_everything(rank_seed(self.opts.seed * 1_000_033 + self.step, world.rank), self.opts.deterministic)
        if world.main:
            print(f"pyganx train: the checkpoint was written by {saved_world} process(es) and this run has "
                  f"{world.size}: each process re-seeded its random numbers from (seed {self.opts.seed}, "
                  f"step {self.step}, rank); the data order goes on from sample {seen} of epoch {self.epoch}",
                  file=sys.stderr)

    def _load_weights(self, st: dict, name: str, net: torch.nn.Module, weights: dict) -> None:
        try:
            net.load_state_dict(weights)
        except RuntimeError as e:  # shapes or names differ: its message lists every tensor
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            raise self._mismatch(st, f"{name}: {lines[1] if len(lines) > 1 else lines[0]}") from None

    def _mismatch(self, st: dict, detail: str) -> TrainError:
        """The one-line error for a checkpoint whose networks do not fit this run's: the
        settings that differ (plugin config, image size, channels), else ``detail``."""
        ours = dataclasses.asdict(self.config)
        theirs = st.get("config") or {}
        diff = [(k, theirs[k], v) for k, v in ours.items() if k in theirs and theirs[k] != v]
        info = st.get("data_info") or {}
        for k in ("image_size", "channels"):
            if k in info and info[k] != getattr(self.data.info, k):
                diff.append((k, info[k], getattr(self.data.info, k)))
        why = ("the checkpoint has " + ", ".join(f"{k}={a!r}" for k, a, _ in diff)
               + ", this run " + ", ".join(f"{k}={b!r}" for k, _, b in diff)) if diff else detail
        return TrainError(f"the checkpoint's networks do not match this run ({why}); resume with "
                          f"the checkpoint's settings, or train into another --out")

    def _fixed_batch(self):
        n = min(8, len(self.data.test))
        items = [self.data.test[i * max(1, len(self.data.test) // n)] for i in range(n)]
        return _batch_to(torch.utils.data.default_collate(items), self.device, self.opts.channels_last)

    # --- loop ----------------------------------------------------------------------
    def _write_config(self) -> None:
        self.run.mkdir(parents=True, exist_ok=True)
        cfg = {"plugin": self.name, "config": dataclasses.asdict(self.config),
               "data": self.data.description, "image_size": self.data.info.image_size,
               "channels": self.data.info.channels, "data_info": dataclasses.asdict(self.data.info),
               "pyganx_version": __version__,
               "options": dataclasses.asdict(self.opts)}
        (self.run / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")

    def _sample(self) -> None:
        if self.ema:
            saved = {k: getattr(self.plugin, k) for k in self.ema}
            self.plugin_nets_swap(self.ema)
        try:
            with torch.no_grad():
                rows = self.plugin.sample(self.fixed)
        finally:
            if self.ema:
                self.plugin_nets_swap(saved)
        if rows:
            save_grid(rows, self.run / "samples" / f"step-{self.step:09d}.png")

    def plugin_nets_swap(self, nets: dict) -> None:
        """Points the plugin's generator attributes at ``nets`` (EMA sampling)."""
        for k, m in nets.items():
            setattr(self.plugin, k, m)

    def _update_ema(self) -> None:
        d = self.opts.ema
        with torch.no_grad():
            for k, e in self.ema.items():
                for pe, p in zip(e.parameters(), self.nets[k].parameters()):
                    pe.lerp_(p, 1 - d)
                for be, b in zip(e.buffers(), self.nets[k].buffers()):
                    be.copy_(b)

    def _checkpoint(self) -> Path:
        state = self.state()            # every rank: gathering is a collective
        path = self.run / "checkpoints" / f"step-{self.step:09d}.pt"
        if self.world.main:
            path = save_checkpoint(self.run / "checkpoints", self.step, state, self.opts.keep)
        self._saved = (self.step, path)
        return path

    def fit(self) -> dict:
        """Trains to the last step. A first Ctrl-C (SIGINT, when fit runs in the main
        thread) stops after the current step, checkpoints it and returns with
        ``"interrupted": True``; a second one raises KeyboardInterrupt at once.

        With ``checkpoint_activations`` on CPU the residual blocks keep oneDNN's direct
        convolutions: that option asks for memory over speed, and NNPACK's Winograd path
        holds a workspace (about 21 MiB at 256 px, 36 MiB at 512 px) that would put a
        512 px step above an eager one at 256 px (docs/ops.md, "CPU convolutions")."""
        with training_convolutions(self.opts.checkpoint_activations, self.device):
            return self._fit()

    def _fit(self) -> dict:
        opts = self.opts
        if opts.resume is not None:
            ck = Path(opts.resume) if opts.resume else latest_checkpoint(self.run / "checkpoints")
            if ck is None or not ck.is_file():
                raise TrainError(f"nothing to resume: no checkpoint in {self.run / 'checkpoints'}")
            self.load_state(load_checkpoint(ck))
            self._saved = (self.step, ck)
        elif (self.run / "checkpoints").is_dir() and latest_checkpoint(self.run / "checkpoints"):
            raise TrainError(f"{self.run} already holds a run; use --resume or another --out")
        main = self.world.main       # only rank 0 writes config, logs, samples and checkpoints
        if main:
            self._write_config()
        csv_path = self.run / "losses.csv"
        if opts.resume is not None and main:
            _drop_rows_after(csv_path, self.step)
        writer_file = open(csv_path, "a", newline="") if main else None
        writer = None
        bar = None
        if opts.progress and main:
            from tqdm import tqdm
            bar = tqdm(total=self.total_steps, initial=self.step, unit="it", dynamic_ncols=True)
        for m in self.nets.values():
            m.train()
        t0, last = time.time(), {}
        tb = None
        stop = _StopRequest()
        stopping = False
        try:
            tb = _tensorboard_writer(self.run / "tb") if main else None
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
                    losses = self.plugin.train_step(_batch_to(batch, self.device, opts.channels_last), self.ctx)
                    self.ctx.end_iteration()
                    for s in self.schedulers.values():
                        s.step()
                    if self.ema:
                        self._update_ema()
                    self.step += 1
                    self.batch_index = i + 1
                    # ranks log the global batch's losses and stop together
                    last, stopping = sync_step({k: float(v) for k, v in losses.items()}, stop.requested,
                                               self.world)
                    if writer_file is not None and writer is None:
                        writer = csv.DictWriter(writer_file, ["step", "epoch", "seconds", *last])
                        if csv_path.stat().st_size == 0:
                            writer.writeheader()
                    if writer is not None:
                        writer.writerow({"step": self.step, "epoch": self.epoch,
                                         "seconds": round(time.time() - t0, 3), **last})
                        writer_file.flush()
                    if tb is not None:
                        for k, v in last.items():
                            tb.add_scalar(f"loss/{k}", v, self.step)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix({k: f"{v:.3f}" for k, v in last.items()}, refresh=False)
                    if any(not math.isfinite(v) for v in last.values()):
                        raise TrainError(f"a loss became non-finite at step {self.step}: {last}")
                    done = self.step >= self.total_steps
                    if (self.step % opts.sample_every == 0 or done) and main:
                        if tb is not None:
                            tb.flush()
                        self._sample()
                        plot_losses(csv_path, self.run / "losses.png")
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
            if writer_file is not None:
                writer_file.close()
            if bar is not None:
                bar.close()
            if tb is not None:
                tb.close()
        barrier(self.world)      # every checkpoint is on disk before any rank goes on
        return {"steps": self.step, "seconds": time.time() - t0, "losses": last,
                "interrupted": interrupted,
                "checkpoint": str(self._saved[1]) if self._saved else None}


def _to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor in it on the CPU (to gather it from other ranks' GPUs)."""
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


class _StopRequest:
    """Once installed in the main thread: the first SIGINT (Ctrl-C) only sets
    ``requested``, for the loop to stop after the step it is in; a second one puts the
    previous handler back and raises KeyboardInterrupt. ``restore`` puts it back too.
    Nothing is installed off the main thread or where SIGINT is ignored."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def _handle(self, signum, frame) -> None:
        if self.requested:
            self.restore()
            raise KeyboardInterrupt
        self.requested = True

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            if previous is not signal.SIG_IGN:
                # None: a handler not set from Python, which cannot be put back as it was
                self._previous = signal.default_int_handler if previous is None else previous
                signal.signal(signal.SIGINT, self._handle)
                self._installed = True

    def restore(self) -> None:
        if self._installed:
            self._installed = False
            signal.signal(signal.SIGINT, self._previous)


def _tensorboard_writer(log_dir: Path):
    """A SummaryWriter into ``log_dir`` when TensorBoard is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    except Exception as e:  # noqa: BLE001 - installed but broken: train without it, say so once
        print(f"pyganx: not logging to TensorBoard: it does not import ({type(e).__name__}: {e})",
              file=sys.stderr)
        return None
    return SummaryWriter(log_dir=str(log_dir))


def _worker_leaves_sigint_to_the_trainer(_worker_id: int) -> None:
    """A terminal's Ctrl-C reaches the data-loader workers too; they ignore it, so the
    main process can finish its step, checkpoint and shut them down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _drop_rows_after(csv_path: Path, step: int) -> None:
    """On resume: forget logged steps past the checkpoint (a run killed between
    checkpoints logged steps that will now be trained again)."""
    if not csv_path.is_file():
        return
    with open(csv_path, newline="") as f:
        lines = f.read().splitlines(keepends=True)
    keep = lines[:1] + [ln for ln in lines[1:] if ln.split(",", 1)[0].isdigit()
                        and int(ln.split(",", 1)[0]) <= step]
    if len(keep) != len(lines):
        atomic_write_bytes(csv_path, lambda f: f.write("".join(keep).encode()))


class _EpochSampler(torch.utils.data.Sampler):
    """A shuffled order per epoch, derived from (seed, epoch): the same on resume and on
    every rank, of which each takes its share (distributed.shard)."""

    def __init__(self, n: int, seed: int, world: World | None = None) -> None:
        self.n, self.seed, self.epoch = n, seed, 0
        self.world = world or World()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(shard(torch.randperm(self.n, generator=g).tolist(), self.world))

    def __len__(self) -> int:
        return self.n // self.world.size
