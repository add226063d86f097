r"""Whitening normalizations: decorrelated batch norm (ZCA) and IterNorm.

Batch norm standardizes each feature; whitening also removes the correlations between
features. The features (last axis) are split into groups of ``g`` consecutive features
and each group is whitened with its own covariance over every other axis:

.. math::
  \mu = \frac{1}{n}\sum_{i} x_i, \qquad
  \Sigma = \frac{1}{n}\sum_{i} (x_i - \mu)(x_i - \mu)^\top + \epsilon I, \qquad
  y_i = W (x_i - \mu)

with :math:`W = \Sigma^{-1/2}` (ZCA) from an eigendecomposition in
:func:`decorrelated_batch_norm`, or its Newton-Schulz approximation in
:func:`iter_norm`. Statistics come from the one statistics path (a shifted one-pass
sum, stable on data with a large mean) and merge exactly across devices.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxnorm import _checks
from jaxnorm.functional._stats import (
    _psum, centred_moments, compute_dtype, in_input_units)
from jaxnorm.functional.composite import _affine, _guard_normalized
from jaxnorm.functional.normalization import (
    _groups, _guard_padding, _prepare, _restore_padding)

_HIGHEST = lax.Precision.HIGHEST  # float32 products stay float32 on GPU (TF32) and TPU


class WhiteningStats(NamedTuple):
  """Running statistics of a whitening layer (float32).

  Attributes:
    mean: running mean, one value per feature, shape ``(C,)``.
    whitening: running whitening matrix of each group, shape ``(G, g, g)`` with
      ``G * g = C``; evaluation computes ``y = whitening @ (x - mean)`` per group.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxnorm import functional as F
    >>> x = jax.random.normal(jax.random.key(0), (16, 4))
    >>> stats = F.init_whitening_stats(4, group_size=2)   # zero mean, identity matrices
    >>> stats.mean.shape, stats.whitening.shape           # (C,) and (G, g, g)
    ((4,), (2, 2, 2))
    >>> y, _ = F.decorrelated_batch_norm(x, None, None, stats, train=False, group_size=2)
    >>> bool(jnp.allclose(y, x))                          # whitening @ (x - mean) = x
    True
  """

  mean: jax.Array
  whitening: jax.Array


def init_whitening_stats(
    num_features: int, *, num_groups: int | None = None, group_size: int | None = 16
) -> WhiteningStats:
  """Initial running statistics: zero mean and identity whitening matrices.

  Args:
    num_features: ``C``, the size of the feature (last) axis.
    num_groups: ``G``; pass ``None`` when giving ``group_size``.
    group_size: ``g``, features per group (``C / G``), instead of ``num_groups``.

  Returns:
    A :class:`WhiteningStats` of float32 arrays ``(C,)`` and ``(G, g, g)``.

  Example:
    >>> from jaxnorm import functional as F
    >>> stats = F.init_whitening_stats(32, group_size=8)
    >>> stats.mean.shape, stats.whitening.shape
    ((32,), (4, 8, 8))
  """
  groups = _groups(num_features, num_groups, group_size,
                   "jaxnorm.functional.init_whitening_stats")
  size = num_features // groups
  return WhiteningStats(jnp.zeros((num_features,), jnp.float32),
                        jnp.broadcast_to(jnp.eye(size, dtype=jnp.float32),
                                         (groups, size, size)))


# --------------------------------------------------------------------------------------
# The inverse square root of a covariance, with a backward pass that survives repeated
# eigenvalues.


@jax.custom_vjp
def _inverse_sqrt(cov: jax.Array, epsilon: jax.Array) -> jax.Array:
  """``(cov + epsilon I)^{-1/2}`` of a batch of symmetric PSD matrices, via ``eigh``."""
  return _inverse_sqrt_fwd(cov, epsilon)[0]


def _inverse_sqrt_fwd(cov, epsilon):
  eigenvalues, vectors = jnp.linalg.eigh(cov, symmetrize_input=True)
  # cov is PSD: a negative eigenvalue is rounding, and epsilon keeps every root positive.
  roots = jnp.sqrt(jnp.maximum(eigenvalues, 0) + epsilon)
  whitening = jnp.matmul(vectors / roots[..., None, :], jnp.swapaxes(vectors, -1, -2),
                         precision=_HIGHEST)
  return whitening, (vectors, roots)


def _inverse_sqrt_bwd(residuals, cotangent):
  r"""Closed-form VJP of :math:`f(\Sigma) = \Sigma^{-1/2}` (Daleckii-Krein).

  With :math:`\Sigma = V \mathrm{diag}(\lambda) V^\top` and :math:`s = \sqrt\lambda`,

  .. math::
    \bar\Sigma = V \big(K \circ (V^\top \mathrm{sym}(\bar W) V)\big) V^\top, \qquad
    K_{ij} = \frac{f(\lambda_i) - f(\lambda_j)}{\lambda_i - \lambda_j}
           = \frac{-1}{s_i s_j (s_i + s_j)}

  The divided difference simplifies to a form without :math:`\lambda_i - \lambda_j`,
  so equal or nearly equal eigenvalues (rank-deficient batches, dead features) give
  the exact, finite gradient, where differentiating ``eigh`` divides by
  :math:`\lambda_i - \lambda_j` and returns NaN or noise.
  """
  vectors, roots = residuals
  vectors_t = jnp.swapaxes(vectors, -1, -2)
  sym = 0.5 * (cotangent + jnp.swapaxes(cotangent, -1, -2))
  kernel = -1.0 / (roots[..., :, None] * roots[..., None, :]
                   * (roots[..., :, None] + roots[..., None, :]))
  inner = kernel * jnp.matmul(jnp.matmul(vectors_t, sym, precision=_HIGHEST), vectors,
                              precision=_HIGHEST)
  d_cov = jnp.matmul(jnp.matmul(vectors, inner, precision=_HIGHEST), vectors_t,
                     precision=_HIGHEST)
  return d_cov, None


_inverse_sqrt.defvjp(_inverse_sqrt_fwd, _inverse_sqrt_bwd)


def _newton_schulz(cov: jax.Array, epsilon: float, iterations: int) -> jax.Array:
  r"""IterNorm's approximation of ``(cov + epsilon I)^{-1/2}``; differentiated by JAX.

  .. math::
    \Sigma_N = \Sigma / \mathrm{tr}(\Sigma), \quad P_0 = I, \quad
    P_k = \tfrac{1}{2}\big(3 P_{k-1} - P_{k-1}^3 \Sigma_N\big), \quad
    W = P_T / \sqrt{\mathrm{tr}(\Sigma)}

  The trace normalization puts the eigenvalues of :math:`\Sigma_N` in (0, 1], where the
  iteration converges to :math:`\Sigma_N^{-1/2}`; slowly for eigenvalues much smaller
  than the largest, so a few iterations whiten the dominant directions only.

  Computed in the coupled form :math:`T_k = \frac{1}{2}(3I - P_{k-1} Y_{k-1})`,
  :math:`Y_k = Y_{k-1} T_k`, :math:`P_k = T_k P_{k-1}`, :math:`Y_0 = \Sigma_N`, which
  gives the same :math:`P_k` in exact arithmetic (:math:`Y_k = \Sigma_N P_k`) at the
  same cost (three products per step). The uncoupled form above amplifies rounding
  errors near its fixed point by up to :math:`\frac{1}{2}(r^2 + r - 2)` per step, with
  :math:`r^2` the group's condition number (unstable above about 2.4; in float32 it
  overflows to NaN within a few dozen steps on ordinary data, within 15 on
  ill-conditioned groups); the coupled form does not (Higham, "Functions of
  Matrices", SIAM 2008, on the stability of Newton iterations for matrix roots).
  """
  size = cov.shape[-1]
  eye = jnp.eye(size, dtype=cov.dtype)
  sigma = cov + epsilon * eye
  trace = jnp.trace(sigma, axis1=-2, axis2=-1)[..., None, None]
  y = sigma / trace
  p = jnp.broadcast_to(eye, cov.shape)
  for _ in range(iterations):
    t = 0.5 * (3.0 * eye - jnp.matmul(p, y, precision=_HIGHEST))
    y = jnp.matmul(y, t, precision=_HIGHEST)
    p = jnp.matmul(t, p, precision=_HIGHEST)
  return p * lax.rsqrt(trace)


# --------------------------------------------------------------------------------------
# Statistics: per-group count, mean and centred scatter matrix, merged across devices.


def _merge_across_devices(count, mean, scatter, axis_name, axis_index_groups):
  """Exact Chan merge of per-device (count, mean, centred scatter matrix).

  ``n = sum n_i``, ``mean = sum n_i mean_i / n``,
  ``M = sum (M_i + n_i (mean_i - mean)(mean_i - mean)^T)``: the matrix form of the
  variance merge in :mod:`jaxnorm.functional._stats`. Devices with ``n_i = 0``
  contribute nothing.
  """
  total, weighted = _psum((count, count[:, None] * mean), axis_name, axis_index_groups)
  global_mean = weighted / jnp.maximum(total, 1)[:, None]
  d = mean - global_mean
  global_scatter = _psum(scatter + count[:, None, None] * d[:, :, None] * d[:, None, :],
                         axis_name, axis_index_groups)
  return total, global_mean, global_scatter


class _GroupStats(NamedTuple):
  """Per-group statistics of a batch; ``x - mean = centred - delta``."""

  centred: jax.Array  # (m, G, g): x - shift, compute dtype
  delta: jax.Array    # (G, g): mean - shift
  mean: jax.Array     # (G, g)
  cov: jax.Array      # (G, g, g): biased covariance, without epsilon
  count: jax.Array    # (G,): number of valid samples


def _group_stats(x2, mask2, groups, axis_name, axis_index_groups) -> _GroupStats:
  """Statistics of ``x2`` ``(m, C)`` (valid rows: ``mask2`` ``(m, 1)``) per group.

  :func:`jaxnorm.functional._stats.centred_moments` gives ``c = x - k`` (a per-feature
  shift near the mean) and ``delta = S1 / n``; the scatter is ``sum c c^T - n delta
  delta^T``, so no large mean enters the cancellation.
  """
  centred, moments = centred_moments(x2, (0,), mask2)
  centred, shift, delta = in_input_units(centred, moments)  # one unit for all features
  m, channels = x2.shape
  size = channels // groups
  valid = centred if mask2 is None else jnp.where(mask2, centred, 0)
  valid = valid.reshape(m, groups, size)
  delta = delta.reshape(groups, size)
  count = moments.count.reshape(groups, size)[:, 0]
  scatter = (jnp.einsum("mgi,mgj->gij", valid, valid, precision=_HIGHEST)
             - count[:, None, None] * delta[:, :, None] * delta[:, None, :])
  mean = moments.mean.reshape(groups, size)
  if axis_name is not None:
    count, mean, scatter = _merge_across_devices(count, mean, scatter, axis_name,
                                                 axis_index_groups)
    delta = mean - shift.reshape(groups, size)  # global mean from local shift
  cov = scatter / jnp.maximum(count, 1)[:, None, None]
  return _GroupStats(centred.reshape(m, groups, size), delta, mean, cov, count)


# --------------------------------------------------------------------------------------
# Shared front end of the two public functions.


def _devices(axis_name, axis_index_groups) -> int | None:
  """How many devices the statistics merge over (None when it cannot be known)."""
  if axis_name is None:
    return 1
  if axis_index_groups is not None:
    return len(axis_index_groups[0])
  try:
    return int(lax.axis_size(axis_name))
  except (NameError, TypeError, ValueError):
    return None  # the merge itself raises the unbound-axis error


def _check_mask_per_sample(mask, x_shape, fn):
  if mask is not None and mask.shape[-1] != 1:
    raise ValueError(
        f"{fn}: mask.shape={tuple(mask.shape)} varies along the feature (last) axis of "
        f"x.shape={tuple(x_shape)}; whitening needs all features of a sample valid or "
        "invalid together. Give the mask size 1 on the last axis, e.g. "
        "mask = valid[..., None].")


def _checked_whitening_stats(stats, channels, groups, fn) -> WhiteningStats:
  if not (isinstance(stats, tuple) and len(stats) == 2):
    raise TypeError(f"{fn}: stats must be a jaxnorm.functional.WhiteningStats(mean, "
                    f"whitening); got {type(stats).__name__}. Create it with "
                    "F.init_whitening_stats(num_features, group_size=...).")
  mean, whitening = (jnp.asarray(s) for s in stats)
  size = channels // groups
  _checks.check_shape(mean, (channels,), name="stats.mean", fn=fn,
                      context=f"one value per feature of the {channels} features")
  _checks.check_shape(whitening, (groups, size, size), name="stats.whitening", fn=fn,
                      context=f"one {size}x{size} matrix per group of {groups} groups "
                              f"of {size} features")
  return WhiteningStats(mean.astype(jnp.float32), whitening.astype(jnp.float32))


def _whiten(x, scale, bias, stats, *, fn, train, num_groups, group_size, momentum,
            epsilon, axis_name, axis_index_groups, mask, inverse_sqrt):
  """Validates the arguments and whitens ``x`` (see :func:`decorrelated_batch_norm`)."""
  train = _checks.check_static_bool(train, name="train", fn=fn)
  _checks.check_in_unit_interval(
      momentum, name="momentum", fn=fn,
      hint=" Flax convention: new = momentum * old + (1 - momentum) * batch.")
  x, epsilon, _, (channels,), scale, bias, mask = _prepare(fn, x, scale, bias, mask,
                                                          epsilon, -1)
  groups = _groups(channels, num_groups, group_size, fn)
  size = channels // groups
  _check_mask_per_sample(mask, x.shape, fn)
  if stats is not None:
    stats = _checked_whitening_stats(stats, channels, groups, fn)
  elif not train:
    raise ValueError(f"{fn}: stats is None but train=False needs running statistics; "
                     "pass the WhiteningStats from training, or train=True.")

  samples = math.prod(x.shape[:-1])
  x2 = x.reshape(samples, channels)
  mask2 = None if mask is None else jnp.broadcast_to(
      mask, x.shape[:-1] + (1,)).reshape(samples, 1)
  # Padding influences nothing, forward or backward (as in the other normalizations):
  # non-finite values at masked rows become 0 here and NaN again in the output.
  x2, bad = _guard_padding(x2, mask2)
  bad = None if bad is None else bad.reshape(x.shape)
  if not train:
    dtype = compute_dtype(x.dtype)
    centred = (x2.astype(dtype) - stats.mean.astype(dtype)).reshape(samples, groups, size)
    y = jnp.einsum("gji,mgi->mgj", stats.whitening.astype(dtype), centred,
                   precision=_HIGHEST)
    y, bad = _guard_normalized(y.reshape(x.shape), bad, mask)
    return _restore_padding(_affine(y, scale, bias), bad).astype(x.dtype), stats

  devices = _devices(axis_name, axis_index_groups)
  if devices is not None and samples * devices <= size:
    across = (f" per device, {samples * devices} across {devices} devices"
              if devices > 1 else "")
    raise ValueError(
        f"{fn}: a group of {size} features needs more than {size} samples to be "
        f"whitened (a covariance of n samples has rank at most n - 1); "
        f"x.shape={tuple(x.shape)} gives {samples} samples{across}. Use a larger batch, "
        f"smaller groups (group_size < {samples * devices}) or train=False.")
  batch = _group_stats(x2, mask2, groups, axis_name, axis_index_groups)
  whitening = inverse_sqrt(batch.cov, epsilon)
  y = jnp.einsum("gji,mgi->mgj", whitening, batch.centred - batch.delta,
                 precision=_HIGHEST)
  y, bad = _guard_normalized(y.reshape(x.shape), bad, mask)
  y = _restore_padding(_affine(y, scale, bias), bad).astype(x.dtype)
  if stats is None:
    return y, None
  seen = batch.count > 0  # a group without valid samples keeps its statistics

  def ema(old, new, where):
    new = lax.stop_gradient(new).reshape(old.shape).astype(jnp.float32)
    return jnp.where(where, momentum * old + (1 - momentum) * new, old)

  return y, WhiteningStats(
      ema(stats.mean, batch.mean, jnp.repeat(seen, size)),
      ema(stats.whitening, whitening, seen[:, None, None]))


def decorrelated_batch_norm(
    x: jax.Array,
    scale: jax.Array | None,
    bias: jax.Array | None,
    stats: WhiteningStats | None,
    *,
    train: bool,
    num_groups: int | None = None,
    group_size: int | None = 16,
    momentum: float = 0.99,
    epsilon: float = 1e-5,
    axis_name: Any = None,
    axis_index_groups: Any = None,
    mask: jax.Array | None = None,
) -> tuple[jax.Array, WhiteningStats | None]:
  r"""Decorrelated batch norm: ZCA whitening of groups of features over the batch.

  .. math::
    \Sigma = \frac{1}{n}\sum_i (x_i - \mu)(x_i - \mu)^\top + \epsilon I
           = V \Lambda V^\top, \qquad
    y_i = V \Lambda^{-1/2} V^\top (x_i - \mu) \odot \gamma + \beta

  per group of ``g`` = ``group_size`` consecutive features (the last axis of ``x``;
  every other axis is reduced), with :math:`\mu` the batch mean, :math:`\epsilon` =
  ``epsilon``, :math:`\gamma, \beta` = ``scale``, ``bias`` (one per feature). In
  training the covariance of each whitened group is the identity up to
  :math:`\epsilon` (exactly :math:`C (C + \epsilon I)^{-1}` for the batch covariance
  :math:`C`), and the running mean and running whitening matrix are updated with
  momentum :math:`m`: ``new = m * old + (1 - m) * batch`` (the papers' population
  statistics). Evaluation computes ``whitening @ (x - mean)`` with them.

  Statistics accumulate in at least float32, from a shifted one-pass sum; the matrix
  products ask for ``HIGHEST`` precision, so that GPUs and TPUs do not compute them in
  TF32 or bfloat16 (tested on CPU only); running statistics are float32. With
  ``axis_name`` the per-device counts, means and centred scatter matrices merge
  exactly (Chan et al.), also with different numbers of valid samples per device.

  Backward: JAX differentiates the centring and the products; the inverse square root
  has a closed-form VJP (Daleckii-Krein divided differences) that stays exact when
  eigenvalues repeat. Differentiating ``jnp.linalg.eigh`` itself divides by
  :math:`\lambda_i - \lambda_j` and gives NaN for repeated eigenvalues (e.g. a batch
  with fewer samples than features, or dead features). Second derivatives are not
  supported (nor tested), and forward mode (``jax.jvp``) raises JAX's ``TypeError`` for
  ``custom_vjp`` functions, as for :func:`batch_norm`.

  Args:
    x: floating-point input ``(..., C)``; features last (NHWC, ``(N, T, C)``).
    scale: :math:`\gamma` of shape ``(C,)``, or ``None``.
    bias: :math:`\beta` of shape ``(C,)``, or ``None``.
    stats: running :class:`WhiteningStats` (see :func:`init_whitening_stats`); ``None``
      is allowed in training only, and ``None`` is then returned for them.
    train: Python bool; batch statistics (True) or ``stats`` (False).
    num_groups: ``G``; pass ``None`` when giving ``group_size``.
    group_size: ``g``, features per group (16 in Huang et al.); must divide ``C`` and
      be smaller than the number of samples (an error otherwise).
    momentum: EMA decay in [0, 1] (Flax convention).
    epsilon: positive constant added to the covariance's diagonal.
    axis_name: mapped axis (``pmap``/``shard_map``) to merge statistics over.
    axis_index_groups: device groups within ``axis_name``.
    mask: boolean array broadcastable to ``x`` with size 1 on the feature axis:
      false samples do not enter the statistics (their outputs are still whitened).
      The number of valid samples is traced and not checked against ``g``; with
      fewer than ``g + 1`` the covariance is rank-deficient and only ``epsilon``
      bounds the output.

  Returns:
    ``(y, new_stats)``; ``y`` has ``x``'s dtype, statistics are float32.

  Example:
    >>> import jax
    >>> from jaxnorm import functional as F
    >>> x = jax.random.normal(jax.random.key(0), (64, 8))
    >>> y, stats = F.decorrelated_batch_norm(x, None, None, F.init_whitening_stats(
    ...     8, group_size=4), train=True, group_size=4)
    >>> bool(abs(jax.numpy.cov(y[:, :4], rowvar=False, bias=True)
    ...          - jax.numpy.eye(4)).max() < 1e-3)
    True

  References:
    Huang, Yang, Lang & Deng, "Decorrelated Batch Normalization", CVPR 2018.
  """
  return _whiten(x, scale, bias, stats, fn="jaxnorm.functional.decorrelated_batch_norm",
                 train=train, num_groups=num_groups, group_size=group_size,
                 momentum=momentum, epsilon=epsilon, axis_name=axis_name,
                 axis_index_groups=axis_index_groups, mask=mask,
                 inverse_sqrt=lambda cov, eps: _inverse_sqrt(cov, jnp.asarray(
                     eps, cov.dtype)))


def iter_norm(
    x: jax.Array,
    scale: jax.Array | None,
    bias: jax.Array | None,
    stats: WhiteningStats | None,
    *,
    train: bool,
    iterations: int = 5,
    num_groups: int | None = None,
    group_size: int | None = 16,
    momentum: float = 0.99,
    epsilon: float = 1e-5,
    axis_name: Any = None,
    axis_index_groups: Any = None,
    mask: jax.Array | None = None,
) -> tuple[jax.Array, WhiteningStats | None]:
  r"""IterNorm: whitening with Newton-Schulz iterations instead of eigendecompositions.

  .. math::
    \Sigma_N = \frac{\Sigma}{\mathrm{tr}\,\Sigma},\quad P_0 = I,\quad
    P_k = \tfrac{1}{2}\big(3 P_{k-1} - P_{k-1}^3 \Sigma_N\big),\quad
    y_i = \frac{P_T}{\sqrt{\mathrm{tr}\,\Sigma}} (x_i - \mu) \odot \gamma + \beta

  with :math:`\Sigma` the covariance of a group plus :math:`\epsilon I` and :math:`T` =
  ``iterations`` (5 in Huang et al.). Matrix products only, so it runs fast on
  accelerators and its gradient (JAX's, through the iterations) has no trouble with
  repeated eigenvalues. As ``iterations`` grows :math:`P_T / \sqrt{\mathrm{tr}\,\Sigma}
  \to \Sigma^{-1/2}` and the output approaches :func:`decorrelated_batch_norm`'s; with
  few iterations small-variance directions are only partly whitened (the paper's
  point: a stable, progressive whitening). The iteration runs in its coupled form
  (same iterates in exact arithmetic; the form printed in the paper amplifies rounding
  and overflows in float32 after a few dozen steps). Everything else (groups, running
  statistics, masks, ``axis_name``, evaluation) is as in
  :func:`decorrelated_batch_norm`, whose arguments (``x``, ``scale``, ``bias``, ``stats``,
  ``train``, ``num_groups``, ``group_size``, ``momentum``, ``epsilon``, ``axis_name``,
  ``axis_index_groups``, ``mask``) it shares.

  Args:
    iterations: ``T``, a Python int >= 1 (it sets the computation's size).

  Returns:
    ``(y, new_stats)``; ``y`` has ``x``'s dtype, statistics are float32.

  Example:
    >>> import jax
    >>> from jaxnorm import functional as F
    >>> x = jax.random.normal(jax.random.key(0), (64, 8))
    >>> y, _ = F.iter_norm(x, None, None, None, train=True, group_size=8, iterations=7)
    >>> y.shape
    (64, 8)

  References:
    Huang, Zhou, Zhu, Liu & Shao, "Iterative Normalization: Beyond Standardization
    towards Efficient Whitening", CVPR 2019.
  """
  fn = "jaxnorm.functional.iter_norm"
  if isinstance(iterations, np.integer):
    iterations = int(iterations)
  if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 1:
    raise ValueError(f"{fn}: iterations must be a Python int >= 1 (the number of "
                     f"Newton-Schulz steps, 5 is usual); got {iterations!r}.")
  return _whiten(x, scale, bias, stats, fn=fn, train=train, num_groups=num_groups,
                 group_size=group_size, momentum=momentum, epsilon=epsilon,
                 axis_name=axis_name, axis_index_groups=axis_index_groups, mask=mask,
                 inverse_sqrt=functools.partial(_newton_schulz, iterations=iterations))
