"""pyganx.tuning's record of a run (sessions and pins), its cache on disk (reuse,
corruption, unwritable folders, two writers at once), and a whole generator's choices."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import warnings

import torch
from tuning_support import _block_twins, fresh_tuning, needs_ext  # noqa: F401 - fixture

import pyganx
from pyganx import tuning
from pyganx.nn import ResnetGenerator


@needs_ext
def test_a_session_keeps_its_settings_record_and_pins_to_itself():
    auto, _, _ = _block_twins()
    x = torch.randn(1, 16, 12, 12)
    with torch.no_grad():
        auto(x)                                               # measured, outside any run
        (text, before), = tuning.decisions().items()
        other = "reference" if before.choice != "reference" else "fused"
        with tuning.session("auto", measuring=False):
            assert not tuning.measuring() and tuning.used() == {}
            tuning.pin({text: other})
            auto(x)
            assert tuning.used() == {text: other}
        assert tuning.measuring() and tuning.mode() == "auto"
        auto(x)                                               # the run's pin is gone
        assert tuning.decisions()[text] is before
        with tuning.session("reference"):
            assert tuning.mode() == "reference"
        assert tuning.mode() == "auto"


@needs_ext
def test_the_cache_is_reused_and_survives_corruption(tmp_path):
    auto, _, _ = _block_twins()
    x = torch.randn(1, 16, 12, 12)
    with torch.no_grad():
        auto(x)
    path = tuning.cache_path(x.device)
    data = json.loads(path.read_text())
    assert data["torch"] == torch.__version__ and data["pyganx"] == pyganx.__version__
    (text, entry), = data["decisions"].items()
    tuning.reset()
    with torch.no_grad():
        auto(x)
    assert tuning.decisions()[text].source == "cache"
    assert tuning.decisions()[text].choice == entry["choice"]

    for bad in ("{not json", json.dumps({**data, "device": "some other cpu"}), "[]"):
        path.write_text(bad)
        tuning.reset()
        tuning.state.STATE.warned.clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with torch.no_grad():
                auto(x)
        assert len([w for w in caught if "tuning cache" in str(w.message)]) == 1
        assert tuning.decisions()[text].source == "measured"
        assert text in json.loads(path.read_text())["decisions"]    # rewritten, valid


@needs_ext
def test_an_unwritable_cache_warns_once_and_keeps_going(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("PYGANX_CACHE_DIR", str(blocker / "sub"))    # a directory under a file
    auto, _, _ = _block_twins()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            auto(torch.randn(1, 16, 12, 12))
            auto(torch.randn(1, 16, 14, 14))
    assert len([w for w in caught if "cannot write the tuning cache" in str(w.message)]) == 1


_WRITER = """
import sys, torch
from pyganx import tuning
dev = torch.device("cpu")
for i in range(25):
    tuning.cache.store(dev, f"{sys.argv[1]} key {i}", tuning.Decision("fused", "measured", {"fused": 1.0}))
"""


def test_two_processes_writing_at_once_never_corrupt_the_cache(tmp_path):
    env = {**os.environ, "PYGANX_CACHE_DIR": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, name], env=env) for name in ("a", "b")]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    path = next((tmp_path / "cache" / "tuning").glob("*.json"))
    entries = json.loads(path.read_text())["decisions"]
    assert "a key 24" in entries or "b key 24" in entries
    assert all(e["choice"] == "fused" for e in entries.values())


@needs_ext
def test_resnet_generator_auto_matches_its_choices():
    """A whole generator in auto mode computes what its chosen implementations compute."""
    torch.manual_seed(0)
    g = ResnetGenerator(3, 3, 8, 2)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        y = g(x)
    pinned = tuning.used()
    assert {k.split("(")[0] for k in pinned} == {"instance_norm_relu", "residual_block"}
    # every layer run with the implementation recorded for it gives the same output
    tuning.reset()
    tuning.pin(pinned)
    with torch.no_grad():
        assert torch.equal(copy.deepcopy(g)(x), y)
    assert all(d.source == "run" for d in tuning.decisions().values())
    # and the whole generator in plain PyTorch agrees within float32 rounding
    plain = ResnetGenerator(3, 3, 8, 2, fused=False)
    plain.load_state_dict(g.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(plain(x), y, rtol=1e-4, atol=1e-5)
