r"""How decorrelated a layer's features are: the mean absolute correlation between them.

Decorrelated batch norm and IterNorm claim to do what batch norm does not: remove the
correlations between features (within each group of ``g`` consecutive features). The
measure is the mean, over pairs of distinct features, of the absolute Pearson
correlation over a batch,

.. math::
  \bar\rho = \frac{1}{|P|} \sum_{(j, k) \in P} |\rho_{jk}|, \qquad
  \rho_{jk} = \frac{\Sigma_{jk}}{\sqrt{\Sigma_{jj}\Sigma_{kk}}},

where :math:`P` holds the pairs ``j < k`` (``within`` a group of ``group_size``
consecutive features, or all pairs). A constant feature has no correlation; its pairs
are left out.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def mean_abs_correlation(h: jax.Array, *, group_size: int | None = None) -> jax.Array:
  """The mean absolute correlation between distinct features of ``h`` ``(N, C)``.

  Args:
    h: a batch of features, ``N`` samples by ``C`` features.
    group_size: count only pairs inside the same group of ``group_size`` consecutive
      features (the groups a whitening layer whitens); None counts every pair.

  Returns:
    A scalar in [0, 1] (NaN if no pair has two non-constant features).

  Example:
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(500, 2))
    >>> h = np.stack([x[:, 0], x[:, 0] + x[:, 1], x[:, 1], -x[:, 1]], axis=1)
    >>> round(float(mean_abs_correlation(h, group_size=2)), 1)
    0.9
  """
  h = jnp.asarray(h)
  if h.ndim != 2:
    raise ValueError(f"mean_abs_correlation: h must be 2-D (samples, features); got shape "
                     f"{h.shape}. Reshape it to (N, C) first.")
  channels = h.shape[1]
  if group_size is not None and (group_size < 2 or channels % group_size):
    raise ValueError(f"mean_abs_correlation: group_size must be >= 2 and divide the "
                     f"{channels} features; got {group_size}.")
  h = h.astype(jnp.promote_types(h.dtype, jnp.float32))
  centred = h - jnp.mean(h, axis=0)
  cov = centred.T @ centred / h.shape[0]
  sd = jnp.sqrt(jnp.diagonal(cov))
  live = sd > 1e-12 * jnp.maximum(jnp.max(sd), 1e-30)
  safe = jnp.where(live, sd, 1.0)
  corr = cov / safe[:, None] / safe[None, :]
  index = jnp.arange(channels)
  pairs = (index[:, None] < index[None, :]) & live[:, None] & live[None, :]
  if group_size is not None:
    pairs &= (index[:, None] // group_size) == (index[None, :] // group_size)
  count = jnp.sum(pairs)
  return jnp.where(count > 0, jnp.sum(jnp.where(pairs, jnp.abs(corr), 0.0)) / count,
                   jnp.nan)
