"""CUT and FastCUT (Park, Efros, Zhang, Zhu 2020): unpaired image-to-image translation
with one generator and a patchwise contrastive loss instead of an inverse network and
a cycle loss.

G: A -> B is the ResNet generator (fused residual blocks; 9 blocks from 256 px, else 6),
D the 70x70 PatchGAN, LSGAN loss. PatchNCE: G's encoder features of the output and of
the input at CUT's layers 0, 4, 8, 12 and 16 (the padded input, the two downsampling
convolutions, residual blocks 1 and 5), 256 sampled locations each, projected by a
two-layer MLP of 256 channels per layer (netF) and L2-normalised; each output patch must
pick its own input patch among the image's others (InfoNCE, temperature 0.07).

- CUT: lambda_NCE 1, plus the identity NCE on real B (G(B) against B), averaged with
  the A -> B term; learning rate constant for half the run, then decaying to 0.
- FastCUT: lambda_NCE 10, no identity term, flip-equivariance (the batch is flipped
  horizontally at random and the output features flipped back); decay over the last
  quarter (the authors' 150 + 50 epochs).

Adam 2e-4, betas (0.5, 0.999) for G, D and the MLP heads; D's loss halved; no image
pool. The MLP heads are built with G, from the data's channels and size, so they are
checkpointed, resumed and DDP-synchronised like every network. Every number is a flag.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from pyganx.augment import DiscriminatorAugment, mid_of
from pyganx.errors import UsageError
from pyganx.losses import gan_loss, patch_nce_loss
from pyganx.nn import PatchDiscriminator, PatchSampleMLP, ResnetGenerator, init_weights
from pyganx.plugin import Batch, DataInfo, ExportSpec, GANPlugin, StepContext, linear_decay_schedulers
from pyganx_plugins.cyclegan import RESNET_IMAGE_SIZES, ResnetTranslationConfig


@dataclass
class CUTConfig(ResnetTranslationConfig):
    """CUT's options: the translators' shared ones and the PatchNCE loss's."""

    lambda_gan: float = field(default=1.0, metadata={"help": "adversarial weight"})
    lambda_nce: float = field(default=1.0, metadata={"help": "PatchNCE weight"})
    nce_idt: bool = field(default=True, metadata={"help": "identity PatchNCE on real B (G(B) against B)"})
    nce_layers: str = field(default="0,4,8,12,16", metadata={"help": "encoder layers of PatchNCE, in CUT's "
                                                                     "numbering (12 + k: residual block k + 1)"})
    netf_nc: int = field(default=256, metadata={"help": "width of the MLP heads"})
    num_patches: int = field(default=256, metadata={"help": "locations sampled per layer and image"})
    nce_t: float = field(default=0.07, metadata={"help": "InfoNCE temperature"})
    flip_equivariance: bool = field(default=False, metadata={
        "help": "flip the batch horizontally at random and G's features back (FastCUT)"})


@dataclass
class FastCUTConfig(CUTConfig):
    """FastCUT's defaults: PatchNCE weight 10, no identity term, flip-equivariance, and
    the learning rate decaying over the last quarter."""

    lambda_nce: float = field(default=10.0, metadata={"help": "PatchNCE weight"})
    nce_idt: bool = field(default=False, metadata={"help": "identity PatchNCE on real B (G(B) against B)"})
    flip_equivariance: bool = field(default=True, metadata={
        "help": "flip the batch horizontally at random and G's features back (FastCUT)"})
    decay_start: float = field(default=0.75, metadata={"help": "fraction of training before the linear lr decay"})


class CUT(GANPlugin):
    """Contrastive unpaired translation, one generator (Park et al. 2020)."""

    api_version = 1
    Config = CUTConfig
    data_kind = "unpaired"
    image_sizes = RESNET_IMAGE_SIZES

    def __init__(self, config: CUTConfig, data_info: DataInfo) -> None:
        """Builds G (the ResNet generator), D (a PatchGAN) and F (the MLP heads, one per
        ``nce_layers`` layer, sized from G's features for the data's channels and size) with
        N(0, 0.02) weights, one Adam each, and D's augmentation. Refuses a ``--gan-loss`` it does
        not offer, fewer than 2 patches, a temperature that is not positive and a layer outside
        G's encoder."""
        super().__init__(config, data_info)
        c = data_info.channels
        blocks = config.generator_blocks(data_info.image_size)
        if config.num_patches < 2 or config.nce_t <= 0:
            raise UsageError("--num-patches must be at least 2 and --nce-t positive")
        self.G = init_weights(ResnetGenerator(c, c, config.ngf, blocks,
                                              fused="auto" if config.fused else False))
        self.D = init_weights(PatchDiscriminator(c, config.ndf))
        try:
            cut_layers = [int(v) for v in config.nce_layers.split(",")]
            self.layers = sorted({self.G.encoder_index(v) for v in cut_layers})
        except ValueError as e:
            raise UsageError(f"--nce-layers {config.nce_layers!r}: {e}") from None
        with torch.no_grad():         # the heads' input widths, from the data's channels and size
            probe = self.G(torch.zeros(1, c, data_info.image_size, data_info.image_size), self.layers)
        self.F = init_weights(PatchSampleMLP([f.shape[1] for f in probe], config.netf_nc))
        betas = (config.beta1, config.beta2)
        self.opt: dict[str, torch.optim.Optimizer] = {
            name: torch.optim.Adam(net.parameters(), lr=config.lr, betas=betas)
            for name, net in (("G", self.G), ("D", self.D), ("F", self.F))}
        self.augment = DiscriminatorAugment.from_config(config, mid_of(config.gan_loss))

    def networks(self) -> dict[str, torch.nn.Module]:
        """G (A -> B), D (which judges images of B) and F (the PatchNCE MLP heads)."""
        return {"G": self.G, "D": self.D, "F": self.F}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """``"G"``, ``"D"`` and ``"F"``, one Adam per network."""
        return self.opt

    def schedulers(self, total_steps: int) -> dict[str, torch.optim.lr_scheduler.LRScheduler]:
        """The learning rates constant, then linearly down to 0 from ``decay_start`` of the run
        (CUT: half, FastCUT: three quarters)."""
        return linear_decay_schedulers(self.opt, total_steps, self.config.decay_start)

    def _nce(self, src: torch.Tensor, tgt: torch.Tensor, flipped: bool) -> torch.Tensor:
        """PatchNCE between G's features of ``tgt`` (queries) and of ``src`` (keys),
        averaged over the layers."""
        cfg = self.config
        feat_q = self.G(tgt, self.layers)
        if flipped:
            feat_q = [torch.flip(f, [3]) for f in feat_q]
        feat_k = self.G(src, self.layers)
        keys, ids = self.F(feat_k, cfg.num_patches)
        queries, _ = self.F(feat_q, cfg.num_patches, ids)
        n = src.shape[0]
        return sum(patch_nce_loss(q, k, n, cfg.nce_t).mean() * cfg.lambda_nce
                   for q, k in zip(queries, keys)) / len(self.layers)

    def train_step(self, batch: Batch, ctx: StepContext) -> dict[str, float]:
        """One update of D, then one of G and the MLP heads together, as in the paper.

        D: real B against G(A), its loss halved. G: the adversarial loss times ``lambda_gan``
        plus PatchNCE between G(A) and A times ``lambda_nce``; with ``nce_idt``, that averaged
        with the identity PatchNCE between G(B) and B. With ``flip_equivariance`` the input is
        flipped horizontally at random (one draw per step).

        Logged: ``G_gan`` (the weighted adversarial term), ``NCE`` (the weighted PatchNCE of
        A -> B), ``NCE_idt`` (the weighted identity PatchNCE, with ``nce_idt`` and a positive
        ``lambda_nce``), ``D`` (D's halved loss) and, with ``--d-augment``, ``augment_p``."""
        cfg = self.config
        real_A, real_B = batch["A"], batch["B"]
        real = torch.cat([real_A, real_B]) if cfg.nce_idt else real_A
        flipped = bool(cfg.flip_equivariance and torch.rand(()) < 0.5)
        if flipped:
            real = torch.flip(real, [3])
        with ctx.autocast():
            fake = self.G(real)
        fake_B = fake[:real_A.shape[0]]
        idt_B = fake[real_A.shape[0]:] if cfg.nce_idt else None
        # D on the augmented real and (detached) fake
        self.D.requires_grad_(True)
        with ctx.autocast():
            d_real = self.D(self.augment(real_B))
            loss_D = 0.5 * (gan_loss(cfg.gan_loss, self.D(self.augment(fake_B.detach())), False)
                            + gan_loss(cfg.gan_loss, d_real, True))
        ctx.zero_grad("D")
        ctx.backward(loss_D)
        ctx.step("D")
        self.augment.observe(d_real)
        # G and the MLP heads
        self.D.requires_grad_(False)
        with ctx.autocast():
            loss_gan = gan_loss(cfg.gan_loss, self.D(self.augment(fake_B)), True, for_generator=True) \
                * cfg.lambda_gan
            # keys from the unflipped input; the outputs' features are flipped back to match
            loss_nce = (self._nce(real_A, fake_B, flipped) if cfg.lambda_nce > 0
                        else torch.zeros((), device=fake.device))
            loss_nce_y = None
            if idt_B is not None and cfg.lambda_nce > 0:
                loss_nce_y = self._nce(real_B, idt_B, flipped)
                loss_nce_both = (loss_nce + loss_nce_y) * 0.5
            else:
                loss_nce_both = loss_nce
            loss_G = loss_gan + loss_nce_both
        ctx.zero_grad("G")
        ctx.zero_grad("F")
        ctx.backward(loss_G)
        ctx.step("G")
        ctx.step("F")
        self.D.requires_grad_(True)
        out = {"G_gan": loss_gan.item(), "NCE": loss_nce.item(), "D": loss_D.item()}
        if loss_nce_y is not None:
            out["NCE_idt"] = loss_nce_y.item()
        if self.augment.on:
            out["augment_p"] = self.augment.p
        return out

    def extra_state(self) -> dict[str, Any]:
        """The augmentation's state (CUT has no image pool)."""
        return {"augment": self.augment.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restores the augmentation's state."""
        self.augment.load_state_dict(state.get("augment", {}))

    def sample(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Rows real A, fake B, real B and, with ``nce_idt``, identity B (G(B)); G in eval mode."""
        was = self.G.training
        self.G.eval()
        try:
            a, b = batch["A"], batch["B"]
            rows = {"real A": a, "fake B": self.G(a), "real B": b}
            if self.config.nce_idt:
                rows["identity B"] = self.G(b)
            return rows
        finally:
            self.G.train(was)

    def export_specs(self) -> dict[str, ExportSpec]:
        """``G``: A -> B, image to image."""
        return {"G": ExportSpec("G", ("image",), ("A", "B"), description="A -> B")}


class FastCUT(CUT):
    """CUT's faster variant: no identity term, flip-equivariance (Park et al. 2020)."""

    Config = FastCUTConfig
