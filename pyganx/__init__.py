"""pyganx: fast, installable, extensible image GANs for PyTorch."""
from ._version import __version__
from ._extension import build_info, extension_available
from . import ops, nn

__all__ = ["__version__", "build_info", "extension_available", "ops", "nn"]
