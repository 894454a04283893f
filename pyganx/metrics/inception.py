"""The Inception-v3 of FID (Heusel et al. 2017, the TensorFlow network ported by
pytorch-fid and torch-fidelity), written here so that no package downloads anything:
the user gives the weights file, ``pt_inception-2015-12-05-6726825d.pth``.

It is torchvision's Inception-v3 with the TensorFlow graph's differences: average pools
that leave the padding out of the mean, max pooling in the last block's pool branch,
1008 classes, batch norm with eps 0.001. Module names follow torchvision's, so the file
loads as it is. ``features`` gives the 2048-d pool3 features of images in [0, 1]:
resized to 299 x 299 as pytorch-fid does (bilinear, ``align_corners=False``, no
antialiasing) or as Clean-FID does (``resize="clean"``: PIL's bicubic on each float
channel), then scaled to [-1, 1].
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UsageError
from ..weights_file import UnreadableWeights, load_weights_only

#: the weights file pytorch-fid and torch-fidelity download; its SHA-256 starts with 6726825d
WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_SHA256_PREFIX = "6726825d"
#: environment variable naming the weights file when --inception-weights is not given
WEIGHTS_ENV = "PYGANX_INCEPTION_WEIGHTS"
SIZE = 299
RESIZES = ("pytorch-fid", "clean")


class BasicConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, **kw) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _avg_pool(x: Tensor) -> Tensor:
    # TensorFlow's average pool leaves the zero padding out of the mean
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(_avg_pool(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            d = layer(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg_pool(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """``max_pool``: the FID network's last block pools its pool branch with a max."""

    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pool = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                          self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d), self.branch_pool(pool)], 1)


class FIDInceptionV3(nn.Module):
    """Inception-v3 as FID uses it. ``forward(x)``: the 2048-d pool3 features of
    (N, 3, 299, 299) input in [-1, 1]; ``features`` takes images in [0, 1] of any size."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, c7=128)
        self.Mixed_6c = InceptionC(768, c7=160)
        self.Mixed_6d = InceptionC(768, c7=160)
        self.Mixed_6e = InceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)          # in the weights file; the features do not use it

    def forward(self, x: Tensor) -> Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    @torch.no_grad()
    def features(self, images: Tensor, resize: str = "pytorch-fid") -> Tensor:
        """pool3 features (N, 2048) of RGB images (N, 3, H, W) in [0, 1]."""
        return self(resize_to_input(images.to(self.fc.weight.device), resize) * 2 - 1)


def resize_to_input(images: Tensor, resize: str = "pytorch-fid") -> Tensor:
    """Images in [0, 1] at 299 x 299: bilinear without antialiasing (pytorch-fid), or
    PIL's bicubic on each float channel of the 0-255 image, clipped (Clean-FID)."""
    if resize == "pytorch-fid":
        return F.interpolate(images, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    if resize != "clean":
        raise UsageError(f"--inception-resize must be one of {', '.join(RESIZES)}, got {resize!r}")
    from PIL import Image

    out = np.empty((images.shape[0], 3, SIZE, SIZE), dtype=np.float32)
    for i, img in enumerate((images.detach().float().cpu() * 255).numpy()):
        for c in range(3):
            plane = Image.fromarray(img[c].astype(np.float32), mode="F").resize((SIZE, SIZE), Image.BICUBIC)
            out[i, c] = np.asarray(plane).clip(0, 255)
    return torch.from_numpy(out / 255).to(images.device)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_fid_inception(path: str | os.PathLike | None,
                       device: str | torch.device = "cpu") -> tuple[FIDInceptionV3, str]:
    """The network with the weights of ``path`` (default: $PYGANX_INCEPTION_WEIGHTS),
    in eval mode, and what the weights are: ``"pt_inception-2015-12-05"`` when the
    file's SHA-256 is the published one's, else ``"other (sha256 <first 16>)"`` for a
    file of the same tensors and shapes. Anything else is a UsageError naming the file
    expected."""
    where = path or os.environ.get(WEIGHTS_ENV)
    expected = (f"the FID Inception weights, {WEIGHTS_NAME} (the file pytorch-fid and torch-fidelity "
                f"download; SHA-256 starting {WEIGHTS_SHA256_PREFIX})")
    if not where:
        raise UsageError(f"FID and KID on Inception features need {expected}: give --inception-weights PATH "
                         f"or set {WEIGHTS_ENV}")
    p = Path(where)
    if not p.is_file():
        raise UsageError(f"{p}: no such file; expected {expected}")
    digest = _sha256(p)
    net = FIDInceptionV3()
    try:
        state = load_weights_only(p)
    except UnreadableWeights as e:
        raise UsageError(f"{p}: not a state dict ({e}); expected {expected}") from None
    # batch norm's step counters are not weights (files saved by older torch lack them)
    ours = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    theirs = ({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
              if isinstance(state, dict) else {})
    if set(theirs) != set(ours) or any(not isinstance(theirs[k], torch.Tensor) or theirs[k].shape != v.shape
                                       for k, v in ours.items()):
        got = sorted(theirs)[:3] if theirs else type(state).__name__
        raise UsageError(f"{p}: these are not Inception-v3 weights of the FID network ({len(ours)} tensors "
                         f"from Conv2d_1a_3x3 to fc; found {got}...); expected {expected}")
    net.load_state_dict(theirs, strict=False)
    which = "pt_inception-2015-12-05" if digest.startswith(WEIGHTS_SHA256_PREFIX) else f"other (sha256 {digest[:16]})"
    return net.to(device).eval().requires_grad_(False), which


__all__ = ["FIDInceptionV3", "RESIZES", "WEIGHTS_ENV", "WEIGHTS_NAME", "load_fid_inception", "resize_to_input"]
