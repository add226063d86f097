"""Normalizations built from several statistics: Switchable Normalization, EvoNorm.

Input layout ``(N, ..., C)``: batch first, channels last, the axes between them
spatial. Statistics come from the one statistics path (instance statistics per example
and channel, merged exactly into layer and batch statistics); gradients are JAX's.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxnorm import _checks
from jaxnorm.functional._stats import BatchStats, compute_dtype, masked_moments
from jaxnorm.functional.normalization import (
    _checked_stats, _groups, _prepare, ema_update)


def _merge(count, mean, var, axes):
  """Exact merge of per-group (count, mean, var) over ``axes`` (kept as size 1)."""
  total = jnp.sum(count, axis=axes, keepdims=True)
  safe = jnp.maximum(total, 1)
  merged_mean = jnp.sum(count * mean, axis=axes, keepdims=True) / safe
  merged_var = jnp.sum(count * (var + jnp.square(mean - merged_mean)), axis=axes,
                       keepdims=True) / safe
  return total, merged_mean, merged_var


def _affine(y, scale, bias):
  if scale is not None:
    y = y * scale.astype(y.dtype)
  return y if bias is None else y + bias.astype(y.dtype)


def _check_v(v, channels, fn):
  if jnp.shape(v) != (channels,):
    raise ValueError(f"{fn}: v must have one value per channel, shape ({channels},); got "
                     f"shape {jnp.shape(v)}.")


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
  _checks.check_in_unit_interval(momentum, name="momentum", fn=fn)
  x, epsilon, _, feature_shape, scale, bias, mask = _prepare(fn, x, scale, bias, mask,
                                                            epsilon, -1)
  _check_layout(x, fn)
  for name, weights in (("mean_weights", mean_weights), ("var_weights", var_weights)):
    if jnp.shape(weights) != (3,):
      raise ValueError(f"{fn}: {name} must have shape (3,) (logits of IN, LN, BN); got "
                       f"{jnp.shape(weights)}.")
  stats = _checked_stats(stats, feature_shape, x.shape, "the last axis", fn)
  spatial = tuple(range(1, x.ndim - 1))
  instance = masked_moments(x, spatial, mask)
  count = instance.count
  _, ln_mean, ln_var = _merge(count, instance.mean, instance.var, (x.ndim - 1,))
  if train:
    bn_count, bn_mean, bn_var = _merge(count, instance.mean, instance.var, (0,))
    new_stats = ema_update(stats, bn_mean, bn_var, bn_count, momentum)
  else:
    bn_mean = stats.mean.reshape((1,) * (x.ndim - 1) + feature_shape)
    bn_var = stats.var.reshape(bn_mean.shape)
    new_stats = stats
  w_mean = jax.nn.softmax(jnp.asarray(mean_weights, instance.var.dtype))
  w_var = jax.nn.softmax(jnp.asarray(var_weights, instance.var.dtype))
  mean = w_mean[0] * instance.mean + w_mean[1] * ln_mean + w_mean[2] * bn_mean
  var = w_var[0] * instance.var + w_var[1] * ln_var + w_var[2] * bn_var
  y = (x.astype(var.dtype) - mean) * jax.lax.rsqrt(var + epsilon)
  return _affine(y, scale, bias).astype(x.dtype), new_stats


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
  _checks.check_in_unit_interval(momentum, name="momentum", fn=fn)
  x, epsilon, _, feature_shape, scale, bias, mask = _prepare(fn, x, scale, bias, mask,
                                                            epsilon, -1)
  _check_layout(x, fn)
  _check_v(v, x.shape[-1], fn)
  stats = _checked_stats(stats, feature_shape, x.shape, "the last axis", fn)
  instance = masked_moments(x, tuple(range(1, x.ndim - 1)), mask)
  if train:
    count, batch_mean, batch_var = _merge(instance.count, instance.mean, instance.var, (0,))
    new_stats = ema_update(stats, batch_mean, batch_var, count, momentum)
  else:
    batch_var = stats.var.reshape((1,) * (x.ndim - 1) + feature_shape)
    new_stats = stats
  xc = x.astype(compute_dtype(x.dtype))
  v = jnp.asarray(v, xc.dtype)
  denominator = jnp.maximum(jnp.sqrt(batch_var + epsilon),
                            v * xc + jnp.sqrt(instance.var + epsilon))
  return _affine(xc / denominator, scale, bias).astype(x.dtype), new_stats


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
                                                          epsilon, -1)
  _check_layout(x, fn)
  _check_v(v, channels, fn)
  groups = _groups(channels, num_groups, group_size, fn)
  grouped = x.reshape(x.shape[:-1] + (groups, channels // groups))
  grouped_mask = None if mask is None else mask.reshape(mask.shape[:-1] + (
      (groups, channels // groups) if mask.shape[-1] == channels else (1, 1)))
  group_var = masked_moments(grouped, tuple(range(1, x.ndim - 1)) + (x.ndim,), grouped_mask,
                             axis_name).var
  group_std = jnp.sqrt(group_var + epsilon)
  group_std = jnp.broadcast_to(group_std, group_std.shape[:-1] + (channels // groups,)
                               ).reshape(group_std.shape[:-2] + (channels,))
  xc = x.astype(group_std.dtype)
  y = xc * jax.nn.sigmoid(jnp.asarray(v, xc.dtype) * xc) / group_std
  return _affine(y, scale, bias).astype(x.dtype)
