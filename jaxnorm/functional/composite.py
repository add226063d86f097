"""Normalizations built from several statistics: Switchable Normalization, EvoNorm.

Input layout ``(N, ..., C)``: batch first, channels last, the axes between them
spatial. Statistics come from the one statistics path (instance statistics per example
and channel, merged exactly into layer and batch statistics); gradients are JAX's.

Like the statistics path, the formulas run in power-of-two units per group (exact), so
any finite input normalizes correctly: every statistic is brought to the largest of the
units involved before statistics are mixed or compared, and merges are taken around a
shift (a value of the data) so that data with ``|mean| >> std`` keeps its variance.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxnorm import _checks
from jaxnorm.functional._compiled import compiled
from jaxnorm.functional._stats import (
    BatchStats, _exponent_above, masked_moments, pow2)
from jaxnorm.functional.normalization import (
    _checked_stats, _groups, _guard_padding, _prepare, _restore_padding, _rstd,
    check_batch_values, check_momentum, ema_update)


def _unit_over(stats, axes):
  """The unit (``2**-E``) of a merge over ``axes``: the largest ``E`` of the groups
  with valid values there (1 if none has any)."""
  unit = jnp.min(jnp.where(stats.count > 0, stats.scale, jnp.inf), axis=axes,
                 keepdims=True, initial=jnp.inf)
  return jnp.where(jnp.isfinite(unit), unit, 1)


def _convert(value, from_unit, to_unit, power=1):
  """A statistic in units ``from_unit`` expressed in ``to_unit`` (``to <= from``)."""
  ratio = to_unit / from_unit  # a power of two <= 1: exact, or negligible if it underflows
  return value * ratio if power == 1 else value * ratio * ratio


def _merge(stats, axes, unit):
  """Exact merge over ``axes`` of per-group moments, in ``unit``.

  Returns ``(count, reference, offset, var)`` with mean ``reference + offset``: the
  means are taken relative to the shift of the first group (a value of the data), so
  that the spread of the group means keeps its precision on data with a large mean.
  """
  shift = _convert(stats.shift, stats.scale, unit)
  kept = tuple(1 if a in axes else n for a, n in enumerate(shift.shape))
  reference = shift[tuple(slice(0, 1) if a in axes else slice(None)
                         for a in range(shift.ndim))] if shift.size else jnp.zeros(
                             kept, shift.dtype)
  offset = (shift - reference) + _convert(stats.delta, stats.scale, unit)
  var = _convert(stats.var_c, stats.scale * stats.factor, unit, power=2)
  count = stats.count
  total = jnp.sum(count, axis=axes, keepdims=True)
  safe = jnp.maximum(total, 1)
  merged = jnp.sum(count * offset, axis=axes, keepdims=True) / safe
  merged_var = jnp.sum(count * (var + jnp.square(offset - merged)), axis=axes,
                       keepdims=True) / safe
  return total, reference, merged, merged_var


def _unit_of(mean, var):
  """A unit (``2**-E``) in which running statistics ``(mean, var)`` are about 1."""
  magnitude = jnp.maximum(jnp.abs(mean), jnp.sqrt(var))
  return pow2(-_exponent_above(magnitude), magnitude.dtype)


def _guard_normalized(y, bad, mask):
  """Padding whose normalized value overflowed (finite but huge) is guarded like NaN
  padding: 0 in the affine part and its gradient, NaN in the output."""
  y, overflowed = _guard_padding(y, mask)
  return y, bad if overflowed is None else (bad | overflowed)


def _affine(y, scale, bias):
  if scale is not None:
    y = y * scale.astype(y.dtype)
  return y if bias is None else y + bias.astype(y.dtype)


def _check_v(v, channels, fn):
  v = _checks.ensure_floating(v, name="v", fn=fn)
  if jnp.shape(v) != (channels,):
    raise ValueError(f"{fn}: v must have one value per channel, shape ({channels},); got "
                     f"shape {jnp.shape(v)}.")
  return v


def _check_layout(x, fn):
  if x.ndim < 2:
    raise ValueError(f"{fn}: x must be (N, ..., C) with at least 2 dimensions; got "
                     f"x.shape={tuple(x.shape)}.")


def switch_norm(
    x: jax.Array,
    scale: jax.Array | None,
    bias: jax.Array | None,
    mean_weights: jax.Array,
    var_weights: jax.Array,
    stats: BatchStats,
    *,
    train: bool,
    momentum: float = 0.99,
    epsilon: float = 1e-5,
    mask: jax.Array | None = None,
) -> tuple[jax.Array, BatchStats]:
  r"""Switchable Normalization: a learned mixture of IN, LN and BN statistics.

  .. math::
    \mu = \sum_{k \in \{IN, LN, BN\}} w_k \mu_k, \quad
    \sigma^2 = \sum_k w'_k \sigma^2_k, \quad
    y = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}}\gamma + \beta

  with :math:`w = \mathrm{softmax}` (``mean_weights``) and :math:`w' = \mathrm{softmax}`
  (``var_weights``), logits ordered (IN, LN, BN). IN statistics are per example and
  channel over the spatial axes, LN per example over spatial axes and channels, BN per
  channel over the batch and spatial axes (running statistics at evaluation, updated by
  EMA in training).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxnorm import functional as F
    >>> x = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))      # NHWC
    >>> stats = F.BatchStats(mean=jnp.zeros(3), var=jnp.ones(3))
    >>> bn_only = jnp.array([-20.0, -20.0, 0.0])                   # logits of IN, LN, BN
    >>> y, new_stats = F.switch_norm(x, None, None, bn_only, bn_only, stats, train=True)
    >>> bool(jnp.allclose(y.mean((0, 1, 2)), 0, atol=1e-5)), new_stats.mean.shape
    (True, (3,))

  References:
    Luo, Ren, Peng, Zhang & Li, "Differentiable Learning-to-Normalize via Switchable
    Normalization", ICLR 2019.
  """
  fn = "jaxnorm.functional.switch_norm"
  train = _checks.check_static_bool(train, name="train", fn=fn)
  check_momentum(momentum, fn)
  x, epsilon, _, feature_shape, scale, bias, mask = _prepare(fn, x, scale, bias, mask,
                                                            epsilon, -1)
  _check_layout(x, fn)
  for name, weights in (("mean_weights", mean_weights), ("var_weights", var_weights)):
    _checks.ensure_floating(weights, name=name, fn=fn)
    if jnp.shape(weights) != (3,):
      raise ValueError(f"{fn}: {name} must have shape (3,) (logits of IN, LN, BN); got "
                       f"{jnp.shape(weights)}.")
  stats = _checked_stats(stats, feature_shape, x.shape, "the last axis", fn)
  if train:
    check_batch_values(fn, x.shape, tuple(range(x.ndim - 1)), -1, mask, None)
  y, batch = _switch_norm(x, scale, bias, mean_weights, var_weights, stats, mask, train,
                          epsilon)
  if not train:
    return y, stats
  return y, ema_update(stats, *batch, momentum)


@compiled(static_argnums=(7, 8))
def _switch_norm(x, scale, bias, mean_weights, var_weights, stats, mask, train, epsilon):
  """:func:`switch_norm` on validated input: ``(y, (mean, var, count))``, the batch's
  statistics for the running update (``None`` in evaluation)."""
  x, bad = _guard_padding(x, mask)
  instance = masked_moments(x, tuple(range(1, x.ndim - 1)), mask)
  # Every mean as (reference, offset): mixed and subtracted relative to the instance
  # shift, so that data with a large mean keeps its precision.
  means = [(instance.scale, instance.shift, instance.delta)]
  ln_unit = _unit_over(instance, (x.ndim - 1,))
  _, ln_reference, ln_offset, ln_var = _merge(instance, (x.ndim - 1,), ln_unit)
  means.append((ln_unit, ln_reference, ln_offset))
  if train:
    bn_unit = _unit_over(instance, (0,))
    bn_count, bn_reference, bn_offset, bn_var = _merge(instance, (0,), bn_unit)
    batch = ((bn_reference + bn_offset) / bn_unit, bn_var / bn_unit / bn_unit, bn_count)
  else:
    shape = (1,) * (x.ndim - 1) + (x.shape[-1],)
    bn_unit = _unit_of(stats.mean.reshape(shape), stats.var.reshape(shape))
    bn_reference, bn_offset = stats.mean.reshape(shape) * bn_unit, 0.0
    bn_var = stats.var.reshape(shape) * bn_unit * bn_unit
    batch = None
  means.append((bn_unit, bn_reference, bn_offset))
  unit = jnp.minimum(jnp.minimum(instance.scale, ln_unit), bn_unit)
  w_mean = jax.nn.softmax(jnp.asarray(mean_weights, instance.var_c.dtype))
  w_var = jax.nn.softmax(jnp.asarray(var_weights, instance.var_c.dtype))
  shift = _convert(instance.shift, instance.scale, unit)
  mean = sum(w * ((_convert(reference, from_unit, unit) - shift)
                  + _convert(offset, from_unit, unit))
             for w, (from_unit, reference, offset) in zip(w_mean, means))
  var = (w_var[0] * _convert(instance.var_c, instance.scale * instance.factor, unit, 2)
         + w_var[1] * _convert(ln_var, ln_unit, unit, 2)
         + w_var[2] * _convert(bn_var, bn_unit, unit, 2))
  y = ((x.astype(var.dtype) * unit - shift) - mean) * _rstd(var, unit, epsilon)
  y, bad = _guard_normalized(y, bad, mask)
  return _restore_padding(_affine(y, scale, bias), bad).astype(x.dtype), batch


def evonorm_b0(
    x: jax.Array,
    scale: jax.Array | None,
    bias: jax.Array | None,
    v: jax.Array,
    stats: BatchStats,
    *,
    train: bool,
    momentum: float = 0.99,
    epsilon: float = 1e-5,
    mask: jax.Array | None = None,
) -> tuple[jax.Array, BatchStats]:
  r"""EvoNorm-B0: batch variance and instance variance in one normalizer-activation.

  .. math::
    y = \frac{x}{\max\big(\sqrt{\sigma^2_{B} + \epsilon},\;
        v\,x + \sqrt{\sigma^2_{I} + \epsilon}\big)}\,\gamma + \beta

  :math:`\sigma^2_B` per channel over batch and spatial axes (running variance at
  evaluation, EMA-updated in training), :math:`\sigma^2_I` per example and channel over
  the spatial axes; ``v`` has one value per channel.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxnorm import functional as F
    >>> x = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))      # NHWC
    >>> stats = F.BatchStats(mean=jnp.zeros(3), var=jnp.ones(3))
    >>> y, new_stats = F.evonorm_b0(x, None, None, jnp.ones(3), stats, train=True)
    >>> y.shape, new_stats.var.shape         # the running batch variance, EMA-updated
    ((2, 4, 4, 3), (3,))

  References:
    Liu, Brock, Simonyan & Le, "Evolving Normalization-Activation Layers", NeurIPS 2020.
  """
  fn = "jaxnorm.functional.evonorm_b0"
  train = _checks.check_static_bool(train, name="train", fn=fn)
  check_momentum(momentum, fn)
  x, epsilon, _, feature_shape, scale, bias, mask = _prepare(fn, x, scale, bias, mask,
                                                            epsilon, -1)
  _check_layout(x, fn)
  v = _check_v(v, x.shape[-1], fn)
  stats = _checked_stats(stats, feature_shape, x.shape, "the last axis", fn)
  if train:
    check_batch_values(fn, x.shape, tuple(range(x.ndim - 1)), -1, mask, None)
  y, batch = _evonorm_b0(x, scale, bias, v, stats, mask, train, epsilon)
  if not train:
    return y, stats
  return y, ema_update(stats, *batch, momentum)


@compiled(static_argnums=(6, 7))
def _evonorm_b0(x, scale, bias, v, stats, mask, train, epsilon):
  """:func:`evonorm_b0` on validated input: ``(y, (mean, var, count))``, the batch's
  statistics for the running update (``None`` in evaluation)."""
  x, bad = _guard_padding(x, mask)
  instance = masked_moments(x, tuple(range(1, x.ndim - 1)), mask)
  if train:
    bn_unit = _unit_over(instance, (0,))
    count, reference, offset, batch_var = _merge(instance, (0,), bn_unit)
    batch = ((reference + offset) / bn_unit, batch_var / bn_unit / bn_unit, count)
  else:
    running_var = stats.var.reshape((1,) * (x.ndim - 1) + (x.shape[-1],))
    bn_unit = _unit_of(jnp.zeros_like(running_var), running_var)
    batch_var = running_var * bn_unit * bn_unit
    batch = None
  unit = jnp.minimum(instance.scale, bn_unit)
  xc = x.astype(unit.dtype) * unit
  v = jnp.asarray(v, xc.dtype)
  batch_std = 1 / _rstd(_convert(batch_var, bn_unit, unit, 2), unit, epsilon)
  instance_std = 1 / _rstd(
      _convert(instance.var_c, instance.scale * instance.factor, unit, 2), unit, epsilon)
  denominator = jnp.maximum(batch_std, v * xc + instance_std)
  y, bad = _guard_normalized(xc / denominator, bad, mask)
  y = _restore_padding(_affine(y, scale, bias), bad)
  return y.astype(x.dtype), batch


def evonorm_s0(
    x: jax.Array,
    scale: jax.Array | None,
    bias: jax.Array | None,
    v: jax.Array,
    *,
    num_groups: int | None = 32,
    group_size: int | None = None,
    epsilon: float = 1e-5,
    mask: jax.Array | None = None,
    axis_name: Any = None,
) -> jax.Array:
  r"""EvoNorm-S0: a batch-independent normalizer-activation with group statistics.

  .. math::
    y = \frac{x\,\mathrm{sigmoid}(v\,x)}{\sqrt{\sigma^2_{G} + \epsilon}}\,\gamma + \beta

  :math:`\sigma^2_G` per example and channel group over the spatial axes and the
  group's channels (as :func:`group_norm`).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxnorm import functional as F
    >>> x = jax.random.normal(jax.random.key(0), (2, 4, 4, 4))      # NHWC
    >>> y = F.evonorm_s0(x, None, None, jnp.ones(4), num_groups=2)
    >>> alone = F.evonorm_s0(x[:1], None, None, jnp.ones(4), num_groups=2)
    >>> y.shape, bool(jnp.allclose(alone, y[:1]))   # no batch statistics
    ((2, 4, 4, 4), True)

  References:
    Liu, Brock, Simonyan & Le, "Evolving Normalization-Activation Layers", NeurIPS 2020.
  """
  fn = "jaxnorm.functional.evonorm_s0"
  x, epsilon, _, (channels,), scale, bias, mask = _prepare(fn, x, scale, bias, mask,
                                                          epsilon, -1, axis_name=axis_name)
  _check_layout(x, fn)
  v = _check_v(v, channels, fn)
  groups = _groups(channels, num_groups, group_size, fn)
  return _evonorm_s0(x, scale, bias, v, mask, groups, epsilon, axis_name)


@compiled(static_argnums=(5, 6, 7))
def _evonorm_s0(x, scale, bias, v, mask, groups, epsilon, axis_name):
  """:func:`evonorm_s0` on validated input."""
  channels = x.shape[-1]
  x, bad = _guard_padding(x, mask)
  grouped = x.reshape(x.shape[:-1] + (groups, channels // groups))
  grouped_mask = None if mask is None else mask.reshape(mask.shape[:-1] + (
      (groups, channels // groups) if mask.shape[-1] == channels else (1, 1)))
  group = masked_moments(grouped, tuple(range(1, x.ndim - 1)) + (x.ndim,), grouped_mask,
                         axis_name)

  def per_channel(t):
    t = jnp.broadcast_to(t, t.shape[:-1] + (channels // groups,))
    return t.reshape(t.shape[:-2] + (channels,))

  unit = per_channel(group.scale)
  rstd = per_channel(_rstd(group.var_c, group.scale * group.factor, epsilon) * group.factor)
  xc = x.astype(unit.dtype)
  y = jax.nn.sigmoid(jnp.asarray(v, xc.dtype) * xc) * (xc * unit) * rstd
  y, bad = _guard_normalized(y, bad, mask)
  return _restore_padding(_affine(y, scale, bias), bad).astype(x.dtype)
