"""The one statistics path: per-feature count, mean and variance, stable and mergeable.

Every normalization in jaxnorm gets its mean and variance from :func:`moments` (or its
keep-dims core :func:`masked_moments`); they differ only in the axes they reduce.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxnorm import _checks


class BatchStats(NamedTuple):
  """Running statistics of a batch norm layer (float32, biased variance).

  Attributes:
    mean: running mean, one value per feature.
    var: running biased (population) variance, one value per feature.
  """

  mean: jax.Array
  var: jax.Array


def compute_dtype(dtype: Any) -> jnp.dtype:
  """The dtype reductions accumulate in: at least float32 (float64 stays float64)."""
  return jnp.promote_types(dtype, jnp.float32)


def _reference_point(x: jax.Array, axes: tuple[int, ...], mask: jax.Array | None):
  """A value of ``x`` per reduction group, used as the shift of the one-pass variance.

  Returns ``x`` at the first valid position along ``axes`` (kept as size-1 axes), or 0
  for groups with no valid element. Any sample of the group is within a few standard
  deviations of its mean, so ``sum((x - k)^2) - sum(x - k)^2 / n`` does not cancel
  catastrophically even when ``|mean| >> std``.
  """
  if mask is None:
    return x[tuple(slice(0, 1) if a in axes else slice(None) for a in range(x.ndim))]
  varying = tuple(a for a in axes if mask.shape[a] > 1)
  x0 = x[tuple(slice(0, 1) if a in axes and a not in varying else slice(None)
               for a in range(x.ndim))]
  if not varying:
    return jnp.where(mask, x0, 0)
  # Flatten the reduced axes on which the mask varies and find the first valid entry.
  kept_shape = tuple(1 if a in varying else mask.shape[a] for a in range(mask.ndim))
  flat = jnp.moveaxis(mask, varying, tuple(range(len(varying))))
  flat = flat.reshape((-1,) + flat.shape[len(varying):])
  first = jnp.argmax(flat, axis=0)
  valid = jnp.any(flat, axis=0).reshape(kept_shape)
  positions = jnp.unravel_index(first, tuple(mask.shape[a] for a in varying))
  for a, position in zip(varying, positions):
    x0 = jnp.take_along_axis(x0, position.reshape(kept_shape), axis=a)
  return jnp.where(valid, x0, 0)


def _valid_count(x_shape, axes, mask, dtype) -> jax.Array:
  """Number of valid elements per reduction group (size-1 axes where constant)."""
  if mask is None:
    return jnp.asarray(math.prod(x_shape[a] for a in axes), dtype)
  varying = tuple(a for a in axes if mask.shape[a] > 1)
  constant = math.prod(x_shape[a] for a in axes if mask.shape[a] == 1)
  return jnp.sum(mask, axis=varying, keepdims=True, dtype=dtype) * constant


def _merge_across_devices(count, mean, m2, axis_name, axis_index_groups):
  """Exact Chan merge of per-device (count, mean, centred second moment).

  ``n = sum n_i``, ``mean = sum n_i mean_i / n``,
  ``M2 = sum (M2_i + n_i (mean_i - mean)^2)``; devices with ``n_i = 0`` contribute
  nothing. Two small collectives over per-feature vectors.
  """
  count = jnp.broadcast_to(count, mean.shape)
  total, weighted = lax.psum(
      (count, count * mean), axis_name, axis_index_groups=axis_index_groups)
  global_mean = weighted / jnp.maximum(total, 1)
  global_m2 = lax.psum(
      m2 + count * jnp.square(mean - global_mean), axis_name,
      axis_index_groups=axis_index_groups)
  return total, global_mean, global_m2


def masked_moments(
    x: jax.Array,
    axes: tuple[int, ...],
    mask: jax.Array | None,
    axis_name: Any = None,
    axis_index_groups: Any = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Core of :func:`moments` on validated input: ``(mean, var, count)`` with kept dims.

  One pass over ``x`` with a per-group shift ``k`` (see :func:`_reference_point`):
  ``mean = k + S1 / n`` and ``M2 = S2 - S1^2 / n`` with ``S1 = sum(x - k)``,
  ``S2 = sum((x - k)^2)`` over valid elements; ``var = max(M2, 0) / n``. All in at
  least float32; groups with no valid element give mean 0 and variance 0.
  """
  dtype = compute_dtype(x.dtype)
  shift = lax.stop_gradient(_reference_point(x, axes, mask)).astype(dtype)
  centred = x.astype(dtype) - shift
  if mask is not None:
    centred = jnp.where(mask, centred, 0)
  count = _valid_count(x.shape, axes, mask, dtype)
  s1 = jnp.sum(centred, axis=axes, keepdims=True)
  s2 = jnp.sum(jnp.square(centred), axis=axes, keepdims=True)
  delta = s1 / jnp.maximum(count, 1)
  mean = shift + delta
  m2 = jnp.maximum(s2 - s1 * delta, 0)
  if axis_name is not None:
    count, mean, m2 = _merge_across_devices(count, mean, m2, axis_name, axis_index_groups)
  var = m2 / jnp.maximum(count, 1)
  return mean, var, count


def moments(
    x: jax.Array,
    axes: int | Sequence[int],
    *,
    mask: jax.Array | None = None,
    axis_name: Any = None,
    axis_index_groups: Any = None,
    keepdims: bool = False,
) -> tuple[jax.Array, jax.Array]:
  r"""Mean and biased variance of ``x`` over ``axes``, numerically stable and exact.

  .. math::
    \mu = \frac{1}{n} \sum_{i \in V} x_i, \qquad
    \sigma^2 = \frac{1}{n} \sum_{i \in V} (x_i - \mu)^2, \qquad n = |V|

  where :math:`V` is the set of valid elements (``mask`` true; all when ``mask`` is
  None). Computed in one pass with a data-dependent shift, so data with
  :math:`|\mu| \gg \sigma` keeps its variance (no :math:`E[x^2] - E[x]^2` cancellation).
  With ``axis_name`` the per-device counts, means and centred second moments are merged
  exactly (Chan et al., 1979), also when devices hold different numbers of valid
  elements.

  Args:
    x: floating-point input.
    axes: axis or axes to reduce.
    mask: boolean array broadcastable to ``x``; false elements are excluded exactly.
      A group with no valid element gets mean 0 and variance 0 (never NaN).
    axis_name: a mapped axis name (``pmap``/``shard_map``) to merge statistics over.
    axis_index_groups: device groups within ``axis_name``, as in ``lax.psum``.
    keepdims: keep the reduced axes with size 1.

  Returns:
    ``(mean, var)`` in ``x``'s dtype promoted to at least float32.

  References:
    Chan, Golub, LeVeque, "Updating formulae and a pairwise algorithm for computing
    sample variances", 1979.
  """
  fn = "jaxnorm.functional.moments"
  x = _checks.ensure_floating(x, name="x", fn=fn)
  axes = _checks.canonical_axes(axes, x.shape, name="axes", fn=fn)
  mask = _checks.check_mask(mask, x.shape, fn=fn)
  mean, var, _ = masked_moments(x, axes, mask, axis_name, axis_index_groups)
  if not keepdims:
    mean, var = jnp.squeeze(mean, axes), jnp.squeeze(var, axes)
  return mean, var
