"""Mixed precision, channels_last and activation checkpointing: the fused ops under
autocast, no hidden copies to contiguous inside the fused ops for channels_last input,
checkpointing that gives the same gradients with less memory, and training runs with
all three flags."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import requires_ext

from pyganx.bench.memory import generator_step_peak, malloc_in_use
from pyganx.cli import main as cli_main
from pyganx.nn import InstanceNormReLU, ResidualBlock, ResnetGenerator, StarGANGenerator, one_hot


def _copies_inside_pyganx_ops(fn) -> tuple[list[int], set[str]]:
    """The sizes (elements) of the copies (aten::copy_) the profiler saw inside a pyganx op
    while ``fn`` ran, and the pyganx ops it saw."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    events = prof.events()
    ours = {e.name for e in events if e.name.startswith("pyganx::")}
    sizes = []
    for e in events:
        if e.name == "aten::copy_":
            p = e.cpu_parent
            while p is not None and not p.name.startswith("pyganx::"):
                p = p.cpu_parent
            if p is not None:
                sizes.append(math.prod(e.input_shapes[0]))
    return sizes, ours


def _block_step(fmt):
    torch.manual_seed(0)
    block = ResidualBlock(16, "reflect", affine=True, fused=True)
    norm = InstanceNormReLU(16, affine=True, fused=True)
    block.to(memory_format=fmt)                      # as --channels-last converts the networks
    x = torch.randn(2, 16, 12, 10).to(memory_format=fmt).requires_grad_(True)
    out = {}

    def step():
        out["y"] = block(x)
        out["z"] = norm(out["y"])
        out["z"].square().sum().backward()
    return x, out, step


@requires_ext
def test_fused_ops_keep_channels_last_without_copies_to_contiguous():
    """channels_last in, channels_last out and back, and not one activation-sized copy
    more than for NCHW input: the ops never convert to contiguous. (Both layouts copy the
    interior of the padded gradient once in the block's backward, in the input's layout;
    channels_last adds copies of the 3x3 weights and of one-pixel ring lines only.)"""
    x, out, step = _block_step(torch.channels_last)
    sizes, ours = _copies_inside_pyganx_ops(step)
    assert {"pyganx::_residual_block_forward", "pyganx::_residual_block_backward",
            "pyganx::_instance_norm_relu_forward", "pyganx::_instance_norm_relu_backward"} <= ours, ours
    for t in (out["y"], out["z"], x.grad):
        assert t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
    x2, _, step2 = _block_step(torch.contiguous_format)
    sizes2, _ = _copies_inside_pyganx_ops(step2)
    big = [s for s in sizes if s >= x.numel()]
    assert big == [s for s in sizes2 if s >= x2.numel()] and len(big) <= 1, (sizes, sizes2)
    assert max(s for s in sizes if s not in big) <= 16 * 16 * 9       # weights and ring lines
    # the profiler does record a copy where one is made
    sizes3, _ = _copies_inside_pyganx_ops(lambda: torch.ops.pyganx.instance_norm_relu(
        x.detach().contiguous(), None, None, 1e-5, True))
    assert sizes3 == []
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        x.detach().contiguous()
    assert any(e.name == "aten::copy_" for e in prof.events())


@requires_ext
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_generator_runs_under_autocast_as_closely_as_plain_pytorch(dtype):
    torch.manual_seed(0)
    plain = ResnetGenerator(3, 3, 8, 2, fused=False)
    fused = ResnetGenerator(3, 3, 8, 2, fused=True)
    fused.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    ref = plain(x).detach()
    outs = {}
    for name, g in (("plain", plain), ("fused", fused)):
        with torch.autocast("cpu", dtype=dtype):
            y = g(x)
        assert y.dtype == dtype
        y.float().square().mean().backward()
        assert all(torch.isfinite(p.grad).all() for p in g.parameters())
        outs[name] = (y.float() - ref).abs().max().item()
    assert outs["fused"] <= 2 * outs["plain"] + 1e-3, outs


@pytest.mark.parametrize("which", ["resnet", "resnet-fused", "stargan"])
def test_checkpoint_activations_recomputes_and_gives_the_same_gradients(which):
    torch.manual_seed(0)
    if which == "stargan":
        make = lambda: StarGANGenerator(3, 4, 8, 2)  # noqa: E731
        args = (torch.rand(2, 3, 16, 16) * 2 - 1, one_hot(torch.tensor([1, 3]), 4))
    else:
        make = lambda: ResnetGenerator(3, 3, 8, 2, fused=which.endswith("fused"))  # noqa: E731
        args = (torch.rand(2, 3, 16, 16) * 2 - 1,)
    a, b = make(), make()
    b.load_state_dict(a.state_dict())
    b.checkpoint_activations = True
    calls = []
    b.model[-2].register_forward_hook(lambda *_: calls.append(1))
    ya, yb = a(*args), b(*args)
    torch.testing.assert_close(yb, ya, rtol=0, atol=0)
    ya.square().mean().backward()
    yb.square().mean().backward()
    assert len(calls) == 2                          # the forward, and the recompute in backward
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-5, atol=1e-7, msg=name)
    b.eval()
    with torch.no_grad():
        b(*args)
    assert len(calls) == 3                          # no checkpointing outside training


@requires_ext
def test_checkpointing_frees_what_backward_recomputed():
    # A recomputed segment's tensors must go once backward has used them, not live on
    # with the graph (it did with checkpoint's early stop: 32 MiB per block at 512 px).
    import weakref

    from torch.utils._python_dispatch import TorchDispatchMode

    recomputed = []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.namespace == "pyganx" and "forward" in func.__name__:
                recomputed.extend(weakref.ref(t) for t in out if isinstance(t, torch.Tensor))
            return out

    torch.manual_seed(0)
    g = ResnetGenerator(3, 3, 8, 4, fused=True)
    g.checkpoint_activations = True
    y = g(torch.rand(1, 3, 16, 16))
    with Watch():
        y.square().mean().backward()
    assert len(recomputed) > 4 * 7                   # every block and norm ran again
    alive = [r() for r in recomputed if r() is not None]
    assert not alive, [tuple(t.shape) for t in alive]
    assert y.grad_fn is not None                     # the graph itself is still there


@requires_ext
@pytest.mark.skipif(malloc_in_use() is None, reason="CPU memory is measured through glibc's mallinfo2")
def test_checkpointing_with_the_fused_blocks_needs_a_fraction_of_the_memory():
    cpu = torch.device("cpu")
    peak = {k: generator_step_peak(64, fused, ck, cpu)        # CycleGAN's 9 blocks, 64 filters
            for k, fused, ck in (("eager", False, False), ("fused", True, False), ("both", True, True))}
    assert peak["both"] < peak["fused"] < peak["eager"], peak
    assert peak["both"] < 0.5 * peak["eager"], peak
    # the scale-out issue's goal, at a quarter of its sizes: twice the side (4x the pixels)
    # with fused blocks and checkpointing needs less than the eager generator at one side
    big = generator_step_peak(128, True, True, cpu)
    assert big < peak["eager"], (big, peak)


@requires_ext
def test_training_with_bf16_channels_last_and_checkpointing(tmp_path):
    run = tmp_path / "r"
    assert cli_main(["train", "cyclegan", "--demo", "digits", "--steps", "2", "-o", str(run), "--no-progress",
                     "--ngf", "8", "--ndf", "8", "--n-blocks", "2", "--precision", "bf16", "--channels-last",
                     "--checkpoint-activations"]) == 0
    rows = (run / "losses.csv").read_text().splitlines()
    assert len(rows) == 3 and "nan" not in rows[-1].lower()


def test_checkpoint_activations_is_refused_where_no_network_supports_it(tmp_path, capsys):
    assert cli_main(["train", "dcgan", "--demo", "digits", "--steps", "1", "-o", str(tmp_path / "r"),
                     "--no-progress", "--ngf", "8", "--ndf", "8", "--z-dim", "8", "--checkpoint-activations"]) == 1
    assert "supports --checkpoint-activations" in capsys.readouterr().err


@requires_ext
@pytest.mark.parametrize("checkpoint, device, expect", [(True, "cpu", False), (False, "cpu", True),
                                                        (True, "cuda", True)])
def test_checkpoint_activations_trains_without_cpu_winograd(checkpoint, device, expect, monkeypatch):
    # --checkpoint-activations asks for memory over speed; on CPU the Winograd path's
    # workspace would put a 512 px step above an eager 256 px one (docs/ops.md).
    from pyganx.engine import Trainer, TrainOptions
    from pyganx.ops import cpu_winograd_enabled, set_cpu_winograd
    previous = set_cpu_winograd(True)
    try:
        seen = []
        monkeypatch.setattr(Trainer, "_fit", lambda self: seen.append(cpu_winograd_enabled()) or {})
        t = Trainer.__new__(Trainer)   # only what fit() reads
        t.opts = TrainOptions(out="unused", checkpoint_activations=checkpoint)
        t.device = torch.device(device)
        assert t.fit() == {}
        assert seen == [expect]
        assert cpu_winograd_enabled()  # restored after the run
    finally:
        set_cpu_winograd(previous)
