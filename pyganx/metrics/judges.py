"""The judges of ``pyganx eval``: classifiers pyganx trains itself (cached, see
classifier.py), at the judging resolution. Those of a run's own data read it from the
run's :class:`~pyganx.metrics.eval_data.EvalData` and are kept there, so that the
checkpoints of one run share them. evaluate.py (A <-> B translation) and generative.py
(noise, class-conditional and multi-domain generators) build on them."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from ..data import ImageError, LabelledImages
from ..data import demo as demo_data
from ..data.folders import spread
from ..errors import DataError
from .classifier import TrainedClassifier, cached_classifier, fingerprint
from .eval_data import MAX_TEST, MAX_TRAIN, EvalData, judge_size, judge_tensors, stack_items

#: Classifiers judge at most this resolution (translations are area-downscaled to it).
JUDGE_SIZE = 64


def item_identity(item) -> list:
    """What a cached classifier's fingerprint records of one training item."""
    if isinstance(item, Path):
        st = item.stat()
        return [str(item.resolve()), st.st_size, st.st_mtime_ns]
    return []


def domain_classifier(data: EvalData, size: int, log=None) -> TrainedClassifier:
    """Judge of the run's A and B domains (``data.domains``), trained on at most MAX_TRAIN
    training images per domain (paired data: on every test pair)."""
    def make() -> TrainedClassifier:
        dom = data.domains

        def sets():
            xa, xb = data.domain_train("A", size), data.domain_train("B", size)
            ta, tb = (judge_size(dom.test[s], size) for s in "AB")
            y = torch.cat([torch.zeros(len(xa), dtype=torch.long), torch.ones(len(xb), dtype=torch.long)])
            yt = torch.cat([torch.zeros(len(ta), dtype=torch.long), torch.ones(len(tb), dtype=torch.long)])
            return torch.cat([xa, xb]), y, torch.cat([ta, tb]), yt, ["A", "B"]
        items = [] if dom.train is None else [item_identity(i) for s in "AB" for i in spread(dom.train[s], MAX_TRAIN)]
        return cached_classifier("domain", fingerprint(dom.key, data.channels, size, items), sets, log=log)
    return data.once(("domain", size), make)


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


def labelled_classifier(name: str, train: LabelledImages, test: LabelledImages, key: list, channels: int,
                        size: int, log=None, test_items: Callable[[Sequence[int]], tuple] | None = None
                        ) -> TrainedClassifier:
    """A judge of the classes of two LabelledImages sets (train, test), trained on the
    training set's images under the test set's transform (no random crops or flips),
    cached under ``key``; ``test_items(indices)`` reads test items (default:
    ``stack_items`` of ``test``)."""
    train_idx = spread(range(len(train)), MAX_TRAIN * 2)
    test_idx = spread(range(len(test)), MAX_TEST * 2)
    classes = list(train.classes)
    ident = [item_identity(train.samples[i][0]) for i in train_idx]

    def make():
        plain = type(test)(samples=[train.samples[i] for i in train_idx], transform=test.transform,
                           channels=train.channels, classes=classes)
        x, y = stack_items(plain, range(len(plain)))
        xt, yt = test_items(test_idx) if test_items else stack_items(test, test_idx)
        return judge_size(x, size), y, judge_size(xt, size), yt, classes
    return cached_classifier(f"{name}-{len(classes)}", fingerprint(key, ident, channels, size), make, log=log)


def class_classifier(data: EvalData, size: int, log=None) -> TrainedClassifier:
    """Judge of the classes (labelled data) or domains (multi-domain data) of the run,
    tested on the run's test images (``data.test_items``)."""
    def make() -> TrainedClassifier:
        sets = data.sets
        key = ["demo", data.demo, demo_data.DATA_VERSION, data.kind] if data.demo else ["folders", sets.description]
        return labelled_classifier("domain" if data.kind == "multi_domain" else "class", sets.train, sets.test, key,
                                   data.channels, size, log, data.test_items)
    return data.once(("class", size), make)


def noise_judge(data: EvalData, size: int, log=None) -> TrainedClassifier:
    """The feature network for an unconditional run: the digit judge, the photos' A/B
    judge, or a judge of the run folder's class sub-folders."""
    if data.demo == "digits":
        return digit_classifier(size, log)
    if data.demo:
        return domain_classifier(data, size, log)

    def make() -> TrainedClassifier:
        try:
            sets = data.class_folders
            if len(sets.classes) < 2:
                raise ImageError("fewer than two class folders")
        except ImageError:
            raise DataError(f"KID needs a feature network, and pyganx trains its own on labelled images "
                            f"(it downloads none): {data.folder} has no two or more class sub-folders "
                            f"to train one on") from None
        return labelled_classifier("class", sets, sets, ["folders", str(data.folder)], data.channels, size, log)
    return data.once(("class folders", size), make)


@torch.no_grad()
def translate(gen: torch.nn.Module, images: Tensor, device: torch.device, batch_size: int = 32) -> Tensor:
    return torch.cat([gen(images[i:i + batch_size].to(device)).float().clamp(-1, 1).cpu()
                      for i in range(0, len(images), batch_size)])
