"""A run's datasets, built for the kind of data its plugin trains on.

``build_dataset(plugin, source, config)`` reads a :class:`DataSource` (``--demo``,
``--data`` or ``--data-a``/``--data-b``, size, channels, seed) and returns the training
and test sets with the :class:`DataInfo` the plugin builds its networks from. Folder
images are trained at ``--image-size``, else at the plugin's ``default_image_size``;
training images get the resize-and-crop jitter where the plugin's ``random_crop``
says, and a horizontal flip unless the plugin's config has ``flip = False`` or the
demo set is not mirror-symmetric.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from torch.utils.data import Dataset

from ..errors import DataError, UsageError
from . import demo as demo_data
from .folders import Images, LabelledImages, PairedImages, UnpairedImages
from .transforms import EvalTransform, TrainTransform


@dataclass(frozen=True)
class DataInfo:
    """What the engine tells a plugin about its data when it builds the networks."""

    channels: int = 3
    image_size: int = 64
    num_classes: int = 0
    domains: tuple[str, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class DataSource:
    """Where a run's images come from, and how they are read."""

    data: str | None = None           # a folder (layout per data kind, see docs/plugins.md)
    data_a: str | None = None         # unpaired data: the A folder ...
    data_b: str | None = None         # ... and the B folder
    demo: str | None = None           # a bundled set (pyganx.data.demo)
    image_size: int | None = None     # default: the demo set's, or the plugin's default_image_size
    channels: int | None = None       # 1 or 3; default: what the images are
    seed: int = 0
    skip_bad_images: bool = False
    train_fraction: float = 1.0       # keep this share of each domain's (class's) training images


@dataclass
class RunData:
    train: Dataset
    test: Dataset
    info: DataInfo
    description: str


class DataSpec(Protocol):
    """What ``build_dataset`` reads of a plugin class."""

    data_kind: str
    random_crop: bool
    default_image_size: int


def _transforms(plugin: DataSpec, size: int, flip: bool) -> tuple[TrainTransform, EvalTransform]:
    load = None if plugin.random_crop else size
    return TrainTransform(size, load, flip), EvalTransform(size)


# --- the bundled demo sets (in memory) ----------------------------------------------

def _from_demo(kind: str, ds, src: DataSource, tr: TrainTransform, ev: EvalTransform):
    """(train, test, num_classes, domains) of a demo set for a data kind."""
    common = {"channels": src.channels or ds.channels, "seed": src.seed, "skip_bad_images": src.skip_bad_images}
    images = lambda samples: [s.image for s in samples]  # noqa: E731
    if kind == "unpaired":
        return (UnpairedImages(images(ds.train_a), images(ds.train_b), tr, **common),
                UnpairedImages(images(ds.test_a), images(ds.test_b), ev, **common), 0, ("A", "B"))
    if kind == "noise":
        return (Images(images(ds.train_a + ds.train_b), tr, **common),
                Images(images(ds.test_a + ds.test_b), ev, **common), 0, ())
    if kind == "labelled":
        if not ds.labelled("train"):
            raise DataError(f"the demo set {ds.name!r} has no class labels; use --demo digits "
                            f"or --data DIR with one sub-folder per class")
        classes = [str(d) for d in range(10)]
        train = LabelledImages(samples=ds.labelled("train"), transform=tr, classes=classes, **common)
        test = LabelledImages(samples=ds.labelled("test"), transform=ev, classes=classes, **common)
        return train, test, len(classes), tuple(train.classes)
    if kind == "multi_domain":
        return (LabelledImages(samples=ds.domains("train"), transform=tr, classes=ds.styles, **common),
                LabelledImages(samples=ds.domains("test"), transform=ev, classes=ds.styles, **common),
                0, tuple(ds.styles))
    raise DataError(f"the demo sets have no {kind} view; use --data with {kind} data")


# --- image folders -----------------------------------------------------------------

def _unpaired_folders(src: DataSource) -> tuple[Path, Path, Path, Path]:
    """(train A, train B, test A, test B) folders: DIR/trainA, trainB[, testA, testB], or
    --data-a and --data-b (tested on their own images)."""
    if src.data:
        root = Path(src.data)
        a, b = root / "trainA", root / "trainB"
        ta = root / "testA" if (root / "testA").is_dir() else a
        tb = root / "testB" if (root / "testB").is_dir() else b
        return a, b, ta, tb
    if src.data_a and src.data_b:
        a, b = Path(src.data_a), Path(src.data_b)
        return a, b, a, b
    raise UsageError("unpaired data needs --data DIR (with trainA/ trainB/) or "
                     "--data-a DIR --data-b DIR, or --demo NAME")


def _from_folders(kind: str, src: DataSource, tr: TrainTransform, ev: EvalTransform):
    """(train, test, num_classes, domains, description) of image folders for a data kind."""
    common = {"seed": src.seed, "skip_bad_images": src.skip_bad_images}
    if kind == "unpaired":
        a, b, ta, tb = _unpaired_folders(src)
        train = UnpairedImages(a, b, tr, channels=src.channels, **common)
        test = UnpairedImages(ta, tb, ev, channels=train.channels, **common)
        return train, test, 0, ("A", "B"), f"unpaired {a} | {b}"
    if not src.data:
        raise UsageError({
            "noise": "noise-to-image GANs train on --data DIR (a folder of images, searched recursively) "
                     "or --demo NAME",
            "paired": "paired data needs --data DIR (with train/ [test/] of A|B images, or trainA/ trainB/ "
                      "of matching names)",
        }.get(kind, f"{kind} data needs --data DIR with one sub-folder per "
                    f"{'class' if kind == 'labelled' else 'domain'}"))
    root = Path(src.data)
    if kind == "noise":
        train = Images(root, tr, channels=src.channels, **common)
        return train, Images(root, ev, channels=train.channels, **common), 0, (), f"images {src.data}"
    if kind == "paired":
        if (root / "trainA").is_dir():   # matching names in two folders; no test split
            train = PairedImages(root / "trainA", root / "trainB", tr, channels=src.channels, **common)
            return train, train, 0, ("A", "B"), f"paired {root}"
        train = PairedImages(root / "train", None, tr, channels=src.channels, **common)
        test = PairedImages(root / "test" if (root / "test").is_dir() else root / "train", None, ev,
                            channels=train.channels, **common)
        return train, test, 0, ("A", "B"), f"paired {root}"
    train = LabelledImages(root, tr, channels=src.channels, **common)
    test = LabelledImages(root, ev, channels=train.channels, **common)
    if len(train.classes) < 2:
        raise DataError(f"{src.data}: {kind} data needs at least two sub-folders (one per "
                        f"{'class' if kind == 'labelled' else 'domain'}), found {len(train.classes)}")
    return (train, test, len(train.classes) if kind == "labelled" else 0, tuple(train.classes),
            f"{kind} {src.data}")


KINDS = ("noise", "labelled", "unpaired", "paired", "multi_domain")


def build_dataset(plugin: DataSpec, source: DataSource, config: Any = None) -> RunData:
    """The training and test sets of ``plugin``'s data kind from ``source`` (see the
    module doc); ``config`` is the plugin's config (its ``flip``, when it has one)."""
    kind = plugin.data_kind
    if kind not in KINDS:
        raise DataError(f"data kind {kind!r} has no built-in dataset; pyganx builds {', '.join(KINDS)}")
    if source.channels not in (None, 1, 3):
        raise UsageError(f"--channels must be 1 (grey) or 3 (RGB), got {source.channels}")
    if not 0 < source.train_fraction <= 1:
        raise UsageError(f"--train-fraction must be in (0, 1], got {source.train_fraction}")
    flip = bool(getattr(config, "flip", True))
    if source.demo:
        ds = demo_data.load(source.demo)
        size = source.image_size or ds.size
        train, test, classes, domains = _from_demo(kind, ds, source, *_transforms(plugin, size, ds.flip and flip))
        desc = f"demo {source.demo}: {ds.description}"
        info = DataInfo(train.channels, size, classes, domains, ds.description)
    else:
        size = source.image_size or plugin.default_image_size
        train, test, classes, domains, desc = _from_folders(kind, source, *_transforms(plugin, size, flip))
        info = DataInfo(train.channels, size, classes, domains, desc)
    if source.train_fraction < 1:
        train.thin(source.train_fraction)   # the test split stays whole (paired trainA/trainB: it is the train set)
        desc += f", {source.train_fraction:g} of the training images"
    return RunData(train, test, info, desc)


__all__ = ["DataInfo", "DataSource", "DataSpec", "KINDS", "RunData", "build_dataset"]
