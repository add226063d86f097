"""The one statistics path: per-feature count, mean and variance, stable and mergeable.

Every normalization in jaxnorm gets its mean and variance from :func:`moments` (or its
keep-dims core :func:`masked_moments` / :func:`centred_moments`); they differ only in
the axes they reduce.

Each group of values is brought to a common scale before anything is squared:
``c = x * 2**-E - k`` with ``2**E`` just above the largest magnitude of a small
subsample of the group and ``k`` a shift near the group's mean (in the same units).
Multiplying by a power of two is exact, so data of any magnitude (std 1e30 or 1e-30,
subnormals) keeps its precision, and the shifted one-pass sums keep the variance of data
with ``|mean| >> std``. Values far beyond the subsample (more than ``2**62`` times its
largest) would overflow the sum of squares; that is detected on the sums and repaired
by a second pass in units ``2**F`` times larger (``lax.cond``: free when not needed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxnorm import _checks
from jaxnorm.functional._compiled import compiled


class BatchStats(NamedTuple):
  """Running statistics of a batch norm layer (float32, biased variance).

  For complex inputs the mean is complex64 (the variance stays float32), as in flax.

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
  """The dtype reductions accumulate in: at least float32 (float64 and complex stay)."""
  return jnp.promote_types(dtype, jnp.float32)


def real_dtype(dtype: Any) -> jnp.dtype:
  """The real dtype of ``dtype`` (float32 for complex64)."""
  return jnp.finfo(dtype).dtype


def _int_dtype(dtype):
  return jnp.int32 if jnp.dtype(dtype).itemsize == 4 else jnp.int64


def pow2(exponent: jax.Array, dtype: Any) -> jax.Array:
  """``2.0 ** exponent`` exactly, for integer exponents in the normal range of ``dtype``.

  Built from the bits (no ``pow``), so it costs a shift and an add when XLA fuses it
  into an elementwise loop.
  """
  info = jnp.finfo(dtype)
  bias = info.maxexp - 1
  bits = (exponent.astype(_int_dtype(dtype)) + bias) << info.nmant
  return lax.bitcast_convert_type(bits, info.dtype)


def _exponent_above(magnitude: jax.Array) -> jax.Array:
  """The integer ``E`` with ``magnitude < 2**E`` (``magnitude >= 0``), clipped so that
  ``2**E`` and ``2**-E`` are normal numbers; ``E = 0`` for a magnitude of 0."""
  info = jnp.finfo(magnitude.dtype)
  bias = info.maxexp - 1
  biased = lax.bitcast_convert_type(magnitude, _int_dtype(magnitude.dtype)) >> info.nmant
  limit = bias - 1
  exponent = jnp.clip(biased - (bias - 1), -limit, limit)
  return jnp.where(magnitude > 0, exponent, 0)


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
    step = 1 if a == len(shape) - 1 else max(1, -(-shape[a] // take))
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


def _parts(z: jax.Array) -> tuple[jax.Array, ...]:
  """``(z,)`` for a real array, ``(real, imag)`` for a complex one."""
  return (z.real, z.imag) if jnp.iscomplexobj(z) else (z,)


def _join(parts, dtype):
  return parts[0] if len(parts) == 1 else lax.complex(*parts).astype(dtype)


def abs_square(z: jax.Array) -> jax.Array:
  """``|z|**2``, real (``re**2 + im**2`` for complex ``z``)."""
  return sum(jnp.square(p) for p in _parts(z))


def _magnitude(x: jax.Array) -> jax.Array:
  """``|x|`` (``max(|re|, |im|)`` for complex ``x``), in ``x``'s dtype."""
  if jnp.iscomplexobj(x):
    return jnp.maximum(jnp.abs(x.real), jnp.abs(x.imag))
  return jnp.abs(x)


def _reference_point(x: jax.Array, axes: tuple[int, ...], mask):
  """Per group, ``(E, k)``: the scale exponent and the shift, from a cheap subsample.

  ``2**E`` is just above the largest valid magnitude of a strided subsample of about 64
  values per group (kept as size-1 axes), never below 1 (``E >= 0``: no value is ever
  scaled up, so none can overflow). ``k`` (in units of ``2**E``) is the subsample's mean,
  or its value itself when all its values are equal (so a constant group is shifted
  exactly to 0); where the subsample holds no valid value, the first valid value; 0 for
  a group with none. With shift ``k``, ``sum(c^2) - sum(c)^2 / n`` loses about
  ``eps * (mean - k)^2 / var`` relative precision, so ``k`` must be within a few
  standard deviations of the mean: a subsample mean is, even with an outlier in it.
  Complex values are handled per component.
  """
  dtype = compute_dtype(x.dtype)
  real = real_dtype(dtype)
  slices = _subsample_slices(x.shape, axes)
  sample = x[slices].astype(dtype)
  if mask is None:
    sample_mask = None
    first = None
  else:
    sample_mask = jnp.broadcast_to(mask, tuple(
        x.shape[a] if a in axes else mask.shape[a] for a in range(x.ndim)))[slices]
    first = _first_valid(x, axes, mask).astype(dtype)
  magnitude = _magnitude(sample)
  if sample_mask is not None:
    magnitude = jnp.where(sample_mask, magnitude, 0)
  largest = jnp.max(magnitude, axis=axes, keepdims=True, initial=0)
  if first is not None:
    largest = jnp.maximum(largest, _magnitude(first))
  exponent = jnp.maximum(_exponent_above(largest.astype(real)), 0)
  sample = sample / pow2(exponent, real)
  if sample_mask is None:
    def point(s):
      lo, hi = jnp.min(s, axes, keepdims=True), jnp.max(s, axes, keepdims=True)
      return jnp.where(lo == hi, hi, jnp.mean(s, axis=axes, keepdims=True))
    return exponent, _join([point(s) for s in _parts(sample)], dtype)
  count = jnp.sum(sample_mask, axis=axes, keepdims=True, dtype=real)

  def masked_point(s):
    inf = jnp.asarray(jnp.inf, s.dtype)
    lo = jnp.min(jnp.where(sample_mask, s, inf), axes, keepdims=True, initial=inf)
    hi = jnp.max(jnp.where(sample_mask, s, -inf), axes, keepdims=True, initial=-inf)
    mean = jnp.sum(jnp.where(sample_mask, s, 0), axis=axes, keepdims=True) / jnp.maximum(
        count, 1)
    return jnp.where(lo == hi, hi, mean)

  point = _join([masked_point(s) for s in _parts(sample)], dtype)
  return exponent, jnp.where(count > 0, point, first / pow2(exponent, real))


def _valid_count(x_shape, axes, mask, dtype) -> jax.Array:
  """Number of valid elements per reduction group (size-1 axes where constant)."""
  if mask is None:
    return jnp.asarray(math.prod(x_shape[a] for a in axes), dtype)
  varying = tuple(a for a in axes if mask.shape[a] > 1)
  constant = math.prod(x_shape[a] for a in axes if mask.shape[a] == 1)
  return jnp.sum(mask, axis=varying, keepdims=True, dtype=dtype) * constant


class Moments(NamedTuple):
  """Statistics of each group, with kept dims.

  The centred values are ``c = x * scale - shift`` (``scale = 2**-E``, exact) and
  ``delta`` is their mean, so ``x - mean = (c - delta) / scale``. ``var_c`` is the
  variance of ``c * factor``: ``factor`` is 1 except for groups with values so far beyond
  the subsample that ``sum(c^2)`` overflowed (then a power of two far below 1), so
  ``var = var_c / (scale * factor)**2`` (which may overflow to inf, e.g. std > ~1e19 in
  float32, while ``var_c`` stays exact). ``mean`` and ``var`` are in the units of ``x``
  and identical on every device after a cross-device merge.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxnorm import functional as F
    >>> m = F.masked_moments(1e4 + jnp.array([[1.0], [-1.0]]), (0,), None)
    >>> float(m.mean[0, 0]), float(m.var[0, 0]), float(m.count[0, 0])
    (10000.0, 1.0, 2.0)
  """

  shift: jax.Array
  delta: jax.Array
  mean: jax.Array
  var: jax.Array
  count: jax.Array
  scale: jax.Array
  var_c: jax.Array
  factor: jax.Array


def in_input_units(centred: jax.Array, stats: Moments):
  """``(x - k, k, delta)`` in the units of ``x``, from ``c`` and its :class:`Moments`.

  For callers that work in the units of ``x`` (whitening, RevIN) rather than the
  scaled units of ``c``: ``x - k = c / scale`` with ``k = shift / scale``, and
  ``delta = mean(x - k)``. Dividing by the power-of-two ``scale`` is exact.
  """
  return centred / stats.scale, stats.shift / stats.scale, stats.delta / stats.scale


def _psum(value, axis_name, axis_index_groups):
  """``lax.psum``, after a clear error for an unbound ``axis_name``
  (:func:`jaxnorm._checks.check_axis_name`)."""
  _checks.check_axis_name(axis_name, fn="jaxnorm")
  return lax.psum(value, axis_name, axis_index_groups=axis_index_groups)


def _common_reference(exponent, shift, has_values, axis_name, axis_index_groups, dtype):
  """One scale and one shift for all devices of ``axis_name``: the largest exponent and
  the largest per-device shift (a value of the data, so a constant group stays exact).

  Sums from every device are then in the same units around the same point, and merge
  by a plain ``psum`` with the single-device precision.
  """
  real = real_dtype(dtype)
  local_scale = pow2(exponent, real)
  neg_inf = jnp.asarray(-jnp.inf, real)
  unscaled = [jnp.where(has_values, p * local_scale, neg_inf) for p in _parts(shift)]
  exponent, unscaled = lax.pmax((exponent, unscaled), axis_name,
                                axis_index_groups=axis_index_groups)
  scale = pow2(exponent, real)
  shift = _join([jnp.where(jnp.isfinite(u), u, 0) / scale for u in unscaled], dtype)
  return exponent, shift


@compiled(static_argnums=(1, 3, 4, 5))
def centred_moments(
    x: jax.Array,
    axes: tuple[int, ...],
    mask: jax.Array | None,
    axis_name: Any = None,
    axis_index_groups: Any = None,
    center: bool = True,
) -> tuple[jax.Array, Moments]:
  """``(c, stats)`` with ``c = x * stats.scale - stats.shift`` in the statistics' dtype.

  The scale and shift come from a subsample (:func:`_reference_point`); one pass over
  the scaled, shifted values ``c`` gives ``S1 = sum(c)`` and ``S2 = sum(|c|^2)`` over
  the valid elements: ``delta = S1 / n``, ``var_c = max(S2 - S1 conj(delta), 0) / n``.
  If a group's ``S2`` overflowed (values far beyond the subsample), that group's sums
  are taken again in larger units (``lax.cond``; under ``jax.vmap`` it becomes a select,
  so this second pass is always paid there). All in at least float32; groups with no
  valid element give mean 0 and variance 0. With ``center=False`` the moments are about
  zero (no shift, mean 0, ``var = mean(|x|^2)``, as RMS norm needs). With
  ``axis_name`` the devices first agree on one scale and one shift (one ``pmax``), then
  sum (one ``psum``).

  ``c`` is returned so that callers normalize (and differentiate) from it: XLA:CPU's
  fast reductions take no broadcast operand, so reducing ``c`` (written once) is
  cheaper than reducing ``x * scale - shift`` in several places.
  """
  dtype = compute_dtype(x.dtype)
  real = real_dtype(dtype)
  if x.size == 0:  # no value anywhere (every device alike): empty groups, or no group
    kept = tuple(1 if a in axes else n for a, n in enumerate(x.shape))
    zeros, ones = jnp.zeros(kept, dtype), jnp.ones(kept, real)
    return x.astype(dtype), Moments(zeros, zeros, zeros, ones * 0, ones * 0, ones,
                                    ones * 0, ones)
  count = _valid_count(x.shape, axes, mask, real)
  if axis_name is not None:
    _checks.check_axis_name(axis_name, fn="jaxnorm")
  exponent, shift = _reference_point(x, axes, mask)
  if axis_name is not None and center:
    exponent, shift = _common_reference(
        exponent, shift, jnp.broadcast_to(count, exponent.shape) > 0, axis_name,
        axis_index_groups, dtype)
  elif axis_name is not None:
    exponent = lax.pmax(exponent, axis_name, axis_index_groups=axis_index_groups)
  exponent, shift = lax.stop_gradient((exponent, shift))
  # 1 / 2**E (exact) rather than 2**-E: XLA keeps a division out of the loops over x,
  # where it would otherwise recompute the bit tricks for every element.
  inv_scale = 1 / pow2(exponent, real)
  if not center:
    shift = jnp.zeros_like(shift)

  def valid_values(x, factor=1.0):
    centred = x.astype(dtype) * (inv_scale * factor)
    if center:
      centred = centred - shift * factor
    return centred, (centred if mask is None else jnp.where(mask, centred, 0))

  centred, valid = valid_values(x)

  def sums(values, count):
    s2 = jnp.sum(abs_square(values), axis=axes, keepdims=True)
    s1 = jnp.sum(values, axis=axes, keepdims=True) if center else jnp.zeros_like(shift)
    if axis_name is not None:  # one collective for everything
      count, s1, s2 = lax.psum((jnp.broadcast_to(count, s2.shape), s1, s2), axis_name,
                               axis_index_groups=axis_index_groups)
    return count, s1, s2

  count, s1, s2 = sums(valid, count)
  # Values more than ~2**62 times the subsample's largest overflow the sum of squares.
  # Only then (one scalar test) sum again in units 2**F times larger; F is static and
  # large enough that no square or sum of them can overflow, small enough that what
  # underflows is negligible beside the values that overflowed.
  overflow = jnp.logical_not(jnp.isfinite(s2))
  info = jnp.finfo(real)
  far = 2.0 ** -(info.maxexp // 2 + 21)

  def rescaled(x):  # recomputed from x: no array of x's size outlives the main pass
    _, f1, f2 = sums(valid_values(x, far)[1], jnp.zeros((), real))
    return jnp.where(overflow, f1, s1), jnp.where(overflow, f2, s2)

  def unchanged(_):
    return s1, s2

  # The factor is chosen outside the cond, so both branches return values of the same
  # kind (also under shard_map without axis_name, where they vary across devices).
  s1, s2 = lax.cond(jnp.any(overflow), rescaled, unchanged, x)
  factor = lax.stop_gradient(jnp.where(overflow, jnp.asarray(far, real),
                                       jnp.ones((), real)))
  count = jnp.broadcast_to(count, s2.shape)
  safe_count = jnp.maximum(count, 1)
  delta = s1 / safe_count  # in units of c * factor
  var_c = (jnp.maximum(s2 - (s1 * jnp.conj(delta)).real, 0) if center else s2) / safe_count
  delta = delta / factor
  mean = (shift + delta) / inv_scale
  var = var_c / inv_scale / inv_scale / factor / factor
  return centred, Moments(shift, delta, mean, var, count, inv_scale, var_c, factor)


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
    \sigma^2 = \frac{1}{n} \sum_{i \in V} |x_i - \mu|^2, \qquad n = |V|

  where :math:`V` is the set of valid elements (``mask`` true; all when ``mask`` is
  None). Computed with a power-of-two scale and a data-dependent shift, so data of any
  magnitude keeps its variance: :math:`|\mu| \gg \sigma` (no :math:`E[x^2] - E[x]^2`
  cancellation), squares beyond the float range (std 1e20 in float32) or below it
  (std 1e-30, subnormals). A variance that does not fit the output dtype is inf (or 0).
  With ``axis_name`` the devices agree on one scale and one shift, then sum counts and
  centred sums exactly (Chan et al., 1979), also when devices hold different numbers of
  valid elements. Complex ``x`` gives a complex mean and the real variance
  :math:`E|x - \mu|^2`, as in flax. Differentiable by JAX (forward and reverse mode).

  Args:
    x: floating-point (or complex) input.
    axes: axis or axes to reduce (``()`` reduces nothing: mean ``x``, variance 0).
    mask: boolean array broadcastable to ``x``; false elements are excluded exactly
      (NaN or inf there change nothing). A group with no valid element gets mean 0 and
      variance 0 (never NaN).
    axis_name: a mapped axis name (``pmap``/``shard_map``) to merge statistics over.
    axis_index_groups: device groups within ``axis_name``, as in ``lax.psum``.
    keepdims: keep the reduced axes with size 1.

  Returns:
    ``(mean, var)`` in ``x``'s dtype promoted to at least float32 (``var`` real).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxnorm import functional as F
    >>> mean, var = F.moments(jnp.array([[1.0, 2.0], [3.0, 6.0]]), 0)
    >>> mean.tolist(), var.tolist()
    ([2.0, 4.0], [1.0, 4.0])
    >>> x = 1e4 + jnp.array([[1.0, 2.0], [-1.0, -2.0]])   # large mean, small spread
    >>> F.moments(x, 0)                                  # no E[x^2] - E[x]^2 cancellation
    (Array([10000., 10000.], dtype=float32), Array([1., 4.], dtype=float32))

  References:
    Chan, Golub, LeVeque, "Updating formulae and a pairwise algorithm for computing
    sample variances", 1979.
  """
  fn = "jaxnorm.functional.moments"
  x = _checks.ensure_floating(x, name="x", fn=fn, allow_complex=True)
  axes = _checks.canonical_axes(axes, x.shape, name="axes", fn=fn)
  mask = _checks.check_mask(mask, x.shape, fn=fn)
  _checks.check_axis_name(axis_name, fn=fn)
  keepdims = _checks.check_static_bool(keepdims, name="keepdims", fn=fn)
  stats = masked_moments(x, axes, mask, axis_name, axis_index_groups)
  mean, var = stats.mean, stats.var
  if not keepdims:
    mean, var = jnp.squeeze(mean, axes), jnp.squeeze(var, axes)
  return mean, var
