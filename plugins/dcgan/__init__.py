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

import torch

from pyganx.augment import AugmentConfig, DiscriminatorAugment, mid_of
from pyganx.errors import UsageError
from pyganx.losses import GAN_LOSSES, check_gan_loss, gan_loss, gradient_penalty
from pyganx.nn import DCGANDiscriminator, DCGANGenerator, init_weights
from pyganx.plugin import DataInfo, ExportSpec, GANPlugin

#: The objectives of ``--loss``: pyganx.losses.GAN_LOSSES and WGAN-GP.
LOSSES = (*GAN_LOSSES, "wgan-gp")
#: The noise of the sample grids: the same z for every grid of a run, so grids compare.
SAMPLE_SEED = 20160107


@dataclass
class DCGANConfig(AugmentConfig):
    z_dim: int = field(default=100, metadata={"help": "noise dimension"})
    ngf: int = field(default=128, metadata={"help": "generator width (128: 4x4x1024 at 64 px)"})
    ndf: int = field(default=64, metadata={"help": "discriminator width"})
    loss: str = field(default="bce", metadata={"help": "objective (bce: minimax, non-saturating G)",
                                               "choices": LOSSES})
    lambda_gp: float = field(default=10.0, metadata={"help": "gradient-penalty weight (wgan-gp)"})
    n_critic: int = field(default=1, metadata={"help": "D updates per G update (5 for wgan-gp)"})
    d_norm: str = field(default="auto", metadata={"help": "D normalisation: batch | layer | none | auto "
                                                          "(batch, none with wgan-gp)"})
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

    def __init__(self, config: DCGANConfig, data_info: DataInfo) -> None:
        super().__init__(config, data_info)
        check_gan_loss(config.loss, LOSSES, "--loss")
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
        self.opt = {"G": torch.optim.Adam(self.G.parameters(), lr=config.lr, betas=betas),
                    "D": torch.optim.Adam(self.D.parameters(), lr=config.lr, betas=betas)}
        self.d_steps = 0
        self.last_g = 0.0
        self.augment = DiscriminatorAugment.from_config(config, mid_of(config.loss))

    # --- what the conditional GAN changes ------------------------------------------
    @property
    def num_classes(self) -> int:
        return 0

    def _labels(self, batch):
        return None

    # --- plugin API ------------------------------------------------------------------
    def networks(self):
        return {"G": self.G, "D": self.D}

    def optimizers(self):
        return self.opt

    def train_step(self, batch, ctx):
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

    def extra_state(self):
        return {"d_steps": self.d_steps, "last_g": self.last_g, "augment": self.augment.state_dict()}

    def load_extra_state(self, state):
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

    def sample(self, batch):
        real = batch["image"]
        n = real.shape[0]
        return {"real": real, "generated": self.generate(n),
                "generated (more)": self.generate(2 * n)[n:]}

    def export_specs(self):
        return {"G": ExportSpec("G", ("z",), z_dim=self.config.z_dim, description="noise -> image")}


def _score(loss: str, d: torch.Tensor) -> float:
    d = d.detach().float()
    return float(torch.sigmoid(d).mean()) if loss == "bce" else float(d.mean())
