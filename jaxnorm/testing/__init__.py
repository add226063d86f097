"""Property-testing kit for models with normalization and dropout layers.

chex-style assertions that work on linen and NNX models alike — outputs normalized,
invariance to a per-feature affine map, running statistics that move (training) or do
not (evaluation, frozen), deterministic evaluation, evaluation equal to training mode
after precise-BN, gradients equal to those of the plain formula — and ``strategies``,
hypothesis strategies for shapes with feature axes, masks, dtypes, drop rates and
well-conditioned data (imported on first use; needs ``pip install jaxnorm[testing]``).

Example:
  >>> import jax
  >>> from flax import nnx
  >>> from jaxnorm import nnx as jnnx, testing
  >>> layer = jnnx.BatchNorm(4, rngs=nnx.Rngs(0))
  >>> x = jax.random.normal(jax.random.key(0), (8, 4)) + 1.0
  >>> testing.assert_normalized(layer, x, axes=0)
  >>> testing.assert_stats_updated(layer, x)
"""

import importlib

from jaxnorm.testing.assertions import (
    assert_affine_invariant, assert_eval_deterministic, assert_grad_matches_reference,
    assert_normalized, assert_precise_bn_consistent, assert_stats_unchanged,
    assert_stats_updated)

__all__ = [
    "assert_affine_invariant", "assert_eval_deterministic", "assert_grad_matches_reference",
    "assert_normalized", "assert_precise_bn_consistent", "assert_stats_unchanged",
    "assert_stats_updated", "strategies",
]


def __getattr__(name):
  if name == "strategies":
    return importlib.import_module("jaxnorm.testing.strategies")
  raise AttributeError(f"module 'jaxnorm.testing' has no attribute {name!r}")
