"""Flax module for reversible instance normalization (RevIN), both directions."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.linen import initializers

from jaxnorm import functional as F
from jaxnorm.linen.normalization import _input_for, _output_dtype


class RevIN(nn.Module):
  """Reversible instance normalization with an optional learnable affine.

  ``revin(x)`` (or ``revin.normalize(x)``) returns ``(x_hat, stats)``;
  ``revin.denormalize(y_hat, stats)`` maps a model's output back with the same
  statistics and the same affine parameters (``params/scale``, ``params/bias``, one
  per variable, created when ``affine``). Input ``(batch, time, num_features)`` with
  the variables on ``axis``. See :func:`jaxnorm.functional.revin_normalize`.

  Example:
    >>> import flax.linen as nn, jax, jaxnorm
    >>> class Forecaster(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x):                       # (batch, 96, 7) -> (batch, 24, 7)
    ...     revin = jaxnorm.RevIN(num_features=x.shape[-1])
    ...     h, stats = revin(x)
    ...     h = nn.Dense(24)(h.swapaxes(1, 2)).swapaxes(1, 2)   # a linear forecaster
    ...     return revin.denormalize(h, stats)
    >>> x = 20.0 + jax.random.normal(jax.random.key(0), (4, 96, 7))
    >>> model = Forecaster()
    >>> model.apply(model.init(jax.random.key(1), x), x).shape
    (4, 24, 7)
  """

  num_features: int
  affine: bool = True
  epsilon: float = 1e-5
  axis: int = -1
  dtype: Any = None
  param_dtype: Any = jnp.float32
  scale_init: Any = initializers.ones
  bias_init: Any = initializers.zeros

  def setup(self):
    if self.affine:
      self.scale = self.param("scale", self.scale_init, (self.num_features,),
                              self.param_dtype)
      self.bias = self.param("bias", self.bias_init, (self.num_features,),
                             self.param_dtype)

  def _params(self):
    return (self.scale, self.bias) if self.affine else (None, None)

  def __call__(self, x, *, mask: jax.Array | None = None):
    """Same as :meth:`normalize`."""
    return self.normalize(x, mask=mask)

  def normalize(self, x, *, mask: jax.Array | None = None):
    """``(x_hat, stats)``: each series normalized by its own statistics.

    Args:
      x: input ``(batch, time, num_features)``.
      mask: boolean array broadcastable to ``x``: valid (not padded) time steps.
    """
    scale, bias = self._params()
    out_dtype = _output_dtype(self, x, scale, bias)
    y, stats = F.revin_normalize(_input_for(x, out_dtype), scale, bias, axis=self.axis,
                                 epsilon=self.epsilon, mask=mask)
    return y.astype(out_dtype), stats

  def denormalize(self, y, stats: F.RevINStats):
    """Maps ``y`` (normalized units, any length along time) back with ``stats``."""
    scale, bias = self._params()
    out_dtype = _output_dtype(self, y, scale, bias)
    return F.revin_denormalize(_input_for(y, out_dtype), scale, bias, stats,
                               axis=self.axis).astype(out_dtype)
