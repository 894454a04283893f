"""The data ``pyganx eval`` judges a run on, read once.

One :class:`EvalData` is built per evaluation (``pyganx eval RUN_DIR``), or per run for
all its checkpoints (``--all-checkpoints``), and every judge (judges.py) and every
figure (evaluate.py, generative.py) reads from it. Each part is read on first use and
kept, so that no image is read twice:

- ``domains``: A/B translation data: each side's test images (at most ``MAX_TEST``,
  spread evenly) as tensors at the run's size, their digits (bundled digits), and the
  training items a domain judge learns from (``domain_train`` reads them, only when the
  judge is trained);
- ``test_split(n)``: at most ``n`` items of the run's test set (spread evenly) as
  tensors, with their class or domain and their digits (bundled digits); every test
  item is read at most once, whichever figure or judge asks for it;
- ``sets``: the run's datasets (``build_dataset``); ``class_folders``: the class
  sub-folders of a noise run's data folder (its judge's data);
- ``once(key, make)``: whatever else is computed from the data alone (the judges,
  real images' features), computed once.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data import EvalTransform, LabelledImages, RunData, build_dataset, load_item
from ..data import demo as demo_data
from ..data.folders import spread
from ..engine.run import LoadedRun

#: At most this many images per domain are used to train a domain classifier / evaluated.
MAX_TRAIN, MAX_TEST = 3000, 500


def judge_size(x: Tensor, size: int) -> Tensor:
    """Images (N, C, H, W) area-downscaled to ``size`` x ``size`` (as they are when already)."""
    return x if x.shape[-1] == size and x.shape[-2] == size else F.interpolate(x, (size, size), mode="area")


def judge_tensors(items: Sequence, channels: int, size: int, out_size: int | None = None) -> Tensor:
    """Items as the run's test transform sees them (``size``), area-downscaled one by
    one to ``out_size`` so that large images never sit in memory at full size."""
    t = EvalTransform(size)
    return torch.stack([judge_size(t(load_item(it, channels), None)[None], out_size or size)[0]
                        for it in items])


def stack_items(dataset, indices: Sequence[int]) -> tuple[Tensor, Tensor | None]:
    """Images (and labels, when the items have them) of a run dataset's eval view."""
    items = [dataset[i] for i in indices]
    x = torch.stack([it["image"] for it in items])
    y = torch.tensor([int(it["label"]) for it in items]) if "label" in items[0] else None
    return x, y


@dataclass
class Domains:
    """A run's A and B images as the A/B judges and figures read them."""

    test: dict[str, Tensor]                 # side -> test images (N, C, size, size), at most MAX_TEST
    digits: dict[str, list[int] | None]     # side -> their digits (bundled digits), else None
    train: dict[str, list] | None           # side -> training items; None: paired data (see domain_train)
    held_out: bool                          # the test images are not the training images
    key: list                               # what the data is, in the judge's fingerprint


@dataclass
class EvalImages:
    """Items of a run's test set (spread evenly) as tensors."""

    images: Tensor              # (N, C, size, size) in [-1, 1]
    labels: Tensor | None       # (N,) class or domain, when the items have one
    digits: Tensor | None       # (N,) the digit (bundled digits), else None


class EvalData:
    """What ``pyganx eval`` reads of a run's data (see the module doc)."""

    def __init__(self, run: LoadedRun) -> None:
        opts = run.train_options()
        self.demo, self.folder = opts.demo, opts.data
        self.channels, self.size = run.info.channels, run.info.image_size
        self.kind: str = type(run.plugin).data_kind
        cls, source, config = type(run.plugin), opts.data_source(), run.config
        self._build = lambda: build_dataset(cls, source, config)     # run.data(), without holding the run
        self._identity = self._identity_of(run)
        self._items: dict[int, tuple[Tensor, Tensor | None]] = {}   # test set index -> image, label
        self._pairs_read: dict[int, dict[str, Tensor]] = {}         # paired test set index -> its A and B
        self._kept: dict[Any, Any] = {}

    @staticmethod
    def _identity_of(run: LoadedRun) -> str:
        return json.dumps([str(run.run_dir), run.name, run.options, str(run.config), run.info.channels,
                           run.info.image_size], sort_keys=True, default=str)

    def fits(self, run: LoadedRun) -> bool:
        """Whether ``run`` (another checkpoint) has this data: the same run, options and config."""
        return self._identity_of(run) == self._identity

    def once(self, key, make: Callable[[], Any]) -> Any:
        """``make()``, computed on the first call for ``key`` and kept for this data's
        later evaluations (the judges, the real images' features)."""
        if key not in self._kept:
            self._kept[key] = make()
        return self._kept[key]

    @cached_property
    def sets(self) -> RunData:
        """The run's datasets, rebuilt from its options (the data must still be there)."""
        return self._build()

    @cached_property
    def domains(self) -> Domains:
        """The A/B view: each side's test images (at most MAX_TEST, spread evenly) at the
        run's size, their digits (bundled digits), and the judge's training items."""
        if self.demo:
            ds = demo_data.load(self.demo)
            train = {"A": [s.image for s in ds.train_a], "B": [s.image for s in ds.train_b]}
            test = {"A": [s.image for s in ds.test_a], "B": [s.image for s in ds.test_b]}
            labels = {"A": [s.label for s in ds.test_a], "B": [s.label for s in ds.test_b]}
            return self._sides(test, train, labels if self.demo == "digits" else {}, True,
                               ["demo", self.demo, demo_data.DATA_VERSION])
        data, key = self.sets, ["folders", self.sets.description]
        if hasattr(data.train, "a"):  # unpaired
            held_out = data.test.a is not data.train.a and list(data.test.a) != list(data.train.a)
            return self._sides({"A": data.test.a, "B": data.test.b}, {"A": data.train.a, "B": data.train.b},
                               {}, held_out, key)
        # paired: one image of each side per item; the judge trains on every test pair
        idx = spread(range(len(data.test)), MAX_TEST)
        pairs = self._pairs(idx)
        return Domains({s: torch.stack([p[s] for p in pairs]) for s in "AB"}, {"A": None, "B": None}, None,
                       data.test is not data.train, key)

    def _sides(self, test: dict[str, list], train: dict[str, list], labels: dict[str, list[int]],
               held_out: bool, key: list) -> Domains:
        images, digits = {}, {}
        for s in "AB":
            idx = spread(range(len(test[s])), MAX_TEST)
            images[s] = judge_tensors([test[s][i] for i in idx], self.channels, self.size)
            digits[s] = [labels[s][i] for i in idx] if s in labels else None
        return Domains(images, digits, train, held_out, key)

    def _pairs(self, indices: Sequence[int]) -> list[dict[str, Tensor]]:
        """Test pairs of paired data, each read once."""
        for i in indices:
            if i not in self._pairs_read:
                self._pairs_read[i] = self.sets.test[i]
        return [self._pairs_read[i] for i in indices]

    def domain_train(self, side: str, size: int) -> Tensor:
        """One side's training images for the domain judge, at ``size``: at most MAX_TRAIN,
        spread evenly (paired data: the side of every test pair)."""
        train = self.domains.train
        if train is None:
            return judge_size(torch.stack([p[side] for p in self._pairs(range(len(self.sets.test)))]), size)
        return judge_tensors(spread(train[side], MAX_TRAIN), self.channels, self.size, size)

    def test_items(self, indices: Sequence[int]) -> tuple[Tensor, Tensor | None]:
        """Items of the run's test set (``stack_items``), each read once."""
        missing = [i for i in dict.fromkeys(indices) if i not in self._items]
        if missing:
            x, y = stack_items(self.sets.test, missing)
            for k, i in enumerate(missing):
                self._items[i] = (x[k], None if y is None else y[k])
        items = [self._items[i] for i in indices]
        x = torch.stack([im for im, _ in items])
        return x, (torch.stack([lab for _, lab in items]) if items[0][1] is not None else None)

    def test_split(self, n: int) -> EvalImages:
        """At most ``n`` items of the run's test set, spread evenly, with their labels and
        (bundled digits) their digits."""
        idx = spread(range(len(self.sets.test)), n)
        x, y = self.test_items(idx)
        digits = None
        if self.demo == "digits":     # the test set's order is test_a + test_b for every data kind
            ds = demo_data.load("digits")
            digit_of = [s.label for s in ds.test_a + ds.test_b]
            digits = torch.tensor([digit_of[i] for i in idx])
        return EvalImages(x, y, digits)

    @cached_property
    def class_folders(self) -> LabelledImages:
        """The class sub-folders of the run's data folder, read as its test images (a noise
        run's judge learns them); an ImageError when there are none."""
        return LabelledImages(self.folder, EvalTransform(self.size), channels=self.channels)


__all__ = ["Domains", "EvalData", "EvalImages", "MAX_TEST", "MAX_TRAIN", "judge_size", "judge_tensors",
           "stack_items"]
