"""A plugin whose name 'tiny' clashes with another distribution's."""
from dataclasses import dataclass

from pyganx.plugin import GANPlugin


@dataclass
class OtherConfig:
    steps: int = 1


class Other(GANPlugin):
    """Another variant."""

    api_version = 1
    Config = OtherConfig
    data_kind = "unpaired"
