"""Declares plugin API version 99."""
from dataclasses import dataclass

from pyganx.plugin import GANPlugin


@dataclass
class OldConfig:
    x: int = 0


class Old(GANPlugin):
    """From the future."""

    api_version = 99
    Config = OldConfig
    data_kind = "noise"
