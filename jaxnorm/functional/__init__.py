"""Pure normalization and dropout functions: no Flax, no hidden state, no globals.

Scale and bias are arguments, running statistics are returned (never mutated) and
randomness is an explicit ``jax.random`` key, first argument.
"""

from jaxnorm.functional._stats import BatchStats, Moments, masked_moments, moments
from jaxnorm.functional.batch_variants import (
    BatchRenormStats, batch_renorm, ghost_batch_norm)
from jaxnorm.functional.composite import evonorm_b0, evonorm_s0, switch_norm
from jaxnorm.functional.dropout import dropout
from jaxnorm.functional.normalization import (
    batch_norm, group_norm, instance_norm, layer_norm, rms_norm)

__all__ = [
    "BatchRenormStats", "BatchStats", "Moments", "batch_norm", "batch_renorm", "dropout",
    "evonorm_b0", "evonorm_s0", "ghost_batch_norm", "group_norm", "instance_norm",
    "layer_norm", "masked_moments", "moments", "rms_norm", "switch_norm",
]
