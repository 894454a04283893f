"""What the tests of pyganx.tuning share: a fresh tuning state with measuring on, and
blocks that hold the same weights in each implementation."""
from __future__ import annotations

import pytest
import torch

import pyganx
from pyganx import tuning
from pyganx.nn import ResidualBlock

needs_ext = pytest.mark.skipif(not pyganx.extension_available(), reason="needs the compiled extension")


@pytest.fixture(autouse=True)
def fresh_tuning(tmp_path, monkeypatch):
    """A cache of its own, and measuring on as users run (conftest turns it off for
    every other test)."""
    monkeypatch.setenv("PYGANX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PYGANX_TUNING", raising=False)
    mode, measuring = tuning.mode(), tuning.measuring()
    tuning.reset()
    tuning.set_measuring(True)
    yield
    tuning.reset()
    tuning.set_mode(mode)
    tuning.set_measuring(measuring)


def _block_twins(c=16, **kw):
    torch.manual_seed(0)
    auto = ResidualBlock(c, **kw)
    fused = ResidualBlock(c, fused=True, **kw)
    plain = ResidualBlock(c, fused=False, **kw)
    for m in (fused, plain):
        m.load_state_dict(auto.state_dict())
    return auto, fused, plain


def _block_params(block):
    c1, c2, n1, n2 = block._parts()
    return (c1.weight, c1.bias, c2.weight, c2.bias, n1.weight, n1.bias, n2.weight, n2.bias)
