"""Batch, layer, group, instance and RMS norm as pure functions with closed-form derivatives.

All are the same computation with different reduction axes: :func:`_normalize`
standardizes ``x`` over ``reduce_axes`` with statistics from the one statistics path
(:func:`jaxnorm.functional.masked_moments`) and applies an optional affine transform.
Its derivative is closed-form: a ``jax.custom_jvp`` whose linear map
(:func:`_normalize_linear`) JAX transposes into the closed-form backward pass, so
forward mode, reverse mode and their compositions all work.
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

from jax.custom_derivatives import SymbolicZero

from jaxnorm import _checks
from jaxnorm.functional._compiled import compiled
from jaxnorm.functional._stats import (
    BatchStats, centred_moments, compute_dtype, real_dtype)


class _Residuals(NamedTuple):
  """What the linear (tangent) map of :func:`_normalize` reads: one array of ``x``'s size
  (``centred``) and per-group vectors."""

  centred: jax.Array         # c = x * scale - shift; 0 where masked padding is not finite
  rstd: jax.Array            # 1 / sqrt(var_c + epsilon_c), in the units of c
  delta: jax.Array           # mean of c over the valid values
  count: jax.Array           # number of valid values
  inv_scale: jax.Array       # 2**-E: c's units relative to x's
  scale: jax.Array | None    # gamma, broadcastable against x
  mask: jax.Array | None
  bad: jax.Array | None      # masked positions whose c is not finite


def _guard_padding(values: jax.Array, mask: jax.Array | None):
  """``(safe, bad)``: ``values`` with its non-finite entries at masked positions set to 0.

  Masked positions must influence nothing, also backward: a zero cotangent times a NaN
  residual would be NaN. Outputs at ``bad`` positions are set back to NaN
  (:func:`_restore_padding`), gradients through them are 0.
  """
  if mask is None:
    return values, None
  bad = jnp.logical_and(jnp.logical_not(mask), jnp.logical_not(jnp.isfinite(values)))
  return jnp.where(bad, jnp.zeros((), values.dtype), values), bad


def _restore_padding(y: jax.Array, bad: jax.Array | None) -> jax.Array:
  return y if bad is None else jnp.where(bad, jnp.asarray(jnp.nan, y.dtype), y)


def _standardize_affine(centred, rstd, scale, bias):
  """``centred * (rstd * scale) + bias``, with ``centred = x - mean``."""
  mul = rstd if scale is None else rstd * scale.astype(jnp.result_type(rstd, scale))
  y = centred * mul
  return y if bias is None else y + bias.astype(jnp.result_type(y, bias))


def _rstd(var_c, inv_scale, epsilon):
  """``1 / sqrt(var + epsilon)`` in the units of ``c = x * inv_scale - shift``.

  ``epsilon`` in those units is ``epsilon * inv_scale**2``. Where that overflows (data
  far below 1) or where ``var_c + epsilon_c`` underflows (a constant group of data far
  above 1, where epsilon alone sets the result), the scale is taken out of the root
  instead: ``sqrt(var + epsilon) * inv_scale`` with ``var = var_c / inv_scale**2``.
  """
  info = jnp.finfo(var_c.dtype)
  epsilon_c = epsilon * inv_scale * inv_scale
  total = var_c + epsilon_c
  in_units = jnp.sqrt(jnp.maximum(total, info.tiny))
  scale = 1 / inv_scale  # exact: a power of two
  factored = jnp.sqrt(var_c * scale * scale + epsilon) * inv_scale
  std = jnp.where(jnp.isfinite(epsilon_c) & (total >= info.tiny), in_units, factored)
  # At most 1 / tiny: a constant group (c - delta = 0) gives 0, never 0 * inf. A
  # division last: XLA keeps it out of the loops over x (no per-element recompute).
  return 1 / jnp.maximum(std, info.tiny)


def _normalize_forward(x, scale, bias, mask, reduce_axes, epsilon, axis_name,
                       axis_index_groups, center):
  """Statistics and normalized output: ``((y, mean, var, count), residuals)``.

  The one place that computes the forward pass (a fused kernel can replace it): ``c``
  and the statistics from :func:`centred_moments`, then
  ``y = (c - delta) / sqrt(var_c + epsilon * scale^2) * gamma + beta``, all in the units
  of ``c`` (see :func:`_rstd`).
  """
  centred, stats = centred_moments(x, reduce_axes, mask, axis_name, axis_index_groups,
                                   center)
  centred, bad = _guard_padding(centred, mask)
  rstd = _rstd(stats.var_c, stats.scale * stats.factor, epsilon) * stats.factor
  y = _standardize_affine(centred - stats.delta, rstd, scale, bias)
  y = _restore_padding(y, bad).astype(_output_dtype(x, scale, bias))
  # Residuals: c (one array of x's size, in x's dtype when x is narrower than the
  # statistics) plus per-group vectors. x itself is not kept. (Keeping x - mean instead
  # would make XLA write both arrays.)
  keep = centred.astype(x.dtype) if jnp.dtype(x.dtype).itemsize < 4 else centred
  residuals = _Residuals(keep, rstd, stats.delta, stats.count, stats.scale, scale, mask,
                         bad)
  return (y, stats.mean, stats.var, stats.count), residuals


def _is_zero(tangent) -> bool:
  return tangent is None or isinstance(tangent, SymbolicZero)


def _normalize_linear(residuals: _Residuals, dx, dscale, dbias, reduce_axes, axis_name,
                      axis_index_groups, center):
  r"""The closed-form JVP of :func:`_normalize`: a linear map of ``(dx, dscale, dbias)``.

  With :math:`t = dx \cdot 2^{-E}` (the tangent in the units of :math:`c`),
  :math:`w` the mask, :math:`n = \sum w`, :math:`\hat x = (c - \delta) r`:

  .. math::
    d\delta = \frac{1}{n}\sum w t, \quad
    u = \frac{r^2}{n}\,\mathrm{Re}\sum w \overline{(c - \delta)}\, t, \quad
    d\hat x = r (t - d\delta) - \hat x u, \quad
    dy = \gamma\, d\hat x + \hat x\, d\gamma + d\beta

  written as ``c * A + gamma * r * t + B`` with per-group tangents ``A`` and ``B``,
  so that the only array of ``x``'s size it reads is ``c``. JAX transposes it into the
  closed-form VJP: for batch norm, two reductions (``sum(dy)`` and ``sum(dy * c)``) and
  one elementwise pass; nothing else of ``x``'s size is kept. The tangents of the
  returned mean and variance come along (unused ones are removed by XLA).
  """
  c, rstd, delta, count, inv_scale, gamma, mask, bad = residuals
  dtype = compute_dtype(c.dtype)
  c = c.astype(dtype)
  n = jnp.maximum(count, 1)

  def reduce(*values):
    sums = tuple(jnp.sum(v, axis=reduce_axes, keepdims=True) for v in values)
    if axis_name is not None:
      sums = lax.psum(sums, axis_name, axis_index_groups=axis_index_groups)
    return sums

  # gamma is folded into the per-group gain ``gamma * r`` when that product is small
  # next to x: always for batch norm (gamma constant over the reduced axes), and for
  # group norm, whose gain has one value per (example, channel). Where the product would
  # be as large as x (layer norm: gamma varies along the reduced axes, r along the
  # kept ones), gamma is multiplied once, outside, so that the transpose forms
  # gamma * dy once and its reductions read no broadcast operand.
  gamma_outside = gamma is not None and 8 * math.prod(
      jnp.broadcast_shapes(gamma.shape, rstd.shape)) > math.prod(c.shape)
  dy = None
  dmean = dvar = jnp.zeros(rstd.shape, dtype)

  def add(total, term):
    return term if total is None else total + term

  if not _is_zero(dx):
    t = dx.astype(dtype) * inv_scale
    valid = t if mask is None else jnp.where(mask, t, jnp.zeros((), dtype))
    if center:
      sum_t, sum_ct = reduce(valid, (jnp.conj(c) * valid).real)
      d_delta = sum_t / n
      dm2 = sum_ct - (jnp.conj(delta) * sum_t).real  # d(var_c) = 2 dm2 / n
    else:
      (dm2,) = reduce((jnp.conj(c) * valid).real)
      d_delta = jnp.zeros(rstd.shape, dtype)
    u = rstd * (rstd * dm2 / n)
    gain = rstd if gamma is None or gamma_outside else gamma * rstd
    # d xhat = r (t - d_delta) - xhat u, xhat = (c - delta) r (times gamma if folded in)
    dy = c * -(gain * u) + gain * (delta * u - d_delta) + gain * t
    if gamma_outside:
      dy = gamma * dy
    dmean = d_delta / inv_scale
    dvar = 2 * dm2 / n / inv_scale / inv_scale
  if not _is_zero(dscale):  # xhat * dscale = c * (r dscale) - delta r dscale
    dy = add(dy, c * (rstd * dscale) - (delta * rstd) * dscale)
  if not _is_zero(dbias):
    dy = add(dy, dbias)
  if dy is None:
    dy = jnp.zeros(c.shape, dtype)
  dy = jnp.broadcast_to(dy, c.shape)
  if bad is not None:
    dy = jnp.where(bad, jnp.zeros((), dy.dtype), dy)
  return dy, dmean, dvar


@functools.partial(jax.custom_jvp, nondiff_argnums=(4, 5, 6, 7, 8))
def _normalize_core(x, scale, bias, mask, reduce_axes, epsilon, axis_name=None,
               axis_index_groups=None, center=True):
  """``(y, mean, var, count)``: ``y = (x - mean) / sqrt(var + epsilon) * scale + bias``.

  With ``center=False``, ``mean = 0`` and ``var = mean(|x|^2)`` (RMS normalization).
  Differentiable in forward and reverse mode and to any order: the JVP is the
  closed-form linear map :func:`_normalize_linear` (``jax.custom_jvp``), which JAX
  transposes into the closed-form VJP.
  """
  return _normalize_forward(x, scale, bias, mask, reduce_axes, epsilon, axis_name,
                            axis_index_groups, center)[0]


def _normalize_jvp(reduce_axes, epsilon, axis_name, axis_index_groups, center, primals,
                   tangents):
  x, scale, bias, mask = primals
  dx, dscale, dbias, _ = tangents
  outputs, residuals = _normalize_forward(x, scale, bias, mask, reduce_axes, epsilon,
                                          axis_name, axis_index_groups, center)
  dy, dmean, dvar = _normalize_linear(residuals, dx, dscale, dbias, reduce_axes,
                                      axis_name, axis_index_groups, center)
  y, mean, var, count = outputs
  # Under shard_map a statistic may vary over the mesh axis while its tangent (e.g. the
  # zero dmean of RMS normalization) does not: adding the statistic's zeros gives the
  # tangent the primal's varying-axes type (per-feature sized, negligible).
  return outputs, (dy.astype(y.dtype), dmean.astype(mean.dtype) + jnp.zeros_like(mean),
                   dvar.astype(var.dtype) + jnp.zeros_like(var), jnp.zeros_like(count))


_normalize_core.defjvp(_normalize_jvp, symbolic_zeros=True)
# One compiled program per configuration, also for calls outside jax.jit.
_normalize = compiled(static_argnums=(4, 5, 6, 7, 8))(_normalize_core)


def _as_param(param, name, natural_shape, param_shape, x_shape, axis_desc, fn,
              allow_complex=False):
  """Validates ``scale``/``bias`` and reshapes it to broadcast against ``x``.

  Accepted: the sizes of ``x`` on the normalized/feature axes (``natural_shape``), or any
  array of ``x.ndim`` dimensions that broadcasts to ``x``.
  """
  if param is None:
    return None
  param = _checks.ensure_floating(param, name=name, fn=fn, allow_complex=allow_complex)
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


def _prepare(fn, x, scale, bias, mask, epsilon, axis, *, allow_complex=False,
             allow_empty=True, axis_name=None) -> _Prepared:
  """Checks ``x``, ``epsilon``, ``axis``, ``scale``/``bias`` (sizes of x on ``axis``),
  ``mask`` and ``axis_name``: the one validation prologue of every normalization."""
  x = _checks.ensure_floating(x, name="x", fn=fn, allow_complex=allow_complex)
  epsilon = _checks.check_epsilon(epsilon, fn=fn, dtype=x.dtype)
  axes = _checks.canonical_axes(axis, x.shape, name="axis", fn=fn, allow_empty=allow_empty)
  axes_shape = tuple(x.shape[a] for a in axes)
  param_shape = tuple(x.shape[a] if a in axes else 1 for a in range(x.ndim))
  axis_desc = f"axis={axis!r}"
  scale = _as_param(scale, "scale", axes_shape, param_shape, x.shape, axis_desc, fn,
                    allow_complex)
  bias = _as_param(bias, "bias", axes_shape, param_shape, x.shape, axis_desc, fn,
                   allow_complex)
  _checks.check_axis_name(axis_name, fn=fn)
  return _Prepared(x, epsilon, axes, axes_shape, scale, bias,
                   _checks.check_mask(mask, x.shape, fn=fn))


def _output_dtype(x, *params):
  """``x``'s dtype, made complex when a parameter is complex."""
  if not jnp.iscomplexobj(x) and any(p is not None and jnp.iscomplexobj(p)
                                     for p in params):
    return jnp.result_type(x.dtype, jnp.complex64)
  return x.dtype


def stats_dtype(dtype) -> jnp.dtype:
  """The dtype of running means: float32, or complex64 for complex inputs."""
  return jnp.complex64 if jnp.issubdtype(dtype, jnp.complexfloating) else jnp.float32


def _checked_stats(stats, feature_shape, x_shape, axis_desc, fn, x_dtype=jnp.float32
                   ) -> BatchStats:
  if not (isinstance(stats, tuple) and len(stats) == 2):
    raise TypeError(
        f"{fn}: stats must be a jaxnorm.BatchStats(mean, var); got {type(stats).__name__}.")
  mean, var = (jnp.asarray(s) for s in stats)
  context = f"one value per feature of x.shape={tuple(x_shape)} on {axis_desc}"
  _checks.check_shape(mean, feature_shape, name="stats.mean", fn=fn, context=context)
  _checks.check_shape(var, feature_shape, name="stats.var", fn=fn, context=context)
  for name, value in (("stats.mean", mean), ("stats.var", var)):
    if not (jnp.issubdtype(value.dtype, jnp.floating) or jnp.issubdtype(
        value.dtype, jnp.complexfloating)):
      raise TypeError(f"{fn}: {name} must be floating point; got dtype {value.dtype}.")
  if jnp.iscomplexobj(var) or (jnp.iscomplexobj(mean) and not jnp.issubdtype(
      x_dtype, jnp.complexfloating)):
    raise TypeError(
        f"{fn}: stats hold complex values (mean {mean.dtype}, var {var.dtype}) but x is "
        f"{jnp.dtype(x_dtype)}; the variance is always real and the mean is complex only "
        "for complex inputs.")
  return BatchStats(mean.astype(stats_dtype(x_dtype)), var.astype(jnp.float32))


def check_batch_values(fn, x_shape, reduce_axes, axis, mask, axis_name) -> None:
  """Batch statistics need more than one value per feature (static shapes only)."""
  values_per_feature = math.prod(x_shape[a] for a in reduce_axes)
  if values_per_feature <= 1 and axis_name is None and mask is None:
    raise ValueError(
        f"{fn}: training needs more than one value per feature to compute a batch "
        f"variance; x.shape={tuple(x_shape)} with axis={axis!r} gives "
        f"{values_per_feature} value per feature. Use train=False (running statistics) "
        "or a batch with more than one example.")


def check_momentum(momentum, fn) -> None:
  _checks.check_in_unit_interval(
      momentum, name="momentum", fn=fn,
      hint=" Flax convention: new = momentum * old + (1 - momentum) * batch; "
           "PyTorch's momentum=0.1 is momentum=0.9 here.")


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

  Any finite input gives the right output: the statistics are computed on a
  power-of-two rescaling of each feature (exact), so data with std 1e20 or 1e-30,
  subnormal data, and data with ``|mean| >> std`` all normalize correctly (a running
  variance beyond float32's range is stored as inf). Complex inputs are normalized as
  in flax: complex mean, real variance :math:`E|x - \mu|^2`, complex64 running mean.

  Transforms: the derivative is closed-form (``jax.custom_jvp``; its linear map keeps
  only an ``x``-sized residual and per-feature vectors and JAX transposes it into the
  closed-form VJP), so ``jax.grad``/``jax.vjp``, ``jax.jvp``, ``jax.jacfwd``,
  ``jax.jacrev``, ``jax.hessian`` (forward-over-reverse), reverse-over-forward and
  reverse-over-reverse, ``jax.jit``, ``jax.vmap`` and ``jax.checkpoint`` all work (tested
  against the plain formula in float64). The new running statistics carry no gradient
  (``stop_gradient``); with a ``mask``, features without any valid value keep their
  running statistics.

  Args:
    x: floating-point (or complex) input, e.g. ``(batch, features)`` or NHWC.
    scale: :math:`\gamma` with the shape of the features (or ``None``).
    bias: :math:`\beta` with the shape of the features (or ``None``).
    stats: running :class:`BatchStats` with the shape of the features. ``None`` is
      allowed in training only and then ``None`` is returned for the new statistics.
    train: Python bool; use batch statistics (True) or ``stats`` (False).
    momentum: EMA decay in [0, 1] (PyTorch's ``momentum=0.1`` is 0.9 here).
    epsilon: positive constant added to the variance.
    axis: feature axis or axes (kept); all other axes are reduced.
    axis_name: mapped axis (``pmap``/``shard_map``) over which statistics are merged
      exactly around a common scale and shift (see :func:`moments`).
    axis_index_groups: device groups within ``axis_name``.
    mask: boolean array broadcastable to ``x``; false positions do not contribute to
      the statistics (their outputs are still normalized with them, as in Flax).
      NaN or inf there reaches no valid output and no gradient; the output at such a
      position is NaN.

  Returns:
    ``(y, new_stats)``; ``y`` has ``x``'s dtype, statistics are float32 (complex64
    means for complex inputs). Traced ``momentum`` values are not range-checked.

  Example:
    >>> import jax.numpy as jnp, numpy as np
    >>> from jaxnorm import functional as F
    >>> x = jnp.array([[1.0, 10.0], [3.0, 30.0]])
    >>> y, stats = F.batch_norm(x, None, None, F.BatchStats(jnp.zeros(2), jnp.ones(2)),
    ...                         train=True, momentum=0.9, epsilon=1e-6)
    >>> np.round(np.asarray(y, float), 3).tolist()
    [[-1.0, -1.0], [1.0, 1.0]]
    >>> np.round(np.asarray(stats.mean, float), 3).tolist()
    [0.2, 2.0]

  References:
    Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training by
    Reducing Internal Covariate Shift", ICML 2015.
  """
  fn = "jaxnorm.functional.batch_norm"
  train = _checks.check_static_bool(train, name="train", fn=fn)
  check_momentum(momentum, fn)
  x, epsilon, feature_axes, feature_shape, scale, bias, mask = _prepare(
      fn, x, scale, bias, mask, epsilon, axis, allow_complex=True, axis_name=axis_name)
  reduce_axes = tuple(a for a in range(x.ndim) if a not in feature_axes)
  if stats is not None:
    stats = _checked_stats(stats, feature_shape, x.shape, f"axis={axis!r}", fn, x.dtype)

  if not train:
    if stats is None:
      raise ValueError(f"{fn}: stats is None but train=False needs running statistics; "
                       "pass the BatchStats from training, or train=True.")
    return normalize_with_stats(x, scale, bias, stats, epsilon, feature_axes, mask), stats

  check_batch_values(fn, x.shape, reduce_axes, axis, mask, axis_name)
  y, batch_mean, batch_var, count = _normalize(
      x, scale, bias, mask, reduce_axes, epsilon, axis_name, axis_index_groups)
  if stats is None:
    return y, None
  return y, ema_update(stats, batch_mean, batch_var, count, momentum)


@compiled(static_argnums=(4, 5))
def normalize_with_stats(x, scale, bias, stats: BatchStats, epsilon: float,
                         feature_axes: tuple[int, ...], mask=None) -> jax.Array:
  """Evaluation-mode normalization of validated input with running ``stats``.

  With a ``mask``, non-finite values at masked positions reach no gradient (their
  outputs are NaN).
  """
  param_shape = tuple(x.shape[a] if a in feature_axes else 1 for a in range(x.ndim))
  dtype = compute_dtype(x.dtype)
  x_safe, bad = _guard_padding(x, mask)
  rstd = lax.rsqrt(stats.var.reshape(param_shape) + epsilon).astype(real_dtype(dtype))
  centred = x_safe.astype(dtype) - stats.mean.reshape(param_shape).astype(dtype)
  y = _standardize_affine(centred, rstd, scale, bias)
  return _restore_padding(y, bad).astype(_output_dtype(x, scale, bias))


def ema_update(stats: BatchStats, batch_mean, batch_var, count, momentum) -> BatchStats:
  """``new = momentum * old + (1 - momentum) * batch`` (float32, no gradient).

  Features whose ``count`` of valid values is 0 keep their statistics. A complex batch
  mean makes the running mean complex64 (as in flax).
  """
  def ema(old, batch):
    batch = lax.stop_gradient(batch).reshape(old.shape)
    batch = batch.astype(stats_dtype(batch.dtype))
    return (momentum * old + (1 - momentum) * batch).astype(
        jnp.result_type(old.dtype, batch.dtype))

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
  :math:`\epsilon` = ``epsilon``. Right for any finite input, complex inputs as in
  flax, closed-form derivatives in forward and reverse mode: see :func:`batch_norm`.

  Args:
    x: floating-point (or complex) input.
    scale: :math:`\gamma` with the sizes of ``x`` on ``axis`` (or ``x.ndim``
      dimensions broadcasting to ``x``), or ``None``.
    bias: :math:`\beta`, same shapes as ``scale``, or ``None``.
    axis: normalized axis or axes (at least one, with more than one value in all).
    epsilon: positive constant added to the variance.
    mask: boolean array broadcastable to ``x``; false elements do not contribute to
      the statistics of their example (NaN or inf there reaches no valid output and no
      gradient).
    axis_name: mapped axis over which the normalized axes are sharded (statistics are
      merged exactly across it).
    axis_index_groups: device groups within ``axis_name``.

  Returns:
    ``y`` with ``x``'s dtype.

  Example:
    >>> import jax.numpy as jnp, numpy as np
    >>> from jaxnorm import functional as F
    >>> y = F.layer_norm(jnp.array([[1.0, 3.0], [1e30, 3e30]]), None, None)
    >>> np.round(np.asarray(y, float), 3).tolist()  # squares of 3e30 overflow float32
    [[-1.0, 1.0], [-1.0, 1.0]]

  References:
    Ba, Kiros & Hinton, "Layer Normalization", 2016.
  """
  fn = "jaxnorm.functional.layer_norm"
  x, epsilon, axes, axes_shape, scale, bias, mask = _prepare(
      fn, x, scale, bias, mask, epsilon, axis, allow_complex=True, allow_empty=False,
      axis_name=axis_name)
  _checks.check_values_per_group(math.prod(axes_shape), fn=fn, x_shape=x.shape,
                                 axis_desc=f"axis={axis!r}", mask=mask,
                                 axis_name=axis_name)
  return _normalize(x, scale, bias, mask, axes, epsilon, axis_name, axis_index_groups)[0]


_FLAX_GROUPS_MESSAGE = ("Either `num_groups` or `group_size` should be specified. If "
                        "`group_size` is to be specified, pass `num_groups=None` as "
                        "argument to override the default `num_groups` value of 32.")


def _groups(channels: int, num_groups: int | None, group_size: int | None, fn: str, *,
            features: bool = False) -> int:
  """The number of groups from exactly one of ``num_groups`` / ``group_size``.

  The messages contain flax.linen.GroupNorm's own words (flax.nnx.GroupNorm's with
  ``features``: it checks ``num_features`` at construction), so code matching them
  keeps working after the swap.
  """
  noun = "features" if features else "channels"
  for name, value in (("num_groups", num_groups), ("group_size", group_size)):
    if value is not None and (not isinstance(value, (int, np.integer)) or isinstance(
        value, (bool, np.bool_))):
      raise TypeError(f"{fn}: {name} must be an int or None; got {value!r}.")
  if (num_groups is None) == (group_size is None):
    raise ValueError(f"{fn}: give exactly one of num_groups and group_size; got "
                     f"num_groups={num_groups}, group_size={group_size}. "
                     f"({_FLAX_GROUPS_MESSAGE})")
  if group_size is not None:
    if group_size < 1 or channels % group_size:
      where = "num_features" if features else "x.shape[-1]"
      raise ValueError(f"{fn}: group_size={group_size} does not divide the {channels} "
                       f"channels ({where}); use a divisor of {channels}. (Number of "
                       f"{noun} ({channels}) is not multiple of the group size "
                       f"({group_size}).)")
    return channels // group_size
  if num_groups < 1 or channels % num_groups:
    raise ValueError(f"{fn}: num_groups={num_groups} does not divide the {channels} "
                     f"channels (x.shape[-1]); use a divisor of {channels}. (Number of "
                     f"groups ({num_groups}) does not divide the number of channels "
                     f"({channels}).)")
  return int(num_groups)


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
  Same arguments as ``flax.linen.GroupNorm`` (whose error messages it repeats);
  numerics, complex inputs and transforms as in :func:`batch_norm`.

  Args:
    x: floating-point (or complex) input ``(N, ..., C)``.
    scale, bias: :math:`\gamma, \beta` of shape ``(C,)``, or ``None``.
    num_groups: ``G``; pass ``None`` when giving ``group_size``.
    group_size: channels per group, instead of ``num_groups``.
    epsilon: positive constant added to the variance.
    reduction_axes: axes to reduce besides the grouped channels; must include the last.
    mask: boolean array broadcastable to ``x``: elements that enter the statistics.
    axis_name, axis_index_groups: merge statistics across devices (as in batch norm).

  Example:
    >>> import jax.numpy as jnp, numpy as np
    >>> from jaxnorm import functional as F
    >>> x = jnp.array([[1.0, 3.0, 10.0, 30.0]])
    >>> y = F.group_norm(x, None, None, num_groups=2, epsilon=1e-6)
    >>> np.round(np.asarray(y, float), 3).tolist()
    [[-1.0, 1.0, -1.0, 1.0]]

  References:
    Wu & He, "Group Normalization", ECCV 2018.
  """
  fn = "jaxnorm.functional.group_norm"
  x, epsilon, _, (channels,), scale, bias, mask = _prepare(
      fn, x, scale, bias, mask, epsilon, -1, allow_complex=True, axis_name=axis_name)
  groups = _groups(channels, num_groups, group_size, fn)
  if reduction_axes is None:
    reduction_axes = tuple(range(1, x.ndim))
  axes = _checks.canonical_axes(reduction_axes, x.shape, name="reduction_axes", fn=fn)
  if x.ndim - 1 not in axes:
    raise ValueError(f"{fn}: reduction_axes={reduction_axes!r} must include the last "
                     f"(channel) axis {x.ndim - 1} of x.shape={tuple(x.shape)}. (The "
                     "reduction axes must include the final dimension as this is assumed "
                     "to be the feature axis.)")
  _checks.check_values_per_group(
      math.prod(x.shape[a] for a in axes[:-1]) * (channels // groups), fn=fn,
      x_shape=x.shape, axis_desc=f"{groups} groups over reduction_axes={reduction_axes!r}",
      mask=mask, axis_name=axis_name)
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
  ``feature_axes``); axis 0 is the batch; every other axis is reduced, so ``x`` needs
  at least one such (spatial) axis. Numerics, complex inputs and transforms as in
  :func:`batch_norm`.

  Example:
    >>> import jax.numpy as jnp, numpy as np
    >>> from jaxnorm import functional as F
    >>> x = jnp.array([[[1.0], [3.0]]])  # (N=1, W=2, C=1)
    >>> y = F.instance_norm(x, None, None, epsilon=1e-6)
    >>> np.round(np.asarray(y, float), 3).tolist()
    [[[-1.0], [1.0]]]

  References:
    Ulyanov, Vedaldi & Lempitsky, "Instance Normalization: The Missing Ingredient for
    Fast Stylization", 2016.
  """
  fn = "jaxnorm.functional.instance_norm"
  x, epsilon, feature_axes, _, scale, bias, mask = _prepare(
      fn, x, scale, bias, mask, epsilon, axis, allow_complex=True, axis_name=axis_name)
  if 0 in feature_axes:
    raise ValueError(f"{fn}: axis={axis!r} includes axis 0, the batch axis of "
                     f"x.shape={tuple(x.shape)}; name the channel axes only. (The channel "
                     "axes cannot include the leading dimension as this is assumed to be "
                     "the batch axis.)")
  reduce_axes = tuple(a for a in range(1, x.ndim) if a not in feature_axes)
  if not reduce_axes:
    raise ValueError(f"{fn}: x.shape={tuple(x.shape)} with axis={axis!r} leaves no axis to "
                     "normalize over (axis 0 is the batch, the channel axes are kept); "
                     "instance norm needs spatial axes, e.g. x of shape (N, H, W, C). For "
                     "(N, C) inputs use layer_norm or batch_norm.")
  _checks.check_values_per_group(math.prod(x.shape[a] for a in reduce_axes), fn=fn,
                                 x_shape=x.shape, axis_desc=f"axis={axis!r}", mask=mask,
                                 axis_name=axis_name)
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
    y = \frac{x}{\sqrt{\frac{1}{n}\sum_{i} |x_i|^2 + \epsilon}}\,\gamma

  over the axes ``axis``, with :math:`\gamma` = ``scale``. Numerics, complex inputs and
  transforms as in :func:`batch_norm`.

  Example:
    >>> import jax.numpy as jnp, numpy as np
    >>> from jaxnorm import functional as F
    >>> y = F.rms_norm(jnp.array([[3.0, 4.0]]) * 1e25, None, epsilon=1e-6)
    >>> np.round(np.asarray(y, float), 3).tolist()
    [[0.849, 1.131]]

  References:
    Zhang & Sennrich, "Root Mean Square Layer Normalization", NeurIPS 2019.
  """
  fn = "jaxnorm.functional.rms_norm"
  x, epsilon, axes, _, scale, _, mask = _prepare(
      fn, x, scale, None, mask, epsilon, axis, allow_complex=True, allow_empty=False,
      axis_name=axis_name)
  return _normalize(x, scale, None, mask, axes, epsilon, axis_name, axis_index_groups,
                    False)[0]
