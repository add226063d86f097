"""Summaries over seeds: mean, sample standard deviation, Student-t confidence intervals.

Every experiment reports its numbers through :func:`summarize` (one quantity over seeds)
or :func:`paired_difference` (the same seeds under two conditions), so each table and
verdict states the same statistics the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import stats as scipy_stats


class Summary(NamedTuple):
  """Mean, sample standard deviation (ddof 1) and a two-sided confidence interval.

  With one value the standard deviation is 0 and the interval is ``(nan, nan)``: one
  seed says nothing about the spread.
  """

  mean: float
  std: float
  n: int
  ci_low: float
  ci_high: float
  level: float = 0.95

  def as_dict(self) -> dict:
    return {"mean": self.mean, "std": self.std, "n": self.n,
            f"ci{round(self.level * 100)}": [self.ci_low, self.ci_high]}

  def format(self, digits: int = 3, scale: float = 1.0) -> str:
    """``mean ± std`` (``mean`` alone for one seed), each multiplied by ``scale``."""
    if self.n < 2:
      return f"{self.mean * scale:.{digits}f}"
    return f"{self.mean * scale:.{digits}f} ± {self.std * scale:.{digits}f}"


def summarize(values: Sequence[float], level: float = 0.95) -> Summary:
  r"""Mean, sample std and the Student-t interval of the mean.

  .. math::
    \bar v \pm t_{n-1,\,(1+\ell)/2}\,\frac{s}{\sqrt n}

  Args:
    values: one number per seed (non-finite values are kept: a NaN mean says a seed
      diverged, which the caller must see).
    level: confidence level :math:`\ell` of the interval.

  Example:
    >>> s = summarize([1.0, 2.0, 3.0])
    >>> round(s.mean, 6), round(s.std, 6), [round(v, 3) for v in (s.ci_low, s.ci_high)]
    (2.0, 1.0, [-0.484, 4.484])
  """
  values = np.asarray(values, np.float64).reshape(-1)
  if values.size == 0:
    raise ValueError("summarize: values is empty; pass at least one number per seed.")
  if not 0.0 < level < 1.0:
    raise ValueError(f"summarize: level must be in (0, 1); got {level!r}.")
  mean = float(values.mean())
  n = int(values.size)
  if n < 2:
    return Summary(mean, 0.0, n, float("nan"), float("nan"), level)
  std = float(values.std(ddof=1))
  half = float(scipy_stats.t.ppf((1 + level) / 2, n - 1)) * std / np.sqrt(n)
  return Summary(mean, std, n, mean - half, mean + half, level)


def paired_difference(a: Sequence[float], b: Sequence[float],
                      level: float = 0.95) -> Summary:
  """Summary of ``a - b`` over paired seeds (same seed index under both conditions).

  Example:
    >>> d = paired_difference([0.9, 0.8, 0.85], [0.8, 0.75, 0.8])
    >>> round(d.mean, 4)
    0.0667
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape:
    raise ValueError(f"paired_difference: a and b must pair up seed by seed; got shapes "
                     f"{a.shape} and {b.shape}.")
  return summarize(a - b, level)


def excludes_zero(summary: Summary) -> bool:
  """Whether the confidence interval lies strictly on one side of 0."""
  return bool(summary.ci_low > 0 or summary.ci_high < 0)
