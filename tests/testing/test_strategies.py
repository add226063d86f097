"""jaxnorm.testing.strategies generate what they promise, and drive property tests of
jaxnorm's own layers."""

import math

import jax.numpy as jnp
import numpy as np
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxnorm import nnx as jnnx
from jaxnorm import testing
from jaxnorm.testing import strategies

FAST = settings(max_examples=30, deadline=None)


@FAST
@given(strategies.shapes_and_feature_axes(max_feature_axes=2, min_reduced=3))
def test_shapes_and_feature_axes(shape_and_axes):
  shape, axes = shape_and_axes
  assert 2 <= len(shape) <= 4 and 1 <= len(axes) <= 2
  assert list(axes) == sorted(set(axes)) and all(0 <= a < len(shape) for a in axes)
  assert math.prod(n for a, n in enumerate(shape) if a not in axes) >= 3


@FAST
@given(st.data())
def test_masks_keep_enough_valid_values(data):
  shape = data.draw(st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple))
  axes = data.draw(st.sets(st.integers(0, len(shape) - 1), min_size=1).map(tuple))
  mask = data.draw(strategies.masks(shape, reduce_axes=axes, min_valid=2))
  assert mask.shape == shape and mask.dtype == np.bool_
  count = mask.sum(axis=axes)
  assert np.all(count >= min(2, math.prod(shape[a] for a in axes)))


@FAST
@given(strategies.drop_rates(), strategies.drop_rates(min_rate=0.2, max_rate=0.4),
       strategies.float_dtypes())
def test_rates_and_dtypes(rate, bounded, dtype):
  assert 0.0 <= rate < 1.0 and 0.2 <= bounded <= 0.4
  assert dtype in (jnp.float32, jnp.bfloat16, jnp.float16)


@FAST
@given(strategies.well_conditioned_arrays((16, 3), dtype=jnp.bfloat16, max_offset=5.0))
def test_well_conditioned_arrays(x):
  assert x.shape == (16, 3) and x.dtype == jnp.bfloat16
  values = x.astype(np.float32)
  assert np.all(np.isfinite(values)) and np.all(np.abs(values) < 5.0 + 3.0 * 8)


@settings(max_examples=5, deadline=None)
@given(st.data())
def test_batch_norm_properties_on_drawn_shapes(data):
  shape, axes = data.draw(strategies.shapes_and_feature_axes(max_side=4, min_reduced=4))
  x = data.draw(strategies.well_conditioned_arrays(shape))
  features = math.prod(shape[a] for a in axes)
  layer = jnnx.BatchNorm(features, axis=axes, rngs=nnx.Rngs(0))
  reduced = tuple(a for a in range(len(shape)) if a not in axes)
  testing.assert_normalized(layer, jnp.asarray(x), axes=reduced, atol=2e-3)
  testing.assert_stats_updated(layer, jnp.asarray(x))
