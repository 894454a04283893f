"""The judges of ``pyganx eval``: classifiers pyganx trains itself on a run's own data
(cached, see classifier.py) and the image sets they are trained and measured on, at
the judging resolution. evaluate.py (A <-> B translation) and generative.py (noise,
class-conditional and multi-domain generators) build on them."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data import EvalTransform, load_item
from ..data import demo as demo_data
from ..data.folders import spread
from ..engine.run import LoadedRun
from .classifier import TrainedClassifier, cached_classifier, fingerprint

#: Classifiers judge at most this resolution (translations are area-downscaled to it).
JUDGE_SIZE = 64
#: At most this many images per domain are used to train a domain classifier / evaluated.
MAX_TRAIN, MAX_TEST = 3000, 500


def judge_tensors(items: Sequence, channels: int, size: int, out_size: int | None = None) -> Tensor:
    """Items as the run's test transform sees them (``size``), area-downscaled one by
    one to ``out_size`` so that large images never sit in memory at full size."""
    t = EvalTransform(size)
    return torch.stack([judge_size(t(load_item(it, channels), None)[None], out_size or size)[0]
                        for it in items])


def judge_size(x: Tensor, size: int) -> Tensor:
    return x if x.shape[-1] == size and x.shape[-2] == size else F.interpolate(x, (size, size), mode="area")


def item_identity(item) -> list:
    """What a cached classifier's fingerprint records of one training item."""
    if isinstance(item, Path):
        st = item.stat()
        return [str(item.resolve()), st.st_size, st.st_mtime_ns]
    return []


class RunDomains:
    """The run's A and B images (train and test items), and digit labels when known."""

    def __init__(self, run: LoadedRun) -> None:
        opts = run.train_options()
        self.demo = opts.demo
        self.channels, self.size = run.info.channels, run.info.image_size
        self.labels: dict[str, list[int]] = {}
        if opts.demo:
            ds = demo_data.load(opts.demo)
            self.train = {"A": [s.image for s in ds.train_a], "B": [s.image for s in ds.train_b]}
            self.test = {"A": [s.image for s in ds.test_a], "B": [s.image for s in ds.test_b]}
            if opts.demo == "digits":
                self.labels = {"A": [s.label for s in ds.test_a], "B": [s.label for s in ds.test_b]}
            self.held_out = True
            self.key: list = ["demo", opts.demo, demo_data.DATA_VERSION]
            return
        data = run.data()
        if hasattr(data.train, "a"):  # unpaired
            self.train = {"A": data.train.a, "B": data.train.b}
            self.test = {"A": data.test.a, "B": data.test.b}
            self.held_out = data.test.a is not data.train.a and list(data.test.a) != list(data.train.a)
        else:                         # paired: one image of each side per item
            pairs = [data.test[i] for i in range(len(data.test))]
            self.train = None
            self.test_tensors = {"A": torch.stack([p["A"] for p in pairs]), "B": torch.stack([p["B"] for p in pairs])}
            self.held_out = data.test is not data.train
        self.key = ["folders", data.description]

    def train_tensors(self, side: str, size: int) -> Tensor:
        if self.train is None:
            return judge_size(self.test_tensors[side], size)
        return judge_tensors(spread(self.train[side], MAX_TRAIN), self.channels, self.size, size)

    def test_images(self, side: str) -> tuple[Tensor, list[int] | None]:
        """Test images of one side at the run's size, and their digit labels if known."""
        if self.train is None:
            return torch.stack(spread(list(self.test_tensors[side]), MAX_TEST)), None
        items = spread(list(range(len(self.test[side]))), MAX_TEST)
        x = judge_tensors([self.test[side][i] for i in items], self.channels, self.size)
        labels = [self.labels[side][i] for i in items] if side in self.labels else None
        return x, labels

    def fingerprint(self, size: int) -> str:
        train = [] if self.train is None else [item_identity(i) for s in "AB" for i in spread(self.train[s], MAX_TRAIN)]
        return fingerprint(self.key, self.channels, size, train)


def domain_classifier(dom: RunDomains, size: int, log=None) -> TrainedClassifier:
    def data():
        xa, xb = dom.train_tensors("A", size), dom.train_tensors("B", size)
        ta, tb = (judge_size(dom.test_images(s)[0], size) for s in "AB")
        y = torch.cat([torch.zeros(len(xa), dtype=torch.long), torch.ones(len(xb), dtype=torch.long)])
        yt = torch.cat([torch.zeros(len(ta), dtype=torch.long), torch.ones(len(tb), dtype=torch.long)])
        return torch.cat([xa, xb]), y, torch.cat([ta, tb]), yt, ["A", "B"]
    return cached_classifier("domain", dom.fingerprint(size), data, log=log)


def digit_classifier(size: int = 32, log=None) -> TrainedClassifier:
    """Reads digits of either style of the bundled digits set (0-9)."""
    def data():
        ds = demo_data.load("digits")
        tr, te = ds.labelled("train"), ds.labelled("test")
        x = judge_tensors([im for im, _ in tr], 1, size)
        xt = judge_tensors([im for im, _ in te], 1, size)
        return (x, torch.tensor([c for _, c in tr]), xt, torch.tensor([c for _, c in te]),
                [str(d) for d in range(10)])
    return cached_classifier("digits", fingerprint("digits", demo_data.DATA_VERSION, size), data, log=log)


@torch.no_grad()
def translate(gen: torch.nn.Module, images: Tensor, device: torch.device, batch_size: int = 32) -> Tensor:
    return torch.cat([gen(images[i:i + batch_size].to(device)).float().clamp(-1, 1).cpu()
                      for i in range(0, len(images), batch_size)])


def stack_items(dataset, indices: Sequence[int]) -> tuple[Tensor, Tensor | None]:
    """Images (and labels, when the items have them) of a run dataset's eval view."""
    items = [dataset[i] for i in indices]
    x = torch.stack([it["image"] for it in items])
    y = torch.tensor([int(it["label"]) for it in items]) if "label" in items[0] else None
    return x, y


def labelled_classifier(name: str, train, test, key: list, channels: int, size: int,
                        log=None) -> TrainedClassifier:
    """A judge of the classes of two LabelledImages sets (train, test), trained on the
    training set's images under the test set's transform (no random crops or flips),
    cached under ``key``."""
    train_idx = spread(range(len(train)), MAX_TRAIN * 2)
    test_idx = spread(range(len(test)), MAX_TEST * 2)
    classes = list(train.classes)
    ident = [item_identity(train.samples[i][0]) for i in train_idx]

    def make():
        plain = type(test)(samples=[train.samples[i] for i in train_idx], transform=test.transform,
                           channels=train.channels, classes=classes)
        x, y = stack_items(plain, range(len(plain)))
        xt, yt = stack_items(test, test_idx)
        return judge_size(x, size), y, judge_size(xt, size), yt, classes
    return cached_classifier(f"{name}-{len(classes)}", fingerprint(key, ident, channels, size), make, log=log)
