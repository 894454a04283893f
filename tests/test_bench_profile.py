"""`pyganx bench profile`: what it counts, on CPU, and that the fused block's profile shows
what the fusion claims (no padded copy of the input, the pyganx ops doing the work)."""
from __future__ import annotations

import json

import torch
from conftest import requires_ext

from pyganx.bench import profile

pytestmark = requires_ext


def _names(fn, iters=2):
    calls, busy, entries = profile.profile_iterations(fn, torch.device("cpu"), iters, top=10_000)
    return calls, busy, {e["name"]: e for e in entries}


def test_block_profiles_show_the_fusion():
    its = profile.block_iterations((1, 8, 6, 7), torch.device("cpu"))
    for fn in its.values():
        fn()
    eager_calls, eager_busy, eager = _names(its["eager"])
    fused_calls, _, fused = _names(its["pyganx"])
    assert eager_busy is None                      # no device time on CPU
    # eager pads x and the activation with copies, forward, and pads back in backward
    assert eager["aten::reflection_pad2d"]["count"] == 2
    assert eager["aten::reflection_pad2d_backward"]["count"] == 2
    # the fused block: one forward op and one backward op per iteration, no padded copy
    assert fused["pyganx::_residual_block_forward"]["count"] == 1
    assert fused["pyganx::_residual_block_backward"]["count"] == 1
    assert "aten::reflection_pad2d" not in fused and "aten::native_batch_norm" not in fused
    # the counts are per iteration: the same for 2 and for 4 profiled iterations
    assert _names(its["pyganx"], iters=4)[0] == fused_calls
    shares = sum(e["share"] for e in fused.values())
    assert abs(shares - 1) < 1e-6


def test_cli_writes_both_cases(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert profile.main(["--device", "cpu", "--quick", "--iters", "1", "--rounds", "1", "--top", "3",
                         "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(p["case"].split()[0], p["variant"]) for p in rows["profiles"]] == [
        ("ResidualBlock", "eager"), ("ResidualBlock", "pyganx"),
        ("ResnetGenerator", "eager"), ("ResnetGenerator", "pyganx")]
    assert all(p["ms"] > 0 and p["calls"] > 0 and len(p["top"]) == 3 for p in rows["profiles"])
    assert rows["memory"] == []                    # the memory split is CUDA's
    assert "top entries by self time" in capsys.readouterr().out
