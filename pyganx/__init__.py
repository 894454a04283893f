"""pyganx: fast, installable, extensible image GANs for PyTorch."""


def _shorten_openmp_spin() -> None:
    """Before torch (and with it libgomp) is loaded: let idle OpenMP threads sleep after
    30,000 spins instead of libgomp's default 300,000 (several ms here). The CPU residual
    block alternates oneDNN and instance-norm kernels (OpenMP) with NNPACK's Winograd
    convolutions (their own thread pool); with the default, OpenMP workers still spin
    while NNPACK runs and take the cores from it (12.5 -> 19.4 ms per convolution on 2
    cores). A user's own GOMP_SPINCOUNT / OMP_WAIT_POLICY, PYGANX_CPU_WINOGRAD=0, or torch
    imported before pyganx leave everything as it is (docs/ops.md, "CPU convolutions")."""
    import os
    import sys
    if "torch" in sys.modules or "GOMP_SPINCOUNT" in os.environ or "OMP_WAIT_POLICY" in os.environ:
        return
    if os.environ.get("PYGANX_CPU_WINOGRAD") == "0":   # as cpu_winograd_enabled() reads it
        return
    os.environ["GOMP_SPINCOUNT"] = "30000"
    global _SPINCOUNT_SET
    _SPINCOUNT_SET = True


_SPINCOUNT_SET = False   # whether the GOMP_SPINCOUNT in os.environ is pyganx's own
_shorten_openmp_spin()

from ._version import __version__
from ._extension import build_info, extension_available
from . import ops, nn
from .api import load_generator, train

__all__ = ["__version__", "build_info", "extension_available", "load_generator", "nn", "ops", "train"]
