"""pyganx::residual_block: values and gradients against the plain PyTorch block, the
PyTorch machinery (opcheck, gradcheck, compile, export), errors, and what it saves."""
from __future__ import annotations

import contextlib
import copy
import zlib

import pytest
import torch
from conftest import ALL_DTYPES, assert_as_accurate, assert_matches_reference, devices, requires_ext

from pyganx.bench.nets import saved_bytes
from pyganx.nn import ResidualBlock, ResnetGenerator
from pyganx.ops import _reference, residual_block

pytestmark = requires_ext


def _block_args(C, dtype, device, affine, bias, g):
    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(device, dtype)
    w1, w2 = r(C, C, 3, 3, scale=0.4), r(C, C, 3, 3, scale=0.4)
    b1, b2 = (r(C), r(C)) if bias else (None, None)
    if affine:
        norms = [(torch.rand(C, generator=g, dtype=torch.float64) + 0.5).to(device, dtype), r(C),
                 (torch.rand(C, generator=g, dtype=torch.float64) + 0.5).to(device, dtype), r(C)]
    else:
        norms = [None] * 4
    return [w1, b1, w2, b2, *norms]


def _grads(fn, x, params, gy):
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in [x, *params]]
    y = fn(leaves[0], *leaves[1:])
    grads = torch.autograd.grad(y, [t for t in leaves if t is not None], gy)
    return y.detach(), list(grads)


CASES = [
    # (N, C, H, W), padding, affine, bias, channels_last
    ((2, 4, 5, 7), "reflect", False, True, False),   # CycleGAN block, odd sizes, batch > 1
    ((1, 6, 8, 8), "reflect", False, True, True),
    ((1, 5, 2, 9), "reflect", True, False, False),    # smallest H reflection allows
    ((2, 3, 3, 2), "reflect", False, True, True),     # smallest W, H != W, channels_last
    ((3, 4, 6, 3), "zero", True, False, False),      # StarGAN block
    ((2, 8, 9, 5), "zero", True, False, True),
    ((1, 3, 3, 2), "zero", False, True, False),
]


# The reflection ring term runs in the backend's ring kernels (CPU: gather + bmm +
# scatter; CUDA: the backward) or, with them off, in the ATen formulation with strip
# convolutions, which CUDA's forward uses: both are checked on every device.
RING_CASES = [(*c, True) for c in CASES] + [(*c, False) for c in CASES if c[1] == "reflect"]


@contextlib.contextmanager
def ring_kernels(enabled: bool):
    import pyganx._C as ext
    previous = ext._set_ring_kernels(enabled)
    try:
        yield
    finally:
        ext._set_ring_kernels(previous)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("shape, padding, affine, bias, channels_last, kernels", RING_CASES)
def test_matches_the_unfused_block(device, dtype, shape, padding, affine, bias, channels_last,
                                   kernels, monkeypatch):
    # cuDNN's TF32 convolutions (PyTorch's default) would put 1e-3 errors into both
    # sides; what is compared here is the fusion around the convolutions.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    with ring_kernels(kernels):
        _check_against_unfused(device, dtype, shape, padding, affine, bias, channels_last)


def _check_against_unfused(device, dtype, shape, padding, affine, bias, channels_last):
    g = torch.Generator().manual_seed(zlib.crc32(repr((shape, padding, affine)).encode()))
    x64 = torch.randn(*shape, generator=g, dtype=torch.float64).to(device) * 2 + 0.5
    if channels_last:
        x64 = x64.contiguous(memory_format=torch.channels_last)
    p64 = _block_args(shape[1], torch.float64, device, affine, bias, g)
    gy64 = torch.randn(*shape, generator=g, dtype=torch.float64).to(device)

    def ours(x, *p):
        return residual_block(x, *p, padding=padding)

    def ref(x, *p):
        return _reference.residual_block(x, *p, padding=padding)

    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    x, p, gy = cast(x64), [cast(t) for t in p64], cast(gy64)
    if channels_last:
        x, gy = (t.contiguous(memory_format=torch.channels_last) for t in (x, gy))
    y, grads = _grads(ours, x, p, gy)
    y_t, grads_t = _grads(ref, x, p, gy)         # PyTorch in the same dtype
    y_r, grads_r = _grads(ref, x64, p64, gy64)   # the float64 reference
    assert y.dtype == dtype
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last
                           else torch.contiguous_format)
    assert_matches_reference(y, y_t, y_r)
    names = ["x", "w1", "b1", "w2", "b2", "gamma1", "beta1", "gamma2", "beta2"]
    names = [n for n, t in zip(names, [x, *p]) if t is not None]
    # The conv biases before a norm have a gradient of exactly zero; what is computed
    # there is rounding noise of sums over a plane. So errors are measured against the
    # largest gradient of the block, in units of the dtype's epsilon.
    scale = max(c.abs().max().item() for c in grads_r)
    rel = {torch.float64: 1e-9, torch.float32: 2e-5}
    for name, a, b, c in zip(names, grads, grads_t, grads_r):
        err = (a.double().cpu() - c.cpu()).abs().max().item()
        if dtype in rel:
            bound = rel[dtype] * scale
        else:
            # Weight gradients are sums over N*H*W products of rounded operands: in
            # bfloat16 PyTorch's own block lands up to ~11 % of the largest gradient away
            # from float64 (measured over 36 seeded cases), and which implementation is
            # closer varies with the data. Allowed: twice PyTorch's error plus 16 units
            # of rounding of the largest gradient.
            err_torch = (b.double().cpu() - c.cpu()).abs().max().item()
            bound = 2 * err_torch + 16 * torch.finfo(dtype).eps * scale
        assert torch.isfinite(a).all(), f"grad {name}: non-finite"
        assert err <= bound, f"grad {name}: {dtype} max error {err:.3g} > {bound:.3g}"


def _op_args(device, padding, affine, dtype=torch.float64, shape=(2, 3, 4, 5)):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(*shape, generator=g, dtype=dtype).to(device)
    p = _block_args(shape[1], dtype, device, affine, not affine, g)
    return x, p


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("padding, affine", [("reflect", False), ("zero", True)])
def test_opcheck(device, padding, affine):
    for dtype in (torch.float32, torch.float64):
        x, p = _op_args(device, padding, affine, dtype)
        args = (x, *p, padding, 1e-5)
        req = tuple(t.clone().requires_grad_() if isinstance(t, torch.Tensor) else t for t in args)
        torch.library.opcheck(torch.ops.pyganx.residual_block.default, args)
        torch.library.opcheck(torch.ops.pyganx.residual_block.default, req)
        torch.library.opcheck(torch.ops.pyganx._residual_block_forward.default, req)
        y, h1, h2, m1, r1, m2, r2 = torch.ops.pyganx._residual_block_forward(*args)
        gy = torch.randn_like(y)
        for mask in ([True] * 9, [True] + [False] * 8, [False, True, True, True, True] + [True] * 4):
            torch.library.opcheck(torch.ops.pyganx._residual_block_backward.default,
                                  (gy, x, y, *p, h1, h2, m1, r1, m2, r2, padding, 1e-5, mask))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("padding, affine", [("reflect", False), ("reflect", True),
                                             ("zero", False), ("zero", True)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gradcheck_float64(device, padding, affine, channels_last):
    x, p = _op_args(device, padding, affine, shape=(2, 2, 3, 4))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    leaves = [t.requires_grad_() for t in [x, *p] if t is not None]
    slots = [i for i, t in enumerate([x, *p]) if t is not None]

    def fn(*ts):
        full = [None] * 9
        for i, t in zip(slots, ts):
            full[i] = t
        return residual_block(full[0], *full[1:], padding=padding)

    assert torch.autograd.gradcheck(fn, tuple(leaves))


def test_gradient_only_for_what_requires_it_and_no_node_without_grad():
    x, p = _op_args("cpu", "reflect", False, torch.float32)
    w1 = p[0].requires_grad_()
    residual_block(x, *p).sum().backward()
    assert w1.grad is not None and x.grad is None and p[2].grad is None
    assert residual_block(x, *[t.detach() if t is not None else None for t in p]).grad_fn is None
    with torch.no_grad():
        assert residual_block(x, *p).grad_fn is None


def test_torch_compile_fullgraph_forward_and_backward():
    # The fused op (pinned: an `auto` block may run plain PyTorch in eager and the op
    # under compile) compiled without a graph break, against the same op in eager and,
    # both, against the float64 block with the tuning contract's yardstick.
    g = torch.Generator().manual_seed(3)
    blk = ResidualBlock(4, fused=True)
    x0 = torch.randn(2, 4, 6, 5, generator=g)

    def run(module, dtype=torch.float32, compile=False):
        m = copy.deepcopy(module).to(dtype)
        x = x0.to(dtype, copy=True).requires_grad_()
        y = (torch.compile(m, fullgraph=True) if compile else m)(x)
        y.square().sum().backward()
        return y.detach(), x.grad, m.block[1].weight.grad

    compiled, eager = run(blk, compile=True), run(blk)
    plain = ResidualBlock(4, fused=False)
    plain.load_state_dict(blk.state_dict())
    plain32, ref64 = run(plain), run(plain, torch.float64)
    for what, c, e, p, r in zip(("output", "input grad", "weight grad"), compiled, eager, plain32, ref64):
        assert_as_accurate(c, p, r, f"compiled {what}")
        assert_as_accurate(e, p, r, f"eager {what}")


def test_torch_compile_keeps_the_fused_op():
    from torch._dynamo.testing import CompileCounterWithBackend
    cnt = CompileCounterWithBackend("aot_eager")
    blk = ResidualBlock(4)
    torch.compile(blk, backend=cnt, fullgraph=True)(torch.randn(1, 4, 5, 5))
    ops = [n.target for g in cnt.graphs for n in g.graph.nodes if n.op == "call_function"]
    assert torch.ops.pyganx.residual_block.default in ops or any(
        "residual_block" in str(t) for t in ops), ops


def test_torch_export():
    blk = ResidualBlock(4, padding="zero", affine=True, bias=False).eval()
    x = torch.randn(2, 4, 6, 6)
    ep = torch.export.export(blk, (x,))
    assert any("residual_block" in str(n.target) for n in ep.graph.nodes)
    torch.testing.assert_close(ep.module()(x), blk(x))


def test_bad_input_is_a_clear_error():
    x, p = _op_args("cpu", "reflect", False, torch.float32)
    with pytest.raises(RuntimeError, match="H and W must be at least 2"):
        torch.ops.pyganx.residual_block(x[:, :, :1], *p, "reflect", 1e-5)
    with pytest.raises(RuntimeError, match='padding must be "reflect" or "zero"'):
        torch.ops.pyganx.residual_block(x, *p, "circular", 1e-5)
    with pytest.raises(RuntimeError, match=r"w1 must have shape \(C, C, 3, 3\)"):
        torch.ops.pyganx.residual_block(x, p[0][:, :, :2], *p[1:], "reflect", 1e-5)
    with pytest.raises(RuntimeError, match="expected a 4-D"):
        torch.ops.pyganx.residual_block(x[0], *p, "reflect", 1e-5)
    with pytest.raises(RuntimeError, match="w2 is"):
        torch.ops.pyganx.residual_block(x, p[0], p[1], p[2].double(), *p[3:], "reflect", 1e-5)
    with pytest.raises(ValueError, match="at least 2"):
        ResidualBlock(3)(torch.randn(1, 3, 1, 8))


@pytest.mark.parametrize("padding, affine, bias", [("reflect", False, True), ("zero", True, False)])
def test_module_state_dict_moves_between_fused_and_unfused(padding, affine, bias):
    torch.manual_seed(0)
    plain = ResidualBlock(6, padding, affine, bias, fused=False)
    if affine:
        with torch.no_grad():
            for m in plain.modules():
                if getattr(m, "affine", False):
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_()
    fused = ResidualBlock(6, padding, affine, bias, fused=True)
    assert list(fused.state_dict()) == list(plain.state_dict())
    fused.load_state_dict(plain.state_dict())
    x = torch.randn(2, 6, 9, 7)
    torch.testing.assert_close(fused(x), plain(x))
    # dropout > 0 runs the composition (CycleGAN --use_dropout), in eval too
    plain_drop = ResidualBlock(6, padding, affine, bias, dropout=0.5, fused=False).eval()
    drop = ResidualBlock(6, padding, affine, bias, dropout=0.5, fused=True).eval()
    drop.load_state_dict(plain_drop.state_dict())
    assert not drop.fused
    torch.testing.assert_close(drop(x), plain_drop(x))


def test_fused_block_keeps_one_plane_besides_its_boundaries():
    C, H, W = 8, 16, 16
    plane = C * H * W * 4
    x = torch.randn(1, C, H, W, requires_grad=True)
    fused = saved_bytes(ResidualBlock(C, fused=True), x)
    # x, y and h1, plus four [1, C] float32 statistics.
    assert fused == 3 * plane + 4 * C * 4
    unfused = saved_bytes(ResidualBlock(C, fused=False), x)
    assert unfused > 5 * plane


@requires_ext
def test_backward_fills_no_zero_gradients_for_the_saved_outputs():
    # The autograd function returns h1 and the statistics next to y; autograd must not
    # allocate zero-filled gradients for them (an x-sized memset per block).
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(func.__name__)
            return func(*args, **(kwargs or {}))

    block = ResidualBlock(8, fused=True)
    x = torch.randn(2, 8, 12, 10, requires_grad=True)
    y = block(x)
    with Watch():
        y.square().sum().backward()
    assert any(name.startswith("_residual_block_backward") for name in seen), seen
    assert not [n for n in seen if n.split(".")[0] in ("zeros", "zeros_like", "new_zeros")], seen


def test_fused_resnet_generator_saves_at_most_0_6x_of_unfused():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 256, 256, requires_grad=True)
    unfused = saved_bytes(ResnetGenerator(n_blocks=9, fused=False), x)
    fused = saved_bytes(ResnetGenerator(n_blocks=9, fused=True), x)
    # The figure for the unfused 9-block generator: about 343 MiB.
    assert 320 * 2**20 < unfused < 370 * 2**20, unfused / 2**20
    assert fused <= 0.6 * unfused, (fused / 2**20, unfused / 2**20)


# --- CPU Winograd convolutions (NNPACK) ---------------------------------------------------
# Large float32 NCHW blocks on CPU run their 3x3 convolutions through ATen's NNPACK backend
# (Winograd F(6x6, 3x3)); docs/ops.md, "CPU convolutions".

needs_nnpack = pytest.mark.skipif(not torch.backends.nnpack.is_available(),
                                  reason="ATen's NNPACK backend is not usable on this CPU")

# F(6x6, 3x3) in float32 lands about 1.5e-5 of the largest value away from float64 (direct
# convolution: 3e-7); the bound leaves a factor of about 7 for the two convolutions and
# the norms of a block.
WINOGRAD_REL = 1e-4


def _large_block(shape, padding, affine, bias, seed=1):
    g = torch.Generator().manual_seed(seed)
    C = shape[1]
    x = torch.randn(*shape, generator=g, dtype=torch.float64) * 2 + 0.5
    p = _block_args(C, torch.float64, "cpu", affine, bias, g)
    p[0], p[2] = p[0] / 8, p[2] / 8   # weights of a trained scale for C = 128
    gy = torch.randn(*shape, generator=g, dtype=torch.float64)
    return x, p, gy


LARGE_CASES = [((1, 128, 48, 52), "reflect", False, True),   # CycleGAN block, H != W
               ((2, 128, 50, 48), "zero", True, False)]       # StarGAN block, batch 2


@needs_nnpack
@pytest.mark.parametrize("shape, padding, affine, bias", LARGE_CASES)
def test_cpu_winograd_forward_and_backward_accuracy(shape, padding, affine, bias):
    from pyganx.ops import cpu_winograd
    x64, p64, gy64 = _large_block(shape, padding, affine, bias)
    f32 = lambda t: None if t is None else t.float()  # noqa: E731
    x, p, gy = f32(x64), [f32(t) for t in p64], f32(gy64)
    args = lambda x, p: (x, *p, padding, 1e-5)  # noqa: E731
    with cpu_winograd(True):
        fw = torch.ops.pyganx._residual_block_forward(*args(x, p))
    with cpu_winograd(False):
        fd = torch.ops.pyganx._residual_block_forward(*args(x, p))
    y_ref = _reference.residual_block(x64, *p64, padding=padding)
    scale = y_ref.abs().max().item()
    err_w = (fw[0].double() - y_ref).abs().max().item()
    err_d = (fd[0].double() - y_ref).abs().max().item()
    assert err_w <= WINOGRAD_REL * scale, (err_w / scale)
    assert err_d <= 2e-6 * scale, (err_d / scale)
    # A different algorithm ran (the switch and the gate work): Winograd's rounding shows.
    assert not torch.equal(fw[0], fd[0]) and err_w > 4 * err_d
    # The backward, on the same saved tensors, against the direct backward. (End to end,
    # a ReLU input that Winograd's rounding moves across 0 flips that element's
    # gradient: both are right for the function each forward computed.)
    mask = [t is not None for t in (x, *p)]

    def backward(winograd):
        with cpu_winograd(winograd):
            return torch.ops.pyganx._residual_block_backward(gy, x, fw[0], *p, *fw[1:],
                                                             padding, 1e-5, mask)
    for name, a, b in zip(["x", "w1", "b1", "w2", "b2", "gamma1", "beta1", "gamma2", "beta2"],
                          backward(True), backward(False)):
        if b is None:
            continue
        s = b.abs().max().item()
        if name in ("b1", "b2"):   # exactly zero before a norm: only rounding noise
            continue
        err = (a - b).abs().max().item()
        assert err <= WINOGRAD_REL * s, f"grad {name}: {err / s:.3g} of its largest value"


@needs_nnpack
@pytest.mark.parametrize("shape, channels_last, dtype", [
    ((1, 64, 64, 64), False, torch.float32),     # fewer than 128 channels
    ((1, 128, 40, 64), False, torch.float32),    # a plane side below 48
    ((1, 128, 48, 48), True, torch.float32),     # channels_last
    ((1, 128, 48, 48), False, torch.float64),    # not float32
])
def test_cpu_winograd_leaves_other_blocks_alone(shape, channels_last, dtype):
    from pyganx.ops import cpu_winograd
    x64, p64, gy64 = _large_block(shape, "reflect", False, True)
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    x, p, gy = cast(x64), [cast(t) for t in p64], cast(gy64)
    if channels_last:
        x, gy = (t.contiguous(memory_format=torch.channels_last) for t in (x, gy))
    fn = lambda x, *p: residual_block(x, *p, padding="reflect")  # noqa: E731
    with cpu_winograd(True):
        y_on, g_on = _grads(fn, x, p, gy)
    with cpu_winograd(False):
        y_off, g_off = _grads(fn, x, p, gy)
    assert torch.equal(y_on, y_off)
    assert all(torch.equal(a, b) for a, b in zip(g_on, g_off))


def test_cpu_winograd_switch():
    from pyganx.ops import cpu_winograd, cpu_winograd_enabled, set_cpu_winograd
    start = cpu_winograd_enabled()
    with cpu_winograd(not start):
        assert cpu_winograd_enabled() is (not start)
    assert cpu_winograd_enabled() is start
    assert set_cpu_winograd(start) is start


def test_cpu_winograd_environment():
    # PYGANX_CPU_WINOGRAD=0 turns the Winograd path off for the process; importing pyganx
    # leaves OpenMP's settings alone, whether torch comes first or not (NNPACK runs on
    # OpenMP's own threads, so there is no second pool to tune spinning for).
    import os
    import subprocess
    import sys
    code = ("import os, sys\n"
            "if sys.argv[1] == 'torch-first': import torch\n"
            "import pyganx\n"
            "print(pyganx.ops.cpu_winograd_enabled(), os.environ.get('GOMP_SPINCOUNT'))")
    base = {k: v for k, v in os.environ.items()
            if k not in ("PYGANX_CPU_WINOGRAD", "GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}

    def run(order="pyganx-first", **env):
        out = subprocess.run([sys.executable, "-c", code, order], env={**base, **env},
                             capture_output=True, text=True, check=True)
        return out.stdout.split()
    assert run() == ["True", "None"]
    assert run(PYGANX_CPU_WINOGRAD="0") == ["False", "None"]
    assert run(GOMP_SPINCOUNT="500") == ["True", "500"]
    assert run("torch-first") == ["True", "None"]
