"""Reading a run directory back: the plugin, its config and data description from
config.json, the weights from a checkpoint (EMA weights when the run kept them).

``load_run`` is what ``pyganx sample``, ``pyganx eval`` and ``pyganx export`` build on;
``load_generator`` is the notebook face of it.
"""
from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import registry
from ..data import DataInfo, RunData, build_dataset
from ..errors import CheckpointError, UsageError
from ..flags import check_choices, choices_unchecked
from ..nn.foreign import load_foreign
from ..plugin import ExportSpec, GANPlugin
from .checkpoint import latest_checkpoint, load_checkpoint
from .device import pick_device
from .options import TrainOptions
from .trainer import build_plugin


@dataclass
class LoadedRun:
    name: str                     # the plugin's registered name
    plugin: GANPlugin             # networks on ``device``, in eval mode, weights loaded
    config: Any                   # the plugin's Config instance
    info: DataInfo
    options: dict                 # the TrainOptions the run was started with
    run_dir: Path
    checkpoint: Path
    step: int
    weights: str                  # "ema" or "trained"
    device: torch.device

    def spec(self, name: str | None = None) -> tuple[str, ExportSpec]:
        """The export spec called ``name`` (or whose network is ``name``); default: the first."""
        specs = self.plugin.export_specs()
        if not specs:
            raise UsageError(f"plugin {self.name!r} declares no generator (export_specs() is empty)")
        if name is None:
            return next(iter(specs.items()))
        if name in specs:
            return name, specs[name]
        for k, s in specs.items():
            if s.network == name:
                return k, s
        raise UsageError(f"{self.name} has no generator {name!r}; it has: {', '.join(specs)}")

    def generator(self, name: str | None = None) -> nn.Module:
        return self.plugin.networks()[self.spec(name)[1].network]

    def train_options(self) -> TrainOptions:
        """The options the run was trained with (fields this version no longer has dropped)."""
        known = {f.name for f in dataclasses.fields(TrainOptions)}
        return TrainOptions(**{k: v for k, v in self.options.items() if k in known})

    def data(self) -> RunData:
        """The run's datasets, rebuilt from its options (the data must still be there)."""
        return build_dataset(type(self.plugin), self.train_options().data_source(), self.config)


def config_from_dict(cls: type[GANPlugin], values: dict) -> Any:
    """The plugin's Config from a stored dict; fields the class no longer has are an error."""
    known = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise CheckpointError(f"the run's config has fields {cls.__name__}.Config does not know: "
                         f"{', '.join(unknown)} (a run of another plugin version?)")
    return cls.Config(**values)


def _resolve(path: str | Path) -> tuple[Path, Path | None]:
    """(run directory, checkpoint or None for the latest) from a run dir or a .pt file."""
    p = Path(path)
    if p.is_file():
        run = p.parent.parent if p.parent.name == "checkpoints" else p.parent
        return run, p
    if p.is_dir():
        return p, None
    raise FileNotFoundError(f"{p}: no such run directory or checkpoint")


def load_run(path: str | Path, device: str | torch.device | None = "cpu", ema: bool = True) -> LoadedRun:
    """Rebuilds the plugin of a run directory (or of one checkpoint file in it) and loads
    its weights: the EMA weights of the generators when the run kept them and ``ema``."""
    run_dir, ckpt = _resolve(path)
    if ckpt is None:
        ckpt = latest_checkpoint(run_dir / "checkpoints")
        if ckpt is None:
            raise CheckpointError(f"{run_dir}: no checkpoint (checkpoints/ is empty or missing; "
                             f"is this a pyganx run directory?)")
    st = load_checkpoint(ckpt)
    cfg_path = run_dir / "config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    name = st.get("plugin") or cfg.get("plugin")
    if not name:
        raise CheckpointError(f"{ckpt}: not a pyganx checkpoint (it names no plugin)")
    cls = registry.get(name)
    config = config_from_dict(cls, st.get("config", cfg.get("config", {})))
    di = st.get("data_info") or cfg.get("data_info")
    if di is None:
        raise CheckpointError(f"{ckpt}: the run records no data description (channels, image size)")
    info = DataInfo(di["channels"], di["image_size"], di.get("num_classes", 0),
                    tuple(di.get("domains", ())), di.get("description", ""))
    dev = pick_device(None) if device is None else torch.device(device)
    plugin = _rebuild(name, cls, config, info, ckpt)
    nets = plugin.networks()
    used_ema = False
    for k, m in nets.items():
        if k not in st.get("networks", {}):
            raise CheckpointError(f"{ckpt}: not a pyganx checkpoint of {name} (it holds no "
                                  f"weights of network {k!r})")
        weights = st["networks"][k]
        if ema and k in st.get("ema", {}):
            weights, used_ema = st["ema"][k], True
        try:
            m.load_state_dict(weights)
        except RuntimeError as e:
            first = str(e).strip().splitlines()
            raise CheckpointError(f"{ckpt}: network {k} does not match {name}'s config "
                             f"({first[1].strip() if len(first) > 1 else first[0]})") from None
        m.to(dev).eval().requires_grad_(False)
    return LoadedRun(name, plugin, config, info, dict(cfg.get("options", {})), run_dir, ckpt,
                     int(st.get("step", 0)), "ema" if used_ema else "trained", dev)


def _rebuild(name: str, cls: type[GANPlugin], config: Any, info: DataInfo, ckpt: Path) -> GANPlugin:
    """The plugin of a trained run. A config value outside a field's choices (one that an
    earlier version offered) is a warning, not a refusal: the weights were trained with it."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        try:
            check_choices(config)
        except UsageError as e:
            warnings.warn(f"{ckpt}: the run was trained with a value {name} no longer offers ({e}); "
                          f"its networks load as they were trained", RuntimeWarning, stacklevel=3)
    with choices_unchecked():
        return build_plugin(name, cls, config, info)


def load_generator(run_dir: str | Path, name: str | None = None,
                   device: str | torch.device | None = "cpu", from_format: str | None = None) -> nn.Module:
    """The trained generator ``name`` of a run (default: the plugin's first export spec),
    in eval mode, with EMA weights when the run kept them. Inputs are in [-1, 1].
    With ``from_format`` (e.g. ``"junyanz-cyclegan"``), ``run_dir`` is a generator
    checkpoint saved by that code base instead (pyganx.nn.foreign)."""
    if from_format:
        dev = pick_device(None) if device is None else torch.device(device)
        return load_foreign(run_dir, from_format).net.to(dev).eval().requires_grad_(False)
    return load_run(run_dir, device=device).generator(name)
