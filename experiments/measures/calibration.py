"""Quality of predictive probabilities: NLL, expected calibration error, reliability bins,
and AUROC of an uncertainty score for out-of-distribution detection.

All measures work on NumPy arrays in float64 (the inputs are typically float32 outputs
of a network) and return Python floats or NumPy arrays.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import stats as scipy_stats


def _labels_for(name: str, probs: np.ndarray, labels) -> np.ndarray:
  labels = np.asarray(labels)
  if probs.ndim != 2:
    raise ValueError(f"{name}: probabilities must be (examples, classes); got shape "
                     f"{probs.shape}.")
  if labels.shape != probs.shape[:1]:
    raise ValueError(f"{name}: labels must be one integer per example, shape "
                     f"{probs.shape[:1]}; got shape {labels.shape}.")
  if not np.issubdtype(labels.dtype, np.integer):
    raise TypeError(f"{name}: labels must be integers; got dtype {labels.dtype}.")
  if labels.size and (labels.min() < 0 or labels.max() >= probs.shape[1]):
    raise ValueError(f"{name}: labels must lie in [0, {probs.shape[1] - 1}] (one column "
                     f"per class); got values in [{labels.min()}, {labels.max()}].")
  return labels


def negative_log_likelihood(log_probs, labels) -> float:
  r"""Mean negative log-likelihood of the labels.

  .. math::
    \mathrm{NLL} = -\frac1N \sum_{i=1}^N \log p_{i, y_i}

  Args:
    log_probs: ``(N, K)`` log-probabilities :math:`\log p_{ik}` (e.g. ``log_softmax``
      of the logits). Taking logarithms, not probabilities, keeps a confident mistake
      finite where float32 probabilities underflow to 0.
    labels: ``(N,)`` integer labels :math:`y_i`.

  Returns:
    The mean NLL in nats.

  Example:
    >>> import numpy as np
    >>> round(negative_log_likelihood(np.log([[0.5, 0.5], [0.25, 0.75]]), [0, 1]), 4)
    0.4904
  """
  log_probs = np.asarray(log_probs, np.float64)
  labels = _labels_for("negative_log_likelihood", log_probs, labels)
  return float(-np.mean(log_probs[np.arange(len(labels)), labels]))


class ReliabilityBins(NamedTuple):
  """Top-label reliability diagram: per confidence bin, mean confidence and accuracy.

  Attributes:
    edges: the ``num_bins + 1`` bin edges, 0 to 1; bin ``b`` is
      ``(edges[b], edges[b + 1]]`` (the first also holds confidence 0).
    confidence: mean top-label confidence per bin (NaN for an empty bin).
    accuracy: fraction of correct top-label predictions per bin (NaN for an empty bin).
    count: examples per bin.
  """

  edges: np.ndarray
  confidence: np.ndarray
  accuracy: np.ndarray
  count: np.ndarray


def reliability_bins(probs, labels, *, num_bins: int = 15) -> ReliabilityBins:
  r"""Bins the top-label confidence :math:`\max_k p_{ik}` into equal-width bins.

  Guo et al. 2017's bins :math:`I_b = (\tfrac{b-1}{B}, \tfrac{b}{B}]`, with
  :math:`\mathrm{acc}(I_b)` the fraction of examples in :math:`I_b` whose top class is
  the label and :math:`\mathrm{conf}(I_b)` their mean confidence.

  Args:
    probs: ``(N, K)`` predicted class probabilities.
    labels: ``(N,)`` integer labels.
    num_bins: :math:`B`, the number of bins (>= 1).

  Returns:
    A :class:`ReliabilityBins`.

  Example:
    >>> import numpy as np
    >>> bins = reliability_bins(np.array([[0.9, 0.1], [0.8, 0.2]]), [0, 1], num_bins=2)
    >>> bins.count.tolist(), float(bins.accuracy[1]), round(float(bins.confidence[1]), 3)
    ([0, 2], 0.5, 0.85)
  """
  probs = np.asarray(probs, np.float64)
  labels = _labels_for("reliability_bins", probs, labels)
  if isinstance(num_bins, bool) or not isinstance(num_bins, (int, np.integer)):
    raise TypeError(f"reliability_bins: num_bins must be an int; got {num_bins!r}.")
  if num_bins < 1:
    raise ValueError(f"reliability_bins: num_bins must be >= 1; got {num_bins}.")
  confidence = probs.max(axis=1)
  correct = (probs.argmax(axis=1) == labels).astype(np.float64)
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  # (lo, hi]: the index of the first edge >= confidence, minus one; 0 joins the first bin.
  index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, num_bins - 1)
  count = np.bincount(index, minlength=num_bins)
  with np.errstate(invalid="ignore", divide="ignore"):
    mean_conf = np.bincount(index, confidence, minlength=num_bins) / count
    accuracy = np.bincount(index, correct, minlength=num_bins) / count
  return ReliabilityBins(edges, mean_conf, accuracy, count)


def expected_calibration_error(probs, labels, *, num_bins: int = 15) -> float:
  r"""Expected calibration error of the top-label confidence (Guo et al. 2017).

  .. math::
    \mathrm{ECE} = \sum_{b=1}^{B} \frac{|I_b|}{N}\,
                   \bigl|\mathrm{acc}(I_b) - \mathrm{conf}(I_b)\bigr|

  with the bins of :func:`reliability_bins` (empty bins contribute 0).

  Args:
    probs: ``(N, K)`` predicted class probabilities.
    labels: ``(N,)`` integer labels.
    num_bins: :math:`B` (15 as in Guo et al. and Ovadia et al.).

  Returns:
    The ECE, a fraction in [0, 1].

  Example:
    >>> import numpy as np
    >>> probs = np.array([[0.9, 0.1]] * 10)        # 90% confident, 60% right
    >>> round(expected_calibration_error(probs, [0] * 6 + [1] * 4), 6)
    0.3
  """
  bins = reliability_bins(probs, labels, num_bins=num_bins)
  total = bins.count.sum()
  if total == 0:
    raise ValueError("expected_calibration_error: no examples given; pass at least one.")
  filled = bins.count > 0
  gaps = np.abs(bins.accuracy[filled] - bins.confidence[filled])
  return float(np.sum(bins.count[filled] / total * gaps))


def auroc(scores, is_positive) -> float:
  r"""Area under the ROC curve of ``scores`` separating positives from negatives.

  The probability that a random positive scores higher than a random negative, ties
  counting one half (the Mann-Whitney statistic, with mid-ranks for ties):

  .. math::
    \mathrm{AUROC} = \frac{R_+ - n_+(n_+ + 1)/2}{n_+\, n_-}

  where :math:`R_+` is the sum of the positives' ranks among all scores.

  Args:
    scores: ``(N,)`` scores, higher meaning "more likely positive" (e.g. predictive
      entropy, positive = out of distribution).
    is_positive: ``(N,)`` booleans (or 0/1).

  Returns:
    The AUROC in [0, 1]; 0.5 is chance.

  Example:
    >>> auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    0.75
  """
  scores = np.asarray(scores, np.float64).reshape(-1)
  positive = np.asarray(is_positive).reshape(-1)
  if positive.shape != scores.shape:
    raise ValueError(f"auroc: is_positive must have one entry per score, shape "
                     f"{scores.shape}; got shape {positive.shape}.")
  if not np.isin(positive, (0, 1)).all():
    raise ValueError("auroc: is_positive must hold booleans or 0/1; got values "
                     f"{np.unique(positive)[:5].tolist()}.")
  positive = positive.astype(bool)
  if not np.isfinite(scores).all():
    raise ValueError("auroc: scores must be finite; got "
                     f"{int((~np.isfinite(scores)).sum())} non-finite values.")
  n_pos, n_neg = int(positive.sum()), int((~positive).sum())
  if n_pos == 0 or n_neg == 0:
    raise ValueError(f"auroc: needs positives and negatives; got {n_pos} positive and "
                     f"{n_neg} negative examples.")
  ranks = scipy_stats.rankdata(scores)  # mid-ranks for ties
  return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
