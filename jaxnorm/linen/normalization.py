"""Drop-in replacements for ``flax.linen.BatchNorm`` and ``flax.linen.LayerNorm``.

Same constructor and call arguments, same variable collections and names
(``params/scale``, ``params/bias``, ``batch_stats/mean``, ``batch_stats/var``), same
output dtype rules; the math is :mod:`jaxnorm.functional` (stable statistics,
closed-form backward pass).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.linen import initializers

from jaxnorm import _checks, _frontend
from jaxnorm import functional as F

Axes = int | tuple[int, ...]


def _feature_params(module: nn.Module, x, feature_axes: tuple[int, ...]):
  """Creates ``scale``/``bias`` with the sizes of ``x`` on ``feature_axes`` (as Flax)."""
  shape = _frontend.feature_shape(x.shape, feature_axes)
  scale = (module.param("scale", module.scale_init, shape, module.param_dtype)
           if module.use_scale else None)
  bias = (module.param("bias", module.bias_init, shape, module.param_dtype)
          if module.use_bias else None)
  return scale, bias


def _output_dtype(module: nn.Module, x, scale, bias):
  """Flax's rule: ``dtype`` if given, else inferred from the input and the parameters."""
  return _frontend.output_dtype(x, scale, bias, dtype=module.dtype)


_input_for = _frontend.widen
_broadcast_params = _frontend.broadcast_params


def running_stats(module: nn.Module, feature_shape) -> tuple[nn.Variable, nn.Variable]:
  """The ``batch_stats/mean`` (zeros) and ``batch_stats/var`` (ones) variables, float32."""
  return (module.variable("batch_stats", "mean",
                          lambda: _frontend.running_stats_init(feature_shape)[0]),
          module.variable("batch_stats", "var",
                          lambda: _frontend.running_stats_init(feature_shape)[1]))


class BatchNorm(nn.Module):
  r"""Batch normalization, a drop-in for ``flax.linen.BatchNorm``.

  .. math::

    y = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} \, \gamma + \beta, \qquad
    \hat\mu \leftarrow m \hat\mu + (1 - m) \mu, \quad
    \hat\sigma^2 \leftarrow m \hat\sigma^2 + (1 - m) \sigma^2

  In training :math:`\mu, \sigma^2` are the batch mean and biased variance over every
  axis but ``axis`` (a stable shifted one-pass variance, merged exactly across devices
  with ``axis_name``) and the running statistics :math:`\hat\mu, \hat\sigma^2`
  (``batch_stats/mean``, ``batch_stats/var``, float32) move with momentum :math:`m`; in
  evaluation :math:`\mu, \sigma^2` are the running statistics. :math:`\gamma` is
  ``params/scale`` and :math:`\beta` ``params/bias``. See
  :func:`jaxnorm.functional.batch_norm` for the math and the backward pass.

  Attributes:
    use_running_average: normalize with the running statistics (evaluation) instead of
      the batch's; may instead be given at call time.
    axis: the feature axis or axes, kept (the others are reduced); -1 for NHWC.
    momentum: weight :math:`m` of the old running statistics, in [0, 1] (flax's
      convention; PyTorch's ``momentum=0.1`` is 0.9 here).
    epsilon: added to the variance, > 0.
    dtype: the output dtype; None infers it from the input and the parameters, as flax.
    param_dtype: the dtype of ``scale`` and ``bias``.
    use_bias: learn the bias :math:`\beta`.
    use_scale: learn the scale :math:`\gamma`.
    bias_init: initializer of the bias (zeros).
    scale_init: initializer of the scale (ones).
    axis_name: the mapped axis (``shard_map``, ``pmap``) over which the batch
      statistics are merged; None for one device or ``jax.jit`` with sharded inputs.
    axis_index_groups: groups of devices along ``axis_name`` that merge separately.
    use_fast_variance: accepted for compatibility with flax and ignored: the variance
      is always the stable one.
    force_float32_reductions: accepted for compatibility with flax and ignored:
      reductions always run in at least float32.
    freeze_stats: always normalize with the running statistics and never update them,
      in training too, while ``scale``/``bias`` stay trainable ("frozen BN"). For
      fine-tuning a pretrained network with small batches (detection, segmentation),
      where batch statistics would be noisy and would overwrite good running ones.
    eval_with_batch_stats: in evaluation (``use_running_average=True``) normalize with
      the batch's own statistics, without updating the running ones. For evaluation data
      that the running statistics do not describe (domain shift, "AdaBN"), or a network
      whose running statistics were never trained; batches must then be large and i.i.d.

  Like flax's, it accepts complex inputs (complex64 running mean after an update,
  float32 running variance) and supports forward-mode derivatives (``jax.jvp``,
  ``jax.jacfwd``, ``jax.hessian``) as well as reverse mode.

  Running statistics are float32 whatever ``dtype`` and ``param_dtype`` are. During
  ``init`` the statistics are not updated and ``axis_name`` is not used; a
  training-mode ``init`` on a batch with one value per feature normalizes with the
  initial running statistics instead of raising.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import jaxnorm
    >>> bn = jaxnorm.BatchNorm(use_running_average=False, momentum=0.9)
    >>> x = jax.random.normal(jax.random.key(0), (8, 3)) * 2.0 + 5.0
    >>> variables = bn.init(jax.random.key(1), x)
    >>> y, updates = bn.apply(variables, x, mutable=["batch_stats"])
    >>> bool(jnp.allclose(y.mean(0), 0.0, atol=1e-5))
    True
    >>> bool(jnp.allclose(updates["batch_stats"]["mean"], 0.1 * x.mean(0), atol=1e-5))
    True
  """

  use_running_average: bool | None = None
  axis: Axes = -1
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Any = None
  param_dtype: Any = jnp.float32
  use_bias: bool = True
  use_scale: bool = True
  bias_init: Any = initializers.zeros
  scale_init: Any = initializers.ones
  axis_name: str | None = None
  axis_index_groups: Any = None
  use_fast_variance: bool = True
  force_float32_reductions: bool = True
  freeze_stats: bool = False
  eval_with_batch_stats: bool = False

  @nn.compact
  def __call__(self, x, use_running_average: bool | None = None, *,
               mask: jax.Array | None = None):
    """Normalizes ``x`` with batch statistics (training) or running statistics.

    Args:
      x: input array.
      use_running_average: use the running statistics (evaluation) when True.
      mask: boolean array broadcastable to ``x``: positions that enter the statistics.

    Returns:
      The normalized input, in ``dtype`` (or the dtype inferred as in Flax).
    """
    use_running_average = nn.merge_param(
        "use_running_average", self.use_running_average, use_running_average)
    feature_axes = _checks.canonical_axes(
        self.axis, x.shape, name="axis", fn="jaxnorm.linen.BatchNorm")
    feature_shape = _frontend.feature_shape(x.shape, feature_axes)
    ra_mean, ra_var = running_stats(self, feature_shape)
    scale, bias = _feature_params(self, x, feature_axes)
    out_dtype = _output_dtype(self, x, scale, bias)

    initializing = self.is_initializing()
    batch_statistics, update = _frontend.batch_norm_mode(
        use_running_average, freeze_stats=self.freeze_stats,
        eval_with_batch_stats=self.eval_with_batch_stats)
    if initializing and batch_statistics and mask is None and x.size <= math.prod(
        feature_shape):
      batch_statistics = False  # init only needs shapes and never updates statistics
    y, new_stats = F.batch_norm(
        _input_for(x, out_dtype), scale, bias, F.BatchStats(ra_mean.value, ra_var.value),
        train=batch_statistics, momentum=self.momentum, epsilon=self.epsilon,
        axis=feature_axes, axis_name=None if initializing else self.axis_name,
        axis_index_groups=self.axis_index_groups, mask=mask)
    if update and batch_statistics and not initializing:
      ra_mean.value, ra_var.value = new_stats
    return y.astype(out_dtype)


class LayerNorm(nn.Module):
  """Layer normalization, a drop-in for ``flax.linen.LayerNorm``.

  Statistics are taken over ``reduction_axes``; ``scale``/``bias`` have the sizes of
  ``feature_axes``. ``use_fast_variance`` and ``force_float32_reductions`` are accepted
  for compatibility (jaxnorm's variance is always the stable one, in float32 or wider).
  See :func:`jaxnorm.functional.layer_norm` for the math.

  Example:
    >>> import jax, jax.numpy as jnp, jaxnorm
    >>> import flax.linen as nn
    >>> x = jax.random.normal(jax.random.key(0), (4, 3))
    >>> variables = jaxnorm.linen.LayerNorm().init(jax.random.key(1), x)
    >>> y = jaxnorm.linen.LayerNorm().apply(variables, x)
    >>> bool(jnp.allclose(y.mean(-1), 0, atol=1e-5))                    # each example
    True
    >>> bool(jnp.allclose(y, nn.LayerNorm().apply(variables, x), atol=1e-4))  # as flax's
    True
  """

  epsilon: float = 1e-6
  dtype: Any = None
  param_dtype: Any = jnp.float32
  use_bias: bool = True
  use_scale: bool = True
  bias_init: Any = initializers.zeros
  scale_init: Any = initializers.ones
  reduction_axes: Axes = -1
  feature_axes: Axes = -1
  axis_name: str | None = None
  axis_index_groups: Any = None
  use_fast_variance: bool = True
  force_float32_reductions: bool = True

  @nn.compact
  def __call__(self, x, *, mask: jax.Array | None = None):
    """Normalizes each example of ``x`` over ``reduction_axes``.

    Args:
      x: input array.
      mask: boolean array broadcastable to ``x``: elements that enter the statistics.

    Returns:
      The normalized input, in ``dtype`` (or the dtype inferred as in Flax).
    """
    fn = "jaxnorm.linen.LayerNorm"
    feature_axes = _checks.canonical_axes(
        self.feature_axes, x.shape, name="feature_axes", fn=fn)
    scale, bias = _feature_params(self, x, feature_axes)
    out_dtype = _output_dtype(self, x, scale, bias)
    y = F.layer_norm(
        _input_for(x, out_dtype), *_broadcast_params(x, feature_axes, scale, bias),
        axis=self.reduction_axes, epsilon=self.epsilon, mask=mask,
        axis_name=self.axis_name, axis_index_groups=self.axis_index_groups)
    return y.astype(out_dtype)


class GroupNorm(nn.Module):
  """Group normalization, a drop-in for ``flax.linen.GroupNorm``.

  Give ``num_groups`` (default 32) or ``group_size`` (with ``num_groups=None``).
  See :func:`jaxnorm.functional.group_norm`.

  Example:
    >>> import jax, jax.numpy as jnp, jaxnorm
    >>> x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))       # NHWC
    >>> layer = jaxnorm.linen.GroupNorm(num_groups=2)
    >>> y = layer.apply(layer.init(jax.random.key(1), x), x)
    >>> groups = y.reshape(2, 16, 2, 4)                               # (N, HW, G, C / G)
    >>> bool(jnp.allclose(groups.mean((1, 3)), 0, atol=1e-5))         # per example, group
    True
  """

  num_groups: int | None = 32
  group_size: int | None = None
  epsilon: float = 1e-6
  dtype: Any = None
  param_dtype: Any = jnp.float32
  use_bias: bool = True
  use_scale: bool = True
  bias_init: Any = initializers.zeros
  scale_init: Any = initializers.ones
  reduction_axes: Axes | None = None
  axis_name: str | None = None
  axis_index_groups: Any = None
  use_fast_variance: bool = True
  force_float32_reductions: bool = True

  @nn.compact
  def __call__(self, x, *, mask: jax.Array | None = None):
    """Normalizes each example over ``reduction_axes`` and the channels of each group."""
    scale, bias = _feature_params(self, x, (x.ndim - 1,))
    out_dtype = _output_dtype(self, x, scale, bias)
    y = F.group_norm(_input_for(x, out_dtype), scale, bias, num_groups=self.num_groups,
                     group_size=self.group_size, epsilon=self.epsilon,
                     reduction_axes=self.reduction_axes, mask=mask,
                     axis_name=self.axis_name, axis_index_groups=self.axis_index_groups)
    return y.astype(out_dtype)


class InstanceNorm(nn.Module):
  """Instance normalization, a drop-in for ``flax.linen.InstanceNorm``.

  See :func:`jaxnorm.functional.instance_norm`.

  Example:
    >>> import jax, jax.numpy as jnp, jaxnorm
    >>> x = 5.0 + jax.random.normal(jax.random.key(0), (2, 4, 4, 3))  # NHWC
    >>> layer = jaxnorm.linen.InstanceNorm()
    >>> y = layer.apply(layer.init(jax.random.key(1), x), x)
    >>> bool(jnp.allclose(y.mean((1, 2)), 0, atol=1e-5))   # per example and channel
    True
  """

  epsilon: float = 1e-6
  dtype: Any = None
  param_dtype: Any = jnp.float32
  use_bias: bool = True
  use_scale: bool = True
  bias_init: Any = initializers.zeros
  scale_init: Any = initializers.ones
  feature_axes: Axes = -1
  axis_name: str | None = None
  axis_index_groups: Any = None
  use_fast_variance: bool = True
  force_float32_reductions: bool = True

  @nn.compact
  def __call__(self, x, *, mask: jax.Array | None = None):
    """Normalizes each example and channel over the remaining axes."""
    feature_axes = _checks.canonical_axes(self.feature_axes, x.shape, name="feature_axes",
                                          fn="jaxnorm.linen.InstanceNorm")
    scale, bias = _feature_params(self, x, feature_axes)
    out_dtype = _output_dtype(self, x, scale, bias)
    y = F.instance_norm(_input_for(x, out_dtype), scale, bias, axis=feature_axes,
                        epsilon=self.epsilon, mask=mask, axis_name=self.axis_name,
                        axis_index_groups=self.axis_index_groups)
    return y.astype(out_dtype)


class RMSNorm(nn.Module):
  """RMS normalization, a drop-in for ``flax.linen.RMSNorm``.

  See :func:`jaxnorm.functional.rms_norm`.

  Example:
    >>> import jax, jax.numpy as jnp, jaxnorm
    >>> x = jax.random.normal(jax.random.key(0), (4, 8))
    >>> layer = jaxnorm.linen.RMSNorm()
    >>> y = layer.apply(layer.init(jax.random.key(1), x), x)
    >>> bool(jnp.allclose(jnp.sqrt(jnp.mean(y ** 2, axis=-1)), 1, atol=1e-3))  # unit RMS
    True
  """

  epsilon: float = 1e-6
  dtype: Any = None
  param_dtype: Any = jnp.float32
  use_scale: bool = True
  scale_init: Any = initializers.ones
  reduction_axes: Axes = -1
  feature_axes: Axes = -1
  axis_name: str | None = None
  axis_index_groups: Any = None
  use_fast_variance: bool = True
  force_float32_reductions: bool = True

  @nn.compact
  def __call__(self, x, *, mask: jax.Array | None = None):
    """Divides each example by its root mean square over ``reduction_axes``."""
    feature_axes = _checks.canonical_axes(self.feature_axes, x.shape, name="feature_axes",
                                          fn="jaxnorm.linen.RMSNorm")
    shape = _frontend.feature_shape(x.shape, feature_axes)
    scale = (self.param("scale", self.scale_init, shape, self.param_dtype)
             if self.use_scale else None)
    out_dtype = _output_dtype(self, x, scale, None)
    (scale,) = _broadcast_params(x, feature_axes, scale)
    y = F.rms_norm(_input_for(x, out_dtype), scale, axis=self.reduction_axes,
                   epsilon=self.epsilon, mask=mask, axis_name=self.axis_name,
                   axis_index_groups=self.axis_index_groups)
    return y.astype(out_dtype)
