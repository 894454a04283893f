"""The plugin registry and API: third-party plugin packages installed for real (pip
--no-deps into a temporary target on the path), listed by `pyganx plugins`, and every
failure reported per plugin without hiding the others."""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pyganx import registry
from pyganx.flags import add_dataclass_arguments, dataclass_from_arguments
from pyganx.plugin import API_VERSION, DataInfo, GANPlugin

PACKAGES = Path(__file__).parent / "plugin_packages"
REPO = Path(__file__).resolve().parents[1]


def _install(base: Path, target: Path, *names: str) -> Path:
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
           "--no-build-isolation", "--no-index", "--target", str(target)]
    cmd += [str(base / n) for n in names]
    subprocess.run(cmd, check=True, env=dict(os.environ, PIP_NO_CACHE_DIR="1"))
    return target


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(target with tiny, broken, oldapi; the same plus clash, which also claims 'tiny')."""
    base = tmp_path_factory.mktemp("plugins")
    for n in ("tiny", "clash", "broken", "oldapi"):
        # Built from copies: setuptools leaves build/ and *.egg-info beside the sources.
        shutil.copytree(PACKAGES / n, base / n)
    good = _install(base, base / "good", "tiny", "broken", "oldapi")
    clashing = _install(base, base / "clashing", "tiny", "broken", "oldapi", "clash")
    return good, clashing


def _pyganx(target: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), str(REPO)]))
    return subprocess.run([sys.executable, "-m", "pyganx", *args], capture_output=True,
                          text=True, env=env, timeout=120)


@pytest.fixture
def on_path(monkeypatch):
    def use(target: Path):
        monkeypatch.syspath_prepend(str(target))
        registry.refresh()
    yield use
    registry.refresh()


def test_pyganx_plugins_lists_a_third_party_plugin_and_reports_broken_ones(installed):
    good, _ = installed
    r = _pyganx(good, "plugins")
    assert r.returncode == 0, r.stderr
    lines = {line.split()[0]: line for line in r.stdout.splitlines()[1:]}
    assert "tiny" in lines and "unpaired" in lines["tiny"] and "pyganx-plugin-tiny 0.3.0" in lines["tiny"]
    assert "Tiny translator for tests." in lines["tiny"]
    # the broken plugin is reported with its distribution and the original error ...
    assert "pyganx-plugin-broken 0.0.1" in lines["broken"]
    assert "ModuleNotFoundError" in lines["broken"] and "a_module_that_does_not_exist" in lines["broken"]
    # ... and so is the one written for another API version
    assert "API version 99" in lines["oldapi"] and f"version {API_VERSION}" in lines["oldapi"]


def test_registry_loads_the_plugin_class_and_its_config(installed, on_path):
    on_path(installed[0])
    assert {"tiny", "broken", "oldapi"} <= set(registry.names())
    cls = registry.get("tiny")
    assert issubclass(cls, GANPlugin) and cls.data_kind == "unpaired"
    plugin = cls(cls.Config(width=2), DataInfo(channels=1, image_size=8))
    assert set(plugin.networks()) == {"G"}
    assert plugin.export_specs()["G"].inputs == ("image",)


def test_failures_are_clear_errors_and_do_not_hide_the_others(installed, on_path):
    on_path(installed[0])
    with pytest.raises(registry.PluginError, match=r"pyganx-plugin-broken 0\.0\.1.*failed to import"):
        registry.get("broken")
    with pytest.raises(registry.PluginError, match="written for pyganx plugin API version 99"):
        registry.get("oldapi")
    with pytest.raises(registry.PluginError, match=r"no GAN variant named 'nope'.*installed: .*tiny"):
        registry.get("nope")
    assert registry.get("tiny").__name__ == "TinyGAN"  # still fine after the failures


def test_pyganx_train_runs_a_third_party_plugin(installed, tmp_path):
    good, _ = installed
    r = _pyganx(good, "train", "tiny", "--demo", "digits", "--steps", "3", "--width", "2",
                "-o", str(tmp_path / "run"), "--no-progress", "--sample-every", "3")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "run" / "checkpoints" / "latest.txt").is_file()
    assert (tmp_path / "run" / "samples" / "step-000000003.png").is_file()
    assert len((tmp_path / "run" / "losses.csv").read_text().splitlines()) == 4


def test_two_distributions_claiming_one_name_is_an_error_naming_both(installed, on_path):
    on_path(installed[1])
    with pytest.raises(registry.PluginError) as err:
        registry.get("tiny")
    msg = str(err.value)
    assert "pyganx-plugin-tiny 0.3.0" in msg and "pyganx-plugin-clash 1.0.0" in msg
    assert registry.get("clash-ok").__name__ == "Other"   # the clash hides nothing else
    r = _pyganx(installed[1], "plugins")
    assert r.returncode == 0 and "also claimed by" in r.stdout


def test_config_fields_become_kebab_case_flags():
    @dataclass
    class Cfg:
        lambda_cycle: float = field(default=10.0, metadata={"help": "cycle weight"})
        n_blocks: int = 9
        flip: bool = True
        loss: str = "lsgan"

    ap = argparse.ArgumentParser()
    add_dataclass_arguments(ap, Cfg)
    cfg = dataclass_from_arguments(Cfg, ap.parse_args(["--lambda-cycle", "5", "--no-flip"]))
    assert cfg == Cfg(lambda_cycle=5.0, n_blocks=9, flip=False, loss="lsgan")
    assert "cycle weight (default: 10.0)" in ap.format_help()

    @dataclass
    class Bad:
        sizes: list = None

    with pytest.raises(TypeError, match="must be bool, int, float or str"):
        add_dataclass_arguments(argparse.ArgumentParser(), Bad)
