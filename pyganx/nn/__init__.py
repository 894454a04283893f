"""Building blocks and networks of pyganx."""
from .norm import InstanceNormReLU

__all__ = ["InstanceNormReLU"]
