"""Loads the compiled extension pyganx._C, or explains why it is not used.

The package works without it: every op falls back to its pure-PyTorch reference.
Set PYGANX_DISABLE_EXTENSION=1 to use the reference path on purpose.
"""
from __future__ import annotations

import importlib
import os
import warnings
from types import ModuleType
from typing import Any

import torch

from ._version import __version__

DISABLE_ENV = "PYGANX_DISABLE_EXTENSION"
REBUILD_HINT = "rebuild it with `pip install --no-build-isolation -e .` (or `make build`) in the pyganx checkout"

_module: ModuleType | None = None
_reason: str | None = None


def _load() -> None:
    global _module, _reason
    if os.environ.get(DISABLE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}:
        _reason = f"disabled by {DISABLE_ENV}"
        return
    try:
        from . import _build_meta  # written by setup.py next to the extension
    except ImportError:
        _reason = "the compiled extension pyganx._C has not been built"
        warnings.warn(f"pyganx: {_reason}; using the pure-PyTorch reference ops ({REBUILD_HINT})",
                      RuntimeWarning, stacklevel=3)
        return
    if _build_meta.TORCH_VERSION != torch.__version__:
        _reason = (f"pyganx._C was built against torch {_build_meta.TORCH_VERSION} but torch "
                   f"{torch.__version__} is installed")
        warnings.warn(f"pyganx: {_reason}; using the pure-PyTorch reference ops until you "
                      f"{REBUILD_HINT}", RuntimeWarning, stacklevel=3)
        return
    try:
        _module = importlib.import_module("pyganx._C")
    except ImportError as err:
        text = str(err)
        if "undefined symbol" in text or "version" in text.lower():
            _reason = f"pyganx._C does not match the installed torch {torch.__version__} ({text})"
        else:
            _reason = f"pyganx._C failed to load ({text})"
        warnings.warn(f"pyganx: {_reason}; using the pure-PyTorch reference ops; {REBUILD_HINT}",
                      RuntimeWarning, stacklevel=3)


_load()


def extension_available() -> bool:
    """Whether the compiled ops are loaded."""
    return _module is not None


def supports(device_type: str) -> bool:
    """Whether the compiled ops have kernels for this device type ('cpu', 'cuda', ...)."""
    if _module is None:
        return False
    if device_type == "cpu":
        return True
    if device_type == "cuda":
        return bool(_info()["cuda"])
    return False


_cached_info: dict[str, Any] | None = None


def _info() -> dict[str, Any]:
    global _cached_info
    if _cached_info is None:
        assert _module is not None
        _cached_info = dict(_module.build_info())
    return _cached_info


def build_info() -> dict[str, Any]:
    """How pyganx was built: package and torch versions, CUDA kernels, CPU kernels, compiler.

    ``extension`` is False (with ``reason``) where the compiled ops are not in use.
    """
    if _module is None:
        return {"version": __version__, "extension": False, "reason": _reason,
                "torch_version": None, "cuda": False, "cuda_version": None,
                "cuda_arch_list": None, "cpu_capabilities": None, "cpu_capability": None,
                "compiler": None, "runtime_torch_version": torch.__version__}
    info = dict(_info())
    info.update(extension=True, reason=None, runtime_torch_version=torch.__version__)
    return info
