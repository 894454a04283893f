"""Kernel Inception Distance (Binkowski et al. 2018): the unbiased squared MMD between
two feature sets under the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3, averaged
over random subsets. pyganx computes it on features of its own classifiers (no
downloaded Inception weights), so its values compare runs on the same data, not papers.
"""
from __future__ import annotations

import torch
from torch import Tensor


def polynomial_mmd2(x: Tensor, y: Tensor) -> Tensor:
    """Unbiased MMD^2 between samples ``x`` (m, d) and ``y`` (n, d), m, n >= 2."""
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"expected two (n, d) feature sets of one width, got {tuple(x.shape)} and {tuple(y.shape)}")
    m, n, d = x.shape[0], y.shape[0], x.shape[1]
    if m < 2 or n < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {m} and {n}")
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    return ((kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
            + (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
            - 2 * kxy.mean())


def kid(x: Tensor, y: Tensor, subsets: int = 50, subset_size: int = 100, seed: int = 0) -> tuple[float, float]:
    """KID of feature sets ``x`` and ``y``: mean and standard deviation over ``subsets``
    random subsets of ``min(subset_size, len(x), len(y))`` rows each (seeded)."""
    x, y = x.double(), y.double()
    k = min(subset_size, len(x), len(y))
    g = torch.Generator().manual_seed(seed)
    vals = torch.stack([polynomial_mmd2(x[torch.randperm(len(x), generator=g)[:k]],
                                        y[torch.randperm(len(y), generator=g)[:k]])
                        for _ in range(subsets)])
    return float(vals.mean()), float(vals.std()) if subsets > 1 else 0.0


def kid_figures(x: Tensor, y: Tensor, subsets: int = 50, subset_size: int = 100, seed: int = 0) -> dict:
    """:func:`kid` as ``{"kid": mean, "kid_std": std}``, with ``"kid_note"`` when a set has
    fewer than ``subset_size`` rows (the subsets are then the smaller set's size); a set of
    fewer than 2 rows has no KID: the note alone."""
    n = min(len(x), len(y))
    if n < 2:
        return {"kid_note": f"no KID: it needs at least 2 images per set, got {len(x)} and {len(y)}"}
    mean, std = kid(x, y, subsets, subset_size, seed)
    fig: dict = {"kid": mean, "kid_std": std}
    if n < subset_size:
        fig["kid_note"] = f"KID on subsets of {n} images (a set has fewer than {subset_size})"
    return fig


def format_kid(fig: dict, name: str = "kid", label: str = "KID") -> str:
    """``label mean +- std`` of the figures ``name`` and ``name_std`` in ``fig`` (the std
    when there is one), followed by their note ``name_note``; the note alone without them."""
    text = ""
    if name in fig:
        std = f" +- {fig[name + '_std']:.4f}" if name + "_std" in fig else ""
        text = " ".join(t for t in (label, f"{fig[name]:.4f}{std}") if t)
    return "; ".join(t for t in (text, fig.get(name + "_note", "")) if t)


def kid_mean(x: Tensor, y: Tensor, name: str) -> dict:
    """The mean of :func:`kid_figures` alone, as ``{name: mean}``, and its note as
    ``{name + "_note": note}``: for figures such as KID between two halves of one set."""
    return {name + k[len("kid"):]: v for k, v in kid_figures(x, y).items() if k != "kid_std"}
