"""How fast a run reaches an accuracy, and summaries of ratios over seeds.

"Batch norm reaches the baseline's final accuracy in fewer steps" (Ioffe & Szegedy 2015,
§4.2: 13.3M steps against 31.0M) is a ratio of two step counts. :func:`steps_to_reach`
reads a step count off an evaluated curve; :func:`geometric_summary` summarizes a ratio
over seeds on the log scale, where a 2x speed-up and a 2x slow-down are equally far from
1 and a t-interval of the mean is meaningful.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .stats import Summary, summarize


def steps_to_reach(curve: Sequence[float], steps: Sequence[float], target: float) -> float:
  """The first evaluated step at which ``curve`` is at least ``target``.

  Args:
    curve: a measured value at each evaluation, shape ``(E,)`` (NaN never reaches).
    steps: the training step of each evaluation, shape ``(E,)``, increasing.
    target: the value to reach.

  Returns:
    The step, or ``inf`` if the curve never reaches ``target``.

  Example:
    >>> steps_to_reach([0.1, 0.5, 0.9, 0.8], [0, 100, 200, 300], 0.85)
    200.0
    >>> steps_to_reach([0.1, 0.5], [0, 100], 0.9)
    inf
  """
  curve, steps = np.asarray(curve, np.float64), np.asarray(steps, np.float64)
  if curve.ndim != 1 or curve.shape != steps.shape:
    raise ValueError(f"steps_to_reach: curve and steps must be 1-D of one length; got "
                     f"shapes {curve.shape} and {steps.shape}.")
  with np.errstate(invalid="ignore"):
    reached = np.flatnonzero(curve >= target)
  return float(steps[reached[0]]) if reached.size else float("inf")


def geometric_summary(ratios: Sequence[float], level: float = 0.95) -> Summary:
  r"""Geometric mean of positive ratios with the t-interval of the mean log ratio.

  .. math::
    \exp\Big(\overline{\log r} \pm t_{n-1,(1+\ell)/2}\,\frac{s_{\log r}}{\sqrt n}\Big)

  ``std`` is the sample std of :math:`\log r` (a multiplicative spread
  :math:`e^{s}`). A ratio of 0 or ``inf`` (a run that never got there) makes the mean
  0 or ``inf`` and the interval undefined (NaN): the caller must decide what that means.

  Args:
    ratios: one positive ratio per seed.
    level: confidence level :math:`\ell`.

  Example:
    >>> s = geometric_summary([2.0, 8.0])
    >>> round(s.mean, 6), s.n
    (4.0, 2)
  """
  ratios = np.asarray(ratios, np.float64).reshape(-1)
  if ratios.size == 0:
    raise ValueError("geometric_summary: ratios is empty; pass one ratio per seed.")
  if np.any(ratios < 0) or np.any(np.isnan(ratios)):
    raise ValueError(f"geometric_summary: ratios must be >= 0 (0 and inf allowed); got "
                     f"{ratios.tolist()}.")
  with np.errstate(divide="ignore", invalid="ignore"):
    logs = np.log(ratios)
  if not np.all(np.isfinite(logs)):
    with np.errstate(invalid="ignore"):
      mean = float(np.exp(np.mean(logs)))  # 0, inf, or NaN when both occur
    return Summary(mean, float("nan"), int(ratios.size), float("nan"), float("nan"), level)
  log_summary = summarize(logs, level)
  return Summary(float(np.exp(log_summary.mean)), log_summary.std, log_summary.n,
                 float(np.exp(log_summary.ci_low)), float(np.exp(log_summary.ci_high)),
                 level)
