"""Building blocks and networks of pyganx."""
from .networks import (
                       DCGANDiscriminator,
                       DCGANGenerator,
                       PatchDiscriminator,
                       PatchSampleMLP,
                       ResidualBlock,
                       ResnetGenerator,
                       StarGANDiscriminator,
                       StarGANGenerator,
                       count_parameters,
                       init_weights,
                       one_hot,
)
from .norm import InstanceNormReLU

__all__ = ["InstanceNormReLU", "ResidualBlock", "ResnetGenerator", "PatchDiscriminator", "PatchSampleMLP",
           "StarGANGenerator", "StarGANDiscriminator", "DCGANGenerator", "DCGANDiscriminator",
           "init_weights", "count_parameters", "one_hot"]
