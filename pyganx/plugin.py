"""The public plugin API: what a GAN variant implements so that pyganx can train,
sample, checkpoint and export it (docs/plugins.md; interfaces in docs/contracts.md).

A plugin is a subclass of :class:`GANPlugin`, registered under a name in the entry-point
group ``pyganx.gans`` of its distribution::

    [project.entry-points."pyganx.gans"]
    mygan = "my_package.mygan:MyGAN"

The engine owns the loop, devices, mixed precision, DDP, logging and checkpoints; the
plugin owns its networks, losses and one training step, which it runs through the
:class:`StepContext` the engine hands it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Container, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn, optim

from .data.build import KINDS, DataInfo
from .flags import check_choices

#: The version of this API. A plugin sets ``api_version`` to the version it was
#: written for; the registry refuses a plugin whose version differs.
API_VERSION = 1

#: What a plugin trains on (pyganx.data.build_dataset builds each): ``"noise"``,
#: ``"labelled"``, ``"unpaired"``, ``"paired"`` or ``"multi_domain"``.
DATA_KINDS = KINDS

#: One batch as ``train_step`` and ``sample`` get it, by data kind (tensors on the
#: run's device; images (N, C, H, W) in [-1, 1], labels int64 (N,)):
#: ``noise``: ``{"image"}``; ``labelled``: ``{"image", "label"}`` (the class index);
#: ``unpaired`` and ``paired``: ``{"A", "B"}`` (paired: A[i] and B[i] belong together);
#: ``multi_domain``: ``{"image", "label"}`` (the image's domain index).
Batch = Mapping[str, Tensor]


@runtime_checkable
class StepContext(Protocol):
    """What ``train_step`` gets as ``ctx``: the engine's side of one training step.

    Every backward pass and optimizer step of a plugin goes through it, so that the
    engine can own mixed precision (autocast, the float16 gradient scaler) and, through
    the networks it wraps, DDP.
    """

    #: The device the networks and batches are on.
    device: torch.device
    #: The autocast dtype of the run (``torch.bfloat16`` or ``torch.float16``), or
    #: None when it trains in float32.
    amp_dtype: torch.dtype | None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """A context manager that runs the forward passes inside it in the run's
        precision (a no-op in float32). Losses are computed inside it too."""
        ...

    def backward(self, loss: Tensor) -> None:
        """Back-propagates ``loss`` (a scalar tensor), scaled when the run uses
        float16's gradient scaler. Use it instead of ``loss.backward()``."""
        ...

    def step(self, name: str) -> None:
        """Steps the optimizer ``name`` of ``optimizers()`` (through the gradient
        scaler when there is one) and clears its gradients."""
        ...

    def zero_grad(self, name: str) -> None:
        """Clears the gradients of the optimizer ``name``'s parameters."""
        ...


@dataclass(frozen=True)
class ExportSpec:
    """One exportable generator: the network in ``networks()`` and how the exported
    graph calls it (docs/contracts.md names the ONNX inputs).

    Attributes:
        network: the key of the generator in ``networks()``.
        inputs: what the exported graph takes, in order: ``("image",)`` for
            ``net(image)``; ``("image", "domain")`` for ``net(image, c)`` with ``c``
            the one-hot (N, len(domains)) target domain, taken as int64 indices by the
            ONNX model; ``("z",)`` or ``("z", "label")`` for ``net(z)`` or
            ``net(z, label)``, z (N, z_dim) and label int64 class indices (N,).
        domains: the names of the domains or classes that ``domain``/``label``
            index, or the source and target domain of a translator.
        z_dim: the length of z, for noise inputs.
        description: one line for listings.
    """

    network: str
    inputs: tuple[str, ...] = ("image",)
    domains: tuple[str, ...] = ()
    z_dim: int | None = None
    description: str = ""


class GANPlugin:
    """Base class of every GAN variant.

    Subclasses set the class attributes ``api_version``, ``Config`` and ``data_kind``
    and implement ``networks``, ``optimizers`` and ``train_step``; the other methods
    have working defaults. ``__init__(config, data_info)`` must build the same networks
    from those two alone: a trained run is rebuilt from them.
    """

    #: The plugin API version the class was written for (:data:`API_VERSION`).
    api_version: ClassVar[int] = API_VERSION
    #: A dataclass with the paper's defaults; each field becomes a ``--kebab-case`` flag
    #: of ``pyganx train NAME`` (bool, int, float or str fields; pyganx.flags).
    Config: ClassVar[type | None] = None
    #: One of :data:`DATA_KINDS`: what the engine builds the batches from.
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
        """Builds the networks and optimizers.

        Args:
            config: an instance of ``Config`` (the command line's values over the
                defaults).
            data_info: the data's channels, image size, number of classes and domain
                names.

        Raises:
            UsageError: a config field outside the ``choices`` of its metadata
                (checked here, by the base class, for a config built in Python).
            ValueError: for a config value the plugin refuses; ``pyganx train``
                reports it as a usage error naming the plugin.
        """
        if dataclasses.is_dataclass(config) and not isinstance(config, type):
            check_choices(config)
        self.config = config
        self.data_info = data_info

    # --- required ----------------------------------------------------------------
    def networks(self) -> dict[str, nn.Module]:
        """The trainable networks.

        Returns:
            Networks by name. The engine moves them to the device, wraps them for DDP,
            checkpoints their weights and, with ``--ema``, keeps an EMA of the
            generators; the same objects must be returned on every call.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement networks()")

    def optimizers(self) -> dict[str, optim.Optimizer]:
        """The optimizers.

        Returns:
            Optimizers by name (``ctx.step(name)`` steps one); checkpointed with their
            state. The same objects on every call.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement optimizers()")

    def train_step(self, batch: Batch, ctx: StepContext) -> dict[str, float]:
        """One training iteration on one batch.

        Forward passes run inside ``with ctx.autocast():``; every loss goes through
        ``ctx.backward(loss)`` and every update through ``ctx.step(name)``.

        Args:
            batch: the batch of the plugin's data kind (:data:`Batch`).
            ctx: the engine's side of the step (:class:`StepContext`).

        Returns:
            The losses to log, by name (plain floats, e.g. ``loss.item()``); the
            engine writes them to losses.csv, TensorBoard and the progress bar and
            stops the run when one is NaN or infinite.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement train_step()")

    # --- optional ----------------------------------------------------------------
    def schedulers(self, total_steps: int) -> dict[str, optim.lr_scheduler.LRScheduler]:
        """Learning-rate schedulers, stepped once per training step.

        Args:
            total_steps: the number of steps the run trains for (with ``--epochs``:
                epochs times batches per epoch).

        Returns:
            Schedulers by name (checkpointed); none by default.
        """
        return {}

    def extra_state(self) -> dict[str, Any]:
        """What besides networks, optimizers and schedulers a resumed run needs
        (image pools, augmentation probabilities ...).

        Returns:
            A dict of tensors and plain Python values (it is saved in the checkpoint,
            which loads with ``torch.load(weights_only=True)``); empty by default.
        """
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restores what :meth:`extra_state` returned.

        Args:
            state: the dict :meth:`extra_state` returned when the checkpoint was
                written (empty for a checkpoint written without one).
        """

    def sample(self, batch: Batch) -> dict[str, Tensor]:
        """Images for the sample grids, from a fixed test batch. An override may add
        the keyword arguments ``label=`` and ``domain=``, which ``pyganx sample
        --label/--domain`` then passes (it refuses them for a sample() without them).

        Args:
            batch: a test batch of the plugin's data kind (:data:`Batch`).

        Returns:
            Rows of images by row name, each (N, C, H, W) in [-1, 1]; none by default.
        """
        return {}

    def export_specs(self) -> dict[str, ExportSpec]:
        """The generators ``pyganx export`` (and ``pyganx eval``'s translators) can
        take.

        Returns:
            Export specs by name; the first is the default. None by default.
        """
        return {}


def linear_decay(total_steps: int, decay_start: float):
    """A ``LambdaLR`` factor: 1 until ``decay_start * total_steps``, then linearly down to
    0 at the last step (CycleGAN's 100 + 100 epochs, StarGAN's decay over the second half).

    Args:
        total_steps: the run's number of steps.
        decay_start: the share of the steps after which the decay begins, in [0, 1].

    Returns:
        A function of the step index giving the learning-rate factor.
    """
    start = int(total_steps * decay_start)
    span = max(1, total_steps - start)

    def factor(step: int) -> float:
        return 1.0 if step < start else max(0.0, 1.0 - (step - start) / span)
    return factor


def linear_decay_schedulers(optimizers: Mapping[str, optim.Optimizer], total_steps: int,
                            decay_start: float) -> dict[str, optim.lr_scheduler.LRScheduler]:
    """One :func:`linear_decay` ``LambdaLR`` per optimizer: what ``schedulers()`` returns
    for the papers that decay the learning rate linearly over the end of training.

    Args:
        optimizers: the plugin's optimizers by name.
        total_steps: the run's number of steps.
        decay_start: the share of the steps after which the decay begins.

    Returns:
        Schedulers by the optimizers' names.
    """
    f = linear_decay(total_steps, decay_start)
    return {k: optim.lr_scheduler.LambdaLR(o, f) for k, o in optimizers.items()}   # LambdaLRs


# Names this module offered before its __all__ was limited to the API: still importable,
# with a warning that says where they live now.
_MOVED = {"field": ("dataclasses", "field"),
          "add_config_arguments": ("pyganx.flags", "add_dataclass_arguments"),
          "config_from_arguments": ("pyganx.flags", "dataclass_from_arguments"),
          "values_refused_by": ("pyganx.errors", "values_refused_by")}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        module, attr = _MOVED[name]
        warnings.warn(f"pyganx.plugin.{name} is deprecated; use {module}.{attr}", DeprecationWarning,
                      stacklevel=2)
        import importlib
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["API_VERSION", "DATA_KINDS", "Batch", "DataInfo", "ExportSpec", "GANPlugin", "StepContext",
           "linear_decay", "linear_decay_schedulers"]
