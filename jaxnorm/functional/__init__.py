"""Pure normalization and dropout functions: no Flax, no hidden state, no globals.

Scale and bias are arguments, running statistics are returned (never mutated) and
randomness is an explicit ``jax.random`` key, first argument.
"""

from jaxnorm.functional._stats import BatchStats, masked_moments, moments
from jaxnorm.functional.dropout import dropout
from jaxnorm.functional.normalization import batch_norm, layer_norm

__all__ = [
    "BatchStats",
    "batch_norm",
    "dropout",
    "layer_norm",
    "masked_moments",
    "moments",
]
