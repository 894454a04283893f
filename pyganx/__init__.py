"""pyganx: fast, installable, extensible image GANs for PyTorch."""


from . import nn, ops
from ._extension import build_info, extension_available
from ._version import __version__
from .api import load_generator, train

__all__ = ["__version__", "build_info", "extension_available", "load_generator", "nn", "ops", "train"]
