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
from flax.linen import dtypes, initializers

from jaxnorm import _checks
from jaxnorm import functional as F

Axes = int | tuple[int, ...]


def _feature_params(module: nn.Module, x, feature_axes: tuple[int, ...]):
  """Creates ``scale``/``bias`` with the sizes of ``x`` on ``feature_axes`` (as Flax)."""
  shape = tuple(x.shape[a] for a in feature_axes)
  scale = (module.param("scale", module.scale_init, shape, module.param_dtype)
           if module.use_scale else None)
  bias = (module.param("bias", module.bias_init, shape, module.param_dtype)
          if module.use_bias else None)
  return scale, bias


def _output_dtype(module: nn.Module, x, scale, bias):
  """Flax's rule: ``dtype`` if given, else inferred from the input and the parameters."""
  return dtypes.canonicalize_dtype(x, scale, bias, dtype=module.dtype)


def _input_for(x, out_dtype):
  """``x`` widened to the output dtype when that is wider, so no precision is lost."""
  return x.astype(jnp.promote_types(x.dtype, out_dtype))


class BatchNorm(nn.Module):
  """Batch normalization, a drop-in for ``flax.linen.BatchNorm``.

  Attributes are those of ``flax.linen.BatchNorm``. ``use_fast_variance`` and
  ``force_float32_reductions`` are accepted for compatibility; jaxnorm always reduces
  in at least float32 with its stable one-pass variance (as fast as Flax's fast path,
  and correct on data with a large mean). Running statistics are float32 whatever
  ``dtype`` and ``param_dtype`` are. During ``init`` the statistics are not updated
  and ``axis_name`` is not used; a training-mode ``init`` on a batch with one value
  per feature normalizes with the initial running statistics instead of raising.

  See :func:`jaxnorm.functional.batch_norm` for the math.
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
    feature_shape = tuple(x.shape[a] for a in feature_axes)
    ra_mean = self.variable("batch_stats", "mean",
                            lambda s: jnp.zeros(s, jnp.float32), feature_shape)
    ra_var = self.variable("batch_stats", "var",
                           lambda s: jnp.ones(s, jnp.float32), feature_shape)
    scale, bias = _feature_params(self, x, feature_axes)
    out_dtype = _output_dtype(self, x, scale, bias)

    initializing = self.is_initializing()
    train = not use_running_average
    if initializing and train and mask is None and x.size <= math.prod(feature_shape):
      train = False  # init only needs shapes, and it never updates the statistics
    y, new_stats = F.batch_norm(
        _input_for(x, out_dtype), scale, bias, F.BatchStats(ra_mean.value, ra_var.value),
        train=train, momentum=self.momentum, epsilon=self.epsilon,
        axis=feature_axes, axis_name=None if initializing else self.axis_name,
        axis_index_groups=self.axis_index_groups, mask=mask)
    if train and not initializing:
      ra_mean.value, ra_var.value = new_stats
    return y.astype(out_dtype)


class LayerNorm(nn.Module):
  """Layer normalization, a drop-in for ``flax.linen.LayerNorm``.

  Statistics are taken over ``reduction_axes``; ``scale``/``bias`` have the sizes of
  ``feature_axes``. ``use_fast_variance`` and ``force_float32_reductions`` are accepted
  for compatibility (jaxnorm's variance is always the stable one, in float32 or wider).
  See :func:`jaxnorm.functional.layer_norm` for the math.
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
    broadcast_shape = tuple(x.shape[a] if a in feature_axes else 1 for a in range(x.ndim))
    y = F.layer_norm(
        _input_for(x, out_dtype),
        None if scale is None else scale.reshape(broadcast_shape),
        None if bias is None else bias.reshape(broadcast_shape),
        axis=self.reduction_axes, epsilon=self.epsilon, mask=mask,
        axis_name=self.axis_name, axis_index_groups=self.axis_index_groups)
    return y.astype(out_dtype)
