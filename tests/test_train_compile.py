"""``pyganx train --compile`` (and ``--cuda-graphs``): the fused ops stay registered ops in
the compiled graph, a compiled run logs the losses of an eager one (within LOSS_RTOL),
writes the same checkpoint keys, resumes, samples and exports; ``--cuda-graphs`` without
CUDA is a one-line error.

Inductor on CPU compiles C++: these tests use tiny networks (width 8, one residual
block, 32 px digits) and 3 steps. Compiled graphs are cached on disk by inductor, so a
second session is faster than the first."""
from __future__ import annotations

import shutil

import pytest
import torch
from conftest import requires_ext

from pyganx.cli import main as cli_main
from pyganx.engine import latest_checkpoint, load_checkpoint

# A compiled run's logged losses of the same 3 steps differ from the eager run's. Inductor
# fuses and reorders float32 arithmetic (the instance norms' reductions, the losses'
# means), so the first step's losses differ by rounding; after it, Adam turns rounding-
# level differences of near-zero gradients into steps of the full learning rate, and
# runs that round differently drift apart by far more than rounding. The yardstick of
# that drift is measured, not typed in: the largest relative difference between two
# eager runs that differ only in their rounding (pyganx's fused ops against plain
# PyTorch, `--impl reference`). The compiled run may differ from the eager one by up to
# SPREAD_MULTIPLE times that, plus LOSS_RTOL * |eager loss| + LOSS_ATOL. A wrong
# compiled gradient moves the losses by 1e-3 and more after one update.
SPREAD_MULTIPLE = 8
# float32 rounding of a loss (a mean over many terms), and losses near zero: a WGAN
# critic's mean outputs (DCGAN measured 3.1e-9 absolute on outputs near 2e-4; it has no
# pyganx op, so its two eager implementations are the same arithmetic)
LOSS_RTOL = 1e-6
LOSS_ATOL = 3e-8

CYCLEGAN = ["--ngf", "8", "--ndf", "8", "--n-blocks", "1", "--pool-size", "2", "--ema", "0.9"]
# the WGAN-GP loss: the critic's gradient penalty is differentiated twice, so its call
# of D runs eagerly while the rest of the step is compiled
DCGAN = ["--ngf", "8", "--ndf", "8", "--z-dim", "16", "--batch-size", "4", "--loss", "wgan-gp"]
STEPS = 3


def _train(variant: str, out, *extra: str, impl: str = "fused") -> None:
    """A 3-step run on CPU. The layers take pyganx's fused ops unless ``impl`` says
    otherwise: eager runs then compute what the compiled graphs (which keep the fused ops)
    compute, whatever the built-in gates would pick for these tiny shapes."""
    assert cli_main(["train", variant, "--demo", "digits", "--steps", str(STEPS), "-o", str(out),
                     "--device", "cpu", "--no-progress", "--checkpoint-every", "2", "--keep", "5",
                     "--impl", impl, *extra]) == 0


def _compiled_train(variant: str, out, *extra: str) -> int:
    """Trains with --compile from a fresh dynamo cache; the number of graphs compiled."""
    torch._dynamo.reset()
    _train(variant, out, "--compile", *extra)
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def _losses(run) -> list[dict[str, float]]:
    rows = (run / "losses.csv").read_text().splitlines()
    head = rows[0].split(",")
    return [{k: float(v) for k, v in zip(head, r.split(",")) if k not in ("step", "epoch", "seconds")}
            for r in rows[1:]]


def _keys(obj, prefix: str = "") -> set[str]:
    """Every key path of a checkpoint (nested dicts)."""
    out = set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.add(f"{prefix}/{k}")
            out |= _keys(v, f"{prefix}/{k}")
    return out


def _spread(a, b) -> float:
    """The largest relative difference between two runs' logged losses."""
    return max(abs(x[k] - y[k]) / abs(x[k]) for x, y in zip(a, b) for k in x if x[k] != 0)


def _assert_losses_close(eager, compiled, spread: float = 0.0) -> None:
    """``compiled`` logs ``eager``'s losses within SPREAD_MULTIPLE x ``spread`` (the drift
    between eager runs that round differently) plus float32's rounding (see above)."""
    assert len(eager) == len(compiled) == STEPS
    rtol = SPREAD_MULTIPLE * spread + LOSS_RTOL
    for step, (e, c) in enumerate(zip(eager, compiled), 1):
        assert e.keys() == c.keys()
        for k in e:
            assert abs(c[k] - e[k]) <= rtol * abs(e[k]) + LOSS_ATOL, (step, k, e[k], c[k], spread)


def _assert_same_checkpoint_keys(eager_run, compiled_run) -> None:
    e = load_checkpoint(latest_checkpoint(eager_run / "checkpoints"))
    c = load_checkpoint(latest_checkpoint(compiled_run / "checkpoints"))
    # "implementation" names the layers' choices (pyganx.tuning): compiled graphs always
    # hold the registered ops and make none, so only its presence is compared
    assert "implementation" in c and "implementation" in e
    assert {k for k in _keys(c) if not k.startswith("/implementation/")} == \
        {k for k in _keys(e) if not k.startswith("/implementation/")}
    assert not [k for k in _keys(c) if "_orig_mod" in k]
    for part in ("networks", "ema"):
        for net in e[part]:
            assert list(c[part][net]) == list(e[part][net]), (part, net)


@requires_ext
def test_the_fused_ops_stay_registered_ops_in_one_compiled_graph():
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    from pyganx.nn import ResnetGenerator

    torch.manual_seed(0)
    g = ResnetGenerator(1, 1, 8, 1, fused=True)
    x = torch.randn(2, 1, 32, 32, requires_grad=True)
    explained = torch._dynamo.explain(g)(x)
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons
    dynamo_graphs, aot_graphs = [], []

    def record_dynamo(gm, example_inputs):
        dynamo_graphs.append(gm)
        return aot_autograd(fw_compiler=record_aot, bw_compiler=record_aot)(gm, example_inputs)

    def record_aot(gm, example_inputs):
        aot_graphs.append(gm)
        return make_boxed_func(gm.forward)

    def called(gm) -> set[str]:
        """The ops a graph calls (an op or its overload: "pyganx.residual_block")."""
        return {str(n.target).removesuffix(".default") for n in gm.graph.nodes if n.op == "call_function"}

    torch._dynamo.reset()
    y = torch.compile(g, backend=record_dynamo, fullgraph=True)(x)
    y.square().mean().backward()
    grad = x.grad.clone()
    assert len(dynamo_graphs) == 1
    assert {"pyganx.residual_block", "pyganx.instance_norm_relu"} <= called(dynamo_graphs[0])
    # under autograd: the block's private forward op in the forward graph, its backward op
    # in the backward graph, both as the registered ops
    fw, bw = aot_graphs
    assert "pyganx._residual_block_forward" in called(fw)
    assert "pyganx._residual_block_backward" in called(bw)
    x.grad = None
    ref = g(x)
    ref.square().mean().backward()
    torch.testing.assert_close(y, ref)
    torch.testing.assert_close(grad, x.grad)


@pytest.fixture(scope="module")
def cyclegan_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compile")
    _train("cyclegan", root / "eager", *CYCLEGAN)
    _train("cyclegan", root / "plain", *CYCLEGAN, impl="reference")
    graphs = _compiled_train("cyclegan", root / "compiled", *CYCLEGAN)
    return root / "eager", root / "compiled", graphs, _spread(_losses(root / "eager"), _losses(root / "plain"))


@requires_ext
def test_compiled_cyclegan_logs_the_eager_losses_and_writes_the_same_keys(cyclegan_runs):
    eager, compiled, graphs, spread = cyclegan_runs
    # G and D, each with and without a gradient-carrying input
    assert graphs >= 4
    _assert_losses_close(_losses(eager), _losses(compiled), spread)
    _assert_same_checkpoint_keys(eager, compiled)
    assert (compiled / "samples" / f"step-{STEPS:09d}.png").is_file()


@requires_ext
def test_a_compiled_run_resumes_samples_and_exports(cyclegan_runs, tmp_path, capsys):
    _, compiled, _, _ = cyclegan_runs
    run = tmp_path / "run"
    shutil.copytree(compiled, run)
    assert cli_main(["train", "cyclegan", "--demo", "digits", "--steps", str(STEPS), "-o", str(run),
                     "--device", "cpu", "--no-progress", "--compile", *CYCLEGAN,
                     "--resume", str(run / "checkpoints" / "step-000000002.pt")]) == 0
    # step 3 again, from the step-2 checkpoint: the same compiled kernels, so the same
    # losses and weights, bit for bit
    assert _losses(run) == _losses(compiled)
    straight = load_checkpoint(compiled / "checkpoints" / f"step-{STEPS:09d}.pt")
    resumed = load_checkpoint(latest_checkpoint(run / "checkpoints"))
    assert resumed["step"] == STEPS
    for part in ("networks", "ema"):
        for net, weights in straight[part].items():
            for k, v in weights.items():
                assert torch.equal(resumed[part][net][k], v), (part, net, k)
    assert cli_main(["sample", str(run), "-o", str(tmp_path / "generated"), "--n", "2",
                     "--device", "cpu"]) == 0
    assert (tmp_path / "generated" / "grid.png").is_file()
    pytest.importorskip("onnxruntime", reason="the ONNX extra is not installed")
    assert cli_main(["export", str(run), "-o", str(tmp_path / "g_ab.onnx")]) == 0, capsys.readouterr().err
    assert (tmp_path / "g_ab.onnx").stat().st_size > 0


@requires_ext
def test_compiled_dcgan_with_a_gradient_penalty_logs_the_eager_losses(tmp_path):
    _train("dcgan", tmp_path / "eager", *DCGAN)
    assert _compiled_train("dcgan", tmp_path / "compiled", *DCGAN) >= 2
    _assert_losses_close(_losses(tmp_path / "eager"), _losses(tmp_path / "compiled"))
    _assert_same_checkpoint_keys(tmp_path / "eager", tmp_path / "compiled")


def test_cuda_graphs_without_cuda_is_a_one_line_error(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_main(["train", "cyclegan", "--demo", "digits", "--steps", "1", "-o", str(out),
                     "--device", "cpu", "--no-progress", "--cuda-graphs", *CYCLEGAN]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [("pyganx train: --cuda-graphs needs a CUDA device, and this run is on cpu; "
                    "use --compile alone")]
    assert not out.exists()


def test_compiled_calls_route_gradient_penalty_inputs_eagerly_and_report_compiler_failures():
    from torch import nn

    from pyganx.engine.compiling import CompiledCall
    from pyganx.errors import TrainingError

    torch._dynamo.reset()
    compiled_graphs = []

    def counting(gm, example_inputs):
        compiled_graphs.append(gm)
        return gm.forward

    def failing(gm, example_inputs):
        raise RuntimeError("no C++ compiler")

    net = nn.Linear(3, 1)
    call = CompiledCall("D", net, torch.compile(net, backend=counting))
    x = torch.randn(2, 3)
    call(x)                                       # compiled
    assert len(compiled_graphs) == 1
    x_hat = torch.randn(2, 3, requires_grad=True)   # a gradient penalty's interpolates
    (grad,) = torch.autograd.grad(call(x_hat).sum(), x_hat, create_graph=True)
    grad.square().sum().backward()                # differentiated twice: eager, no new graph
    assert len(compiled_graphs) == 1 and net.weight.grad is not None
    assert call.weight is net.weight and call.requires_grad_(False) is net
    torch._dynamo.reset()
    broken = CompiledCall("G", net, torch.compile(net, backend=failing))
    with pytest.raises(TrainingError, match=r"^torch.compile could not compile network 'G' \(RuntimeError: "
                                            r"no C\+\+ compiler\); train without --compile"):
        broken(x)
