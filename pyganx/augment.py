"""Differentiable augmentation of what a discriminator sees, for small data sets:
DiffAugment's transformations (Zhao et al. 2020) with an ADA-style adaptive probability
(Karras et al. 2020). Every built-in plugin takes it as ``--d-augment POLICY``; a
third-party plugin uses it the same way (docs/plugins.md).

- ``policy``: a comma-separated list of ``color`` (brightness, saturation and contrast),
  ``translation`` (shift by up to 1/8 of the size, zero-filled) and ``cutout`` (a zeroed
  square of 1/2 the size), each optionally with its amount: ``translation=0.25``,
  ``cutout=0.3``. A bare number ``X`` is short for ``translation=X`` applied always.
- Each transformation is applied to each image with probability ``p``. With
  ``fixed_p`` it stays there; otherwise ``p`` starts at 0 and adapts, as in ADA: every
  ``interval`` steps, r_t = E[sign(D(real) - mid)] over those steps (``mid`` is the
  midpoint of the loss's real and fake targets: 0.5 for LSGAN, 0 for logits, hinge and
  WGAN) moves ``p`` up when r_t exceeds ``target`` (D is sure of the reals: it
  overfits) and down otherwise, by ``batch * interval / (kimg * 1000)``: ``p`` can
  cross [0, 1] in ``kimg`` thousand real images.
- The same augmentation (policy and ``p``, each image its own draw) goes before every
  call of D, on real and fake images, in D's step and in G's, so G's gradient passes
  through it. Draws come from torch's global random generator, which the engine
  checkpoints; ``state_dict`` holds ``p`` and the statistics, so a resumed run is exact.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import UsageError

#: the transformations and their default amounts (fraction of the image size)
AMOUNTS = {"color": 1.0, "translation": 0.125, "cutout": 0.5}
ALIASES = {"colour": "color", "translate": "translation"}


def parse_policy(policy: str | float) -> tuple[list[tuple[str, float]], float | None]:
    """[(transformation, amount), ...] and the fixed probability a bare number implies
    (1.0), or None. An unknown name or a bad amount is a UsageError."""
    text = str(policy).strip()
    if not text or text in ("0", "0.0", "none", "off"):
        return [], None
    try:
        fraction = float(text)
    except ValueError:
        pass
    else:
        if not 0 < fraction < 1:
            raise UsageError(f"--d-augment {text}: a bare number is a translation fraction in (0, 1)")
        return [("translation", fraction)], 1.0
    ops = []
    for part in text.split(","):
        name, _, amount = part.strip().partition("=")
        name = ALIASES.get(name.strip().lower(), name.strip().lower())
        if name not in AMOUNTS:
            raise UsageError(f"--d-augment: unknown transformation {name!r} in {text!r}; the policy is a "
                             f"comma-separated list of {', '.join(AMOUNTS)} (e.g. color,translation,cutout)")
        try:
            value = float(amount) if amount.strip() else AMOUNTS[name]
        except ValueError:
            raise UsageError(f"--d-augment: {part.strip()!r}: the amount must be a number") from None
        if not 0 < value <= (2.0 if name == "color" else 1.0):
            raise UsageError(f"--d-augment: {part.strip()!r}: the amount is out of range")
        ops.append((name, value))
    return ops, None


def translate(x: Tensor, fraction: float) -> Tensor:
    """Each image translated by a random whole number of pixels, up to ``fraction`` of its
    size in each direction, zero-filled (DiffAugment's translation): differentiable."""
    n, _, h, w = x.shape
    ph, pw = max(1, int(h * fraction)), max(1, int(w * fraction))
    dy = torch.randint(-ph, ph + 1, (n,), device=x.device)
    dx = torch.randint(-pw, pw + 1, (n,), device=x.device)
    padded = F.pad(x, (pw, pw, ph, ph))
    rows = (torch.arange(h, device=x.device)[None, :] + ph - dy[:, None])          # (n, h)
    cols = (torch.arange(w, device=x.device)[None, :] + pw - dx[:, None])          # (n, w)
    idx = torch.arange(n, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def color(x: Tensor, strength: float = 1.0) -> Tensor:
    """DiffAugment's colour: brightness +-0.5, saturation x[0, 2], contrast x[0.5, 1.5]
    (scaled by ``strength``), per image."""
    n = x.shape[0]
    r = lambda: torch.rand(n, 1, 1, 1, dtype=x.dtype, device=x.device)  # noqa: E731
    x = x + (r() - 0.5) * strength
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (1 + (r() * 2 - 1) * strength) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (1 + (r() - 0.5) * strength) + mean


def cutout(x: Tensor, fraction: float) -> Tensor:
    """A square of ``fraction`` of the size, at a random place per image, set to 0."""
    n, _, h, w = x.shape
    ch, cw = max(1, int(h * fraction + 0.5)), max(1, int(w * fraction + 0.5))
    top = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), device=x.device) - ch // 2
    left = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), device=x.device) - cw // 2
    ys = torch.arange(h, device=x.device)[None, :, None]
    xs = torch.arange(w, device=x.device)[None, None, :]
    inside = (ys >= top) & (ys < top + ch) & (xs >= left) & (xs < left + cw)
    return x * (~inside)[:, None].to(x.dtype)


_OPS = {"color": color, "translation": translate, "cutout": cutout}


@dataclass
class AugmentConfig:
    """The augmentation's flags, for a plugin's Config to inherit (dataclass
    inheritance: ``class MyConfig(AugmentConfig): ...``)."""

    d_augment: str = field(default="", metadata={
        "help": "augment what D sees (DiffAugment): comma-separated color, translation, cutout "
                "(optionally =amount), e.g. color,translation,cutout; empty: off"})
    ada_target: float = field(default=0.6, metadata={
        "help": "ADA: the augmentation probability rises while E[sign(D(real))] is above this, in (0, 1)"})
    ada_kimg: float = field(default=10.0, metadata={
        "help": "ADA: thousands of real images over which the probability can go from 0 to 1"})
    d_augment_p: float | None = field(default=None, metadata={
        "help": "a fixed augmentation probability instead of ADA's adaptive one"})


class DiscriminatorAugment:
    """``aug(x)`` augments a batch for D (see the module doc); ``observe(d_real)`` after
    each of D's steps feeds the adaptive probability. Off (``policy`` empty): ``aug``
    returns ``x`` itself and ``observe`` does nothing."""

    @classmethod
    def from_config(cls, config: AugmentConfig, mid: float = 0.0) -> DiscriminatorAugment:
        """From a Config that has AugmentConfig's fields; ``mid`` as in the module doc."""
        return cls(config.d_augment, config.ada_target, config.ada_kimg, config.d_augment_p, mid)

    def __init__(self, policy: str | float = "", target: float = 0.6, kimg: float = 10.0,
                 fixed_p: float | None = None, mid: float = 0.0, interval: int = 4) -> None:
        self.ops, implied = parse_policy(policy)
        if not 0 < target < 1:
            raise UsageError(f"--ada-target must be in (0, 1), got {target}")
        if kimg <= 0:
            raise UsageError(f"--ada-kimg must be positive, got {kimg}")
        fixed = implied if fixed_p is None else fixed_p
        if fixed is not None and not 0 <= fixed <= 1:
            raise UsageError(f"--d-augment-p must be in [0, 1], got {fixed}")
        self.target, self.kimg, self.mid, self.interval = target, kimg, mid, interval
        self.adaptive = fixed is None
        self.p = 0.0 if fixed is None else float(fixed)
        self._signs, self._count, self._steps = 0.0, 0, 0

    @property
    def on(self) -> bool:
        return bool(self.ops)

    def __call__(self, x: Tensor) -> Tensor:
        if not self.ops or self.p <= 0:
            return x
        for name, amount in self.ops:
            if self.p >= 1:
                x = _OPS[name](x, amount)
            else:
                chosen = torch.rand(x.shape[0], device=x.device) < self.p
                x = torch.where(chosen[:, None, None, None], _OPS[name](x, amount), x)
        return x

    def observe(self, d_real: Tensor) -> None:
        """D's outputs on real images in one of its steps (any shape, first dim the batch)."""
        if not (self.ops and self.adaptive):
            return
        with torch.no_grad():
            per_image = d_real.detach().float().flatten(1).mean(1)
            self._signs += float(torch.sign(per_image - self.mid).sum())
            self._count += per_image.shape[0]
        self._steps += 1
        if self._steps % self.interval == 0:
            rt = self._signs / max(self._count, 1)
            step = self._count / (self.kimg * 1000)
            self.p = min(1.0, max(0.0, self.p + math.copysign(step, rt - self.target)))
            self._signs, self._count = 0.0, 0

    def state_dict(self) -> dict:
        return {"p": self.p, "signs": self._signs, "count": self._count, "steps": self._steps}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.p, self._signs = float(state["p"]), float(state["signs"])
            self._count, self._steps = int(state["count"]), int(state["steps"])


def mid_of(loss: str) -> float:
    """The midpoint between a GAN loss's real and fake targets: where D is undecided."""
    return 0.5 if loss == "lsgan" else 0.0


__all__ = ["AMOUNTS", "AugmentConfig", "DiscriminatorAugment", "color", "cutout", "mid_of", "parse_policy",
           "translate"]
