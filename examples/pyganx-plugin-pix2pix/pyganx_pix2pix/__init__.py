"""pix2pix for pyganx: a third-party plugin package written against pyganx's public API
(pyganx.plugin, pyganx.nn, pyganx.losses, pyganx.data) only.

Registered in pyproject.toml as ``pix2pix = "pyganx_pix2pix:Pix2Pix"`` in the
entry-point group ``pyganx.gans``; ``python -m pyganx_pix2pix.demo DIR`` writes a small
paired data set (edge maps -> photos) to train it on.
"""
from .networks import UNetGenerator, depth_for
from .plugin import Pix2Pix, Pix2PixConfig

__version__ = "0.1.0"

__all__ = ["Pix2Pix", "Pix2PixConfig", "UNetGenerator", "depth_for"]
