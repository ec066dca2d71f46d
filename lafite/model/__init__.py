"""LAFITE's networks: the conditional StyleGAN2 generator and the two-headed discriminator."""

from lafite.model.discriminator import Discriminator
from lafite.model.generator import Generator, count_parameters

__all__ = ["Discriminator", "Generator", "count_parameters"]
