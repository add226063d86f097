r"""Reversible instance normalization (RevIN) for time-series models.

A forecaster sees each input series normalized by its own statistics and its output is
mapped back with the same statistics, so that a shift of level or scale between
training and test series (distribution shift) is removed on the way in and restored on
the way out:

.. math::
  \hat x = \frac{x - \mu}{\sigma}\,\gamma + \beta, \qquad
  y = \frac{\hat y - \beta}{\gamma}\,\sigma + \mu, \qquad
  \sigma = \sqrt{\mathrm{Var}[x] + \epsilon}

with :math:`\mu, \mathrm{Var}[x]` per series and variable over time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxnorm import _checks
from jaxnorm.functional._stats import centred_moments, compute_dtype
from jaxnorm.functional.composite import _affine, _guard_normalized
from jaxnorm.functional.normalization import (
    _as_param, _guard_padding, _prepare, _restore_padding, _rstd)


class RevINStats(NamedTuple):
  """The statistics :func:`revin_normalize` removed, for :func:`revin_denormalize`.

  Both have ``x``'s rank with size 1 on the reduced (time) axes, so they broadcast
  against an output of any length; dtype: ``x``'s promoted to at least float32.

  Attributes:
    mean: :math:`\\mu`, the mean of each series and variable.
    std: :math:`\\sigma = \\sqrt{\\mathrm{Var}[x] + \\epsilon}` (biased variance).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxnorm import functional as F
    >>> _, stats = F.revin_normalize(jnp.ones((2, 5, 3)), None, None)  # (B, T, C)
    >>> stats.mean.shape, stats.std.shape            # one per series and variable
    ((2, 1, 3), (2, 1, 3))
  """

  mean: jax.Array
  std: jax.Array


def _reduce_axes(feature_axes, ndim, axis, x_shape, fn):
  if 0 in feature_axes:
    raise ValueError(f"{fn}: axis={axis!r} includes axis 0, the batch (series) axis of "
                     f"x.shape={tuple(x_shape)}; name the variable (channel) axes only.")
  return tuple(a for a in range(1, ndim) if a not in feature_axes)


def revin_normalize(
    x: jax.Array,
    scale: jax.Array | None,
    bias: jax.Array | None,
    *,
    axis: int | Sequence[int] = -1,
    epsilon: float = 1e-5,
    mask: jax.Array | None = None,
) -> tuple[jax.Array, RevINStats]:
  r"""RevIN's normalization: each series standardized by its own statistics.

  .. math::
    \hat x = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}}\,\gamma + \beta

  with :math:`\mu, \sigma^2` the mean and biased variance of each series (axis 0) and
  variable (``axis``) over the remaining (time) axes, :math:`\gamma, \beta` =
  ``scale``, ``bias`` (the optional learnable affine, one per variable). Returns the
  statistics that :func:`revin_denormalize` takes. Statistics come from the one
  statistics path (stable on series with a large level); gradients flow through them
  (the authors' code detaches them: wrap them in ``jax.lax.stop_gradient`` for that;
  it makes no difference when ``x`` is data).

  Args:
    x: floating-point input ``(batch, time, variables)`` (or more time-like axes).
    scale: :math:`\gamma` with the sizes of ``x`` on ``axis``, or ``None``.
    bias: :math:`\beta`, same shape, or ``None``.
    axis: the variable (channel) axes, kept; axis 0 is the batch, every other axis is
      reduced.
    epsilon: positive constant added to the variance (1e-5 as in the paper's code).
    mask: boolean array broadcastable to ``x`` marking valid (not padded) time steps;
      padding does not enter the statistics (its outputs are still normalized with
      them). A series with no valid step gets mean 0 and std ``sqrt(epsilon)``.

  Returns:
    ``(x_hat, stats)``: ``x_hat`` in ``x``'s dtype and a :class:`RevINStats`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxnorm import functional as F
    >>> x = 50.0 + 3.0 * jax.random.normal(jax.random.key(0), (4, 96, 7))
    >>> x_hat, stats = F.revin_normalize(x, None, None)
    >>> forecast = x_hat[:, -24:]          # a model's output in normalized units
    >>> y = F.revin_denormalize(forecast, None, None, stats)
    >>> bool(jnp.allclose(y, x[:, -24:], atol=1e-4))
    True

  References:
    Kim, Kim, Tae, Park, Choi & Choo, "Reversible Instance Normalization for Accurate
    Time-Series Forecasting against Distribution Shift", ICLR 2022.
  """
  fn = "jaxnorm.functional.revin_normalize"
  x, epsilon, feature_axes, _, scale, bias, mask = _prepare(fn, x, scale, bias, mask,
                                                            epsilon, axis)
  reduce_axes = _reduce_axes(feature_axes, x.ndim, axis, x.shape, fn)
  centred, moments = centred_moments(x, reduce_axes, mask)
  # In the scaled units of c (as the other normalizations): any finite input, std 1e30
  # included, whose variance overflows float32 while the std does not.
  rstd = _rstd(moments.var_c, moments.scale * moments.factor, epsilon) * moments.factor
  std = 1 / (rstd * moments.scale)  # sqrt(var + epsilon) in the units of x
  centred, bad = _guard_padding(centred, mask)  # padding influences nothing, also backward
  y, bad = _guard_normalized((centred - moments.delta) * rstd, bad, mask)
  y = _restore_padding(_affine(y, scale, bias), bad)
  return y.astype(x.dtype), RevINStats(moments.mean, std)


def revin_denormalize(
    y: jax.Array,
    scale: jax.Array | None,
    bias: jax.Array | None,
    stats: RevINStats,
    *,
    axis: int | Sequence[int] = -1,
) -> jax.Array:
  r"""RevIN's denormalization: a model's output mapped back with the input's statistics.

  .. math::
    y = \frac{\hat y - \beta}{\gamma}\,\sigma + \mu

  the exact inverse of :func:`revin_normalize` with the same ``scale`` (nonzero) and
  ``bias``; ``y`` may have another length along the reduced (time) axes, e.g. a
  forecast horizon, since ``stats`` broadcast there.

  Args:
    y: floating-point output in normalized units, same rank as the normalized input.
    scale, bias: the ``scale`` and ``bias`` given to :func:`revin_normalize`.
    stats: the :class:`RevINStats` it returned.
    axis: the variable axes, as given to :func:`revin_normalize`.

  Returns:
    An array in ``y``'s dtype.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxnorm import functional as F
    >>> stats = F.RevINStats(mean=jnp.full((1, 1, 2), 10.0), std=jnp.full((1, 1, 2), 2.0))
    >>> F.revin_denormalize(jnp.ones((1, 3, 2)), None, None, stats)[0, 0]
    Array([12., 12.], dtype=float32)
  """
  fn = "jaxnorm.functional.revin_denormalize"
  y = _checks.ensure_floating(y, name="y", fn=fn)
  feature_axes = _checks.canonical_axes(axis, y.shape, name="axis", fn=fn)
  if not (isinstance(stats, tuple) and len(stats) == 2):
    raise TypeError(f"{fn}: stats must be the RevINStats(mean, std) returned by "
                    f"revin_normalize; got {type(stats).__name__}.")
  mean, std = (jnp.asarray(s) for s in stats)
  for name, value in (("stats.mean", mean), ("stats.std", std)):
    try:
      fits = value.ndim == y.ndim and jnp.broadcast_shapes(value.shape, y.shape) == y.shape
    except ValueError:
      fits = False
    if not fits:
      raise ValueError(
          f"{fn}: {name} has shape {tuple(value.shape)}, which does not broadcast to "
          f"y.shape={tuple(y.shape)}; pass the statistics revin_normalize returned for "
          "this batch (same batch size and variables, size 1 on the time axes).")
  feature_shape = tuple(y.shape[a] for a in feature_axes)
  param_shape = tuple(y.shape[a] if a in feature_axes else 1 for a in range(y.ndim))
  desc = f"axis={axis!r}"
  scale = _as_param(scale, "scale", feature_shape, param_shape, y.shape, desc, fn)
  bias = _as_param(bias, "bias", feature_shape, param_shape, y.shape, desc, fn)
  dtype = compute_dtype(jnp.promote_types(y.dtype, mean.dtype))
  out = y.astype(dtype)
  if bias is not None:
    out = out - bias.astype(dtype)
  if scale is not None:
    out = out / scale.astype(dtype)
  return (out * std.astype(dtype) + mean.astype(dtype)).astype(y.dtype)
