"""pix2pix (Isola, Zhu, Zhou, Efros 2017): paired image-to-image translation.

G: a U-Net (networks.py) from A (the input) to B (the target). D: the 70x70 PatchGAN,
conditioned on the input: it sees A and an image of B stacked on the channels. G's loss
is the GAN loss (binary cross entropy, i.e. the non-saturating loss) plus 100 x L1 to
the target; D's loss is halved; Adam 2e-4 with betas (0.5, 0.999), the learning rate
constant for the first half of training and decaying linearly to zero over the second.
Every number is a field of Pix2PixConfig, hence a CLI flag of `pyganx train pix2pix`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from pyganx.losses import GAN_LOSSES, gan_loss
from pyganx.nn import PatchDiscriminator, init_weights
from pyganx.plugin import Batch, DataInfo, ExportSpec, GANPlugin, StepContext, linear_decay_schedulers

from .networks import UNetGenerator, depth_for


@dataclass
class Pix2PixConfig:
    """pix2pix's options, with the paper's defaults."""

    ngf: int = field(default=64, metadata={"help": "generator width (channels of the first level)"})
    ndf: int = field(default=64, metadata={"help": "discriminator width"})
    depth: int = field(default=0, metadata={
        "help": "U-Net levels (0: log2(image size), at most 8: the paper's 8 at 256 px)"})
    d_layers: int = field(default=3, metadata={"help": "PatchGAN layers (3: 70x70 patches)"})
    dropout: float = field(default=0.5, metadata={"help": "dropout in the first decoder layers"})
    dropout_layers: int = field(default=3, metadata={"help": "decoder layers with dropout"})
    lambda_l1: float = field(default=100.0, metadata={"help": "weight of the L1 loss to the target"})
    gan_loss: str = field(default="bce", metadata={"help": "adversarial loss (bce: the paper's)",
                                                   "choices": GAN_LOSSES})
    lr: float = field(default=2e-4, metadata={"help": "Adam learning rate"})
    beta1: float = field(default=0.5, metadata={"help": "Adam beta1"})
    beta2: float = field(default=0.999, metadata={"help": "Adam beta2"})
    decay_start: float = field(default=0.5, metadata={
        "help": "fraction of training before the learning rate decays linearly to 0"})
    flip: bool = field(default=True, metadata={"help": "random horizontal flips of both halves"})


class Pix2Pix(GANPlugin):
    """Paired image-to-image translation with a conditional GAN (Isola et al. 2017)."""

    api_version = 1
    Config = Pix2PixConfig
    data_kind = "paired"

    def __init__(self, config: Pix2PixConfig, data_info: DataInfo) -> None:
        """Builds G (the U-Net, its depth from the image size unless ``--depth``) and D (a
        PatchGAN on input and image stacked) with N(0, 0.02) weights and one Adam each. A
        ``--gan-loss`` it does not offer is refused."""
        super().__init__(config, data_info)
        c = data_info.channels
        depth = config.depth or depth_for(data_info.image_size)
        self.G = UNetGenerator(c, c, config.ngf, depth, config.dropout, config.dropout_layers)
        self.D = PatchDiscriminator(2 * c, config.ndf, config.d_layers)
        init_weights(self.G)
        init_weights(self.D)
        betas = (config.beta1, config.beta2)
        self.opt: dict[str, torch.optim.Optimizer] = {
            "G": torch.optim.Adam(self.G.parameters(), lr=config.lr, betas=betas),
            "D": torch.optim.Adam(self.D.parameters(), lr=config.lr, betas=betas)}

    def networks(self) -> dict[str, torch.nn.Module]:
        """G (A -> B) and D (which judges (A, image of B) pairs)."""
        return {"G": self.G, "D": self.D}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """``"G"`` and ``"D"``, one Adam each."""
        return self.opt

    def schedulers(self, total_steps: int) -> dict[str, torch.optim.lr_scheduler.LRScheduler]:
        """Both learning rates constant, then linearly down to 0 from ``decay_start`` of the run."""
        return linear_decay_schedulers(self.opt, total_steps, self.config.decay_start)

    def train_step(self, batch: Batch, ctx: StepContext) -> dict[str, float]:
        """One update of D, then one of G against the updated D, as in the paper.

        D: real pairs (A, B) against generated pairs (A, G(A)), its loss halved. G: the
        adversarial loss plus ``lambda_l1`` times the L1 of G(A) to B.

        Logged: ``G_gan`` (G's adversarial loss), ``G_L1`` (the weighted L1), ``D_real`` and
        ``D_fake`` (D's losses on real and generated pairs, before halving)."""
        cfg = self.config
        real_A, real_B = batch["A"], batch["B"]
        with ctx.autocast():
            fake_B = self.G(real_A)
        # D: real pairs (A, B) against generated pairs (A, G(A)); the loss halved
        self.D.requires_grad_(True)
        with ctx.autocast():
            loss_D_real = gan_loss(cfg.gan_loss, self.D(torch.cat([real_A, real_B], 1)), True)
            loss_D_fake = gan_loss(cfg.gan_loss, self.D(torch.cat([real_A, fake_B.detach()], 1)), False)
            loss_D = 0.5 * (loss_D_real + loss_D_fake)
        ctx.zero_grad("D")
        ctx.backward(loss_D)
        ctx.step("D")
        # G: fool the updated D, and stay near the target in L1
        self.D.requires_grad_(False)
        with ctx.autocast():
            loss_gan = gan_loss(cfg.gan_loss, self.D(torch.cat([real_A, fake_B], 1)), True,
                                for_generator=True)
            loss_l1 = F.l1_loss(fake_B, real_B) * cfg.lambda_l1
            loss_G = loss_gan + loss_l1
        ctx.zero_grad("G")
        ctx.backward(loss_G)
        ctx.step("G")
        self.D.requires_grad_(True)
        return {"G_gan": loss_gan.item(), "G_L1": loss_l1.item(),
                "D_real": loss_D_real.item(), "D_fake": loss_D_fake.item()}

    def sample(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Rows input (A), output (G(A), G in eval mode) and target (B)."""
        was = self.G.training
        self.G.eval()
        try:
            return {"input": batch["A"], "output": self.G(batch["A"]), "target": batch["B"]}
        finally:
            self.G.train(was)

    def export_specs(self) -> dict[str, ExportSpec]:
        """``G``: input (A) -> target (B), image to image."""
        return {"G": ExportSpec("G", ("image",), ("A", "B"), description="input -> target")}
