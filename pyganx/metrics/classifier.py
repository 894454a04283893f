"""Small image classifiers that pyganx trains itself, on first use, to judge generated
images (no downloaded weights): a digit classifier for the bundled digits and a domain
classifier for any A/B data. Trained weights are cached outside the source tree, in
``$PYGANX_CACHE_DIR`` or the user's cache directory, keyed by what they were trained on.
"""
from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyganx_runtime.files import atomic_write_bytes

from .._paths import cache_dir
from ..weights_file import load_weights_only

#: Bump when the network or its training changes: old cache entries are then ignored.
CLASSIFIER_VERSION = 1


class ConvClassifier(nn.Module):
    """Three conv stages and global average pooling; ``features`` is the pooled vector
    (the embedding KID uses), ``forward`` the class logits."""

    def __init__(self, channels: int, num_classes: int, width: int = 16) -> None:
        super().__init__()
        w = width

        def stage(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(True),
                                 nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(True))

        self.body = nn.Sequential(stage(channels, w), nn.MaxPool2d(2), stage(w, 2 * w), nn.MaxPool2d(2),
                                  stage(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4 * w, num_classes)
        self.feature_dim = 4 * w
        self.width = w

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def _augment(x: Tensor, g: torch.Generator, max_shift: int) -> Tensor:
    """Random translation by up to ``max_shift`` pixels (replicate padding) and a random
    contrast/brightness change: the classifiers should not key on exact placement or levels."""
    n, _, h, w = x.shape
    p = max_shift
    padded = F.pad(x, (p, p, p, p), mode="replicate")
    dy = torch.randint(0, 2 * p + 1, (n,), generator=g)
    dx = torch.randint(0, 2 * p + 1, (n,), generator=g)
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    scale = 1 + 0.2 * (torch.rand(n, 1, 1, 1, generator=g) - 0.5)
    shift = 0.2 * (torch.rand(n, 1, 1, 1, generator=g) - 0.5)
    return (out * scale + shift).clamp(-1, 1)


@dataclass
class TrainedClassifier:
    model: ConvClassifier
    classes: list[str]
    test_accuracy: float      # on held-out real images
    cached: bool              # loaded from the cache rather than trained now

    @torch.no_grad()
    def predict(self, images: Tensor, batch_size: int = 256) -> Tensor:
        dev = next(self.model.parameters()).device
        return torch.cat([self.model(images[i:i + batch_size].to(dev)).argmax(1).cpu()
                          for i in range(0, len(images), batch_size)])

    @torch.no_grad()
    def features(self, images: Tensor, batch_size: int = 256) -> Tensor:
        dev = next(self.model.parameters()).device
        return torch.cat([self.model.features(images[i:i + batch_size].to(dev)).double().cpu()
                          for i in range(0, len(images), batch_size)])


def accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 256) -> float:
    was = model.training
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(images[i:i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)])
    model.train(was)
    return float((pred == labels).double().mean())


def train_classifier(images: Tensor, labels: Tensor, num_classes: int, *, epochs: int = 5,
                     batch_size: int = 64, lr: float = 2e-3, seed: int = 0,
                     max_shift: int | None = None, min_steps: int = 200) -> ConvClassifier:
    """Trains a :class:`ConvClassifier` on (N, C, H, W) images in [-1, 1] with augmentation,
    for ``epochs`` passes but at least ``min_steps`` steps (small sets need more passes,
    and batch norm's running statistics need the steps to settle). Deterministic for a
    given seed and thread count; the global RNG is left untouched."""
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"need as many labels as images (got {len(images)} images, {len(labels)} labels)")
    counts = torch.bincount(labels, minlength=num_classes)
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ConvClassifier(images.shape[1], num_classes)
    shift = max_shift if max_shift is not None else max(1, images.shape[-1] // 16)
    # classes weighted by inverse frequency, so an unbalanced A/B split cannot win by majority
    weight = (counts.sum() / (num_classes * counts.clamp(min=1))).float()
    batch_size = min(batch_size, len(images))
    per_epoch = len(images) // batch_size
    total = max(epochs * per_epoch, min_steps)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=total)
    model.train()
    order = torch.randperm(len(images), generator=g)
    for step in range(total):
        s = step % per_epoch
        if s == 0 and step:
            order = torch.randperm(len(images), generator=g)
        idx = order[s * batch_size:(s + 1) * batch_size]
        loss = F.cross_entropy(model(_augment(images[idx], g, shift)), labels[idx], weight=weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def fingerprint(*parts) -> str:
    """A short stable hash of what a classifier is trained on (JSON-serialisable parts)."""
    blob = json.dumps([CLASSIFIER_VERSION, *parts], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def cached_classifier(name: str, key: str,
                      data: Callable[[], tuple[Tensor, Tensor, Tensor, Tensor, list[str]]],
                      *, epochs: int = 5, log: Callable[[str], None] | None = None) -> TrainedClassifier:
    """The classifier ``name`` for data fingerprint ``key``: loaded from the cache, or
    trained on ``data()`` = (train images, train labels, test images, test labels, class
    names), measured on the test images, and cached (written atomically)."""
    path = cache_dir() / "classifiers" / f"{name}-{key}.pt"
    if path.is_file():
        try:
            st = load_weights_only(path)
            model = ConvClassifier(st["channels"], len(st["classes"]), st["width"])
            model.load_state_dict(st["model"])
            return TrainedClassifier(model.eval(), list(st["classes"]), float(st["test_accuracy"]), True)
        except Exception as e:  # noqa: BLE001 - a damaged cache entry is retrained, not fatal
            if log:
                log(f"retraining {name}: cached {path} is unreadable ({type(e).__name__}: {e})")
    x, y, xt, yt, classes = data()
    if log:
        log(f"training the {name} classifier on {len(x)} images (once; cached in {path.parent})")
    model = train_classifier(x, y, len(classes), epochs=epochs)
    acc = accuracy(model, xt, yt)
    st = {"model": model.state_dict(), "classes": list(classes), "channels": int(x.shape[1]), "width": model.width,
          "test_accuracy": acc, "version": CLASSIFIER_VERSION}
    buf = io.BytesIO()
    torch.save(st, buf)
    atomic_write_bytes(path, lambda f: f.write(buf.getvalue()))
    return TrainedClassifier(model, list(classes), acc, False)
