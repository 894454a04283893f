"""FID and KID on the FID Inception network's 2048-d pool3 features (inception.py): the
figures papers report, from a weights file the user gives.

- FID (Heusel et al. 2017): ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) of the
  features' means and covariances (float64, covariances with n - 1), as pytorch-fid's
  ``calculate_frechet_distance``; the trace of the square root comes from the
  eigenvalues of S1^(1/2) S2 S1^(1/2), which has the same spectrum as S1 S2.
- KID (Binkowski et al. 2018) as torch-fidelity computes it: the unbiased MMD^2 under
  k(x, y) = (x.y / d + 1)^3 over ``subsets`` (100) random subsets of ``subset_size``
  (1000) features of each set, drawn without replacement by
  ``numpy.random.RandomState(seed)`` (2020); mean and standard deviation. When a set
  has fewer images than ``subset_size``, the subsets are as large as they can be (the
  smaller set's size), as Clean-FID does, and the figures carry a note saying so.

Images are read as pytorch-fid reads them: ``PIL.Image.open(path).convert("RGB")``
(grey replicated to three channels, alpha dropped), any size, each resized to 299 x 299.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..data import list_images
from ..errors import DataError, ImageError, UsageError
from .inception import FIDInceptionV3, load_fid_inception, resize_to_input

KID_SUBSETS, KID_SUBSET_SIZE, KID_SEED = 100, 1000, 2020


def feature_statistics(features: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (n - 1) of (n, d) features, in float64."""
    f = np.asarray(features, dtype=np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The Frechet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    s1 = torch.as_tensor(np.atleast_2d(sigma1), dtype=torch.float64)
    s2 = torch.as_tensor(np.atleast_2d(sigma2), dtype=torch.float64)
    if s1.shape != s2.shape:
        raise ValueError(f"covariances of different sizes: {tuple(s1.shape)} and {tuple(s2.shape)}")
    w, v = torch.linalg.eigh(s1)
    root1 = (v * w.clamp(min=0).sqrt()) @ v.T
    m = root1 @ s2 @ root1
    tr_covmean = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum()
    d = torch.as_tensor(np.atleast_1d(mu1) - np.atleast_1d(mu2), dtype=torch.float64)
    return float(d @ d + s1.trace() + s2.trace() - 2 * tr_covmean)


def _poly_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    m = x.shape[0]
    return float((kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.sum() / (m * m))


def kernel_inception_distance(features_1: Tensor | np.ndarray, features_2: Tensor | np.ndarray,
                              subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE,
                              seed: int = KID_SEED) -> tuple[float, float]:
    """KID (mean, std over subsets) as torch-fidelity computes it (see the module doc), on
    subsets of ``min(subset_size, n1, n2)`` features; a DataError when a set has fewer than 2."""
    f1, f2 = np.asarray(features_1, dtype=np.float64), np.asarray(features_2, dtype=np.float64)
    n1, n2 = len(f1), len(f2)
    if subsets < 1 or subset_size < 2:
        raise UsageError(f"KID needs at least 1 subset of at least 2 images, got --kid-subsets {subsets} "
                         f"--kid-subset-size {subset_size}")
    size = min(subset_size, n1, n2)
    if size < 2:
        raise DataError(f"KID needs at least 2 images per set, got {n1} and {n2}")
    rng = np.random.RandomState(seed)
    mmds = np.zeros(subsets)
    for i in range(subsets):
        a = f1[rng.choice(n1, size, replace=False)]
        b = f2[rng.choice(n2, size, replace=False)]
        mmds[i] = _poly_mmd2(a, b)
    return float(np.mean(mmds)), float(np.std(mmds))


@dataclass(eq=False)   # one scorer is one network: equal only to itself, and a key for features kept per scorer
class InceptionScorer:
    """The FID network on a device, and how it reads images."""

    net: FIDInceptionV3
    weights: str                    # "pt_inception-2015-12-05", or "other (sha256 ...)"
    resize: str = "pytorch-fid"     # or "clean"
    batch_size: int = 50
    kid_subsets: int = KID_SUBSETS
    kid_subset_size: int = KID_SUBSET_SIZE
    progress: bool = True

    @classmethod
    def load(cls, weights: str | os.PathLike | None, device: str | torch.device | None = None,
             **options) -> InceptionScorer:
        """From the weights file (see inception.load_fid_inception), on ``device``
        (default: CUDA when present, else CPU)."""
        if options.get("batch_size", 1) < 1:
            raise UsageError(f"--batch-size must be at least 1, got {options['batch_size']}")
        dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        net, which = load_fid_inception(weights, dev)
        return cls(net, which, **options)

    @property
    def device(self) -> torch.device:
        return self.net.fc.weight.device

    def describe(self) -> dict:
        return {"network": "FID Inception-v3, pool3 (2048-d)", "weights": self.weights, "resize": self.resize,
                "kid_subsets": self.kid_subsets, "kid_subset_size": self.kid_subset_size}

    def _bar(self, total: int, what: str, progress: bool | None = None):
        from tqdm import tqdm
        show = self.progress if progress is None else progress
        return tqdm(total=total, unit="img", desc=f"Inception features ({what})", file=sys.stderr,
                    disable=None if show else True, leave=False)   # None: on terminals only

    def _run(self, batch: list[Tensor]) -> Tensor:
        x = torch.stack(batch).to(self.device)
        return self.net(x * 2 - 1).double().cpu()

    def image_features(self, images: Tensor, what: str = "images", progress: bool | None = None) -> Tensor:
        """Features (N, 2048) of generated or real images (N, C, H, W) in [-1, 1]: as
        8-bit images, which is what a saved image holds (grey ones as RGB)."""
        out, batch = [], []
        with self._bar(len(images), what, progress) as bar:
            for img in images:
                u8 = ((img.detach().float().clamp(-1, 1) + 1) * 127.5 + 0.5).to(torch.uint8).cpu()
                x = u8.expand(3, -1, -1) if u8.shape[0] == 1 else u8
                batch.append(resize_to_input(x[None].float() / 255, self.resize)[0])
                if len(batch) == self.batch_size:
                    out.append(self._run(batch))
                    batch = []
                bar.update(1)
            if batch:
                out.append(self._run(batch))
        return torch.cat(out) if out else torch.zeros(0, 2048, dtype=torch.float64)

    def folder_features(self, folder: str | os.PathLike, skip_bad_images: bool = False) -> Tensor:
        """Features of every image below ``folder`` (sorted by path), each read as
        pytorch-fid reads it. An unreadable image is an ImageError naming it, or skipped
        with a warning under ``skip_bad_images``."""
        from PIL import Image, UnidentifiedImageError

        paths = list_images(folder)
        out, batch = [], []
        with self._bar(len(paths), str(folder)) as bar:
            for p in paths:
                bar.update(1)
                try:
                    with Image.open(p) as im:
                        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
                except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
                    why = (f"too many pixels: {e}" if isinstance(e, Image.DecompressionBombError)
                           else f"{type(e).__name__}: {e}")
                    err = ImageError(f"{p}: cannot read image ({why})", p)
                    if not skip_bad_images:
                        raise err from None
                    print(f"pyganx: skipping an unreadable image: {err}", file=sys.stderr)
                    continue
                x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255
                batch.append(resize_to_input(x[None], self.resize)[0])
                if len(batch) == self.batch_size:
                    out.append(self._run(batch))
                    batch = []
            if batch:
                out.append(self._run(batch))
        if not out:
            raise DataError(f"{folder}: no readable images")
        return torch.cat(out)

    def compare(self, fake: Tensor, real: Tensor) -> dict:
        """FID and KID of fake against real features, with the set sizes. KID on sets
        smaller than ``kid_subset_size`` uses subsets of the smaller set's size and says so
        in ``"note"`` (``"kid_subset_size"`` is the size used); with fewer than 2 images in
        a set there is neither FID nor KID, only the note."""
        n_fake, n_real = len(fake), len(real)
        if min(n_fake, n_real) < 2:
            return {"n_fake": n_fake, "n_real": n_real,
                    "note": f"no FID or KID: they need at least 2 images per set, got {n_fake} and {n_real}"}
        mean, std = kernel_inception_distance(fake, real, self.kid_subsets, self.kid_subset_size)
        fig: dict = {"fid": frechet_distance(*feature_statistics(fake), *feature_statistics(real)),
               "kid": mean, "kid_std": std, "n_fake": n_fake, "n_real": n_real}
        size = min(n_fake, n_real)
        if size < self.kid_subset_size:
            fig["kid_subset_size"] = size
            fig["note"] = f"KID on subsets of {size} images (fewer than --kid-subset-size {self.kid_subset_size})"
        return fig


def format_inception(fig: dict) -> str:
    """One line for FID and KID figures (``compare``'s), with their note."""
    line = f"(Inception features, {fig['n_fake']} vs {fig['n_real']} images)"
    if "fid" in fig:
        line = f"FID {fig['fid']:.3f}, KID {fig['kid']:.5f} +- {fig['kid_std']:.5f} {line}"
    return line + (f"; {fig['note']}" if "note" in fig else "")


def format_setup(setup: dict) -> str:
    """One line for ``InceptionScorer.describe()``."""
    return (f"Inception weights {setup['weights']}, {setup['resize']} resize, KID over {setup['kid_subsets']} "
            f"subsets of {setup['kid_subset_size']}")


def evaluate_folders(real: str | os.PathLike, fake: str | os.PathLike, scorer: InceptionScorer,
                     skip_bad_images: bool = False) -> dict:
    """FID and KID of the images below ``fake`` against those below ``real`` (see
    ``InceptionScorer.compare``); a DataError when a folder has fewer than 2 images."""
    for p in (real, fake):
        if not Path(p).is_dir():
            raise DataError(f"{p}: not a folder")
        n = len(list_images(p))
        if n < 2:
            raise DataError(f"{p}: FID and KID need at least 2 images, it has {n}")
    r = scorer.folder_features(real, skip_bad_images)
    f = scorer.folder_features(fake, skip_bad_images)
    fig = scorer.compare(f, r)
    if "fid" not in fig:        # unreadable images skipped
        raise DataError(f"{fake} against {real}: {fig['note']}")
    return {"real": str(real), "fake": str(fake), "inception": scorer.describe(), **fig}


__all__ = ["InceptionScorer", "KID_SEED", "KID_SUBSETS", "KID_SUBSET_SIZE", "evaluate_folders", "feature_statistics",
           "format_inception", "format_setup", "frechet_distance", "kernel_inception_distance"]
