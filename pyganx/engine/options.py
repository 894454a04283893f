"""The options of a training run, one typed dataclass: ``pyganx train``'s flags are
generated from its fields (pyganx.flags), as each plugin's are from its Config, and
``pyganx.train(...)`` takes them as keyword arguments."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from ..data import DataSource
from ..errors import UsageError
from ..flags import add_dataclass_arguments, check_choices, dataclass_from_arguments, option
from ..tuning import MODES


@dataclass
class TrainOptions:
    out: str = field(metadata={"help": "run directory", "flags": ("-o",), "required": True})
    data: str | None = option(None, "data folder (trainA/ trainB/ [testA/ testB/], class folders, ...)",
                              exclusive="source")
    demo: str | None = option(None, "a bundled offline data set", choices=["digits", "photos"], exclusive="source")
    data_a: str | None = option(None, "domain A folder (unpaired data)")
    data_b: str | None = option(None, "domain B folder (unpaired data)")
    steps: int | None = option(None, "training iterations", exclusive="length")
    epochs: int | None = option(None, "passes over the training set", exclusive="length")
    resume: str | None = option(None, "continue from CKPT, or from the run's latest checkpoint",
                                optional_value="", metavar="CKPT")   # "": the run's latest checkpoint
    image_size: int | None = option(None, "training size (default: the data set's, or the plugin's)")
    batch_size: int = option(1, "per process")
    channels: int | None = option(None, "1 grey or 3 RGB (default: RGB unless every image is grey)",
                                  choices=[1, 3])
    precision: str = option("auto", "autocast dtype (fp16 with a GradScaler); auto: bf16 or fp16 on a GPU, "
                                    "fp32 elsewhere", choices=["auto", "fp32", "bf16", "fp16"])
    channels_last: bool = option(False, "networks and batches in channels_last memory format "
                                        "(fast on tensor-core GPUs)")
    checkpoint_activations: bool = option(False, "keep only segment inputs of the generators for backward "
                                                 "and recompute the rest (less memory, about one more "
                                                 "forward of time)")
    impl: str | None = option(None, "which implementation the layers run: auto measures pyganx's fused ops "
                               "against plain PyTorch per shape and keeps the fastest accurate one "
                               "(docs/ops.md); fused or reference force one (default: $PYGANX_IMPL, "
                               "else auto)", choices=list(MODES))
    compile: bool = option(False, "torch.compile the networks' forward passes in the training step "
                                  "(TorchInductor, default mode); checkpoints, samples and exports are "
                                  "those of an eager run")
    cuda_graphs: bool = option(False, "on CUDA: --compile with mode reduce-overhead (CUDA graphs; "
                                      "for fixed batch and image sizes)")
    sync_bn: bool = option(False, "under torchrun on GPUs: batch-norm statistics over all processes "
                                  "(SyncBatchNorm)")
    seed: int = option(0, "seed of weights, noise, data order and augmentation")
    deterministic: bool = option(False, "deterministic algorithms")
    workers: int = option(0, "data-loader worker processes")
    ema: float | None = option(None, "keep an EMA of the generators with this decay")
    sample_every: int = option(200, "steps between sample grids")
    checkpoint_every: int = option(500, "steps between checkpoints")
    keep: int = option(3, "checkpoints kept (0: all)")
    device: str | None = option(None, "cuda, mps or cpu (default: the first available)")
    progress: bool = option(True, "a progress bar; when stderr is not a terminal (a log file), a plain "
                                  "line every 5 %% of the steps or every minute")
    skip_bad_images: bool = option(False, "warn about unreadable images and train on the others, "
                                          "instead of stopping")
    train_fraction: float = option(1.0, "train on this share of each domain's (class's) training images, "
                                        "evenly spread (small-data experiments); the test split stays whole")

    def missing(self) -> str | None:
        """What a run needs and was not given (its length, its data), as a usage message;
        None when nothing is missing."""
        if (self.steps is None) == (self.epochs is None):
            return "give exactly one of --steps N and --epochs N"
        if not (self.data or self.demo or (self.data_a and self.data_b)):
            return "give --data DIR, --data-a DIR --data-b DIR, or --demo NAME"
        return None

    def check(self) -> None:
        """A UsageError for options that cannot make a run: :meth:`missing`, and counts
        below their minimum, and fields outside their choices."""
        check_choices(self)
        missing = self.missing()
        if missing:
            raise UsageError(missing)
        for flag, value, least in (("steps", self.steps, 1), ("epochs", self.epochs, 1),
                                   ("batch-size", self.batch_size, 1),
                                   ("sample-every", self.sample_every, 1),
                                   ("checkpoint-every", self.checkpoint_every, 1),
                                   ("keep", self.keep, 0), ("workers", self.workers, 0)):
            if value is not None and value < least:
                raise UsageError(f"--{flag} must be at least {least}, got {value}")

    def data_source(self) -> DataSource:
        """Where the run's images come from (pyganx.data.build_dataset)."""
        return DataSource(data=self.data, data_a=self.data_a, data_b=self.data_b, demo=self.demo,
                          image_size=self.image_size, channels=self.channels, seed=self.seed,
                          skip_bad_images=self.skip_bad_images, train_fraction=self.train_fraction)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """``pyganx train``'s engine flags, one per TrainOptions field."""
    add_dataclass_arguments(parser, TrainOptions, "training options")


def options_from_arguments(args: argparse.Namespace) -> TrainOptions:
    return dataclass_from_arguments(TrainOptions, args)


__all__ = ["TrainOptions", "add_train_arguments", "options_from_arguments"]
