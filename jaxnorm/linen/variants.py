"""Flax modules for the batch-norm variants and the composite normalizations.

Same conventions as :class:`jaxnorm.linen.BatchNorm`: ``use_running_average`` selects
evaluation, running statistics live in ``batch_stats`` (float32), parameters in
``params``; during ``init`` no statistic is updated.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.linen import initializers

from jaxnorm import _checks, _frontend
from jaxnorm import functional as F
from jaxnorm.linen.normalization import (
    Axes, _feature_params, _input_for, _output_dtype, running_stats)


def _one_value_per_feature(initializing, x, mask) -> bool:
  """During ``init`` a batch with one value per channel normalizes with the initial
  running statistics instead of raising (init only needs shapes), as in BatchNorm."""
  return initializing and mask is None and x.size <= x.shape[-1]


class _BatchStatsModule(nn.Module):
  """Shared attributes of the modules that keep running statistics."""

  use_running_average: bool | None = None
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Any = None
  param_dtype: Any = jnp.float32
  use_bias: bool = True
  use_scale: bool = True
  bias_init: Any = initializers.zeros
  scale_init: Any = initializers.ones

  def _setup_call(self, x, use_running_average, feature_axes):
    """(train, feature_shape, scale, bias, out_dtype, (ra_mean, ra_var))."""
    use_running_average = nn.merge_param(
        "use_running_average", self.use_running_average, use_running_average)
    feature_shape = _frontend.feature_shape(x.shape, feature_axes)
    stats = running_stats(self, feature_shape)
    scale, bias = _feature_params(self, x, feature_axes)
    return (not use_running_average, feature_shape, scale, bias,
            _output_dtype(self, x, scale, bias), stats)


class BatchRenorm(_BatchStatsModule):
  """Batch Renormalization; see :func:`jaxnorm.functional.batch_renorm`.

  ``batch_stats`` holds ``mean``, ``var`` and ``step`` (int32), the step driving the
  ``r_max``/``d_max`` schedules and the warm-up.

  Example:
    >>> import jax, jax.numpy as jnp, jaxnorm
    >>> layer = jaxnorm.linen.BatchRenorm(momentum=0.5, warmup_steps=100)
    >>> x = jnp.arange(12.0).reshape(4, 3)
    >>> variables = layer.init(jax.random.key(0), x, use_running_average=False)
    >>> y, updates = layer.apply(variables, x, use_running_average=False,
    ...                          mutable=["batch_stats"])
    >>> int(updates["batch_stats"]["step"]), updates["batch_stats"]["mean"]
    (1, Array([2.25, 2.75, 3.25], dtype=float32))
  """

  axis: Axes = -1
  r_max: Any = 3.0
  d_max: Any = 5.0
  warmup_steps: int = 0
  axis_name: str | None = None
  axis_index_groups: Any = None

  @nn.compact
  def __call__(self, x, use_running_average: bool | None = None, *,
               mask: jax.Array | None = None):
    feature_axes = _checks.canonical_axes(self.axis, x.shape, name="axis",
                                          fn="jaxnorm.linen.BatchRenorm")
    train, _, scale, bias, out_dtype, (ra_mean, ra_var) = self._setup_call(
        x, use_running_average, feature_axes)
    step = self.variable("batch_stats", "step", lambda: jnp.zeros((), jnp.int32))
    initializing = self.is_initializing()
    y, new = F.batch_renorm(
        _input_for(x, out_dtype), scale, bias,
        F.BatchRenormStats(ra_mean.value, ra_var.value, step.value),
        train=train and not initializing, r_max=self.r_max, d_max=self.d_max,
        warmup_steps=self.warmup_steps, momentum=self.momentum, epsilon=self.epsilon,
        axis=feature_axes, axis_name=self.axis_name,
        axis_index_groups=self.axis_index_groups, mask=mask)
    if train and not initializing:
      ra_mean.value, ra_var.value, step.value = new
    return y.astype(out_dtype)


class GhostBatchNorm(_BatchStatsModule):
  """Ghost batch norm over virtual batches of ``virtual_batch_size`` examples.

  See :func:`jaxnorm.functional.ghost_batch_norm`. Same variables as ``BatchNorm``.

  Example:
    >>> import jax, jax.numpy as jnp, jaxnorm
    >>> layer = jaxnorm.linen.GhostBatchNorm(virtual_batch_size=2)
    >>> x = jnp.arange(12.0).reshape(4, 3)
    >>> variables = layer.init(jax.random.key(0), x, use_running_average=False)
    >>> y, _ = layer.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
    >>> bool(jnp.allclose(y[:2].mean(0), 0) & jnp.allclose(y[2:].mean(0), 0))  # per half
    True
  """

  virtual_batch_size: int = 32
  axis: Axes = -1

  @nn.compact
  def __call__(self, x, use_running_average: bool | None = None, *,
               mask: jax.Array | None = None):
    feature_axes = _checks.canonical_axes(self.axis, x.shape, name="axis",
                                          fn="jaxnorm.linen.GhostBatchNorm")
    train, _, scale, bias, out_dtype, (ra_mean, ra_var) = self._setup_call(
        x, use_running_average, feature_axes)
    initializing = self.is_initializing()
    y, new = F.ghost_batch_norm(
        _input_for(x, out_dtype), scale, bias, F.BatchStats(ra_mean.value, ra_var.value),
        virtual_batch_size=self.virtual_batch_size, train=train and not initializing,
        momentum=self.momentum, epsilon=self.epsilon, axis=feature_axes, mask=mask)
    if train and not initializing:
      ra_mean.value, ra_var.value = new
    return y.astype(out_dtype)


class SwitchNorm(_BatchStatsModule):
  """Switchable Normalization; see :func:`jaxnorm.functional.switch_norm`.

  ``params`` also hold ``mean_weights`` and ``var_weights`` (logits of IN, LN, BN,
  initialized equal).

  Example:
    >>> import jax, jax.numpy as jnp, jaxnorm
    >>> layer = jaxnorm.linen.SwitchNorm()
    >>> x = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))       # NHWC
    >>> variables = layer.init(jax.random.key(1), x, use_running_average=False)
    >>> jax.tree.map(jnp.shape, variables["params"])
    {'bias': (3,), 'mean_weights': (3,), 'scale': (3,), 'var_weights': (3,)}
    >>> layer.apply(variables, x, use_running_average=True).shape
    (2, 4, 4, 3)
  """

  @nn.compact
  def __call__(self, x, use_running_average: bool | None = None, *,
               mask: jax.Array | None = None):
    train, _, scale, bias, out_dtype, (ra_mean, ra_var) = self._setup_call(
        x, use_running_average, (x.ndim - 1,))
    mean_weights = self.param("mean_weights", initializers.ones, (3,), self.param_dtype)
    var_weights = self.param("var_weights", initializers.ones, (3,), self.param_dtype)
    initializing = self.is_initializing()
    y, new = F.switch_norm(
        _input_for(x, out_dtype), scale, bias, mean_weights, var_weights,
        F.BatchStats(ra_mean.value, ra_var.value),
        train=train and not _one_value_per_feature(initializing, x, mask),
        momentum=self.momentum, epsilon=self.epsilon, mask=mask)
    if train and not initializing:
      ra_mean.value, ra_var.value = new
    return y.astype(out_dtype)


class EvoNormB0(_BatchStatsModule):
  """EvoNorm-B0; see :func:`jaxnorm.functional.evonorm_b0`. ``params/v`` starts at 1.

  Example:
    >>> import jax, jax.numpy as jnp, jaxnorm
    >>> layer = jaxnorm.linen.EvoNormB0()
    >>> x = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))       # NHWC
    >>> variables = layer.init(jax.random.key(1), x, use_running_average=False)
    >>> y, updates = layer.apply(variables, x, use_running_average=False,
    ...                          mutable=["batch_stats"])
    >>> y.shape, updates["batch_stats"]["var"].shape   # the running batch variance
    ((2, 4, 4, 3), (3,))
  """

  @nn.compact
  def __call__(self, x, use_running_average: bool | None = None, *,
               mask: jax.Array | None = None):
    train, feature_shape, scale, bias, out_dtype, (ra_mean, ra_var) = self._setup_call(
        x, use_running_average, (x.ndim - 1,))
    v = self.param("v", initializers.ones, feature_shape, self.param_dtype)
    initializing = self.is_initializing()
    y, new = F.evonorm_b0(
        _input_for(x, out_dtype), scale, bias, v, F.BatchStats(ra_mean.value, ra_var.value),
        train=train and not _one_value_per_feature(initializing, x, mask),
        momentum=self.momentum, epsilon=self.epsilon, mask=mask)
    if train and not initializing:
      ra_mean.value, ra_var.value = new
    return y.astype(out_dtype)


class EvoNormS0(nn.Module):
  """EvoNorm-S0; see :func:`jaxnorm.functional.evonorm_s0`. ``params/v`` starts at 1.

  Example:
    >>> import jax, jax.numpy as jnp, jaxnorm
    >>> layer = jaxnorm.linen.EvoNormS0(num_groups=2)
    >>> x = jax.random.normal(jax.random.key(0), (2, 4, 4, 4))       # NHWC
    >>> variables = layer.init(jax.random.key(1), x)
    >>> sorted(variables), layer.apply(variables, x).shape   # no batch_stats
    (['params'], (2, 4, 4, 4))
  """

  num_groups: int | None = 32
  group_size: int | None = None
  epsilon: float = 1e-5
  dtype: Any = None
  param_dtype: Any = jnp.float32
  use_bias: bool = True
  use_scale: bool = True
  bias_init: Any = initializers.zeros
  scale_init: Any = initializers.ones
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, *, mask: jax.Array | None = None):
    scale, bias = _feature_params(self, x, (x.ndim - 1,))
    v = self.param("v", initializers.ones, (x.shape[-1],), self.param_dtype)
    out_dtype = _output_dtype(self, x, scale, bias)
    y = F.evonorm_s0(_input_for(x, out_dtype), scale, bias, v, num_groups=self.num_groups,
                     group_size=self.group_size, epsilon=self.epsilon, mask=mask,
                     axis_name=self.axis_name)
    return y.astype(out_dtype)
