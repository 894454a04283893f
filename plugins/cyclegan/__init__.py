"""CycleGAN (Zhu, Park, Isola, Efros 2017): unpaired image-to-image translation.

G_AB: A -> B and G_BA: B -> A are ResNet generators (9 blocks from 256 px, else 6);
D_A, D_B are 70x70 PatchGANs. Least-squares adversarial loss, cycle-consistency L1
(weight 10), identity L1 (0.5 x 10), a pool of 50 generated images per discriminator,
discriminator loss halved, Adam 2e-4 with betas (0.5, 0.999), the learning rate constant
for the first half of training and decaying linearly to zero over the second (the
paper's 100 + 100 epochs). Every number is a CLI flag (see Config).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from pyganx.augment import AugmentConfig, DiscriminatorAugment, mid_of
from pyganx.losses import GAN_LOSSES, ImagePool, gan_loss
from pyganx.nn import PatchDiscriminator, ResnetGenerator, init_weights
from pyganx.plugin import Batch, DataInfo, ExportSpec, GANPlugin, StepContext, linear_decay_schedulers

#: The sizes the ResNet generator gives back unchanged (multiples of 4: two stride-2
#: downsamplings) and the 70x70 PatchGAN takes (at least 24 px, a 1x1 patch map).
RESNET_IMAGE_SIZES = range(24, 1 << 16, 4)


@dataclass
class ResnetTranslationConfig(AugmentConfig):
    """What the ResNet-generator translators (CycleGAN, CUT) share: widths, blocks,
    Adam, the adversarial loss, the schedule, flips and the fused blocks."""

    ngf: int = field(default=64, metadata={"help": "generator width"})
    ndf: int = field(default=64, metadata={"help": "discriminator width"})
    n_blocks: int = field(default=0, metadata={"help": "residual blocks (0: 9 from 256 px, else 6)"})
    lr: float = field(default=2e-4, metadata={"help": "Adam learning rate"})
    beta1: float = field(default=0.5, metadata={"help": "Adam beta1"})
    beta2: float = field(default=0.999, metadata={"help": "Adam beta2"})
    gan_loss: str = field(default="lsgan", metadata={"help": "adversarial loss", "choices": GAN_LOSSES})
    decay_start: float = field(default=0.5, metadata={"help": "fraction of training before the linear lr decay"})
    flip: bool = field(default=True, metadata={"help": "random horizontal flips (off where the data forbids them)"})
    fused: bool = field(default=True, metadata={"help": "pyganx's fused ops where they are faster "
                                                          "and accurate (train --impl); --no-fused: "
                                                          "plain PyTorch layers only"})

    def generator_blocks(self, image_size: int) -> int:
        """``n_blocks``, or the paper's 9 from 256 px and 6 below."""
        return self.n_blocks or (9 if image_size >= 256 else 6)


@dataclass
class CycleGANConfig(ResnetTranslationConfig):
    """CycleGAN's options: the translators' shared ones, the cycle and identity weights and
    the image pool."""

    lambda_cycle: float = field(default=10.0, metadata={"help": "cycle-consistency weight"})
    lambda_identity: float = field(default=0.5, metadata={"help": "identity weight, x lambda_cycle"})
    pool_size: int = field(default=50, metadata={"help": "image pool size (0: off)"})


class CycleGAN(GANPlugin):
    """Unpaired image-to-image translation (Zhu et al. 2017)."""

    api_version = 1
    Config = CycleGANConfig
    data_kind = "unpaired"
    image_sizes = RESNET_IMAGE_SIZES

    def __init__(self, config: CycleGANConfig, data_info: DataInfo) -> None:
        """Builds G_AB, G_BA (ResNet generators), D_A, D_B (PatchGANs) with N(0, 0.02) weights,
        one Adam for both generators and one for both discriminators, an image pool per
        discriminator and D's augmentation. A ``--gan-loss`` it does not offer is refused."""
        super().__init__(config, data_info)
        c = data_info.channels
        blocks = config.generator_blocks(data_info.image_size)
        fused = "auto" if config.fused else False
        self.G_AB = ResnetGenerator(c, c, config.ngf, blocks, fused=fused)
        self.G_BA = ResnetGenerator(c, c, config.ngf, blocks, fused=fused)
        self.D_A = PatchDiscriminator(c, config.ndf)
        self.D_B = PatchDiscriminator(c, config.ndf)
        for m in (self.G_AB, self.G_BA, self.D_A, self.D_B):
            init_weights(m)
        betas = (config.beta1, config.beta2)
        self.opt: dict[str, torch.optim.Optimizer] = {
            "G": torch.optim.Adam(itertools.chain(self.G_AB.parameters(), self.G_BA.parameters()),
                                  lr=config.lr, betas=betas),
            "D": torch.optim.Adam(itertools.chain(self.D_A.parameters(), self.D_B.parameters()),
                                  lr=config.lr, betas=betas),
        }
        self.pool_A = ImagePool(config.pool_size, seed=1)
        self.pool_B = ImagePool(config.pool_size, seed=2)
        #: one augmentation (and ADA probability) for what D_A and D_B see
        self.augment = DiscriminatorAugment.from_config(config, mid_of(config.gan_loss))

    def networks(self) -> dict[str, torch.nn.Module]:
        """G_AB (A -> B), G_BA (B -> A), D_A and D_B (which judge images of A and of B)."""
        return {"G_AB": self.G_AB, "G_BA": self.G_BA, "D_A": self.D_A, "D_B": self.D_B}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """``"G"`` over both generators, ``"D"`` over both discriminators."""
        return self.opt

    def schedulers(self, total_steps: int) -> dict[str, torch.optim.lr_scheduler.LRScheduler]:
        """Both learning rates constant, then linearly down to 0 from ``decay_start`` of the run."""
        return linear_decay_schedulers(self.opt, total_steps, self.config.decay_start)

    def train_step(self, batch: Batch, ctx: StepContext) -> dict[str, float]:
        """One update of both generators, then one of both discriminators, as in the paper.

        G: the adversarial loss of G_AB(A) under D_B and of G_BA(B) under D_A, plus the cycle
        L1 of G_BA(G_AB(A)) to A and of G_AB(G_BA(B)) to B times ``lambda_cycle``, plus the
        identity L1 of G_AB(B) to B and of G_BA(A) to A times ``lambda_cycle * lambda_identity``.
        D: each discriminator on real images against fakes drawn through its image pool, its
        loss halved.

        Logged: ``G_gan``, ``G_cycle``, ``G_idt`` (the weighted terms of G's loss), ``D_A``,
        ``D_B`` (each discriminator's halved loss) and, with ``--d-augment``, ``augment_p``."""
        cfg = self.config
        aug = self.augment
        real_A, real_B = batch["A"], batch["B"]
        # generators
        for d in (self.D_A, self.D_B):
            d.requires_grad_(False)
        with ctx.autocast():
            fake_B, fake_A = self.G_AB(real_A), self.G_BA(real_B)
            rec_A, rec_B = self.G_BA(fake_B), self.G_AB(fake_A)
            loss_gan = (gan_loss(cfg.gan_loss, self.D_B(aug(fake_B)), True, for_generator=True)
                        + gan_loss(cfg.gan_loss, self.D_A(aug(fake_A)), True, for_generator=True))
            loss_cycle = (F.l1_loss(rec_A, real_A) + F.l1_loss(rec_B, real_B)) * cfg.lambda_cycle
            loss_idt = torch.zeros((), device=real_A.device)
            if cfg.lambda_identity > 0:
                loss_idt = (F.l1_loss(self.G_AB(real_B), real_B) + F.l1_loss(self.G_BA(real_A), real_A)) \
                    * cfg.lambda_cycle * cfg.lambda_identity
            loss_G = loss_gan + loss_cycle + loss_idt
        ctx.zero_grad("G")
        ctx.backward(loss_G)
        ctx.step("G")
        # discriminators, on pooled fakes; each loss halved
        for d in (self.D_A, self.D_B):
            d.requires_grad_(True)
        with ctx.autocast():
            pf_B, pf_A = self.pool_B.query(fake_B.detach()), self.pool_A.query(fake_A.detach())
            d_real_B, d_real_A = self.D_B(aug(real_B)), self.D_A(aug(real_A))
            loss_D_B = 0.5 * (gan_loss(cfg.gan_loss, d_real_B, True)
                              + gan_loss(cfg.gan_loss, self.D_B(aug(pf_B)), False))
            loss_D_A = 0.5 * (gan_loss(cfg.gan_loss, d_real_A, True)
                              + gan_loss(cfg.gan_loss, self.D_A(aug(pf_A)), False))
        ctx.zero_grad("D")
        ctx.backward(loss_D_A + loss_D_B)
        ctx.step("D")
        aug.observe(torch.cat([d_real_A.flatten(1), d_real_B.flatten(1)]))
        out = {"G_gan": loss_gan.item(), "G_cycle": loss_cycle.item(), "G_idt": loss_idt.item(),
               "D_A": loss_D_A.item(), "D_B": loss_D_B.item()}
        if aug.on:
            out["augment_p"] = aug.p
        return out

    def extra_state(self) -> dict[str, Any]:
        """The two image pools (images and random state) and the augmentation's state."""
        return {"pool_A": self.pool_A.state_dict(), "pool_B": self.pool_B.state_dict(),
                "augment": self.augment.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restores the pools (where the checkpoint has them) onto the generators' device, and
        the augmentation's state."""
        dev = next(self.G_AB.parameters()).device
        if "pool_A" in state:
            self.pool_A.load_state_dict(state["pool_A"], dev)
            self.pool_B.load_state_dict(state["pool_B"], dev)
        self.augment.load_state_dict(state.get("augment", {}))

    def sample(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Rows real A, fake B, recovered A, real B, fake A, recovered B: each translation and
        its way back, the generators in eval mode."""
        was = self.G_AB.training, self.G_BA.training
        self.G_AB.eval()
        self.G_BA.eval()
        try:
            a, b = batch["A"], batch["B"]
            fb, fa = self.G_AB(a), self.G_BA(b)
            return {"real A": a, "fake B": fb, "recovered A": self.G_BA(fb),
                    "real B": b, "fake A": fa, "recovered B": self.G_AB(fa)}
        finally:
            self.G_AB.train(was[0])
            self.G_BA.train(was[1])

    def export_specs(self) -> dict[str, ExportSpec]:
        """``G_AB`` (A -> B, the default) and ``G_BA`` (B -> A), image to image."""
        return {"G_AB": ExportSpec("G_AB", ("image",), ("A", "B"), description="A -> B"),
                "G_BA": ExportSpec("G_BA", ("image",), ("B", "A"), description="B -> A")}
