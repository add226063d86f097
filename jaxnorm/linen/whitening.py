"""Flax modules for the whitening normalizations: decorrelated batch norm and IterNorm.

Same conventions as :class:`jaxnorm.linen.BatchNorm`: ``use_running_average`` selects
evaluation, ``params`` hold ``scale`` and ``bias`` (one per feature), ``batch_stats``
hold the float32 running ``mean`` ``(C,)`` and ``whitening`` matrices ``(G, g, g)``;
during ``init`` no statistic is updated (and no batch is whitened, so any batch size
initializes).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.linen import initializers

from jaxnorm import functional as F
from jaxnorm.linen.normalization import _feature_params, _input_for, _output_dtype


class DecorrelatedBatchNorm(nn.Module):
  """Decorrelated batch norm (ZCA whitening in groups of ``group_size`` features).

  See :func:`jaxnorm.functional.decorrelated_batch_norm`. Features are the last axis.

  Example:
    >>> import jax, jax.numpy as jnp, jaxnorm
    >>> layer = jaxnorm.DecorrelatedBatchNorm(group_size=4)
    >>> x = jax.random.normal(jax.random.key(0), (32, 8))
    >>> variables = layer.init(jax.random.key(1), x, use_running_average=False)
    >>> jax.tree.map(jnp.shape, variables["batch_stats"])
    {'mean': (8,), 'whitening': (2, 4, 4)}
    >>> y, updates = layer.apply(variables, x, use_running_average=False,
    ...                          mutable=["batch_stats"])
  """

  use_running_average: bool | None = None
  num_groups: int | None = None
  group_size: int | None = 16
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

  def _whiten(self, x, train, stats, mask, scale, bias):
    return F.decorrelated_batch_norm(
        x, scale, bias, stats, train=train, num_groups=self.num_groups,
        group_size=self.group_size, momentum=self.momentum, epsilon=self.epsilon,
        axis_name=self.axis_name, axis_index_groups=self.axis_index_groups, mask=mask)

  @nn.compact
  def __call__(self, x, use_running_average: bool | None = None, *,
               mask: jax.Array | None = None):
    """Whitens ``x`` with batch statistics (training) or the running ones.

    Args:
      x: input ``(..., C)``.
      use_running_average: use the running statistics (evaluation) when True.
      mask: boolean array broadcastable to ``x`` (size 1 on the last axis): the
        samples that enter the statistics.

    Returns:
      The whitened input, in ``dtype`` (or the dtype inferred as in Flax).
    """
    use_running_average = nn.merge_param(
        "use_running_average", self.use_running_average, use_running_average)
    channels = x.shape[-1]
    initial = F.init_whitening_stats(channels, num_groups=self.num_groups,
                                     group_size=self.group_size)
    mean = self.variable("batch_stats", "mean", lambda: initial.mean)
    whitening = self.variable("batch_stats", "whitening", lambda: initial.whitening)
    scale, bias = _feature_params(self, x, (x.ndim - 1,))
    out_dtype = _output_dtype(self, x, scale, bias)
    train = not use_running_average and not self.is_initializing()
    y, new = self._whiten(_input_for(x, out_dtype), train,
                          F.WhiteningStats(mean.value, whitening.value), mask, scale, bias)
    if train:
      mean.value, whitening.value = new
    return y.astype(out_dtype)


class IterNorm(DecorrelatedBatchNorm):
  """IterNorm: whitening by ``iterations`` Newton-Schulz steps (5 in the paper).

  See :func:`jaxnorm.functional.iter_norm`; same variables as
  :class:`DecorrelatedBatchNorm`.

  Example:
    >>> import jax, jaxnorm
    >>> layer = jaxnorm.IterNorm(group_size=8, iterations=5)
    >>> x = jax.random.normal(jax.random.key(0), (32, 16))
    >>> variables = layer.init(jax.random.key(1), x, use_running_average=True)
    >>> layer.apply(variables, x, use_running_average=True).shape
    (32, 16)
  """

  iterations: int = 5

  def _whiten(self, x, train, stats, mask, scale, bias):
    return F.iter_norm(
        x, scale, bias, stats, train=train, iterations=self.iterations,
        num_groups=self.num_groups, group_size=self.group_size, momentum=self.momentum,
        epsilon=self.epsilon, axis_name=self.axis_name,
        axis_index_groups=self.axis_index_groups, mask=mask)
