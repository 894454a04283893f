"""The public plugin API: what a GAN variant implements so that pyganx can train,
sample, checkpoint and export it (docs/plugins.md; interfaces in docs/contracts.md).

A plugin is a subclass of :class:`GANPlugin`, registered under a name in the entry-point
group ``pyganx.gans`` of its distribution::

    [project.entry-points."pyganx.gans"]
    mygan = "my_package.mygan:MyGAN"

The engine owns the loop, devices, mixed precision, DDP, logging and checkpoints; the
plugin owns its networks, losses and one training step.
"""
from __future__ import annotations

import argparse
import contextlib
from collections.abc import Container
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor, nn, optim

from .data.build import KINDS, DataInfo
from .errors import UsageError
from .flags import add_dataclass_arguments, dataclass_from_arguments

#: The version of this API. A plugin sets ``api_version`` to the version it was
#: written for; the registry refuses a plugin whose version differs.
API_VERSION = 1

#: What a plugin trains on (pyganx.data.build_dataset builds each).
DATA_KINDS = KINDS


@dataclass(frozen=True)
class ExportSpec:
    """One exportable generator: the attribute in ``networks()`` and its inputs.

    ``inputs`` names what the exported graph takes, in order: ``"image"``, ``"label"``
    (a class index), ``"domain"`` (a target-domain index) or ``"z"`` (noise).
    ``domains`` names the domains or classes the label/domain input indexes.
    """

    network: str
    inputs: tuple[str, ...] = ("image",)
    domains: tuple[str, ...] = ()
    z_dim: int | None = None
    description: str = ""


class GANPlugin:
    """Base class of every GAN variant.

    Subclasses set the class attributes ``api_version``, ``Config`` (a dataclass whose
    fields, with the paper's defaults, become ``--kebab-case`` CLI flags) and
    ``data_kind`` (one of :data:`DATA_KINDS`), and implement ``networks``,
    ``optimizers`` and ``train_step``. The rest has working defaults.
    """

    api_version: ClassVar[int] = API_VERSION
    Config: ClassVar[type] = None  # type: ignore[assignment]
    data_kind: ClassVar[str] = ""
    #: Training resolution when the user gives no ``--image-size`` for folder data
    #: (the bundled demo sets bring their own).
    default_image_size: ClassVar[int] = 256
    #: Whether training images get CycleGAN's jitter: resized to 286/256 of the image
    #: size, then randomly cropped back (CycleGAN, pix2pix). False: resized straight to
    #: the image size, as StarGAN's data loader does; random crops then never change the
    #: scale of what D learns from (test images are not rescaled).
    random_crop: ClassVar[bool] = True
    #: The image sizes (px, square) the networks can train at, as a container: a
    #: ``range`` (CycleGAN: ``range(24, 1 << 16, 4)``, two stride-2 downsamplings and a
    #: 70x70 PatchGAN that needs 24 px) or a set (DCGAN: the powers of two from 8). The
    #: engine refuses any other ``--image-size`` before it builds the data, and any other
    #: size of a demo set before it builds the networks; a constructor may still refuse
    #: sizes its config rules out (StarGAN's ``--d-layers``).
    image_sizes: ClassVar[Container[int]] = range(1, 1 << 16)

    def __init__(self, config: Any, data_info: DataInfo) -> None:
        self.config = config
        self.data_info = data_info

    # --- required ----------------------------------------------------------------
    def networks(self) -> dict[str, nn.Module]:
        """The trainable networks by name (checkpointed, moved to the device, DDP-wrapped)."""
        raise NotImplementedError(f"{type(self).__name__} must implement networks()")

    def optimizers(self) -> dict[str, optim.Optimizer]:
        """The optimizers by name; ``ctx.step(name)`` steps one."""
        raise NotImplementedError(f"{type(self).__name__} must implement optimizers()")

    def train_step(self, batch: Any, ctx: Any) -> dict[str, float]:
        """One iteration on one batch; returns the losses to log. Use ``ctx.backward(loss)``,
        ``ctx.step(name)`` and ``with ctx.autocast():`` so the engine can own AMP and DDP."""
        raise NotImplementedError(f"{type(self).__name__} must implement train_step()")

    # --- optional ----------------------------------------------------------------
    def schedulers(self, total_steps: int) -> dict[str, optim.lr_scheduler.LRScheduler]:
        """Learning-rate schedulers by name, stepped once per training step."""
        return {}

    def extra_state(self) -> dict[str, Any]:
        """Anything besides networks and optimizers to checkpoint (tensors and plain values)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restores what :meth:`extra_state` returned."""

    def sample(self, batch: Any) -> dict[str, Tensor]:
        """Named rows of images in [-1, 1] for the sample grids."""
        return {}

    def export_specs(self) -> dict[str, ExportSpec]:
        """The exportable generators; the first is the default."""
        return {}


def linear_decay(total_steps: int, decay_start: float):
    """A ``LambdaLR`` factor: 1 until ``decay_start * total_steps``, then linearly down to
    0 at the last step (CycleGAN's 100 + 100 epochs, StarGAN's decay over the second half)."""
    start = int(total_steps * decay_start)
    span = max(1, total_steps - start)

    def factor(step: int) -> float:
        return 1.0 if step < start else max(0.0, 1.0 - (step - start) / span)
    return factor


def linear_decay_schedulers(optimizers: dict[str, optim.Optimizer], total_steps: int,
                            decay_start: float) -> dict[str, optim.lr_scheduler.LambdaLR]:
    """One :func:`linear_decay` ``LambdaLR`` per optimizer: what ``schedulers()`` returns
    for the papers that decay the learning rate linearly over the end of training."""
    f = linear_decay(total_steps, decay_start)
    return {k: optim.lr_scheduler.LambdaLR(o, f) for k, o in optimizers.items()}


@contextlib.contextmanager
def values_refused_by(name: str):
    """Within the block, a ValueError the plugin ``name`` raises (a config value its
    constructor refuses, an unknown ``--label`` for ``sample``) is a UsageError that
    names the plugin: a one-line message for the user, not a bug report."""
    try:
        yield
    except UsageError:
        raise
    except ValueError as e:
        raise UsageError(f"{name}: {e}") from None


# --- configuration <-> command line -------------------------------------------------

def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type) -> None:
    """Adds one ``--kebab-case`` option per field of the dataclass ``config_cls``
    (pyganx.flags: bool, int, float or str fields; ``metadata`` may give help, choices ...)."""
    add_dataclass_arguments(parser, config_cls, f"{config_cls.__name__} (plugin options)")


def config_from_arguments(config_cls: type, args: argparse.Namespace) -> Any:
    """Builds the config dataclass from parsed arguments (fields not given keep defaults)."""
    return dataclass_from_arguments(config_cls, args)


__all__ = ["API_VERSION", "DATA_KINDS", "DataInfo", "ExportSpec", "GANPlugin",
           "add_config_arguments", "config_from_arguments", "field", "linear_decay", "linear_decay_schedulers",
           "values_refused_by"]
