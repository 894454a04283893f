"""Shared test helpers: devices, tolerances, and the comparison against the float64
reference that every op test uses."""
from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import pytest
import torch

import pyganx
from pyganx import tuning
from pyganx.ops import cpu_winograd_enabled, set_cpu_winograd

# Tolerances, written down once.
# float32 and float64 results are compared with the float64 reference directly.
# float16/bfloat16 results may be off from the float64 reference by at most twice what
# PyTorch's own computation in that dtype is off, plus one unit of rounding of the
# largest value (so a case where PyTorch happens to be exact does not demand more than
# exact rounding).
DIRECT_TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=2e-5, atol=2e-5),
}
LOW_PRECISION = (torch.float16, torch.bfloat16)
ALL_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

requires_ext = pytest.mark.skipif(not pyganx.extension_available(),
                                  reason="pyganx._C is not built")


def devices() -> list[str]:
    devs = ["cpu"]
    if torch.cuda.is_available() and pyganx.build_info()["cuda"]:
        devs.append("cuda")
    return devs


def assert_matches_reference(ours: torch.Tensor, torch_same_dtype: torch.Tensor,
                             ref64: torch.Tensor, what: str = "output") -> None:
    """ours and torch_same_dtype computed in the test dtype, ref64 in float64."""
    assert ours.shape == ref64.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(ref64.shape)}"
    assert ours.dtype == torch_same_dtype.dtype
    dtype = ours.dtype
    o, r = ours.double().cpu(), ref64.double().cpu()
    assert torch.isfinite(o).all(), f"{what}: non-finite values"
    if dtype in DIRECT_TOL:
        torch.testing.assert_close(o, r, **DIRECT_TOL[dtype], msg=lambda m: f"{what}: {m}")
        return
    err_ours = (o - r).abs().max().item()
    err_torch = (torch_same_dtype.double().cpu() - r).abs().max().item()
    unit = torch.finfo(dtype).eps * r.abs().max().item()
    bound = 2 * err_torch + unit
    assert err_ours <= bound, (f"{what}: {dtype} max error {err_ours:.3g} exceeds 2 x PyTorch's "
                               f"{err_torch:.3g} + {unit:.3g}")


def assert_as_accurate(ours: torch.Tensor, plain: torch.Tensor, ref64: torch.Tensor, what: str = "output",
                       multiple: float = 4.0) -> None:
    """Two implementations compared the way pyganx.tuning's accuracy contract compares
    them: ``ours`` may be off the float64 reference ``ref64`` by at most ``multiple``
    times what plain PyTorch's result ``plain`` (same dtype) is off, plus one unit of
    rounding of the largest value. Neither is held to the other's rounding."""
    assert ours.shape == ref64.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(ref64.shape)}"
    o, p, r = (t.detach().double().cpu() for t in (ours, plain, ref64))
    assert torch.isfinite(o).all(), f"{what}: non-finite values"
    err, err_plain = (o - r).abs().max().item(), (p - r).abs().max().item()
    bound = multiple * err_plain + torch.finfo(ours.dtype).eps * r.abs().max().item()
    assert err <= bound, (f"{what}: {ours.dtype} max error {err:.3g} against float64 exceeds {multiple:g} x "
                          f"plain PyTorch's {err_plain:.3g} + one unit of rounding ({bound:.3g})")


@pytest.fixture(scope="session", autouse=True)
def classifier_cache(tmp_path_factory):
    """One cache of pyganx's self-trained metric classifiers for the whole session, kept
    out of the user's cache directory: the digit and domain judges train once."""
    d = tmp_path_factory.mktemp("pyganx-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("PYGANX_CACHE_DIR", str(d))
    yield d
    mp.undo()


@contextlib.contextmanager
def _isolated() -> Iterator[None]:
    """The baseline state, and afterwards the process-wide switches as they were."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    env = pytest.MonkeyPatch()
    env.setenv("PYGANX_TUNING", "0")
    env.delenv("PYGANX_IMPL", raising=False)
    saved = (tuning.mode(), tuning.measuring(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark,
             torch.get_num_threads(), cpu_winograd_enabled())
    tuning.reset()
    tuning.set_mode("auto")
    tuning.set_measuring(False)
    try:
        yield
    finally:
        env.undo()
        tuning.reset()
        tuning.set_mode(saved[0])
        tuning.set_measuring(saved[1])
        torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])
        torch.backends.cudnn.benchmark = saved[4]
        torch.set_num_threads(saved[5])
        set_cpu_winograd(saved[6])


@pytest.fixture(scope="module", autouse=True)
def isolated_module() -> Iterator[None]:
    """A test module's own fixtures (training runs shared by its tests) start from the
    same baseline as a test: pytest sets up module-scoped fixtures before function-scoped
    ones, and autouse fixtures before the others of their scope."""
    with _isolated():
        yield


@pytest.fixture(autouse=True)
def isolated_test() -> Iterator[None]:
    """Every test starts from the same state, whatever ran before it, so the suite passes
    in any order:

    - the random streams are seeded: Python's, NumPy's global one and torch's (0);
    - pyganx.tuning has forgotten every decision and does not measure: ``auto`` layers
      take the built-in gates, so the path a test runs never depends on timing or on
      which test measured a shape first (tests of measuring turn it on themselves;
      subprocesses inherit ``PYGANX_TUNING=0``, and ``PYGANX_IMPL`` is unset);
    - the process-wide switches a test or an in-process training run may change are put
      back afterwards: the implementation mode, deterministic algorithms, cuDNN's
      benchmark mode, the thread count and the residual block's CPU Winograd switch.

    :func:`isolated_module` does the same around each module's shared fixtures.
    """
    with _isolated():
        yield
