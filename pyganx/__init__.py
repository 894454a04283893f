"""pyganx: fast, installable, extensible image GANs for PyTorch."""


from ._version import __version__
from ._extension import build_info, extension_available
from . import ops, nn
from .api import load_generator, train

__all__ = ["__version__", "build_info", "extension_available", "load_generator", "nn", "ops", "train"]
