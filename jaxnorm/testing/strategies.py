"""hypothesis strategies for property tests of normalization and dropout layers.

Shapes with feature axes, masks with enough valid values, floating dtypes, drop rates
and well-conditioned input arrays. Needs ``hypothesis`` (``pip install
jaxnorm[testing]``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

#: The floating dtypes a layer should accept (float64 too when x64 is enabled).
FLOAT_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


@st.composite
def shapes_and_feature_axes(draw, *, min_dims: int = 2, max_dims: int = 4,
                            max_side: int = 6, max_feature_axes: int = 1,
                            min_reduced: int = 2) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """``(shape, feature_axes)``: a shape and sorted feature axes (kept by batch norm).

  The axes that are not feature axes hold at least ``min_reduced`` values together, so
  a training-mode batch variance exists.

  Example:
    >>> from hypothesis import given
    >>> from jaxnorm.testing import strategies
    >>> @given(strategies.shapes_and_feature_axes())
    ... def test_shapes(shape_and_axes):
    ...   shape, axes = shape_and_axes
    ...   assert 2 <= len(shape) <= 4 and len(axes) == 1
    >>> test_shapes()
  """
  ndim = draw(st.integers(min_dims, max_dims))
  shape = draw(st.lists(st.integers(1, max_side), min_size=ndim, max_size=ndim))
  count = draw(st.integers(1, max(1, min(max_feature_axes, ndim - 1))))
  axes = tuple(sorted(draw(st.permutations(range(ndim)))[:count]))
  reduced = [a for a in range(ndim) if a not in axes]
  if reduced and math.prod(shape[a] for a in reduced) < min_reduced:
    shape[reduced[0]] = max(shape[reduced[0]], min_reduced)
  return tuple(shape), axes


@st.composite
def masks(draw, shape: Sequence[int], *, reduce_axes: Sequence[int] | None = None,
          min_valid: int = 1) -> np.ndarray:
  """A boolean mask of ``shape`` with at least ``min_valid`` valid (True) elements in
  every slice over ``reduce_axes`` (default: all axes, i.e. in total).

  Example:
    >>> from hypothesis import given
    >>> from jaxnorm.testing import strategies
    >>> @given(strategies.masks((4, 3), reduce_axes=(0,), min_valid=2))
    ... def test_mask(mask):
    ...   assert (mask.sum(0) >= 2).all()
    >>> test_mask()
  """
  shape = tuple(shape)
  reduce_axes = tuple(range(len(shape))) if reduce_axes is None else tuple(
      a % len(shape) for a in reduce_axes)
  mask = draw(hnp.arrays(np.bool_, shape))
  first = list(range(len(reduce_axes)))
  moved = np.moveaxis(mask, reduce_axes, first)          # the reduced axes first
  flat = moved.reshape((-1,) + moved.shape[len(first):]).copy()
  flat[:min_valid] = True
  return np.moveaxis(flat.reshape(moved.shape), first, reduce_axes)


def float_dtypes(*, half: bool = True) -> st.SearchStrategy:
  """float32, and bfloat16/float16 with ``half``.

  Example:
    >>> from hypothesis import given
    >>> from jaxnorm.testing import strategies
    >>> @given(strategies.float_dtypes())
    ... def test_dtype(dtype):
    ...   assert dtype in strategies.FLOAT_DTYPES
    >>> test_dtype()
  """
  return st.sampled_from(FLOAT_DTYPES if half else FLOAT_DTYPES[:1])


def drop_rates(*, min_rate: float = 0.0, max_rate: float = 1.0,
               include_one: bool = False) -> st.SearchStrategy:
  """Drop probabilities in ``[min_rate, max_rate]`` (1 only with ``include_one``).

  Example:
    >>> from hypothesis import given
    >>> from jaxnorm.testing import strategies
    >>> @given(strategies.drop_rates(max_rate=0.5))
    ... def test_rate(rate):
    ...   assert 0.0 <= rate <= 0.5
    >>> test_rate()
  """
  exclude_max = max_rate >= 1.0 and not include_one
  return st.floats(min_rate, max_rate, exclude_max=exclude_max, allow_nan=False)


@st.composite
def well_conditioned_arrays(draw, shape: Sequence[int], *, dtype=jnp.float32,
                            max_offset: float = 10.0, min_scale: float = 0.5,
                            max_scale: float = 3.0) -> np.ndarray:
  """Gaussian data ``loc + scale * N(0, 1)`` of ``shape`` (a NumPy array of ``dtype``).

  ``loc`` is drawn from ``[-max_offset, max_offset]`` and ``scale`` from
  ``[min_scale, max_scale]``, so statistics are well defined and comparisons can use
  fixed tolerances; the values come from a drawn seed (hypothesis shrinks the seed,
  the location and the scale).

  Example:
    >>> from hypothesis import given
    >>> from jaxnorm.testing import strategies
    >>> @given(strategies.well_conditioned_arrays((8, 3)))
    ... def test_data(x):
    ...   assert x.shape == (8, 3) and x.std() > 0
    >>> test_data()
  """
  seed = draw(st.integers(0, 2**32 - 1))
  loc = draw(st.floats(-max_offset, max_offset, allow_nan=False))
  scale = draw(st.floats(min_scale, max_scale, allow_nan=False))
  values = loc + scale * np.random.default_rng(seed).normal(size=tuple(shape))
  return values.astype(np.float32).astype(dtype)
