"""StarGAN (Choi et al. 2018): one generator G(x, c) translating an image into any of
several domains, the target domain c given as extra constant input channels.

Networks (pyganx.nn): G is a 7x7 conv, two 4x4 stride-2 downsamplings, 6 residual blocks
with zero padding, two 4x4 stride-2 transposed convs, a 7x7 conv and tanh, with affine
instance norm and bias-free convs; D is a trunk of 4x4 stride-2 convs with LeakyReLU 0.01
and no norm, and two heads: a 3x3 conv giving the real/fake patch map and a conv giving
the domain logits. Six D layers at 128 px and above; below, one layer fewer per halving so
the patch map stays 2x2 as in the paper at 128 px (``--d-layers`` overrides).

Losses: WGAN-GP adversarial loss (gradient penalty weight 10), domain classification
(cross entropy; real images train D, fakes train G; weight 1), reconstruction
L1(G(G(x, c), c'), x) (weight 10). Adam 1e-4, betas (0.5, 0.999), 5 D updates per G
update (one step = one D update, as in the paper's iteration count), learning rate
constant for the first half of training and decaying linearly to zero over the second.

The target domain of each image is drawn uniformly from all domains (the paper permutes
the batch's own labels, which with unbalanced domains trains the rare ones less often).
Data: one sub-folder per domain, or ``--demo digits`` (handwritten and four typefaces).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from pyganx.augment import AugmentConfig, DiscriminatorAugment
from pyganx.errors import UsageError
from pyganx.losses import gradient_penalty
from pyganx.nn import StarGANDiscriminator, StarGANGenerator, init_weights, one_hot
from pyganx.plugin import Batch, DataInfo, ExportSpec, GANPlugin, StepContext, linear_decay_schedulers


@dataclass
class StarGANConfig(AugmentConfig):
    """StarGAN's options, with the paper's defaults."""

    g_conv_dim: int = field(default=64, metadata={"help": "generator width"})
    d_conv_dim: int = field(default=64, metadata={"help": "discriminator width"})
    g_blocks: int = field(default=6, metadata={"help": "generator residual blocks"})
    d_layers: int = field(default=0, metadata={"help": "D stride-2 layers (0: 6 from 128 px, one fewer per halving)"})
    lambda_cls: float = field(default=1.0, metadata={"help": "domain classification weight"})
    lambda_rec: float = field(default=10.0, metadata={"help": "reconstruction weight"})
    lambda_gp: float = field(default=10.0, metadata={"help": "gradient penalty weight"})
    n_critic: int = field(default=5, metadata={"help": "D updates per G update"})
    g_lr: float = field(default=1e-4, metadata={"help": "generator Adam learning rate"})
    d_lr: float = field(default=1e-4, metadata={"help": "discriminator Adam learning rate"})
    beta1: float = field(default=0.5, metadata={"help": "Adam beta1"})
    beta2: float = field(default=0.999, metadata={"help": "Adam beta2"})
    decay_start: float = field(default=0.5, metadata={"help": "fraction of training before the linear lr decay"})
    flip: bool = field(default=True, metadata={"help": "random horizontal flips (off where the data forbids them)"})
    d_per_domain: bool = field(default=False, metadata={
        "help": "one real/fake critic output per domain, read at each image's domain (StarGAN v2's "
                "multi-task D): fakes are judged against real images of their target domain only "
                "(off: the paper's single critic)"})
    fused: bool = field(default=True, metadata={"help": "pyganx's fused ops where they are faster "
                                                          "and accurate (train --impl); --no-fused: "
                                                          "plain PyTorch layers only"})


def d_layers_for(image_size: int) -> int:
    """6 at 128 px and above (a 2x2 patch map at 128 px), one fewer per halving below."""
    if image_size < 8 or image_size & (image_size - 1):
        raise UsageError(f"--image-size {image_size}: StarGAN trains at powers of two from 8 px (or at "
                         f"multiples of 2**N with --d-layers N)")
    return min(6, int(math.log2(image_size)) - 1)


class StarGAN(GANPlugin):
    """Multi-domain image-to-image translation (Choi et al. 2018)."""

    api_version = 1
    Config = StarGANConfig
    data_kind = "multi_domain"
    default_image_size = 128
    #: G: multiples of 4 (two stride-2 downsamplings); D: a multiple of 2**d_layers, which
    #: by default (d_layers_for) means a power of two
    image_sizes = range(8, 1 << 16, 4)
    random_crop = False     # the paper's loader: resize (and flip), no random crop

    def __init__(self, config: StarGANConfig, data_info: DataInfo) -> None:
        """Builds G and D for the data's domains (D's depth from the image size unless
        ``--d-layers``) with N(0, 0.02) weights, one Adam each, and D's augmentation. Refuses
        fewer than two domains and ``--n-critic`` below 1."""
        super().__init__(config, data_info)
        self.domains = tuple(data_info.domains)
        if len(self.domains) < 2:
            raise UsageError(f"StarGAN needs at least two domains, got {len(self.domains)}")
        if config.n_critic < 1:
            raise UsageError(f"--n-critic must be at least 1, got {config.n_critic}")
        c, k, size = data_info.channels, len(self.domains), data_info.image_size
        layers = config.d_layers or d_layers_for(size)
        self.G = init_weights(StarGANGenerator(c, k, config.g_conv_dim, config.g_blocks,
                                                fused="auto" if config.fused else False))
        self.D = init_weights(StarGANDiscriminator(size, k, config.d_conv_dim, layers, in_ch=c,
                                                   src_per_domain=config.d_per_domain))
        betas = (config.beta1, config.beta2)
        self.opt: dict[str, torch.optim.Optimizer] = {
            "G": torch.optim.Adam(self.G.parameters(), lr=config.g_lr, betas=betas),
            "D": torch.optim.Adam(self.D.parameters(), lr=config.d_lr, betas=betas)}
        self.d_steps = 0
        self.last_g = {"G_adv": 0.0, "G_cls": 0.0, "G_rec": 0.0}
        self.augment = DiscriminatorAugment.from_config(config, mid=0.0)   # WGAN scores

    def networks(self) -> dict[str, torch.nn.Module]:
        """G (image and target domain -> image) and D (image -> real/fake patch map and domain
        logits)."""
        return {"G": self.G, "D": self.D}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """``"G"`` (learning rate ``g_lr``) and ``"D"`` (``d_lr``), one Adam each."""
        return self.opt

    def schedulers(self, total_steps: int) -> dict[str, torch.optim.lr_scheduler.LRScheduler]:
        """Both learning rates constant, then linearly down to 0 from ``decay_start`` of the run."""
        return linear_decay_schedulers(self.opt, total_steps, self.config.decay_start)

    def _onehot(self, labels: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Domain indices as one-hot rows over the domains, in ``like``'s dtype."""
        return one_hot(labels, len(self.domains), like.dtype)

    def _critic(self, src: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """The patch map of each image's own domain (``--d-per-domain``), else the one map."""
        if not self.config.d_per_domain or labels is None:
            return src
        return src[torch.arange(src.shape[0], device=src.device), labels.to(src.device)]

    def _d_adv(self, src_real: torch.Tensor, c_org: torch.Tensor, src_fake: torch.Tensor,
               c_trg: torch.Tensor) -> torch.Tensor:
        """The critic's WGAN loss E[D(fake)] - E[D(real)]. With per-domain critics each
        domain's two means are taken on its own and the differences averaged over the
        domains the batch has both of: the real and fake counts of a domain differ within a
        batch (targets are drawn uniformly, sources are not), and in a pooled mean that
        imbalance rewards a constant offset of the critic, which the gradient penalty does not
        bound and the loss then drives without limit."""
        if not self.config.d_per_domain:
            return src_fake.float().mean() - src_real.float().mean()
        real = self._critic(src_real, c_org).float().flatten(1).mean(1)
        fake = self._critic(src_fake, c_trg).float().flatten(1).mean(1)
        terms = [fake[c_trg == k].mean() - real[c_org == k].mean() for k in range(len(self.domains))
                 if bool((c_trg == k).any()) and bool((c_org == k).any())]
        return torch.stack(terms).mean() if terms else fake.new_zeros(())   # GP and cls still train D

    def train_step(self, batch: Batch, ctx: StepContext) -> dict[str, float]:
        """One update of D; then, on the first step and every ``n_critic``-th after, one of G,
        as in the paper. Each image's target domain is drawn uniformly from all domains.

        D: the WGAN loss of real images against G(x, target) (per domain with
        ``--d-per-domain``), plus ``lambda_cls`` times the cross entropy of its domain logits on
        the real images' domains, plus ``lambda_gp`` times the gradient penalty. G: the WGAN
        loss of its fakes, plus ``lambda_cls`` times D's cross entropy of them against their
        target domains, plus ``lambda_rec`` times the L1 of the translation back to the source
        domain against the input.

        Logged, unweighted: ``D_adv``, ``D_cls``, ``D_gp`` (the terms of D's loss), ``G_adv``,
        ``G_cls``, ``G_rec`` (those of G's last update, repeated on the steps between) and,
        with an adaptive ``--d-augment``, ``augment_p``."""
        cfg = self.config
        x, c_org = batch["image"], batch["label"].long()
        c_trg = torch.randint(len(self.domains), c_org.shape, device=x.device)
        # discriminator: real/fake (WGAN-GP) and the domain of real images
        self.D.requires_grad_(True)
        aug = self.augment
        with ctx.autocast():
            src_real, cls_real = self.D(aug(x))
            with torch.no_grad():   # D's step needs no graph through G
                fake = self.G(x, self._onehot(c_trg, x))
            src_fake, _ = self.D(aug(fake))
            d_adv = self._d_adv(src_real, c_org, src_fake, c_trg)
            d_cls = F.cross_entropy(cls_real.float(), c_org)
        # per-domain critics: each interpolate is scored by its real end's or its fake end's
        # domain, drawn per image, so every critic that is trained is also kept Lipschitz
        c_gp = (torch.where(torch.rand(c_org.shape, device=x.device) < 0.5, c_org, c_trg)
                if cfg.d_per_domain else None)
        gp = gradient_penalty(lambda t: self._critic(self.D(t)[0], c_gp), x, fake.float())
        loss_D = d_adv + cfg.lambda_cls * d_cls + cfg.lambda_gp * gp
        ctx.zero_grad("D")
        ctx.backward(loss_D)
        ctx.step("D")
        aug.observe(self._critic(src_real, c_org))
        self.d_steps += 1
        if (self.d_steps - 1) % cfg.n_critic == 0:   # G on the first step, then every n_critic
            self.D.requires_grad_(False)
            with ctx.autocast():
                fake = self.G(x, self._onehot(c_trg, x))
                src, cls = self.D(aug(fake))
                g_adv = -self._critic(src, c_trg).float().mean()
                g_cls = F.cross_entropy(cls.float(), c_trg)
                g_rec = F.l1_loss(self.G(fake, self._onehot(c_org, x)).float(), x.float())
                loss_G = g_adv + cfg.lambda_cls * g_cls + cfg.lambda_rec * g_rec
            ctx.zero_grad("G")
            ctx.backward(loss_G)
            ctx.step("G")
            self.D.requires_grad_(True)
            self.last_g = {"G_adv": g_adv.item(), "G_cls": g_cls.item(), "G_rec": g_rec.item()}
        out = {"D_adv": d_adv.item(), "D_cls": d_cls.item(), "D_gp": gp.item(), **self.last_g}
        if aug.on and aug.adaptive:
            out["augment_p"] = aug.p
        return out

    def extra_state(self) -> dict[str, Any]:
        """The count of D steps (which paces G's updates), G's last losses and the augmentation's
        state."""
        return {"d_steps": self.d_steps, "last_g": dict(self.last_g), "augment": self.augment.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restores them; a checkpoint without them leaves a new run's values."""
        self.d_steps = int(state.get("d_steps", 0))
        self.last_g = dict(state.get("last_g", self.last_g))
        self.augment.load_state_dict(state.get("augment", {}))

    def domain_index(self, domain: str) -> int:
        """The index of a domain given by name; an unknown name is a UsageError that lists the
        domains."""
        if str(domain) in self.domains:
            return self.domains.index(str(domain))
        raise UsageError(f"unknown domain {domain!r}; the domains are {', '.join(self.domains)}")

    def translate(self, x: torch.Tensor, domain: str | int) -> torch.Tensor:
        """Images into one domain (by name or index), in eval mode."""
        k = domain if isinstance(domain, int) else self.domain_index(domain)
        labels = torch.full((x.shape[0],), k, device=x.device, dtype=torch.long)
        was = self.G.training
        self.G.eval()
        try:
            return self.G(x, self._onehot(labels, x))
        finally:
            self.G.train(was)

    def sample(self, batch: Batch, domain: str | None = None) -> dict[str, torch.Tensor]:
        """The inputs, then each translated into every domain (or into ``domain``)."""
        x = batch["image"]
        targets = [self.domain_index(domain)] if domain is not None else range(len(self.domains))
        rows = {"input": x}
        for k in targets:
            rows[f"to {self.domains[k]}"] = self.translate(x, k)
        return rows

    def export_specs(self) -> dict[str, ExportSpec]:
        """``G``: an image and a target domain index -> image, with the domain names."""
        return {"G": ExportSpec("G", ("image", "domain"), self.domains,
                                description="image + target domain -> image")}
