"""Steps to reach an accuracy, and geometric summaries of ratios, on known answers."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from experiments.measures import speed
from experiments.measures.speed import geometric_summary, steps_to_reach


def test_steps_to_reach_first_crossing_and_never():
  steps = [0, 50, 100, 150, 200]
  assert steps_to_reach([0.1, 0.6, 0.4, 0.7, 0.9], steps, 0.6) == 50.0
  assert steps_to_reach([0.1, 0.6, 0.4, 0.7, 0.9], steps, 0.65) == 150.0
  assert steps_to_reach([0.1, np.nan, 0.4, 0.5, 0.5], steps, 0.6) == math.inf
  assert steps_to_reach([0.7, 0.1, 0.1, 0.1, 0.1], steps, 0.6) == 0.0


def test_steps_to_reach_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match="curve and steps must be 1-D of one length"):
    steps_to_reach([0.1, 0.2], [0, 1, 2], 0.5)


def test_geometric_summary_matches_hand_computed_interval():
  ratios = np.array([2.0, 3.0, 5.0, 4.0, 8.0])
  logs = np.log(ratios)
  half = scipy_stats.t.ppf(0.975, 4) * logs.std(ddof=1) / math.sqrt(5)
  s = geometric_summary(ratios)
  assert s.mean == pytest.approx(math.exp(logs.mean()), rel=1e-12)
  assert s.ci_low == pytest.approx(math.exp(logs.mean() - half), rel=1e-12)
  assert s.ci_high == pytest.approx(math.exp(logs.mean() + half), rel=1e-12)
  assert s.std == pytest.approx(logs.std(ddof=1), rel=1e-12)
  assert s.ci_low < s.mean < s.ci_high


def test_geometric_summary_is_symmetric_in_the_direction_of_the_ratio():
  s, inverse = geometric_summary([2.0, 4.0, 3.0]), geometric_summary([0.5, 0.25, 1 / 3])
  assert s.mean * inverse.mean == pytest.approx(1.0)
  assert s.ci_low * inverse.ci_high == pytest.approx(1.0)


def test_geometric_summary_zero_and_inf_have_no_interval():
  zero = geometric_summary([2.0, 0.0, 3.0])
  assert zero.mean == 0.0 and math.isnan(zero.ci_low) and math.isnan(zero.ci_high)
  assert geometric_summary([2.0, math.inf]).mean == math.inf
  assert math.isnan(geometric_summary([0.0, math.inf]).mean)


def test_geometric_summary_rejects_negative_nan_and_empty():
  with pytest.raises(ValueError, match="ratios must be >= 0"):
    geometric_summary([1.0, -2.0])
  with pytest.raises(ValueError, match="ratios must be >= 0"):
    geometric_summary([1.0, float("nan")])
  with pytest.raises(ValueError, match="ratios is empty"):
    geometric_summary([])


def test_docstring_examples_run():
  assert doctest.testmod(speed).failed == 0
