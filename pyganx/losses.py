"""GAN losses and the image pool, for plugins.

``gan_loss(kind, prediction, real)``: the adversarial objective of a discriminator
output against the label real/fake (:data:`LOSSES`):
- ``"lsgan"``: least squares, (D - 1)^2 for real, D^2 for fake (Mao et al.; CycleGAN);
- ``"bce"``: binary cross entropy on logits (Goodfellow et al.; with ``real=True`` for
  the generator this is the non-saturating loss);
- ``"hinge"``: relu(1 - D) / relu(1 + D) for the discriminator, -D for the generator
  (pass ``for_generator=True``);
- ``"wgan"`` (also ``"wgan-gp"``): -D for real, D for fake; add
  :func:`gradient_penalty` to the critic's loss (Gulrajani et al. 2017).

:data:`GAN_LOSSES` are the ones a plugin's ``--gan-loss`` offers (the ``choices`` of its
config field, which GANPlugin's constructor also holds a config built in Python to).

``gradient_penalty(critic, real, fake)``: E[(||grad_x D(x_hat)||_2 - 1)^2] at random
interpolates x_hat of real and fake images (one draw per sample).

``patch_nce_loss(q, k, batch_size, temperature)``: CUT's patchwise contrastive loss
(Park et al. 2020) between projected patch features of the output (queries) and of the
input (keys, not trained through), per patch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: The adversarial losses that need nothing beyond D's output (no gradient penalty): the
#: ``choices`` of the plugins' ``--gan-loss``.
GAN_LOSSES = ("lsgan", "bce", "hinge")
#: Every kind :func:`gan_loss` takes.
LOSSES = (*GAN_LOSSES, "wgan", "wgan-gp")


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
    if kind in ("wgan", "wgan-gp"):
        return -prediction.mean() if real else prediction.mean()
    raise ValueError(f"unknown GAN loss {kind!r}; expected one of {', '.join(LOSSES)}")


def gradient_penalty(critic, real: Tensor, fake: Tensor, generator: torch.Generator | None = None,
                     alpha: Tensor | None = None) -> Tensor:
    """The WGAN-GP penalty mean((||grad D(x_hat)||_2 - 1)^2), x_hat = a * real + (1 - a) *
    fake with a ~ U(0, 1) per sample (or the given ``alpha``, shape (N,)). ``critic`` maps
    images to scores of any shape (a patch map is summed per sample: its gradient is then
    the one of the mean score times the patch count, as in StarGAN's code). The graph is
    kept, so the penalty trains the critic."""
    if real.shape != fake.shape:
        raise ValueError(f"gradient_penalty: real {list(real.shape)} and fake {list(fake.shape)} differ")
    n = real.shape[0]
    if alpha is None:
        alpha = torch.rand(n, generator=generator, device="cpu" if generator is not None else real.device)
    a = alpha.to(real.device, real.dtype).view(n, *([1] * (real.dim() - 1)))
    x_hat = (a * real.detach() + (1 - a) * fake.detach()).requires_grad_(True)
    out = critic(x_hat)
    if isinstance(out, (tuple, list)):
        out = out[0]
    (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


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


def patch_nce_loss(feat_q: Tensor, feat_k: Tensor, batch_size: int, temperature: float = 0.07) -> Tensor:
    """InfoNCE per patch (CUT's PatchNCELoss, ``reduction="none"``): ``feat_q`` and
    ``feat_k`` are (batch_size * P, C), P patches per image, L2-normalised. The positive
    of query i is key i; its negatives are the other P - 1 keys of the same image."""
    n, dim = feat_q.shape
    feat_k = feat_k.detach()
    l_pos = (feat_q * feat_k).sum(dim=1, keepdim=True)                              # (n, 1)
    q, k = feat_q.view(batch_size, -1, dim), feat_k.view(batch_size, -1, dim)
    patches = q.shape[1]
    l_neg = torch.bmm(q, k.transpose(2, 1))                                          # (B, P, P)
    l_neg = l_neg.masked_fill(torch.eye(patches, dtype=torch.bool, device=q.device)[None], -10.0)
    logits = torch.cat([l_pos, l_neg.reshape(-1, patches)], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(n, dtype=torch.long, device=q.device), reduction="none")
