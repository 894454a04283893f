"""The runtime's tests run without torch: the models they translate are exported by
pyganx beforehand (``make runtime-test`` runs tests/runtime_models.py in the main
environment and points ``PYGANX_TEST_MODELS`` at the folder). Where that variable is not
set and pyganx is installed (a developer's main environment), the models are exported
here instead."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NAMES = ("digits", "faces", "noise")


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    given = os.environ.get("PYGANX_TEST_MODELS")
    if given:
        folder = Path(given)
        missing = [n for n in NAMES if not (folder / f"{n}.onnx").is_file()]
        if missing:
            pytest.fail(f"PYGANX_TEST_MODELS={given} lacks {', '.join(missing)}.onnx: "
                        f"run `python tests/runtime_models.py {given}` in the main environment")
        return folder
    if importlib.util.find_spec("pyganx") is None:
        pytest.fail("these tests translate models that pyganx exports: set PYGANX_TEST_MODELS to a folder "
                    "written by tests/runtime_models.py (make runtime-test does), or run them where pyganx "
                    "is installed")
    sys.path.insert(0, str(REPO / "tests"))
    from runtime_models import export_models
    folder = tmp_path_factory.mktemp("runtime-models")
    export_models(folder)
    return folder


@pytest.fixture(scope="session")
def models(model_dir) -> dict[str, Path]:
    """A grey CycleGAN translator trained on the digits, a colour StarGAN with three
    domains (StarGAN's own code base's layout), and a DCGAN noise model."""
    return {n: model_dir / f"{n}.onnx" for n in NAMES}
