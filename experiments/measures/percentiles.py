"""Percentiles of a unit's input over training, and how far they drift.

Ioffe & Szegedy (2015, Fig. 1b/c) show the 15th, 50th and 85th percentiles of one
sigmoid's input over training: with batch norm they stay put, without it they move.
:func:`unit_percentiles` measures them on a fixed batch (it runs inside a jitted probe),
:func:`percentile_drift` says how far they move after a given evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

FIG1_PERCENTILES = (15.0, 50.0, 85.0)


def unit_percentiles(h: jax.Array, q: Sequence[float] = FIG1_PERCENTILES) -> jax.Array:
  r"""Percentiles of every unit's value over the examples of a batch.

  .. math:: Q_{p,u} = \mathrm{percentile}_p\{h_{n,u} : n = 1..N\}

  with linear interpolation between order statistics (NumPy's default).

  Args:
    h: values ``(N, U)``: ``N`` examples, ``U`` units.
    q: the percentiles :math:`p`, in [0, 100].

  Returns:
    ``(len(q), U)``, in ``h``'s dtype.

  Example:
    >>> import jax.numpy as jnp
    >>> h = jnp.arange(101.0)[:, None] * jnp.array([1.0, -2.0])
    >>> unit_percentiles(h).tolist()
    [[15.0, -170.0], [50.0, -100.0], [85.0, -30.0]]
  """
  h = jnp.asarray(h)
  if h.ndim != 2:
    raise ValueError(f"unit_percentiles: h must be (examples, units); got shape {h.shape}; "
                     "reshape it to 2-D first.")
  return jnp.percentile(h, jnp.asarray(q, h.dtype), axis=0)


def percentile_drift(q: np.ndarray, start: int) -> np.ndarray:
  r"""The largest distance any percentile moves from where it was at evaluation ``start``.

  .. math::
    D_u = \max_{p}\ \max_{e \ge s}\ \lvert Q_{p,u}(e) - Q_{p,u}(s) \rvert

  in the units of the measured quantity (for a sigmoid's input, the sigmoid's own
  scale).

  Args:
    q: percentiles over training, ``(..., E, P, U)``: ``E`` evaluations, ``P``
      percentiles, ``U`` units (leading axes, e.g. seeds, are kept).
    start: the evaluation :math:`s` from which drift is measured.

  Returns:
    ``(..., U)``: the drift of each unit.

  Example:
    >>> import numpy as np
    >>> q = np.array([[[0.0], [1.0]], [[0.5], [1.0]], [[0.2], [3.0]]])  # E=3, P=2, U=1
    >>> percentile_drift(q, start=1).tolist()
    [2.0]
  """
  q = np.asarray(q, np.float64)
  if q.ndim < 3:
    raise ValueError(f"percentile_drift: q must be (..., evaluations, percentiles, units); "
                     f"got shape {q.shape}.")
  evaluations = q.shape[-3]
  if not 0 <= start < evaluations:
    raise ValueError(f"percentile_drift: start must be an evaluation index in "
                     f"[0, {evaluations - 1}]; got {start}.")
  moved = np.abs(q[..., start:, :, :] - q[..., start:start + 1, :, :])
  return moved.max(axis=(-3, -2))
