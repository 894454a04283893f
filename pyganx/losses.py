"""GAN losses and the image pool, for plugins.

``gan_loss(kind, prediction, real)``: the adversarial objective of a discriminator
output against the label real/fake:
- ``"lsgan"``: least squares, (D - 1)^2 for real, D^2 for fake (Mao et al.; CycleGAN);
- ``"bce"``: binary cross entropy on logits (Goodfellow et al.; with ``real=True`` for
  the generator this is the non-saturating loss);
- ``"hinge"``: relu(1 - D) / relu(1 + D) for the discriminator, -D for the generator
  (pass ``for_generator=True``);
- ``"wgan"``: -D for real, D for fake (use with a gradient penalty).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

LOSSES = ("lsgan", "bce", "hinge", "wgan")


def gan_loss(kind: str, prediction: Tensor, real: bool, for_generator: bool = False) -> Tensor:
    if kind == "lsgan":
        target = 1.0 if real else 0.0
        return F.mse_loss(prediction, torch.full_like(prediction, target))
    if kind == "bce":
        target = torch.ones_like(prediction) if real else torch.zeros_like(prediction)
        return F.binary_cross_entropy_with_logits(prediction, target)
    if kind == "hinge":
        if for_generator:
            return -prediction.mean()
        return F.relu(1.0 - prediction).mean() if real else F.relu(1.0 + prediction).mean()
    if kind == "wgan":
        return -prediction.mean() if real else prediction.mean()
    raise ValueError(f"unknown GAN loss {kind!r}; expected one of {', '.join(LOSSES)}")


class ImagePool:
    """Shrivastava et al.'s history of generated images (CycleGAN: 50): the
    discriminator sees, per image, the new fake or, with probability 1/2 once the pool
    is full, an older one (which the new one replaces). Random draws come from the
    pool's own generator, so a run is reproducible and the state checkpoints."""

    def __init__(self, size: int = 50, seed: int = 0) -> None:
        self.size = size
        self.images: list[Tensor] = []
        self.gen = torch.Generator().manual_seed(seed)

    def query(self, images: Tensor) -> Tensor:
        if self.size <= 0:
            return images
        out = []
        for img in images.detach():
            img = img.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(img.clone())
                out.append(img)
            elif float(torch.rand((), generator=self.gen)) < 0.5:
                k = int(torch.randint(self.size, (), generator=self.gen))
                old = self.images[k].clone()
                self.images[k] = img.clone()
                out.append(old.to(img.device))
            else:
                out.append(img)
        return torch.cat(out, 0)

    def state_dict(self) -> dict:
        stacked = torch.cat(self.images, 0).cpu() if self.images else torch.empty(0)
        return {"size": self.size, "images": stacked, "rng": self.gen.get_state()}

    def load_state_dict(self, state: dict, device: torch.device | str = "cpu") -> None:
        self.size = int(state["size"])
        imgs = state["images"]
        self.images = [imgs[i:i + 1].to(device) for i in range(imgs.shape[0])] if imgs.numel() else []
        self.gen.set_state(state["rng"])
