"""Drop-ins for ``flax.nnx``'s BatchNorm, LayerNorm, RMSNorm, GroupNorm and InstanceNorm.

Same constructor and call signatures, the same variables (``nnx.Param`` ``scale`` /
``bias``, ``nnx.BatchStat`` ``mean`` / ``var`` in float32, shape ``(num_features,)``),
the same modes (``model.train()``, ``model.eval()``, ``nnx.view``) and the same dtype
rules; the math is :mod:`jaxnorm.functional` (stable statistics, closed-form backward).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx import rnglib
from flax.nnx.nn import initializers

from jaxnorm import _checks, _frontend
from jaxnorm import functional as F
from jaxnorm.functional.normalization import _groups
from jaxnorm.nnx import _base
from jaxnorm.nnx._base import NO_METADATA

Axes = int | tuple[int, ...]


class BatchNorm(_base.RunningStatsNorm):
  """Batch normalization, a drop-in for ``flax.nnx.BatchNorm``.

  .. math::
    y = \\frac{x - \\mu}{\\sqrt{\\sigma^2 + \\epsilon}}\\,\\gamma + \\beta

  with the batch's mean and biased variance :math:`\\mu, \\sigma^2` over every axis but
  ``axis`` in training (``use_running_average=False``; the running statistics ``mean``
  and ``var`` move by ``new = momentum * old + (1 - momentum) * batch``), and the running
  statistics in evaluation. :math:`\\gamma` is ``scale``, :math:`\\beta` is ``bias``.

  Arguments are those of ``flax.nnx.BatchNorm``. ``use_fast_variance`` is accepted for
  compatibility: jaxnorm's one-pass variance is always the stable one. ``axis`` may
  name several axes; their sizes must then multiply to ``num_features``. Training needs
  more than one value per feature (``ValueError`` otherwise, where flax returns a
  zero variance); with a ``mask``, features without valid values keep their statistics.

  Two options flax lacks (both off by default), as in :class:`jaxnorm.linen.BatchNorm`:
  ``freeze_stats`` (always normalize with the running statistics, never update them:
  fine-tuning with small batches) and ``eval_with_batch_stats`` (evaluation batches are
  normalized with their own statistics, the running ones untouched: domain shift).

  Example:
    >>> import jax
    >>> from flax import nnx
    >>> from jaxnorm import nnx as jnnx
    >>> layer = jnnx.BatchNorm(4, momentum=0.9, rngs=nnx.Rngs(0))
    >>> x = jax.random.normal(jax.random.key(0), (8, 4))
    >>> y = layer(x)                      # training: batch statistics, mean/var move
    >>> layer.eval()
    >>> y = layer(x)                      # evaluation: running statistics
    >>> sorted(nnx.state(layer, nnx.BatchStat))
    ['mean', 'var']
  """

  def __init__(
      self,
      num_features: int,
      *,
      use_running_average: bool | None = False,
      axis: Axes = -1,
      momentum: float = 0.99,
      epsilon: float = 1e-5,
      dtype: Any = None,
      param_dtype: Any = jnp.float32,
      use_bias: bool = True,
      use_scale: bool = True,
      bias_init=initializers.zeros_init(),
      scale_init=initializers.ones_init(),
      axis_name: str | None = None,
      axis_index_groups: Any = None,
      use_fast_variance: bool = True,
      promote_dtype=_base.promote_dtype,
      rngs: rnglib.Rngs,
      bias_metadata: Mapping[str, Any] = NO_METADATA,
      scale_metadata: Mapping[str, Any] = NO_METADATA,
      freeze_stats: bool = False,
      eval_with_batch_stats: bool = False,
  ):
    super().__init__(
        num_features, use_running_average=use_running_average, momentum=momentum,
        epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, use_bias=use_bias,
        use_scale=use_scale, bias_init=bias_init, scale_init=scale_init,
        promote_dtype=promote_dtype, rngs=rngs, bias_metadata=bias_metadata,
        scale_metadata=scale_metadata)
    self.axis = axis
    self.axis_name = axis_name
    self.axis_index_groups = axis_index_groups
    self.use_fast_variance = use_fast_variance
    self.freeze_stats = freeze_stats
    self.eval_with_batch_stats = eval_with_batch_stats

  def __call__(self, x, use_running_average: bool | None = None, *,
               mask: jax.Array | None = None):
    """Normalizes ``x`` with batch statistics (training) or running statistics.

    Args:
      x: the input.
      use_running_average: use the running statistics (evaluation); takes precedence
        over the attribute.
      mask: boolean array broadcastable to ``x``: positions that enter the statistics.

    Returns:
      The normalized input, in ``dtype`` (or the dtype inferred as flax.nnx does).
    """
    fn = "jaxnorm.nnx.BatchNorm"
    mode = _frontend.batch_norm_mode(
        self._use_running_average(use_running_average), freeze_stats=self.freeze_stats,
        eval_with_batch_stats=self.eval_with_batch_stats)
    axes = _checks.canonical_axes(self.axis, jnp.shape(x), name="axis", fn=fn)
    shape = _frontend.check_num_features(self.num_features, jnp.shape(x), axes,
                                         axis_desc=f"axis={self.axis!r}", fn=fn)
    x, scale, bias, out_dtype = self._promoted(x)
    y, new_stats = F.batch_norm(
        x, *_reshape(shape, scale, bias), self._stats(shape),
        train=mode.batch_statistics, momentum=self.momentum, epsilon=self.epsilon,
        axis=axes, axis_name=self.axis_name, axis_index_groups=self.axis_index_groups,
        mask=mask)
    if mode.update:
      self._write(new_stats)
    return y.astype(out_dtype)


def _reshape(shape, *params):
  return tuple(None if p is None else p.reshape(shape) for p in params)


class _StatelessNorm(nnx.Module):
  """Shared constructor of the normalizations without running statistics."""

  def __init__(self, num_features, *, epsilon, dtype, param_dtype, use_bias, use_scale,
               bias_init, scale_init, axis_name, axis_index_groups, use_fast_variance,
               promote_dtype, rngs, bias_metadata, scale_metadata):
    _base.affine_params(self, rngs, num_features, use_scale=use_scale, use_bias=use_bias,
                        scale_init=scale_init, bias_init=bias_init, param_dtype=param_dtype,
                        scale_metadata=scale_metadata, bias_metadata=bias_metadata)
    self.num_features = num_features
    self.epsilon = epsilon
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.use_bias = use_bias
    self.use_scale = use_scale
    self.axis_name = axis_name
    self.axis_index_groups = axis_index_groups
    self.use_fast_variance = use_fast_variance
    self.promote_dtype = promote_dtype

  def _promoted(self, x):
    """``(x, scale, bias, out_dtype)`` after ``promote_dtype((x, scale, bias))``."""
    x, scale, bias = _base.promote(self, (x, _base.value(self.scale), _base.value(self.bias)))
    return x, scale, bias, _frontend.output_dtype(x, scale, bias, dtype=self.dtype)


class LayerNorm(_StatelessNorm):
  """Layer normalization, a drop-in for ``flax.nnx.LayerNorm``.

  .. math::
    y = \\frac{x - \\mu}{\\sqrt{\\sigma^2 + \\epsilon}}\\,\\gamma + \\beta

  with :math:`\\mu, \\sigma^2` each example's mean and biased variance over
  ``reduction_axes``; ``scale`` :math:`\\gamma` and ``bias`` :math:`\\beta` have
  ``num_features`` entries, the sizes of ``feature_axes`` multiplied.
  ``use_fast_variance`` is accepted for compatibility. See
  :func:`jaxnorm.functional.layer_norm`.

  Example:
    >>> import jax
    >>> from flax import nnx
    >>> from jaxnorm import nnx as jnnx
    >>> layer = jnnx.LayerNorm(4, rngs=nnx.Rngs(0))
    >>> y = layer(jax.random.normal(jax.random.key(0), (8, 4)))
    >>> y.shape
    (8, 4)
  """

  def __init__(
      self,
      num_features: int,
      *,
      epsilon: float = 1e-6,
      dtype: Any = None,
      param_dtype: Any = jnp.float32,
      use_bias: bool = True,
      use_scale: bool = True,
      bias_init=initializers.zeros_init(),
      scale_init=initializers.ones_init(),
      reduction_axes: Axes = -1,
      feature_axes: Axes = -1,
      axis_name: str | None = None,
      axis_index_groups: Any = None,
      use_fast_variance: bool = True,
      promote_dtype=_base.promote_dtype,
      rngs: rnglib.Rngs,
      bias_metadata: Mapping[str, Any] = NO_METADATA,
      scale_metadata: Mapping[str, Any] = NO_METADATA,
  ):
    super().__init__(
        num_features, epsilon=epsilon, dtype=dtype, param_dtype=param_dtype,
        use_bias=use_bias, use_scale=use_scale, bias_init=bias_init, scale_init=scale_init,
        axis_name=axis_name, axis_index_groups=axis_index_groups,
        use_fast_variance=use_fast_variance, promote_dtype=promote_dtype, rngs=rngs,
        bias_metadata=bias_metadata, scale_metadata=scale_metadata)
    self.reduction_axes = reduction_axes
    self.feature_axes = feature_axes

  def __call__(self, x, *, mask: jax.Array | None = None):
    """Normalizes each example of ``x`` over ``reduction_axes``.

    Args:
      x: the input.
      mask: boolean array broadcastable to ``x``: elements that enter the statistics.
    """
    fn = "jaxnorm.nnx.LayerNorm"
    features = _checks.canonical_axes(self.feature_axes, jnp.shape(x),
                                      name="feature_axes", fn=fn)
    _frontend.check_num_features(self.num_features, jnp.shape(x), features,
                                 axis_desc=f"feature_axes={self.feature_axes!r}", fn=fn)
    x, scale, bias, out_dtype = self._promoted(x)
    y = F.layer_norm(x, *_frontend.broadcast_params(x, features, scale, bias),
                     axis=self.reduction_axes, epsilon=self.epsilon, mask=mask,
                     axis_name=self.axis_name, axis_index_groups=self.axis_index_groups)
    return y.astype(out_dtype)


class RMSNorm(nnx.Module):
  """RMS normalization, a drop-in for ``flax.nnx.RMSNorm``.

  .. math::
    y = \\frac{x}{\\sqrt{\\frac{1}{n}\\sum_i x_i^2 + \\epsilon}}\\,\\gamma

  over ``reduction_axes``; no centring and no bias. See
  :func:`jaxnorm.functional.rms_norm`.

  Example:
    >>> import jax
    >>> from flax import nnx
    >>> from jaxnorm import nnx as jnnx
    >>> layer = jnnx.RMSNorm(4, rngs=nnx.Rngs(0))
    >>> sorted(nnx.state(layer))
    ['scale']
  """

  def __init__(
      self,
      num_features: int,
      *,
      epsilon: float = 1e-6,
      dtype: Any = None,
      param_dtype: Any = jnp.float32,
      use_scale: bool = True,
      scale_init=initializers.ones,
      reduction_axes: Axes = -1,
      feature_axes: Axes = -1,
      axis_name: str | None = None,
      axis_index_groups: Any = None,
      use_fast_variance: bool = True,
      promote_dtype=_base.promote_dtype,
      rngs: rnglib.Rngs,
      scale_metadata: Mapping[str, Any] = NO_METADATA,
  ):
    self.scale = (_base.param(rngs, scale_init, (num_features,), param_dtype, scale_metadata)
                  if use_scale else nnx.data(None))
    self.num_features = num_features
    self.epsilon = epsilon
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.use_scale = use_scale
    self.reduction_axes = reduction_axes
    self.feature_axes = feature_axes
    self.axis_name = axis_name
    self.axis_index_groups = axis_index_groups
    self.use_fast_variance = use_fast_variance
    self.promote_dtype = promote_dtype

  def __call__(self, x, mask: jax.Array | None = None):
    """Divides each example by its root mean square over ``reduction_axes``."""
    fn = "jaxnorm.nnx.RMSNorm"
    features = _checks.canonical_axes(self.feature_axes, jnp.shape(x),
                                      name="feature_axes", fn=fn)
    _frontend.check_num_features(self.num_features, jnp.shape(x), features,
                                 axis_desc=f"feature_axes={self.feature_axes!r}", fn=fn)
    x, scale = _base.promote(self, (x, _base.value(self.scale)))
    out_dtype = _frontend.output_dtype(x, scale, dtype=self.dtype)
    (scale,) = _frontend.broadcast_params(x, features, scale)
    y = F.rms_norm(x, scale, axis=self.reduction_axes, epsilon=self.epsilon, mask=mask,
                   axis_name=self.axis_name, axis_index_groups=self.axis_index_groups)
    return y.astype(out_dtype)


class GroupNorm(_StatelessNorm):
  """Group normalization, a drop-in for ``flax.nnx.GroupNorm``.

  .. math::
    y_{n,\\dots,c} = \\frac{x_{n,\\dots,c} - \\mu_{n,g(c)}}{\\sqrt{\\sigma^2_{n,g(c)}
    + \\epsilon}}\\,\\gamma_c + \\beta_c

  The ``num_features`` channels (last axis) form ``num_groups`` groups (default 32) or
  groups of ``group_size`` (with ``num_groups=None``); statistics per example over each
  group and ``reduction_axes`` (default: all but the first axis). Checked at
  construction, as flax does. See :func:`jaxnorm.functional.group_norm`.

  Example:
    >>> import jax
    >>> from flax import nnx
    >>> from jaxnorm import nnx as jnnx
    >>> layer = jnnx.GroupNorm(4, num_groups=2, rngs=nnx.Rngs(0))
    >>> layer(jax.random.normal(jax.random.key(0), (8, 3, 3, 4))).shape
    (8, 3, 3, 4)
  """

  def __init__(
      self,
      num_features: int,
      num_groups: int | None = 32,
      group_size: int | None = None,
      *,
      epsilon: float = 1e-6,
      dtype: Any = None,
      param_dtype: Any = jnp.float32,
      use_bias: bool = True,
      use_scale: bool = True,
      bias_init=initializers.zeros_init(),
      scale_init=initializers.ones_init(),
      reduction_axes: Axes | None = None,
      axis_name: str | None = None,
      axis_index_groups: Any = None,
      use_fast_variance: bool = True,
      promote_dtype=_base.promote_dtype,
      rngs: rnglib.Rngs,
      bias_metadata: Mapping[str, Any] = NO_METADATA,
      scale_metadata: Mapping[str, Any] = NO_METADATA,
  ):
    groups = _groups(num_features, num_groups, group_size, "jaxnorm.nnx.GroupNorm",
                     features=True)
    super().__init__(
        num_features, epsilon=epsilon, dtype=dtype, param_dtype=param_dtype,
        use_bias=use_bias, use_scale=use_scale, bias_init=bias_init, scale_init=scale_init,
        axis_name=axis_name, axis_index_groups=axis_index_groups,
        use_fast_variance=use_fast_variance, promote_dtype=promote_dtype, rngs=rngs,
        bias_metadata=bias_metadata, scale_metadata=scale_metadata)
    self.feature_axis = -1
    self.num_groups = groups
    self.group_size = num_features // groups
    self.reduction_axes = reduction_axes

  def __call__(self, x, *, mask: jax.Array | None = None):
    """Normalizes each example over ``reduction_axes`` and the channels of each group."""
    fn = "jaxnorm.nnx.GroupNorm"
    _frontend.check_num_features(self.num_features, jnp.shape(x), (jnp.ndim(x) - 1,),
                                 axis_desc="the last (channel) axis", fn=fn)
    x, scale, bias, out_dtype = self._promoted(x)
    y = F.group_norm(x, scale, bias, num_groups=self.num_groups, epsilon=self.epsilon,
                     reduction_axes=self.reduction_axes, mask=mask,
                     axis_name=self.axis_name, axis_index_groups=self.axis_index_groups)
    return y.astype(out_dtype)


class InstanceNorm(_StatelessNorm):
  """Instance normalization, a drop-in for ``flax.nnx.InstanceNorm``.

  .. math::
    y = \\frac{x - \\mu_{n,c}}{\\sqrt{\\sigma^2_{n,c} + \\epsilon}}\\,\\gamma_c + \\beta_c

  Statistics per example (axis 0) and channel (``feature_axes``) over the other axes.
  See :func:`jaxnorm.functional.instance_norm`.

  Example:
    >>> import jax
    >>> from flax import nnx
    >>> from jaxnorm import nnx as jnnx
    >>> layer = jnnx.InstanceNorm(4, rngs=nnx.Rngs(0))
    >>> layer(jax.random.normal(jax.random.key(0), (8, 3, 3, 4))).shape
    (8, 3, 3, 4)
  """

  def __init__(
      self,
      num_features: int,
      *,
      epsilon: float = 1e-6,
      dtype: Any = None,
      param_dtype: Any = jnp.float32,
      use_bias: bool = True,
      use_scale: bool = True,
      bias_init=initializers.zeros,
      scale_init=initializers.ones,
      feature_axes: Axes = -1,
      axis_name: str | None = None,
      axis_index_groups: Any = None,
      use_fast_variance: bool = True,
      promote_dtype=_base.promote_dtype,
      rngs: rnglib.Rngs,
      bias_metadata: Mapping[str, Any] = NO_METADATA,
      scale_metadata: Mapping[str, Any] = NO_METADATA,
  ):
    super().__init__(
        num_features, epsilon=epsilon, dtype=dtype, param_dtype=param_dtype,
        use_bias=use_bias, use_scale=use_scale, bias_init=bias_init, scale_init=scale_init,
        axis_name=axis_name, axis_index_groups=axis_index_groups,
        use_fast_variance=use_fast_variance, promote_dtype=promote_dtype, rngs=rngs,
        bias_metadata=bias_metadata, scale_metadata=scale_metadata)
    self.feature_axes = feature_axes

  def __call__(self, x, *, mask: jax.Array | None = None):
    """Normalizes each example and channel over the remaining axes."""
    fn = "jaxnorm.nnx.InstanceNorm"
    features = _checks.canonical_axes(self.feature_axes, jnp.shape(x),
                                      name="feature_axes", fn=fn)
    shape = _frontend.check_num_features(
        self.num_features, jnp.shape(x), features,
        axis_desc=f"feature_axes={self.feature_axes!r}", fn=fn)
    x, scale, bias, out_dtype = self._promoted(x)
    y = F.instance_norm(x, *_reshape(shape, scale, bias), axis=features,
                        epsilon=self.epsilon, mask=mask, axis_name=self.axis_name,
                        axis_index_groups=self.axis_index_groups)
    return y.astype(out_dtype)

