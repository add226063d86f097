"""Batch norm and layer norm as pure functions with closed-form backward passes.

Both are the same computation with different reduction axes:
:func:`_normalize` standardizes ``x`` over ``reduce_axes`` with statistics from the one
statistics path (:func:`jaxnorm.functional.masked_moments`) and applies an optional
affine transform; its ``jax.custom_vjp`` backward pass is closed-form.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxnorm import _checks
from jaxnorm.functional._stats import (
    BatchStats, centred_moments, compute_dtype, masked_moments)


def _sum_to_shape(t: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Sums ``t`` over the axes where ``shape`` (same rank) has size 1."""
  axes = tuple(a for a in range(t.ndim) if shape[a] == 1 and t.shape[a] != 1)
  return jnp.sum(t, axis=axes, keepdims=True) if axes else t


def _varying_axes(t) -> frozenset:
  """Mapped axes (``shard_map``) along which ``t`` differs between devices."""
  aval = jax.typeof(t)
  manual = getattr(aval, "manual_axis_type", None)  # JAX >= 0.9; older JAX: aval.vma
  return frozenset(manual.varying if manual is not None else getattr(aval, "vma", ()))


def _cotangent_like(ct: jax.Array, primal: jax.Array) -> jax.Array:
  """Casts a cotangent to its primal's dtype and device-variance.

  A parameter replicated across a ``shard_map`` axis but used with per-device data gets
  a per-device cotangent; as in autodiff (the transpose of the implicit broadcast is a
  ``psum``), those are summed over the axes the primal does not vary along.
  """
  extra = _varying_axes(ct) - _varying_axes(primal)
  if extra:
    ct = lax.psum(ct, tuple(sorted(extra)))
  return ct.astype(primal.dtype)


def _constant_over(p: jax.Array | None, axes: tuple[int, ...]) -> bool:
  return p is None or all(p.shape[a] == 1 for a in axes)


def _standardize_affine(centred, rstd, scale, bias):
  """``centred * (rstd * scale) + bias``, with ``centred = x - mean``."""
  mul = rstd if scale is None else rstd * scale.astype(rstd.dtype)
  y = centred * mul
  return y if bias is None else y + bias.astype(y.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8))
def _normalize(x, scale, bias, mask, reduce_axes, epsilon, axis_name=None,
               axis_index_groups=None, center=True):
  """``(y, mean, var, count)``: ``y = (x - mean) / sqrt(var + epsilon) * scale + bias``.

  With ``center=False``, ``mean = 0`` and ``var = mean(x^2)`` (RMS normalization).
  """
  outputs, _ = _normalize_fwd(
      x, scale, bias, mask, reduce_axes, epsilon, axis_name, axis_index_groups, center)
  return outputs


def _normalize_fwd(x, scale, bias, mask, reduce_axes, epsilon, axis_name=None,
                   axis_index_groups=None, center=True):
  centred, stats = centred_moments(x, reduce_axes, mask, axis_name, axis_index_groups,
                                   center)
  rstd = lax.rsqrt(stats.var + epsilon)
  y = _standardize_affine(centred - stats.delta, rstd, scale, bias).astype(x.dtype)
  # Residuals: c = x - shift (one array of x's size, in x's dtype when x is narrower than
  # the statistics) plus per-group vectors. x itself is not kept.
  residuals = (centred.astype(x.dtype) if jnp.dtype(x.dtype).itemsize < 4 else centred,
               scale, bias, mask, stats.delta, rstd, stats.count)
  return (y, stats.mean, stats.var, stats.count), residuals


def _normalize_bwd(reduce_axes, epsilon, axis_name, axis_index_groups, center, residuals,
                   cotangents):
  r"""Closed-form VJP of :func:`_normalize` with respect to ``y``.

  With :math:`g = \partial L/\partial y \cdot \gamma`, :math:`\hat x = (x - \mu)/\sigma`,
  :math:`w` the mask and :math:`m = \sum w`:

  .. math::
    \frac{\partial L}{\partial x} = \frac{1}{\sigma}\Big(g
      - \frac{w}{m}\sum g - \frac{w \hat x}{m} \sum g \hat x\Big),\quad
    \frac{\partial L}{\partial \gamma} = \sum \frac{\partial L}{\partial y}\hat x,\quad
    \frac{\partial L}{\partial \beta} = \sum \frac{\partial L}{\partial y}

  The sums run over all positions (outputs at masked positions depend on the
  statistics too). :math:`\sum g \hat x` is computed as
  :math:`\frac{1}{\sigma}(\sum g c - \delta \sum g)` from the residual
  :math:`c = x - k` (:math:`\mu = k + \delta`), so the reductions read only
  ``dy`` and ``c`` with no per-feature broadcast. Without centering
  (``center=False``) the :math:`\sum g` term is absent. The statistics outputs leave the
  public functions through ``stop_gradient``, so their cotangents are zero and unused.
  """
  del epsilon
  centred, scale, bias, mask, delta, rstd, count = residuals
  dtype = rstd.dtype
  dy = cotangents[0].astype(dtype)
  c = centred.astype(dtype)

  def reduce(t):
    return jnp.sum(t, axis=reduce_axes, keepdims=True)

  if _constant_over(scale, reduce_axes):  # batch norm: one pair of reductions for all
    sum_dy = reduce(dy)
    dy_xhat = rstd * (reduce(dy * c) - delta * sum_dy)  # sum(dy * x-hat)
    sum_g, sum_g_xhat = ((sum_dy, dy_xhat) if scale is None
                         else (sum_dy * scale, dy_xhat * scale))
    g = dy if scale is None else dy * scale
  else:  # layer norm: dscale and dbias reduce over the other axes
    g = dy * scale
    sum_g = reduce(g)
    sum_g_xhat = rstd * (reduce(g * c) - delta * sum_g)
    sum_dy, dy_xhat = None, dy * ((c - delta) * rstd)
  if axis_name is not None:
    sum_g, sum_g_xhat = lax.psum(
        (sum_g, sum_g_xhat), axis_name, axis_index_groups=axis_index_groups)

  inv_m = 1.0 / jnp.maximum(count, 1)
  xhat = (c - delta) * rstd
  correction = -rstd * inv_m * ((sum_g if center else 0.0) + xhat * sum_g_xhat)
  if mask is not None:
    correction = jnp.where(mask, correction, 0)
  dx = rstd * g + correction

  dscale = None if scale is None else _cotangent_like(
      _sum_to_shape(dy_xhat, scale.shape), scale)
  if bias is None:
    dbias = None
  else:
    if sum_dy is None or not _constant_over(bias, reduce_axes):
      sum_dy = dy  # _sum_to_shape reduces it to the bias's shape
    dbias = _cotangent_like(_sum_to_shape(sum_dy, bias.shape), bias)
  return _cotangent_like(dx, centred), dscale, dbias, None


_normalize.defvjp(_normalize_fwd, _normalize_bwd)


def _static_epsilon(epsilon: Any, fn: str) -> float:
  if isinstance(epsilon, jax.core.Tracer):
    raise TypeError(
        f"{fn}: epsilon must be a Python number, not a value traced under a transform; "
        f"got {epsilon!r}. Pass it as a constant (it is part of the compiled computation).")
  try:
    value = float(epsilon)
  except (TypeError, ValueError):
    raise TypeError(f"{fn}: epsilon must be a positive number such as 1e-5; got "
                    f"{epsilon!r}.") from None
  _checks.check_positive(value, name="epsilon", fn=fn,
                         hint=" It keeps 1/sqrt(var + epsilon) finite; 1e-5 is usual.")
  return value


def _as_param(param, name, natural_shape, param_shape, x_shape, axis_desc, fn):
  """Validates ``scale``/``bias`` and reshapes it to broadcast against ``x``.

  Accepted: the sizes of ``x`` on the normalized/feature axes (``natural_shape``), or any
  array of ``x.ndim`` dimensions that broadcasts to ``x``.
  """
  if param is None:
    return None
  param = _checks.ensure_floating(param, name=name, fn=fn)
  if tuple(param.shape) == tuple(natural_shape):
    return param.reshape(param_shape)
  if param.ndim == len(x_shape):
    try:
      if jnp.broadcast_shapes(param.shape, x_shape) == tuple(x_shape):
        return param
    except ValueError:
      pass
  raise ValueError(
      f"{fn}: {name} has shape {tuple(param.shape)} but must have shape "
      f"{tuple(natural_shape)} (the sizes of x.shape={tuple(x_shape)} on {axis_desc}), "
      f"or {len(x_shape)} dimensions that broadcast to x.shape.")


class _Prepared(NamedTuple):
  """Validated arguments of a normalization (see :func:`_prepare`)."""

  x: jax.Array
  epsilon: float
  axes: tuple[int, ...]        # the axes named by ``axis``, sorted and non-negative
  axes_shape: tuple[int, ...]  # the sizes of x on those axes
  scale: jax.Array | None      # broadcastable against x
  bias: jax.Array | None
  mask: jax.Array | None       # boolean, rank of x


def _prepare(fn, x, scale, bias, mask, epsilon, axis) -> _Prepared:
  """Checks ``x``, ``epsilon``, ``axis``, ``scale``/``bias`` (sizes of x on ``axis``) and ``mask``."""
  x = _checks.ensure_floating(x, name="x", fn=fn)
  epsilon = _static_epsilon(epsilon, fn)
  axes = _checks.canonical_axes(axis, x.shape, name="axis", fn=fn)
  axes_shape = tuple(x.shape[a] for a in axes)
  param_shape = tuple(x.shape[a] if a in axes else 1 for a in range(x.ndim))
  axis_desc = f"axis={axis!r}"
  scale = _as_param(scale, "scale", axes_shape, param_shape, x.shape, axis_desc, fn)
  bias = _as_param(bias, "bias", axes_shape, param_shape, x.shape, axis_desc, fn)
  return _Prepared(x, epsilon, axes, axes_shape, scale, bias,
                   _checks.check_mask(mask, x.shape, fn=fn))


def _checked_stats(stats, feature_shape, x_shape, axis_desc, fn) -> BatchStats:
  if not (isinstance(stats, tuple) and len(stats) == 2):
    raise TypeError(
        f"{fn}: stats must be a jaxnorm.BatchStats(mean, var); got {type(stats).__name__}.")
  mean, var = (jnp.asarray(s) for s in stats)
  context = f"one value per feature of x.shape={tuple(x_shape)} on {axis_desc}"
  _checks.check_shape(mean, feature_shape, name="stats.mean", fn=fn, context=context)
  _checks.check_shape(var, feature_shape, name="stats.var", fn=fn, context=context)
  return BatchStats(mean.astype(jnp.float32), var.astype(jnp.float32))


def batch_norm(
    x: jax.Array,
    scale: jax.Array | None,
    bias: jax.Array | None,
    stats: BatchStats | None,
    *,
    train: bool,
    momentum: float = 0.99,
    epsilon: float = 1e-5,
    axis: int | Sequence[int] = -1,
    axis_name: Any = None,
    axis_index_groups: Any = None,
    mask: jax.Array | None = None,
) -> tuple[jax.Array, BatchStats | None]:
  r"""Batch normalization with explicit running statistics.

  .. math::
    y = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}}\,\gamma + \beta, \qquad
    \text{new} = m \cdot \text{old} + (1 - m) \cdot \text{batch}

  In training :math:`\mu, \sigma^2` (``mean``, biased ``var``) are the batch statistics
  over every axis except ``axis``, and the running statistics are updated with
  momentum :math:`m` (Flax convention). In evaluation :math:`\mu, \sigma^2` are
  ``stats`` and ``stats`` is returned unchanged. :math:`\gamma` is ``scale``,
  :math:`\beta` is ``bias``, :math:`\epsilon` is ``epsilon``.

  The backward pass is closed-form (``jax.custom_vjp``) and keeps only ``x`` and
  per-feature vectors. It supports ``jax.grad``/``jax.vjp``, ``jax.jit``, ``jax.vmap``,
  ``jax.grad`` of ``jax.grad``, ``jax.jacrev`` and ``jax.hessian`` (all tested against
  the plain formula). Plain forward mode (``jax.jvp``, ``jax.jacfwd``) raises JAX's
  ``TypeError`` for ``custom_vjp`` functions instead of returning numbers. The new
  running statistics carry no gradient (``stop_gradient``); with a ``mask``, features
  without any valid value keep their running statistics.

  Args:
    x: floating-point input, e.g. ``(batch, features)`` or NHWC.
    scale: :math:`\gamma` with the shape of the features (or ``None``).
    bias: :math:`\beta` with the shape of the features (or ``None``).
    stats: running :class:`BatchStats` with the shape of the features. ``None`` is
      allowed in training only and then ``None`` is returned for the new statistics.
    train: Python bool; use batch statistics (True) or ``stats`` (False).
    momentum: EMA decay in [0, 1] (PyTorch's ``momentum=0.1`` is 0.9 here).
    epsilon: positive constant added to the variance.
    axis: feature axis or axes (kept); all other axes are reduced.
    axis_name: mapped axis (``pmap``/``shard_map``) over which statistics are merged
      exactly (see :func:`moments`).
    axis_index_groups: device groups within ``axis_name``.
    mask: boolean array broadcastable to ``x``; false positions do not contribute to
      the statistics (their outputs are still normalized with them, as in Flax).

  Returns:
    ``(y, new_stats)``; ``y`` has ``x``'s dtype, statistics are float32.
    Traced ``momentum`` values are not range-checked.

  References:
    Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training by
    Reducing Internal Covariate Shift", ICML 2015.
  """
  fn = "jaxnorm.functional.batch_norm"
  train = _checks.check_static_bool(train, name="train", fn=fn)
  _checks.check_in_unit_interval(
      momentum, name="momentum", fn=fn,
      hint=" Flax convention: new = momentum * old + (1 - momentum) * batch; "
           "PyTorch's momentum=0.1 is momentum=0.9 here.")
  x, epsilon, feature_axes, feature_shape, scale, bias, mask = _prepare(
      fn, x, scale, bias, mask, epsilon, axis)
  reduce_axes = tuple(a for a in range(x.ndim) if a not in feature_axes)
  if stats is not None:
    stats = _checked_stats(stats, feature_shape, x.shape, f"axis={axis!r}", fn)

  if not train:
    if stats is None:
      raise ValueError(f"{fn}: stats is None but train=False needs running statistics; "
                       "pass the BatchStats from training, or train=True.")
    return normalize_with_stats(x, scale, bias, stats, epsilon, feature_axes), stats

  values_per_feature = math.prod(x.shape[a] for a in reduce_axes)
  if values_per_feature <= 1 and axis_name is None and mask is None:
    raise ValueError(
        f"{fn}: training needs more than one value per feature to compute a batch "
        f"variance; x.shape={tuple(x.shape)} with axis={axis!r} gives "
        f"{values_per_feature} value per feature. Use train=False (running statistics) "
        "or a batch with more than one example.")
  y, batch_mean, batch_var, count = _normalize(
      x, scale, bias, mask, reduce_axes, epsilon, axis_name, axis_index_groups)
  if stats is None:
    return y, None
  return y, ema_update(stats, batch_mean, batch_var, count, momentum)


def normalize_with_stats(x, scale, bias, stats: BatchStats, epsilon: float,
                         feature_axes: tuple[int, ...]) -> jax.Array:
  """Evaluation-mode normalization of validated input with running ``stats``."""
  param_shape = tuple(x.shape[a] if a in feature_axes else 1 for a in range(x.ndim))
  dtype = compute_dtype(x.dtype)
  rstd = lax.rsqrt(stats.var.reshape(param_shape) + epsilon).astype(dtype)
  centred = x.astype(dtype) - stats.mean.reshape(param_shape).astype(dtype)
  return _standardize_affine(centred, rstd, scale, bias).astype(x.dtype)


def ema_update(stats: BatchStats, batch_mean, batch_var, count, momentum) -> BatchStats:
  """``new = momentum * old + (1 - momentum) * batch`` (float32, no gradient).

  Features whose ``count`` of valid values is 0 keep their statistics.
  """
  def ema(old, batch):
    batch = lax.stop_gradient(batch).reshape(old.shape).astype(jnp.float32)
    return momentum * old + (1 - momentum) * batch

  seen = count.reshape(stats.mean.shape) > 0
  return BatchStats(*(jnp.where(seen, ema(old, batch), old)
                      for old, batch in zip(stats, (batch_mean, batch_var))))


def layer_norm(
    x: jax.Array,
    scale: jax.Array | None,
    bias: jax.Array | None,
    *,
    axis: int | Sequence[int] = -1,
    epsilon: float = 1e-6,
    mask: jax.Array | None = None,
    axis_name: Any = None,
    axis_index_groups: Any = None,
) -> jax.Array:
  r"""Layer normalization over ``axis``.

  .. math::
    y = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}}\,\gamma + \beta

  with :math:`\mu, \sigma^2` the mean and biased variance of each example over the
  normalized axes ``axis``, :math:`\gamma` = ``scale``, :math:`\beta` = ``bias``,
  :math:`\epsilon` = ``epsilon``. Closed-form backward pass as in :func:`batch_norm`
  (same support for transforms).

  Args:
    x: floating-point input.
    scale: :math:`\gamma` with the sizes of ``x`` on ``axis`` (or ``x.ndim``
      dimensions broadcasting to ``x``), or ``None``.
    bias: :math:`\beta`, same shapes as ``scale``, or ``None``.
    axis: normalized axis or axes.
    epsilon: positive constant added to the variance.
    mask: boolean array broadcastable to ``x``; false elements do not contribute to
      the statistics of their example.
    axis_name: mapped axis over which the normalized axes are sharded (statistics are
      merged exactly across it).
    axis_index_groups: device groups within ``axis_name``.

  Returns:
    ``y`` with ``x``'s dtype.

  References:
    Ba, Kiros & Hinton, "Layer Normalization", 2016.
  """
  fn = "jaxnorm.functional.layer_norm"
  x, epsilon, axes, _, scale, bias, mask = _prepare(fn, x, scale, bias, mask, epsilon, axis)
  return _normalize(x, scale, bias, mask, axes, epsilon, axis_name, axis_index_groups)[0]


def _groups(channels: int, num_groups: int | None, group_size: int | None, fn: str) -> int:
  """The number of groups from exactly one of ``num_groups`` / ``group_size``."""
  for name, value in (("num_groups", num_groups), ("group_size", group_size)):
    if value is not None and (not isinstance(value, (int, np.integer)) or isinstance(
        value, bool)):
      raise TypeError(f"{fn}: {name} must be an int or None; got {value!r}.")
  if (num_groups is None) == (group_size is None):
    raise ValueError(f"{fn}: give exactly one of num_groups and group_size; got "
                     f"num_groups={num_groups}, group_size={group_size}.")
  if group_size is not None:
    if group_size < 1 or channels % group_size:
      raise ValueError(f"{fn}: group_size={group_size} does not divide the {channels} "
                       f"channels (x.shape[-1]); use a divisor of {channels}.")
    return channels // group_size
  if num_groups < 1 or channels % num_groups:
    raise ValueError(f"{fn}: num_groups={num_groups} does not divide the {channels} "
                     f"channels (x.shape[-1]); use a divisor of {channels}.")
  return num_groups


def group_norm(
    x: jax.Array,
    scale: jax.Array | None,
    bias: jax.Array | None,
    *,
    num_groups: int | None = 32,
    group_size: int | None = None,
    epsilon: float = 1e-6,
    reduction_axes: Sequence[int] | None = None,
    mask: jax.Array | None = None,
    axis_name: Any = None,
    axis_index_groups: Any = None,
) -> jax.Array:
  r"""Group normalization: statistics per example over groups of channels.

  .. math::
    y_{n,\dots,c} = \frac{x_{n,\dots,c} - \mu_{n,g(c)}}{\sqrt{\sigma^2_{n,g(c)} + \epsilon}}
    \,\gamma_c + \beta_c

  The channels (last axis, ``C``) are split into ``G`` groups of ``C / G`` consecutive
  channels; :math:`\mu_{n,g}, \sigma^2_{n,g}` are taken over the channels of group
  :math:`g` and ``reduction_axes`` (default: every axis but the first, the batch).
  Same arguments as ``flax.linen.GroupNorm``; closed-form backward pass.

  Args:
    x: floating-point input ``(N, ..., C)``.
    scale, bias: :math:`\gamma, \beta` of shape ``(C,)``, or ``None``.
    num_groups: ``G``; pass ``None`` when giving ``group_size``.
    group_size: channels per group, instead of ``num_groups``.
    epsilon: positive constant added to the variance.
    reduction_axes: axes to reduce besides the grouped channels; must include the last.
    mask: boolean array broadcastable to ``x``: elements that enter the statistics.
    axis_name, axis_index_groups: merge statistics across devices (as in batch norm).

  References:
    Wu & He, "Group Normalization", ECCV 2018.
  """
  fn = "jaxnorm.functional.group_norm"
  x, epsilon, _, (channels,), scale, bias, mask = _prepare(fn, x, scale, bias, mask,
                                                          epsilon, -1)
  groups = _groups(channels, num_groups, group_size, fn)
  if reduction_axes is None:
    reduction_axes = tuple(range(1, x.ndim))
  axes = _checks.canonical_axes(reduction_axes, x.shape, name="reduction_axes", fn=fn)
  if x.ndim - 1 not in axes:
    raise ValueError(f"{fn}: reduction_axes={reduction_axes!r} must include the last "
                     f"(channel) axis {x.ndim - 1} of x.shape={tuple(x.shape)}.")
  grouped_shape = x.shape[:-1] + (groups, channels // groups)

  def grouped(t):
    return None if t is None else t.reshape(t.shape[:-1] + (
        (groups, channels // groups) if t.shape[-1] == channels else (1, 1)))

  y = _normalize(x.reshape(grouped_shape), grouped(scale), grouped(bias), grouped(mask),
                 axes[:-1] + (x.ndim,), epsilon, axis_name, axis_index_groups)[0]
  return y.reshape(x.shape)


def instance_norm(
    x: jax.Array,
    scale: jax.Array | None,
    bias: jax.Array | None,
    *,
    axis: int | Sequence[int] = -1,
    epsilon: float = 1e-6,
    mask: jax.Array | None = None,
    axis_name: Any = None,
    axis_index_groups: Any = None,
) -> jax.Array:
  r"""Instance normalization: statistics per example and channel over the other axes.

  .. math::
    y = \frac{x - \mu_{n,c}}{\sqrt{\sigma^2_{n,c} + \epsilon}}\,\gamma_c + \beta_c

  ``axis`` names the channel axes (kept, as in ``flax.linen.InstanceNorm``'s
  ``feature_axes``); axis 0 is the batch; every other axis is reduced.

  References:
    Ulyanov, Vedaldi & Lempitsky, "Instance Normalization: The Missing Ingredient for
    Fast Stylization", 2016.
  """
  fn = "jaxnorm.functional.instance_norm"
  x, epsilon, feature_axes, _, scale, bias, mask = _prepare(fn, x, scale, bias, mask,
                                                            epsilon, axis)
  if 0 in feature_axes:
    raise ValueError(f"{fn}: axis={axis!r} includes axis 0, the batch axis of "
                     f"x.shape={tuple(x.shape)}; name the channel axes only.")
  reduce_axes = tuple(a for a in range(1, x.ndim) if a not in feature_axes)
  return _normalize(x, scale, bias, mask, reduce_axes, epsilon, axis_name,
                    axis_index_groups)[0]


def rms_norm(
    x: jax.Array,
    scale: jax.Array | None,
    *,
    axis: int | Sequence[int] = -1,
    epsilon: float = 1e-6,
    mask: jax.Array | None = None,
    axis_name: Any = None,
    axis_index_groups: Any = None,
) -> jax.Array:
  r"""Root-mean-square normalization (no centring, no bias).

  .. math::
    y = \frac{x}{\sqrt{\frac{1}{n}\sum_{i} x_i^2 + \epsilon}}\,\gamma

  over the axes ``axis``, with :math:`\gamma` = ``scale``. Closed-form backward pass.

  References:
    Zhang & Sennrich, "Root Mean Square Layer Normalization", NeurIPS 2019.
  """
  fn = "jaxnorm.functional.rms_norm"
  x, epsilon, axes, _, scale, _, mask = _prepare(fn, x, scale, None, mask, epsilon, axis)
  return _normalize(x, scale, None, mask, axes, epsilon, axis_name, axis_index_groups,
                    False)[0]
