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

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxnorm import functional as F
    >>> stats = F.BatchStats(mean=jnp.zeros(3), var=jnp.ones(3))   # a fresh layer's
    >>> x = jnp.arange(12.0).reshape(4, 3)           # batch mean 4.5.., variance 11.25
    >>> _, stats = F.batch_norm(x, None, None, stats, train=True, momentum=0.5)
    >>> stats                                        # 0.5 * old + 0.5 * batch
    BatchStats(mean=Array([2.25, 2.75, 3.25], dtype=float32),
               var=Array([6.125, 6.125, 6.125], dtype=float32))
  """

  mean: jax.Array
  var: jax.Array


def compute_dtype(dtype: Any) -> jnp.dtype:
  """The dtype reductions accumulate in: at least float32 (float64 stays float64)."""
  return jnp.promote_types(dtype, jnp.float32)


_SUBSAMPLE_SIZE = 64


def _subsample_slices(shape, axes) -> tuple[slice, ...]:
  """Slices picking about ``_SUBSAMPLE_SIZE`` positions over ``axes``.

  Spread out (strided) along outer axes; contiguous along the last (minor) axis, where
  a stride would touch every cache line and cost a full read of ``x``.
  """
  slices = [slice(None)] * len(shape)
  budget = _SUBSAMPLE_SIZE
  for a in sorted(axes, key=lambda a: -shape[a]):
    take = max(1, min(shape[a], budget))
    step = 1 if a == len(shape) - 1 else -(-shape[a] // take)
    slices[a] = slice(0, step * take, step)
    budget = max(1, budget // take)
  return tuple(slices)


def _first_valid(x: jax.Array, axes: tuple[int, ...], mask: jax.Array) -> jax.Array:
  """``x`` at the first valid position along ``axes`` (kept as size 1), 0 if none."""
  varying = tuple(a for a in axes if mask.shape[a] > 1)
  x0 = x[tuple(slice(0, 1) if a in axes and a not in varying else slice(None)
               for a in range(x.ndim))]
  if not varying:
    return jnp.where(mask, x0, 0)
  kept_shape = tuple(1 if a in varying else mask.shape[a] for a in range(mask.ndim))
  flat = jnp.moveaxis(mask, varying, tuple(range(len(varying))))
  flat = flat.reshape((-1,) + flat.shape[len(varying):])
  valid = jnp.any(flat, axis=0).reshape(kept_shape)
  positions = jnp.unravel_index(jnp.argmax(flat, axis=0),
                                tuple(mask.shape[a] for a in varying))
  for a, position in zip(varying, positions):
    x0 = jnp.take_along_axis(x0, position.reshape(kept_shape), axis=a)
  return jnp.where(valid, x0, 0)


def _reference_point(x: jax.Array, axes: tuple[int, ...], mask: jax.Array | None):
  """A cheap estimate of each group's mean: the shift of the one-pass variance.

  The mean of a strided subsample of about 64 valid values per group (kept as size-1
  axes); where the subsample holds no valid value, the first valid value; 0 for a
  group with none. With shift ``k``, ``sum((x-k)^2) - sum(x-k)^2 / n`` loses about
  ``eps * (mean - k)^2 / var`` relative precision, so ``k`` must be within a few
  standard deviations of the mean: a subsample mean is, even with an outlier in it.
  """
  dtype = compute_dtype(x.dtype)
  slices = _subsample_slices(x.shape, axes)
  sample = x[slices].astype(dtype)
  if mask is None:
    return jnp.mean(sample, axis=axes, keepdims=True)
  sample_mask = jnp.broadcast_to(mask, tuple(
      x.shape[a] if a in axes else mask.shape[a] for a in range(x.ndim)))[slices]
  count = jnp.sum(sample_mask, axis=axes, keepdims=True, dtype=dtype)
  total = jnp.sum(jnp.where(sample_mask, sample, 0), axis=axes, keepdims=True)
  return jnp.where(count > 0, total / jnp.maximum(count, 1),
                   _first_valid(x, axes, mask).astype(dtype))


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
  total, weighted = _psum((count, count * mean), axis_name, axis_index_groups)
  global_mean = weighted / jnp.maximum(total, 1)
  global_m2 = _psum(m2 + count * jnp.square(mean - global_mean), axis_name,
                    axis_index_groups)
  return total, global_mean, global_m2


class Moments(NamedTuple):
  """Statistics with kept dims; ``x - mean`` is computed as ``(x - shift) - delta``.

  ``shift`` is close to ``x`` and ``delta = mean - shift`` is small, so no rounding of
  a large mean enters the normalized values. ``mean`` is the mean itself (identical on
  every device after a cross-device merge).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxnorm import functional as F
    >>> m = F.masked_moments(1e4 + jnp.array([[1.0], [-1.0]]), (0,), None)
    >>> m._fields
    ('shift', 'delta', 'mean', 'var', 'count')
    >>> float(m.mean[0, 0]), float(m.var[0, 0]), float(m.count[0, 0])
    (10000.0, 1.0, 2.0)
  """

  shift: jax.Array
  delta: jax.Array
  mean: jax.Array
  var: jax.Array
  count: jax.Array


def _psum(value, axis_name, axis_index_groups):
  """``lax.psum`` that says which transform is missing when ``axis_name`` is unbound."""
  try:
    return lax.psum(value, axis_name, axis_index_groups=axis_index_groups)
  except NameError as error:
    raise ValueError(
        f"jaxnorm: axis_name={axis_name!r} is not bound here ({error}). Statistics across "
        f"devices need the call to run inside jax.shard_map (mesh axis {axis_name!r}), "
        f"jax.pmap(..., axis_name={axis_name!r}) or jax.vmap(..., axis_name="
        f"{axis_name!r}); under plain jax.jit with sharded inputs leave axis_name=None "
        "(XLA inserts the collectives).") from error


def centred_moments(
    x: jax.Array,
    axes: tuple[int, ...],
    mask: jax.Array | None,
    axis_name: Any = None,
    axis_index_groups: Any = None,
    center: bool = True,
) -> tuple[jax.Array, Moments]:
  """``(c, stats)`` with ``c = x - stats.shift`` in the statistics' dtype.

  One pass over ``x`` with a per-group shift ``k`` (see :func:`_reference_point`):
  ``mean = k + S1 / n`` and ``M2 = S2 - S1^2 / n`` with ``S1 = sum(c)``,
  ``S2 = sum(c^2)``, ``c = x - k``, over valid elements; ``var = max(M2, 0) / n``. All
  in at least float32; groups with no valid element give mean 0 and variance 0. With
  ``center=False`` the moments are about zero (``c = x``, mean 0, ``var = mean(x^2)``,
  as RMS norm needs).

  ``c`` is returned so that callers normalize (and differentiate) from it: XLA:CPU's
  fast reductions take no broadcast operand, so reducing ``c`` (written once) is
  cheaper than reducing ``x - k`` in several places.
  """
  dtype = compute_dtype(x.dtype)
  if center:
    shift = lax.stop_gradient(_reference_point(x, axes, mask))
    centred = x.astype(dtype) - shift
  else:
    centred = x.astype(dtype)
  valid = centred if mask is None else jnp.where(mask, centred, 0)
  count = _valid_count(x.shape, axes, mask, dtype)
  s1 = jnp.sum(valid, axis=axes, keepdims=True)
  s2 = jnp.sum(jnp.square(valid), axis=axes, keepdims=True)
  if not center:
    if axis_name is not None:
      count, s2 = _psum((jnp.broadcast_to(count, s2.shape), s2), axis_name,
                        axis_index_groups)
    zeros = jnp.zeros_like(s2)
    count = jnp.broadcast_to(count, s2.shape)
    return centred, Moments(zeros, zeros, zeros, s2 / jnp.maximum(count, 1), count)
  delta = s1 / jnp.maximum(count, 1)
  m2 = jnp.maximum(s2 - s1 * delta, 0)
  mean = shift + delta
  if axis_name is not None:
    count, mean, m2 = _merge_across_devices(count, mean, m2, axis_name, axis_index_groups)
    delta = mean - shift  # the global mean relative to this device's shift: c stays valid
  count = jnp.broadcast_to(count, delta.shape)
  return centred, Moments(shift, delta, mean, m2 / jnp.maximum(count, 1), count)


def masked_moments(
    x: jax.Array,
    axes: tuple[int, ...],
    mask: jax.Array | None,
    axis_name: Any = None,
    axis_index_groups: Any = None,
    center: bool = True,
) -> Moments:
  """Core of :func:`moments` on validated input, with kept dims (see
  :func:`centred_moments`).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxnorm import functional as F
    >>> x = jnp.arange(12.0).reshape(4, 3)
    >>> m = F.masked_moments(x, (0,), jnp.arange(4)[:, None] < 2)  # the first two rows
    >>> m.mean, m.count                              # kept dims, valid counts
    (Array([[1.5, 2.5, 3.5]], dtype=float32), Array([[2., 2., 2.]], dtype=float32))
  """
  return centred_moments(x, axes, mask, axis_name, axis_index_groups, center)[1]


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

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxnorm import functional as F
    >>> x = 1e4 + jnp.array([[1.0, 2.0], [-1.0, -2.0]])   # large mean, small spread
    >>> F.moments(x, 0)                                  # no E[x^2] - E[x]^2 cancellation
    (Array([10000., 10000.], dtype=float32), Array([1., 4.], dtype=float32))

  References:
    Chan, Golub, LeVeque, "Updating formulae and a pairwise algorithm for computing
    sample variances", 1979.
  """
  fn = "jaxnorm.functional.moments"
  x = _checks.ensure_floating(x, name="x", fn=fn)
  axes = _checks.canonical_axes(axes, x.shape, name="axes", fn=fn)
  mask = _checks.check_mask(mask, x.shape, fn=fn)
  stats = masked_moments(x, axes, mask, axis_name, axis_index_groups)
  mean, var = stats.mean, stats.var
  if not keepdims:
    mean, var = jnp.squeeze(mean, axes), jnp.squeeze(var, axes)
  return mean, var
