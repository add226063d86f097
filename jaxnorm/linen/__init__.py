"""Flax linen front-end: thin modules that create variables and call jaxnorm.functional.

Each module is a drop-in for its ``flax.linen`` namesake: same arguments, variable
collections and names, and rng stream, so swapping the import keeps checkpoints loadable.
"""

from jaxnorm.linen.normalization import BatchNorm, LayerNorm
from jaxnorm.linen.stochastic import Dropout

__all__ = ["BatchNorm", "Dropout", "LayerNorm"]
