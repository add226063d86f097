"""The range of learning rates a network tolerates, and which runs diverged.

"Batch norm allows higher learning rates" is read off a sweep: the largest learning rate
whose (mean) accuracy stays within a tolerance of the best one, and the fraction of runs
that diverged at each learning rate.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def largest_lr_within(learning_rates: Sequence[float], accuracy: Sequence[float], *,
                      tolerance: float, best: float | None = None) -> float:
  r"""The largest learning rate whose accuracy is within ``tolerance`` of the best.

  .. math:: \eta_{\max} = \max\{\eta_i : a_i \ge a^\star - \tau\},\quad
     a^\star = \max_i a_i \text{ unless given}

  Args:
    learning_rates: :math:`\eta_i`, one per setting.
    accuracy: :math:`a_i` (e.g. the mean over seeds, or a bound of its interval); NaN
      counts as failing.
    tolerance: :math:`\tau`, in the units of ``accuracy`` (0.02 for 2 points).
    best: :math:`a^\star`; default the largest finite accuracy.

  Returns:
    :math:`\eta_{\max}`, or NaN when no accuracy qualifies.

  Example:
    >>> largest_lr_within([0.01, 0.1, 1.0, 10.0], [0.80, 0.90, 0.885, 0.10], tolerance=0.02)
    1.0
  """
  lrs = np.asarray(learning_rates, np.float64)
  acc = np.asarray(accuracy, np.float64)
  if lrs.ndim != 1 or lrs.shape != acc.shape:
    raise ValueError(f"largest_lr_within: learning_rates and accuracy must be 1-D of one "
                     f"length; got shapes {lrs.shape} and {acc.shape}.")
  if not tolerance >= 0:
    raise ValueError(f"largest_lr_within: tolerance must be >= 0; got {tolerance!r}.")
  if best is None:
    if not np.any(np.isfinite(acc)):
      return float("nan")
    best = float(np.nanmax(acc))
  with np.errstate(invalid="ignore"):
    ok = acc >= best - tolerance
  return float(lrs[ok].max()) if ok.any() else float("nan")


def diverged(skipped_steps, initial_loss, final_loss) -> np.ndarray:
  """Which runs diverged: a step rejected as non-finite, or a final loss above the first.

  Args:
    skipped_steps: steps the non-finite guard rejected, per run.
    initial_loss: each run's loss before training.
    final_loss: the same loss after training (NaN or inf counts as diverged).

  Returns:
    A boolean array, broadcast over the inputs.

  Example:
    >>> diverged([0, 3, 0, 0], [2.3, 2.3, 2.3, 2.3], [0.4, 0.4, 5.0, float("nan")]).tolist()
    [False, True, True, True]
  """
  skipped = np.asarray(skipped_steps)
  initial = np.asarray(initial_loss, np.float64)
  final = np.asarray(final_loss, np.float64)
  with np.errstate(invalid="ignore"):
    return (skipped > 0) | ~np.isfinite(final) | (final > initial)
