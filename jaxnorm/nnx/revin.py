"""NNX module for reversible instance normalization (RevIN), both directions."""

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


class RevIN(nnx.Module):
  r"""Reversible instance normalization with an optional learnable affine.

  .. math::
    \hat x = \gamma \odot \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta, \qquad
    y = \frac{\hat y - \beta}{\gamma} \sqrt{\sigma^2 + \epsilon} + \mu

  with :math:`\mu, \sigma^2` each series' own statistics over time.
  ``revin(x)`` (or ``revin.normalize(x)``) returns ``(x_hat, stats)``;
  ``revin.denormalize(y_hat, stats)`` maps a model's output back. Same parameters as
  :class:`jaxnorm.linen.RevIN` (``scale``, ``bias``: one per variable, when ``affine``).
  See :func:`jaxnorm.functional.revin_normalize` (Kim et al. 2022).

  Example:
    >>> import jax
    >>> from flax import nnx
    >>> from jaxnorm import nnx as jnnx
    >>> revin = jnnx.RevIN(7, rngs=nnx.Rngs(0))
    >>> x = 20.0 + jax.random.normal(jax.random.key(0), (4, 96, 7))
    >>> h, stats = revin(x)
    >>> bool(jax.numpy.allclose(revin.denormalize(h, stats), x, atol=1e-4))
    True
  """

  def __init__(self, num_features: int, *, affine: bool = True, epsilon: float = 1e-5,
               axis: int = -1, dtype: Any = None, param_dtype: Any = jnp.float32,
               scale_init=initializers.ones_init(), bias_init=initializers.zeros_init(),
               promote_dtype=_base.promote_dtype, rngs: rnglib.Rngs,
               bias_metadata: Mapping[str, Any] = NO_METADATA,
               scale_metadata: Mapping[str, Any] = NO_METADATA):
    _base.affine_params(self, rngs, num_features, use_scale=affine, use_bias=affine,
                        scale_init=scale_init, bias_init=bias_init,
                        param_dtype=param_dtype, scale_metadata=scale_metadata,
                        bias_metadata=bias_metadata)
    self.num_features = num_features
    self.affine = affine
    self.epsilon = epsilon
    self.axis = axis
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.promote_dtype = promote_dtype

  def _promoted(self, x):
    x, scale, bias = _base.promote(self, (x, _base.value(self.scale),
                                          _base.value(self.bias)))
    out_dtype = _frontend.output_dtype(x, scale, bias, dtype=self.dtype)
    return _frontend.widen(x, out_dtype), scale, bias, out_dtype

  def __call__(self, x, *, mask: jax.Array | None = None):
    """Same as :meth:`normalize`."""
    return self.normalize(x, mask=mask)

  def normalize(self, x, *, mask: jax.Array | None = None):
    """``(x_hat, stats)``: each series normalized by its own statistics.

    Args:
      x: input ``(batch, time, num_features)``.
      mask: boolean array broadcastable to ``x``: valid (not padded) time steps.
    """
    x, scale, bias, out_dtype = self._promoted(x)
    y, stats = F.revin_normalize(x, scale, bias, axis=self.axis, epsilon=self.epsilon,
                                 mask=mask)
    return y.astype(out_dtype), stats

  def denormalize(self, y, stats: F.RevINStats):
    """Maps ``y`` (normalized units, any length along time) back with ``stats``."""
    y, scale, bias, out_dtype = self._promoted(y)
    return F.revin_denormalize(y, scale, bias, stats, axis=self.axis).astype(out_dtype)
