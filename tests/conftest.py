"""Shared test helpers: devices, tolerances, and the comparison against the float64
reference that every op test uses."""
from __future__ import annotations

import pytest
import torch

import pyganx

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


@pytest.fixture(scope="session", autouse=True)
def classifier_cache(tmp_path_factory):
    """One cache of pyganx's self-trained metric classifiers for the whole session, kept
    out of the user's cache directory: the digit and domain judges train once."""
    d = tmp_path_factory.mktemp("pyganx-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("PYGANX_CACHE_DIR", str(d))
    yield d
    mp.undo()
