"""Pure normalization and dropout functions: no Flax, no hidden state, no globals.

Scale and bias are arguments, running statistics are returned (never mutated) and
randomness is an explicit ``jax.random`` key, first argument.
"""

from jaxnorm.functional._stats import BatchStats, Moments, masked_moments, moments
from jaxnorm.functional.batch_variants import (
    BatchRenormStats, batch_renorm, ghost_batch_norm)
from jaxnorm.functional.composite import evonorm_b0, evonorm_s0, switch_norm
from jaxnorm.functional.stochastic import (
    alpha_dropout, classic_dropout, concrete_dropout, concrete_dropout_regularizer,
    drop_path, drop_path_rates, dropout, gaussian_dropout, r_drop_loss, spatial_dropout)
from jaxnorm.functional.normalization import (
    batch_norm, group_norm, instance_norm, layer_norm, rms_norm)
from jaxnorm.functional.revin import RevINStats, revin_denormalize, revin_normalize
from jaxnorm.functional.structured_dropout import (
    attention_dropout, patch_drop, token_dropout)
from jaxnorm.functional.whitening import (
    WhiteningStats, decorrelated_batch_norm, init_whitening_stats, iter_norm)

__all__ = [
    "BatchRenormStats", "BatchStats", "Moments", "alpha_dropout", "batch_norm",
    "batch_renorm", "classic_dropout", "concrete_dropout", "concrete_dropout_regularizer",
    "drop_path", "drop_path_rates", "dropout", "evonorm_b0", "evonorm_s0",
    "gaussian_dropout", "ghost_batch_norm", "group_norm", "instance_norm", "layer_norm",
    "masked_moments", "moments", "r_drop_loss", "rms_norm", "spatial_dropout",
    "switch_norm",
    # whitening, reversible instance norm, structured dropout for attention models
    "RevINStats", "WhiteningStats", "attention_dropout", "decorrelated_batch_norm",
    "init_whitening_stats", "iter_norm", "patch_drop", "revin_denormalize",
    "revin_normalize", "token_dropout",
]
