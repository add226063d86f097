"""NLL, ECE, reliability bins and AUROC on inputs with known answers, and AUROC against
scikit-learn's roc_auc_score as an independent reference."""

from __future__ import annotations

import doctest

import hypothesis
import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import strategies as st
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_auc_score

from experiments.measures import calibration
from experiments.measures.calibration import (auroc, expected_calibration_error,
                                              negative_log_likelihood, reliability_bins)

HYPOTHESIS = hypothesis.settings(max_examples=30, deadline=None, database=None,
                                 derandomize=True)


def _dirichlet_predictor(n, k, seed, concentration=0.5):
  """Random probability vectors and labels drawn from them: calibrated by construction."""
  rng = np.random.default_rng(seed)
  probs = rng.dirichlet(np.full(k, concentration), size=n)
  labels = np.array([rng.choice(k, p=p) for p in probs])
  return probs, labels


# --------------------------------------------------------------------------- NLL


def test_nll_matches_hand_computed_float64():
  probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [1 / 3, 1 / 3, 1 / 3]])
  labels = np.array([0, 1, 2])
  want = -(np.log(0.7) + np.log(0.1) + np.log(1 / 3)) / 3
  assert negative_log_likelihood(np.log(probs), labels) == pytest.approx(want, rel=1e-12)


def test_nll_stays_finite_for_a_confident_mistake_given_log_probs():
  logits = np.array([[200.0, 0.0]], np.float32)  # float32 softmax of label 1 underflows
  log_probs = logits - np.logaddexp(logits[:, :1], logits[:, 1:])
  assert negative_log_likelihood(log_probs, [1]) == pytest.approx(200.0)


def test_nll_rejects_bad_labels():
  with pytest.raises(ValueError, match=r"negative_log_likelihood: labels must lie in \[0, 1\]"):
    negative_log_likelihood(np.zeros((2, 2)), [0, 2])
  with pytest.raises(TypeError, match="negative_log_likelihood: labels must be integers"):
    negative_log_likelihood(np.zeros((2, 2)), [0.0, 1.0])
  with pytest.raises(ValueError, match=r"one integer per example, shape \(2,\)"):
    negative_log_likelihood(np.zeros((2, 2)), [0, 1, 1])


# --------------------------------------------------------------------------- ECE


def test_ece_of_a_calibrated_predictor_is_near_zero():
  probs, labels = _dirichlet_predictor(20000, 5, seed=0)
  assert expected_calibration_error(probs, labels) < 0.02


def test_ece_of_an_overconfident_predictor_is_the_gap():
  """Every prediction 90% confident, 60% right: ECE = 0.9 - 0.6."""
  probs = np.tile([[0.9, 0.05, 0.05]], (1000, 1))
  labels = np.where(np.arange(1000) < 600, 0, 1)
  assert expected_calibration_error(probs, labels) == pytest.approx(0.3, abs=1e-12)


def test_ece_sharpened_calibrated_predictor_is_worse():
  probs, labels = _dirichlet_predictor(5000, 4, seed=1)
  sharp = probs ** 3 / np.sum(probs ** 3, axis=1, keepdims=True)
  assert expected_calibration_error(sharp, labels) > expected_calibration_error(
      probs, labels) + 0.05


def test_ece_two_bins_by_hand():
  # Confidences 0.6 (right), 0.7 (wrong) in bin (0.5, 1]; 0.4 (right) in (0, 0.5].
  probs = np.array([[0.6, 0.2, 0.2], [0.7, 0.3, 0.0], [0.4, 0.3, 0.3]])
  labels = np.array([0, 1, 0])
  want = 2 / 3 * abs(0.5 - 0.65) + 1 / 3 * abs(1.0 - 0.4)
  assert expected_calibration_error(probs, labels, num_bins=2) == pytest.approx(want)


@HYPOTHESIS
@hypothesis.given(seed=st.integers(0, 10_000), n=st.integers(20, 300),
                  k=st.integers(2, 6), num_bins=st.integers(1, 20))
def test_reliability_bins_match_sklearn_calibration_curve(seed, n, k, num_bins):
  """Top-label bins equal sklearn's binary calibration curve of (correct, confidence)."""
  probs, labels = _dirichlet_predictor(n, k, seed)
  bins = reliability_bins(probs, labels, num_bins=num_bins)
  confidence, correct = probs.max(1), probs.argmax(1) == labels
  hypothesis.assume(not np.isin(confidence, bins.edges).any())  # edge conventions differ
  frac_pos, mean_pred = calibration_curve(correct, confidence, n_bins=num_bins,
                                          strategy="uniform")
  filled = bins.count > 0
  np.testing.assert_allclose(bins.accuracy[filled], frac_pos, rtol=1e-12)
  np.testing.assert_allclose(bins.confidence[filled], mean_pred, rtol=1e-12)
  assert bins.count.sum() == n and np.isnan(bins.accuracy[~filled]).all()
  ece = expected_calibration_error(probs, labels, num_bins=num_bins)
  want = np.sum(bins.count[filled] / n * np.abs(frac_pos - mean_pred))
  assert ece == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_bins_are_closed_on_the_right():
  probs = np.array([[0.5, 0.5], [1.0, 0.0], [0.75, 0.25]])
  bins = reliability_bins(probs, np.array([0, 0, 0]), num_bins=4)
  # 0.5 -> (0.25, 0.5]; 0.75 -> (0.5, 0.75]; 1.0 -> (0.75, 1].
  assert bins.count.tolist() == [0, 1, 1, 1]


def test_bins_reject_bad_num_bins():
  with pytest.raises(ValueError, match="reliability_bins: num_bins must be >= 1; got 0"):
    reliability_bins(np.full((2, 2), 0.5), [0, 1], num_bins=0)
  with pytest.raises(TypeError, match="reliability_bins: num_bins must be an int"):
    expected_calibration_error(np.full((2, 2), 0.5), [0, 1], num_bins=2.5)
  with pytest.raises(ValueError, match=r"must be \(examples, classes\)"):
    expected_calibration_error(np.full((2,), 0.5), [0, 1])


# --------------------------------------------------------------------------- AUROC


@HYPOTHESIS
@hypothesis.given(
    scores=hnp.arrays(np.int64, st.integers(2, 60), elements=st.integers(0, 5)),
    data=st.data())
def test_auroc_matches_sklearn_with_ties(scores, data):
  positive = data.draw(hnp.arrays(np.bool_, scores.shape))
  hypothesis.assume(0 < positive.sum() < positive.size)
  assert auroc(scores, positive) == pytest.approx(roc_auc_score(positive, scores),
                                                  abs=1e-12)


def test_auroc_matches_sklearn_on_continuous_scores():
  rng = np.random.default_rng(0)
  positive = rng.random(500) < 0.4
  scores = rng.normal(size=500) + positive
  assert auroc(scores, positive) == pytest.approx(roc_auc_score(positive, scores),
                                                  abs=1e-12)


def test_auroc_known_answers():
  assert auroc([1, 2, 3, 4], [0, 0, 1, 1]) == 1.0
  assert auroc([1, 2, 3, 4], [1, 1, 0, 0]) == 0.0
  assert auroc([7, 7, 7, 7], [0, 1, 0, 1]) == 0.5


def test_auroc_rejects_bad_input():
  with pytest.raises(ValueError, match="auroc: needs positives and negatives; got 0 positive"):
    auroc([0.1, 0.2], [0, 0])
  with pytest.raises(ValueError, match="auroc: scores must be finite"):
    auroc([0.1, np.nan], [0, 1])
  with pytest.raises(ValueError, match="auroc: is_positive must have one entry per score"):
    auroc([0.1, 0.2], [0, 1, 1])
  with pytest.raises(ValueError, match="auroc: is_positive must hold booleans or 0/1"):
    auroc([0.1, 0.2], [0, 2])


def test_docstring_examples():
  assert doctest.testmod(calibration).failed == 0
