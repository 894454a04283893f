"""DCGAN (Radford, Metz, Chintala 2016) trained with the GAN objective (Goodfellow et al.
2014); registered as ``dcgan`` and as ``gan``.

G maps z ~ N(0, I) of size 100 through fractionally strided convolutions to an image
(4x4x1024 at ngf 128, then 512 -> 256 -> 128 -> channels at 64 px), BatchNorm + ReLU
inside, tanh out; D mirrors it with strided convolutions, BatchNorm except on the input
layer and LeakyReLU 0.2, ending in one logit. The objective is the minimax game with the
non-saturating generator loss: binary cross entropy, real -> 1 and fake -> 0 for D, and
G trained to make D say 1 (flipped labels). D and G alternate, one update each per step.
Adam 2e-4, beta1 0.5; weights N(0, 0.02).

``--loss lsgan|hinge|wgan-gp`` swaps the objective (Mao et al. 2017; Lim & Ye 2017;
Gulrajani et al. 2017). With wgan-gp the critic drops batch norm (its per-sample gradient
penalty, weight ``--lambda-gp``, is void when samples are normalised together) and
``--n-critic 5`` critic updates per generator update is the paper's setting.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from pyganx.augment import AugmentConfig, DiscriminatorAugment, mid_of
from pyganx.errors import UsageError
from pyganx.losses import GAN_LOSSES, gan_loss, gradient_penalty
from pyganx.nn import DCGANDiscriminator, DCGANGenerator, init_weights
from pyganx.plugin import Batch, DataInfo, ExportSpec, GANPlugin, StepContext

#: The objectives of ``--loss``: pyganx.losses.GAN_LOSSES and WGAN-GP.
LOSSES = (*GAN_LOSSES, "wgan-gp")
#: The noise of the sample grids: the same z for every grid of a run, so grids compare.
SAMPLE_SEED = 20160107


@dataclass
class DCGANConfig(AugmentConfig):
    """DCGAN's options (the conditional GAN's too): the paper's widths, objective and Adam,
    and WGAN-GP's penalty weight and critic steps."""

    z_dim: int = field(default=100, metadata={"help": "noise dimension"})
    ngf: int = field(default=128, metadata={"help": "generator width (128: 4x4x1024 at 64 px)"})
    ndf: int = field(default=64, metadata={"help": "discriminator width"})
    loss: str = field(default="bce", metadata={"help": "objective (bce: minimax, non-saturating G)",
                                               "choices": LOSSES})
    lambda_gp: float = field(default=10.0, metadata={"help": "gradient-penalty weight (wgan-gp)"})
    n_critic: int = field(default=1, metadata={"help": "D updates per G update (5 for wgan-gp)"})
    d_norm: str = field(default="auto", metadata={"help": "D normalisation (auto: batch, none with wgan-gp)",
                                                  "choices": ("batch", "layer", "none", "auto")})
    lr: float = field(default=2e-4, metadata={"help": "Adam learning rate"})
    beta1: float = field(default=0.5, metadata={"help": "Adam beta1"})
    beta2: float = field(default=0.999, metadata={"help": "Adam beta2"})
    flip: bool = field(default=True, metadata={"help": "random horizontal flips (off where the data forbids them)"})


def sample_noise(n: int, z_dim: int, device: torch.device | str = "cpu", seed: int = SAMPLE_SEED) -> torch.Tensor:
    """Fixed noise for grids: row k is the same for every n > k."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, z_dim, generator=g).to(device)


class DCGAN(GANPlugin):
    """Noise-to-image GAN with DCGAN networks (Radford et al. 2016)."""

    api_version = 1
    Config = DCGANConfig
    data_kind = "noise"
    default_image_size = 64
    image_sizes = frozenset(2 ** k for k in range(3, 17))     # G doubles 4 px up; D halves down to 4

    def __init__(self, config: DCGANConfig, data_info: DataInfo) -> None:
        """Builds G and D (DCGAN networks for the data's channels and size, conditioned on
        :attr:`num_classes` classes when there are any; D's normalisation from ``--d-norm``)
        with N(0, 0.02) weights, one Adam each, and D's augmentation. Refuses a ``--loss`` it
        does not offer, ``--n-critic`` below 1 and batch norm in a WGAN-GP critic."""
        super().__init__(config, data_info)
        if config.n_critic < 1:
            raise UsageError(f"--n-critic must be at least 1, got {config.n_critic}")
        norm = config.d_norm
        if norm == "auto":
            norm = "none" if config.loss == "wgan-gp" else "batch"
        if norm == "batch" and config.loss == "wgan-gp":
            raise UsageError("--d-norm batch with --loss wgan-gp: the gradient penalty is per sample; "
                             "use --d-norm none or layer")
        n = self.num_classes
        self.G = init_weights(DCGANGenerator(config.z_dim, config.ngf, data_info.channels,
                                             data_info.image_size, num_classes=n))
        self.D = init_weights(DCGANDiscriminator(data_info.channels, config.ndf, data_info.image_size,
                                                 num_classes=n, norm=norm))
        betas = (config.beta1, config.beta2)
        self.opt: dict[str, torch.optim.Optimizer] = {
            "G": torch.optim.Adam(self.G.parameters(), lr=config.lr, betas=betas),
            "D": torch.optim.Adam(self.D.parameters(), lr=config.lr, betas=betas)}
        self.d_steps = 0
        self.last_g = 0.0
        self.augment = DiscriminatorAugment.from_config(config, mid_of(config.loss))

    # --- what the conditional GAN changes ------------------------------------------
    @property
    def num_classes(self) -> int:
        """The number of classes G and D are conditioned on: 0, none (the conditional GAN
        overrides this with the data's)."""
        return 0

    def _labels(self, batch: Batch) -> torch.Tensor | None:
        """The batch's class labels that G and D are conditioned on: None, none (the
        conditional GAN overrides this)."""
        return None

    # --- plugin API ------------------------------------------------------------------
    def networks(self) -> dict[str, torch.nn.Module]:
        """G (noise -> image) and D (image -> one logit)."""
        return {"G": self.G, "D": self.D}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """``"G"`` and ``"D"``, one Adam each."""
        return self.opt

    def train_step(self, batch: Batch, ctx: StepContext) -> dict[str, float]:
        """One update of D on the real batch against G(z), z ~ N(0, I); then, on the first step
        and every ``n_critic``-th after, one update of G against the updated D (with bce, the
        non-saturating loss). With wgan-gp, D's loss adds ``lambda_gp`` times the gradient
        penalty.

        Logged: ``D`` (D's loss, the penalty included), ``G`` (G's last loss, repeated on the
        steps without a G update), ``D_gp`` (the penalty, with wgan-gp), ``augment_p`` (with
        ``--d-augment``), and ``D_real``, ``D_fake``: D's mean output on real and generated
        images, as probabilities with bce and raw scores otherwise."""
        cfg = self.config
        real = batch["image"]
        y = self._labels(batch)
        z = torch.randn(real.shape[0], cfg.z_dim, device=real.device)
        self.D.requires_grad_(True)
        aug = self.augment
        with ctx.autocast():
            fake = self.G(z, y)
            d_real, d_fake = self.D(aug(real), y), self.D(aug(fake.detach()), y)
            loss_real = gan_loss(cfg.loss, d_real, True)
            loss_fake = gan_loss(cfg.loss, d_fake, False)
        loss_D = loss_real + loss_fake
        losses = {}
        if cfg.loss == "wgan-gp":
            gp = gradient_penalty(lambda x: self.D(x, y), real, fake.float())
            loss_D = loss_D + cfg.lambda_gp * gp
            losses["D_gp"] = gp.item()
        ctx.zero_grad("D")
        ctx.backward(loss_D)
        ctx.step("D")
        aug.observe(d_real)
        self.d_steps += 1
        if (self.d_steps - 1) % cfg.n_critic == 0:   # G on the first step, then every n_critic
            self.D.requires_grad_(False)
            with ctx.autocast():
                loss_G = gan_loss(cfg.loss, self.D(aug(fake), y), True, for_generator=True)
            ctx.zero_grad("G")
            ctx.backward(loss_G)
            ctx.step("G")
            self.D.requires_grad_(True)
            self.last_g = loss_G.item()
        # D(x) and D(G(z)) as probabilities (bce) or raw scores: how far apart D holds them
        if aug.on:
            losses["augment_p"] = aug.p
        return {"D": loss_D.item(), "G": self.last_g, **losses,
                "D_real": _score(cfg.loss, d_real), "D_fake": _score(cfg.loss, d_fake)}

    def extra_state(self) -> dict[str, Any]:
        """The count of D steps (which paces G's updates), G's last loss and the augmentation's
        state."""
        return {"d_steps": self.d_steps, "last_g": self.last_g, "augment": self.augment.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restores them; a checkpoint without them leaves a new run's values."""
        self.d_steps = int(state.get("d_steps", 0))
        self.last_g = float(state.get("last_g", 0.0))
        self.augment.load_state_dict(state.get("augment", {}))

    def generate(self, n: int, labels: torch.Tensor | None = None, seed: int = SAMPLE_SEED) -> torch.Tensor:
        """``n`` images from the fixed sample noise of ``seed`` (in [-1, 1]), in eval mode."""
        dev = next(self.G.parameters()).device
        was = self.G.training
        self.G.eval()
        try:
            return self.G(sample_noise(n, self.config.z_dim, dev, seed), labels)
        finally:
            self.G.train(was)

    def sample(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Rows: the real batch, then images from the fixed sample noise, as many as the batch
        and as many again (the next rows of the same noise)."""
        real = batch["image"]
        n = real.shape[0]
        return {"real": real, "generated": self.generate(n),
                "generated (more)": self.generate(2 * n)[n:]}

    def export_specs(self) -> dict[str, ExportSpec]:
        """``G``: noise z of ``z_dim`` -> image."""
        return {"G": ExportSpec("G", ("z",), z_dim=self.config.z_dim, description="noise -> image")}


def _score(loss: str, d: torch.Tensor) -> float:
    """D's mean output on a batch: a probability (the mean sigmoid) with bce, the mean raw
    score with the other losses."""
    d = d.detach().float()
    return float(torch.sigmoid(d).mean()) if loss == "bce" else float(d.mean())
