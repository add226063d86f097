"""NNX modules for the whitening normalizations: decorrelated batch norm and IterNorm.

Same conventions as :class:`jaxnorm.nnx.BatchNorm`: ``use_running_average`` selects
evaluation (``model.train()`` / ``model.eval()`` / ``nnx.view``), ``scale`` and ``bias``
are ``nnx.Param`` (one per feature), and the running statistics are float32
``nnx.BatchStat`` variables named as in :mod:`jaxnorm.linen.whitening`: ``mean``
``(C,)`` and ``whitening`` ``(G, g, g)``, so checkpoints convert between the two
front-ends with :func:`jaxnorm.nnx.state_to_linen` / :func:`state_from_linen`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx import rnglib
from flax.nnx.nn import initializers

from jaxnorm import _frontend
from jaxnorm import functional as F
from jaxnorm.nnx import _base
from jaxnorm.nnx._base import NO_METADATA


class DecorrelatedBatchNorm(nnx.Module):
  r"""Decorrelated batch norm: ZCA whitening in groups of ``group_size`` features.

  .. math::
    y = \gamma \odot \Sigma_B^{-1/2} (x - \mu_B) + \beta

  per group of features (the last axis), :math:`\Sigma_B` the group's batch
  covariance plus ``epsilon`` I. See :func:`jaxnorm.functional.decorrelated_batch_norm`
  (Huang et al. 2018, Decorrelated Batch Normalization). Arguments as
  :class:`jaxnorm.nnx.BatchNorm`, plus ``num_groups`` / ``group_size``.

  Example:
    >>> import jax
    >>> from flax import nnx
    >>> from jaxnorm import nnx as jnnx
    >>> layer = jnnx.DecorrelatedBatchNorm(8, group_size=4, rngs=nnx.Rngs(0))
    >>> y = layer(jax.random.normal(jax.random.key(0), (32, 8)))
    >>> layer.whitening.shape, y.shape
    ((2, 4, 4), (32, 8))
  """

  def __init__(self, num_features: int, *, use_running_average: bool | None = False,
               num_groups: int | None = None, group_size: int | None = 16,
               momentum: float = 0.99, epsilon: float = 1e-5, dtype: Any = None,
               param_dtype: Any = jnp.float32, use_bias: bool = True,
               use_scale: bool = True, bias_init=initializers.zeros_init(),
               scale_init=initializers.ones_init(), axis_name: str | None = None,
               axis_index_groups: Any = None, promote_dtype=_base.promote_dtype,
               rngs: rnglib.Rngs, bias_metadata: Mapping[str, Any] = NO_METADATA,
               scale_metadata: Mapping[str, Any] = NO_METADATA):
    initial = F.init_whitening_stats(num_features, num_groups=num_groups,
                                     group_size=group_size)
    self.mean = nnx.BatchStat(initial.mean)
    self.whitening = nnx.BatchStat(initial.whitening)
    _base.affine_params(self, rngs, num_features, use_scale=use_scale, use_bias=use_bias,
                        scale_init=scale_init, bias_init=bias_init,
                        param_dtype=param_dtype, scale_metadata=scale_metadata,
                        bias_metadata=bias_metadata)
    self.num_features = num_features
    self.use_running_average = use_running_average
    self.num_groups = num_groups
    self.group_size = group_size
    self.momentum = momentum
    self.epsilon = epsilon
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.use_bias = use_bias
    self.use_scale = use_scale
    self.axis_name = axis_name
    self.axis_index_groups = axis_index_groups
    self.promote_dtype = promote_dtype

  def _whiten(self, x, train, stats, mask, scale, bias):
    return F.decorrelated_batch_norm(
        x, scale, bias, stats, train=train, num_groups=self.num_groups,
        group_size=self.group_size, momentum=self.momentum, epsilon=self.epsilon,
        axis_name=self.axis_name, axis_index_groups=self.axis_index_groups, mask=mask)

  def __call__(self, x, use_running_average: bool | None = None, *,
               mask: jax.Array | None = None):
    """Whitens ``x`` ``(..., C)`` with batch statistics (training) or the running ones.

    Args:
      x: input, features on the last axis.
      use_running_average: use the running statistics (evaluation) when True; None
        takes the module's attribute (``model.train()`` / ``model.eval()``).
      mask: boolean array broadcastable to ``x`` (size 1 on the last axis): the
        samples that enter the statistics.
    """
    name = type(self).__name__
    train = not _base.first_flag(use_running_average, self.use_running_average,
                                 flag="use_running_average", layer=name)
    _frontend.check_num_features(self.num_features, jnp.shape(x), (jnp.ndim(x) - 1,),
                                 axis_desc="the last axis", fn=f"jaxnorm.nnx.{name}")
    x, scale, bias = _base.promote(self, (x, _base.value(self.scale),
                                          _base.value(self.bias)))
    out_dtype = _frontend.output_dtype(x, scale, bias, dtype=self.dtype)
    stats = F.WhiteningStats(self.mean[...], self.whitening[...])
    y, new = self._whiten(_frontend.widen(x, out_dtype), train, stats, mask, scale, bias)
    if train:
      self.mean[...], self.whitening[...] = new.mean, new.whitening
    return y.astype(out_dtype)

  def set_view(self, use_running_average: bool | None = None):
    """Class method used by ``nnx.view``.

    Args:
      use_running_average: if True, the stored statistics are used instead of the
        batch's.
    """
    if use_running_average is not None:
      self.use_running_average = use_running_average


class IterNorm(DecorrelatedBatchNorm):
  r"""IterNorm: whitening by ``iterations`` Newton-Schulz steps (5 in the paper).

  .. math::
    P_0 = I, \quad P_k = \tfrac{1}{2}\big(3 P_{k-1} - P_{k-1}^3 \Sigma_N\big), \quad
    y = \gamma \odot \frac{P_T}{\sqrt{\mathrm{tr}\,\Sigma}} (x - \mu_B) + \beta

  with :math:`\Sigma_N = \Sigma / \mathrm{tr}\,\Sigma` per group. See
  :func:`jaxnorm.functional.iter_norm` (Huang et al. 2019, Iterative Normalization);
  same variables and arguments as :class:`DecorrelatedBatchNorm`.

  Example:
    >>> import jax
    >>> from flax import nnx
    >>> from jaxnorm import nnx as jnnx
    >>> layer = jnnx.IterNorm(16, group_size=8, iterations=5, rngs=nnx.Rngs(0))
    >>> layer.eval()
    >>> layer(jax.random.normal(jax.random.key(0), (32, 16))).shape
    (32, 16)
  """

  def __init__(self, num_features: int, *, iterations: int = 5, **kwargs):
    super().__init__(num_features, **kwargs)
    self.iterations = iterations

  def _whiten(self, x, train, stats, mask, scale, bias):
    return F.iter_norm(
        x, scale, bias, stats, train=train, iterations=self.iterations,
        num_groups=self.num_groups, group_size=self.group_size, momentum=self.momentum,
        epsilon=self.epsilon, axis_name=self.axis_name,
        axis_index_groups=self.axis_index_groups, mask=mask)
