"""Per-layer growth factors: how fast a quantity grows or shrinks from layer to layer.

Exploding and vanishing gradients are geometric in depth: the squared norm of a layer's
weight gradient is, away from the ends of the network, about ``C * factor**(L - l)`` for
layer ``l`` of ``L``. :func:`fit_growth_factor` estimates ``factor`` by least squares on
the logarithms over a window of layers; :func:`log_squared_norm` computes the logarithm
of a squared norm without the underflow or overflow of forming the square in float32
(gradients that vanish over 50 layers reach 1e-60, below float32's smallest number).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class GrowthFit(NamedTuple):
  """A fitted per-layer growth factor.

  Attributes:
    factor: the multiplicative change per layer, going from the last layer towards the
      first (> 1: grows towards the input, i.e. explodes in backpropagation; < 1:
      vanishes).
    log_factor: its natural logarithm (the negated slope of the fit against the layer).
    stderr: the ordinary least-squares standard error of ``log_factor``; it assumes
      independent residuals, which a product of random layers does not give, so
      intervals should come from independent networks (seeds), not from it.
    layers: how many layers entered the fit.
  """

  factor: float
  log_factor: float
  stderr: float
  layers: int


def fit_growth_factor(log_values, *, start: int = 0, stop: int | None = None) -> GrowthFit:
  r"""Least-squares fit of a geometric per-layer factor to logarithms of a quantity.

  .. math::
    \ln v_l = a + (L - l)\,\ln\lambda + \varepsilon_l, \qquad l = \text{start}, \dots,
    \text{stop} - 1

  Args:
    log_values: :math:`\ln v_l` per layer, ordered from the first layer (index 0) to
      the last; non-finite entries (a norm that underflowed to 0) are left out of the
      fit.
    start: first layer index of the fit window.
    stop: one past the last layer index of the window (default: all layers).

  Returns:
    A :class:`GrowthFit` with :math:`\lambda` = ``factor``; NaN fields when fewer than 3
    finite values lie in the window.

  Example:
    >>> fit = fit_growth_factor(np.log(3.0 * 1.5 ** np.arange(10, 0, -1)))
    >>> round(fit.factor, 6), fit.layers
    (1.5, 10)
  """
  values = np.asarray(log_values, np.float64)
  if values.ndim != 1:
    raise ValueError(f"fit_growth_factor: log_values must be 1-D (one value per layer); "
                     f"got shape {values.shape}.")
  stop = len(values) if stop is None else stop
  if not 0 <= start < stop <= len(values):
    raise ValueError(f"fit_growth_factor: need 0 <= start < stop <= {len(values)} (the "
                     f"number of layers); got start={start}, stop={stop}.")
  layers = np.arange(start, stop, dtype=np.float64)
  window = values[start:stop]
  keep = np.isfinite(window)
  if keep.sum() < 3:
    nan = float("nan")
    return GrowthFit(nan, nan, nan, int(keep.sum()))
  x, y = layers[keep], window[keep]
  x_centred = x - x.mean()
  slope = float(np.sum(x_centred * (y - y.mean())) / np.sum(x_centred ** 2))
  residuals = y - y.mean() - slope * x_centred
  dof = len(x) - 2
  stderr = float(np.sqrt(np.sum(residuals ** 2) / dof / np.sum(x_centred ** 2)))
  return GrowthFit(float(np.exp(-slope)), -slope, stderr, int(len(x)))


def log_squared_norm(x: jax.Array) -> jax.Array:
  r"""Natural logarithm of the squared Frobenius norm, safe from under- and overflow.

  .. math:: \ln \lVert x \rVert^2 = 2 \ln m + \ln \textstyle\sum (x / m)^2, \qquad
     m = \max |x|

  Returns ``-inf`` for an all-zero ``x``.

  Example:
    >>> round(float(log_squared_norm(jnp.full((4,), 1e-30))), 2)  # ln(4e-60)
    -136.77
  """
  x = jnp.asarray(x)
  m = jnp.max(jnp.abs(x))
  safe = jnp.where(m > 0, m, 1.0)
  return jnp.where(m > 0, 2 * jnp.log(safe) + jnp.log(jnp.sum(jnp.square(x / safe))),
                   -jnp.inf)
