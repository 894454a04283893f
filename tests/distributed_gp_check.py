"""Run by tests/test_distributed.py under torchrun with 2 processes (gloo): StarGAN's
discriminator loss, whose gradient penalty is a double backward through D, goes through
pyganx's DDP wrapping on each rank's half of a batch. The gradients every rank ends up
with must be the mean of the two halves' gradients, computed here on one process without
DDP. Prints the largest difference; exits 1 when it is above the tolerance."""
from __future__ import annotations

import copy
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

from pyganx.engine.distributed import join, world_from_env, wrap_networks
from pyganx.losses import gradient_penalty
from pyganx.nn import StarGANDiscriminator


class Holder:
    """Stands for a plugin: it keeps its network as an attribute."""

    def __init__(self, d):
        self.D = d


def d_loss(D, x, fake, labels, alpha, gp_weight=10.0):
    src_real, cls_real = D(x)
    src_fake, _ = D(fake)
    gp = gradient_penalty(lambda t: D(t)[0], x, fake, alpha=alpha)
    return src_fake.mean() - src_real.mean() + F.cross_entropy(cls_real, labels) + gp_weight * gp


def mean_of_halves(net, halves, x, fake, labels, alpha, gp_weight=10.0):
    out = [torch.zeros_like(p) for p in net.parameters()]
    for h in halves:
        net.zero_grad()
        d_loss(net, x[h], fake[h], labels[h], alpha[h], gp_weight).backward()
        for r, p in zip(out, net.parameters()):
            r += p.grad / len(halves)
    return out


def main() -> int:
    world = world_from_env()
    assert world.size == 2, "run with torchrun --nproc-per-node 2"
    join(world, torch.device("cpu"))
    torch.manual_seed(0)                     # the same weights and batch on both ranks
    net = StarGANDiscriminator(image_size=16, c_dim=3, conv_dim=8, n_layers=4, in_ch=3)
    plain = copy.deepcopy(net)
    x, fake = torch.rand(8, 3, 16, 16) * 2 - 1, torch.rand(8, 3, 16, 16) * 2 - 1
    labels, alpha = torch.randint(0, 3, (8,)), torch.rand(8)
    halves = [slice(0, 4), slice(4, 8)]
    holder = Holder(net)
    wrap_networks(holder, {"D": net}, torch.device("cpu"), sync_bn=False)
    mine = halves[world.rank]
    d_loss(holder.D, x[mine], fake[mine], labels[mine], alpha[mine]).backward()
    ref = mean_of_halves(plain, halves, x, fake, labels, alpha)
    diff = max((p.grad - r).abs().max().item() for p, r in zip(net.parameters(), ref))
    scale = max(r.abs().max().item() for r in ref)
    # the penalty's share is large enough to show: without it the gradients differ by far more
    without = mean_of_halves(plain, halves, x, fake, labels, alpha, gp_weight=0.0)
    gp_share = max((a - b).abs().max().item() for a, b in zip(ref, without))
    dist.barrier()
    tol = 1e-5 * max(1.0, scale)
    ok = diff <= tol < gp_share / 100
    print(f"rank {world.rank}: largest difference from the mean of the halves' gradients {diff:.3g} "
          f"(the penalty's share {gp_share:.3g}, largest gradient {scale:.3g}): {'ok' if ok else 'WRONG'}",
          flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
