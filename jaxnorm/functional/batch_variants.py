"""Batch-norm variants: Batch Renormalization and ghost (virtual) batch norm.

Both reuse batch norm's statistics path and closed-form backward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxnorm import _checks
from jaxnorm.functional._stats import BatchStats
from jaxnorm.functional.normalization import (
    _checked_stats, _guard_padding, _normalize, _prepare, _restore_padding,
    check_batch_values, check_momentum, ema_update, normalize_with_stats)

Limit = float | Callable[[jax.Array], jax.Array]


class BatchRenormStats(NamedTuple):
  """Running statistics of batch renorm, and the training step (for the r/d schedules).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxnorm import functional as F
    >>> stats = F.BatchRenormStats(mean=jnp.zeros(3), var=jnp.ones(3), step=jnp.array(0))
    >>> x = jnp.arange(12.0).reshape(4, 3)
    >>> _, stats = F.batch_renorm(x, None, None, stats, train=True)
    >>> int(stats.step)                      # counts training calls, for the schedules
    1
  """

  mean: jax.Array
  var: jax.Array
  step: jax.Array


def _limit_at(limit: Limit, step, name: str, lowest: float, fn: str, hint: str):
  """Evaluates a constant or schedule limit at ``step``, checking it when concrete.

  A number (not a bool or string), or a callable returning one; NaN and values below
  ``lowest`` are rejected (``inf`` means no clipping). A schedule evaluated at a traced
  step (under ``jax.jit``) is checked at step 0.
  """
  value = limit(step) if callable(limit) else limit
  concrete = _checks.scalar(value, name=name, fn=fn)
  step_value = _checks.concrete_float(step)
  where = f" at step {int(step_value)}" if callable(limit) and step_value is not None else ""
  if concrete is None and callable(limit):
    concrete, where = _checks.scalar(limit(0), name=name, fn=fn), " at step 0"
  if concrete is not None and not concrete >= lowest:
    raise ValueError(f"{fn}: {name} must be >= {lowest:g}; got {concrete!r}{where}.{hint}")
  return value


def batch_renorm(
    x: jax.Array,
    scale: jax.Array | None,
    bias: jax.Array | None,
    stats: BatchRenormStats,
    *,
    train: bool,
    r_max: Limit = 3.0,
    d_max: Limit = 5.0,
    warmup_steps: int = 0,
    momentum: float = 0.99,
    epsilon: float = 1e-5,
    axis: int | Sequence[int] = -1,
    axis_name: Any = None,
    axis_index_groups: Any = None,
    mask: jax.Array | None = None,
) -> tuple[jax.Array, BatchRenormStats]:
  r"""Batch Renormalization: batch statistics corrected towards the running ones.

  .. math::
    r = \mathrm{clip}_{[1/r_{max},\, r_{max}]}\Big(\frac{\sigma_B}{\sigma}\Big),\quad
    d = \mathrm{clip}_{[-d_{max},\, d_{max}]}\Big(\frac{\mu_B - \mu}{\sigma}\Big),\quad
    y = \Big(\frac{x - \mu_B}{\sigma_B}\, r + d\Big)\gamma + \beta

  with :math:`\sigma_B = \sqrt{\sigma_B^2 + \epsilon}` from the batch and
  :math:`\mu, \sigma = \sqrt{\sigma^2 + \epsilon}` the running statistics; ``r`` and
  ``d`` are constants in the backward pass. ``r_max``/``d_max`` are numbers or
  schedules of the step (e.g. ``optax.linear_schedule(1.0, 3.0, 20_000, 5_000)``), the
  step being kept in ``stats``. For ``step < warmup_steps``, ``r = 1, d = 0``: plain
  batch norm. Evaluation normalizes with the running statistics, as batch norm.
  Numerics, masks and transforms (forward and reverse mode) as in :func:`batch_norm`;
  ``r_max``/``d_max`` may be ``inf`` (no clipping), never NaN.

  Returns:
    ``(y, new_stats)`` with the EMA-updated statistics and ``step + 1`` in training.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxnorm import functional as F
    >>> x = 5.0 + 2.0 * jax.random.normal(jax.random.key(0), (8, 3))
    >>> stats = F.BatchRenormStats(mean=jnp.zeros(3), var=jnp.ones(3), step=jnp.array(0))
    >>> y, new_stats = F.batch_renorm(x, None, None, stats, train=True,
    ...                               r_max=1e3, d_max=1e3)
    >>> bool(jnp.allclose(y, x, atol=1e-3))  # unclipped r, d: normalized by running stats
    True

  References:
    Ioffe, "Batch Renormalization: Towards Reducing Minibatch Dependence in
    Batch-Normalized Models", NeurIPS 2017.
  """
  fn = "jaxnorm.functional.batch_renorm"
  train = _checks.check_static_bool(train, name="train", fn=fn)
  if not (isinstance(stats, tuple) and len(stats) == 3):
    raise TypeError(f"{fn}: stats must be a BatchRenormStats(mean, var, step); got "
                    f"{type(stats).__name__}.")
  step = jnp.asarray(stats.step, jnp.int32)
  r_max = _limit_at(r_max, step, "r_max", 1.0, fn, " r_max = 1 gives plain batch norm.")
  d_max = _limit_at(d_max, step, "d_max", 0.0, fn, " d_max = 0 gives plain batch norm.")
  warmup = _checks.scalar(warmup_steps, name="warmup_steps", fn=fn)
  if warmup is not None and not (warmup >= 0 and float(warmup).is_integer()):
    raise ValueError(f"{fn}: warmup_steps must be a whole number >= 0; got "
                     f"{warmup_steps!r}.")
  check_momentum(momentum, fn)
  x, epsilon, feature_axes, feature_shape, scale, bias, mask = _prepare(
      fn, x, scale, bias, mask, epsilon, axis, axis_name=axis_name)
  running = _checked_stats(stats[:2], feature_shape, x.shape, f"axis={axis!r}", fn)
  if not train:
    return normalize_with_stats(x, scale, bias, running, epsilon, feature_axes,
                                mask), stats
  reduce_axes = tuple(a for a in range(x.ndim) if a not in feature_axes)
  check_batch_values(fn, x.shape, reduce_axes, axis, mask, axis_name)
  xhat, batch_mean, batch_var, count = _normalize(
      x, None, None, mask, reduce_axes, epsilon, axis_name, axis_index_groups)
  xhat, bad = _guard_padding(xhat, mask)

  warm = step < warmup_steps
  r_max = jnp.where(warm, 1.0, r_max)
  d_max = jnp.where(warm, 0.0, d_max)
  param_shape = batch_mean.shape
  sigma = jnp.sqrt(running.var.reshape(param_shape) + epsilon)
  r = lax.stop_gradient(jnp.clip(jnp.sqrt(batch_var + epsilon) / sigma, 1.0 / r_max, r_max))
  d = lax.stop_gradient(jnp.clip((batch_mean - running.mean.reshape(param_shape)) / sigma,
                                 -d_max, d_max))
  y = xhat.astype(r.dtype) * r + d
  if scale is not None:
    y = y * scale.astype(y.dtype)
  if bias is not None:
    y = y + bias.astype(y.dtype)
  new = ema_update(running, batch_mean, batch_var, count, momentum)
  return _restore_padding(y, bad).astype(x.dtype), BatchRenormStats(new.mean, new.var,
                                                                     step + 1)


def ghost_batch_norm(
    x: jax.Array,
    scale: jax.Array | None,
    bias: jax.Array | None,
    stats: BatchStats | None,
    *,
    virtual_batch_size: int,
    train: bool,
    momentum: float = 0.99,
    epsilon: float = 1e-5,
    axis: int | Sequence[int] = -1,
    mask: jax.Array | None = None,
) -> tuple[jax.Array, BatchStats | None]:
  r"""Ghost (virtual) batch norm: batch statistics over sub-batches of the batch.

  The batch (axis 0, size ``N``) is split into ``N / V`` consecutive virtual batches
  of ``V = virtual_batch_size`` examples, each normalized with its own statistics as
  :func:`batch_norm` does. The running statistics are updated once per call from all
  virtual batches: with the pooled mean and variance of the whole batch (their exact
  merge), which is what evaluation normalizes with. Numerics, masks and transforms
  (forward and reverse mode) as in :func:`batch_norm`.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxnorm import functional as F
    >>> x = jnp.arange(16.0).reshape(8, 2)
    >>> stats = F.BatchStats(mean=jnp.zeros(2), var=jnp.ones(2))
    >>> y, new_stats = F.ghost_batch_norm(x, None, None, stats, virtual_batch_size=4,
    ...                                   train=True, momentum=0.0)
    >>> y[:4].mean(0), y[4:].mean(0)         # each virtual batch of 4 has mean 0
    (Array([0., 0.], dtype=float32), Array([0., 0.], dtype=float32))
    >>> new_stats                            # the whole batch's statistics (momentum 0)
    BatchStats(mean=Array([7., 8.], dtype=float32), var=Array([21., 21.], dtype=float32))

  References:
    Hoffer, Hubara & Soudry, "Train longer, generalize better: closing the
    generalization gap in large batch training of neural networks", NeurIPS 2017.
  """
  fn = "jaxnorm.functional.ghost_batch_norm"
  train = _checks.check_static_bool(train, name="train", fn=fn)
  check_momentum(momentum, fn)
  x, epsilon, feature_axes, feature_shape, scale, bias, mask = _prepare(
      fn, x, scale, bias, mask, epsilon, axis)
  if stats is not None:
    stats = _checked_stats(stats, feature_shape, x.shape, f"axis={axis!r}", fn)
  if not train:
    if stats is None:
      raise ValueError(f"{fn}: stats is None but train=False needs running statistics.")
    return normalize_with_stats(x, scale, bias, stats, epsilon, feature_axes,
                                mask), stats
  if 0 in feature_axes:
    raise ValueError(f"{fn}: axis={axis!r} includes axis 0, the batch axis that is split "
                     "into virtual batches; name the feature axes only.")
  size = x.shape[0]
  if isinstance(virtual_batch_size, np.integer):
    virtual_batch_size = int(virtual_batch_size)
  if not isinstance(virtual_batch_size, int) or isinstance(
      virtual_batch_size, bool) or virtual_batch_size < 2 or (
      size % virtual_batch_size):
    raise ValueError(
        f"{fn}: virtual_batch_size={virtual_batch_size!r} must be an int >= 2 that divides "
        f"the batch size {size} (x.shape={tuple(x.shape)}); e.g. "
        f"{[v for v in range(2, size + 1) if size % v == 0][:4]}.")
  ghosts = size // virtual_batch_size

  def split(t):
    if t is None:
      return None
    lead = (ghosts, virtual_batch_size) if t.shape[0] == size else (1, 1)
    return t.reshape(lead + t.shape[1:])

  reduce_axes = tuple(a + 1 for a in range(x.ndim) if a not in feature_axes)
  y, ghost_mean, ghost_var, ghost_count = _normalize(
      split(x), split(scale), split(bias), split(mask), reduce_axes, epsilon)
  y = y.reshape(x.shape)
  if stats is None:
    return y, None
  # Exact pooled statistics of the whole batch from the per-ghost ones.
  total = jnp.sum(ghost_count, axis=0)
  mean = jnp.sum(ghost_count * ghost_mean, axis=0) / jnp.maximum(total, 1)
  var = jnp.sum(ghost_count * (ghost_var + jnp.square(ghost_mean - mean)), axis=0
                ) / jnp.maximum(total, 1)
  return y, ema_update(stats, mean, var, total, momentum)
