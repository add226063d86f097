"""The tolerated learning-rate range and the divergence test, on known answers."""

from __future__ import annotations

import doctest
import math

import hypothesis
import numpy as np
import pytest
from hypothesis import strategies as st

from experiments.measures import lr_range
from experiments.measures.lr_range import diverged, largest_lr_within

LRS = [0.001, 0.01, 0.1, 1.0, 10.0]


def test_largest_lr_within_tolerance():
  acc = [0.50, 0.80, 0.90, 0.885, 0.10]
  assert largest_lr_within(LRS, acc, tolerance=0.02) == 1.0
  assert largest_lr_within(LRS, acc, tolerance=0.01) == 0.1
  assert largest_lr_within(LRS, acc, tolerance=0.0) == 0.1
  assert largest_lr_within(LRS, acc, tolerance=1.0) == 10.0


def test_largest_lr_within_takes_the_largest_even_past_a_dip():
  assert largest_lr_within(LRS, [0.9, 0.5, 0.9, 0.1, 0.89], tolerance=0.02) == 10.0


def test_largest_lr_within_given_best_and_nan():
  acc = [0.85, np.nan, 0.87, 0.80, np.nan]
  assert largest_lr_within(LRS, acc, tolerance=0.02) == 0.1
  assert largest_lr_within(LRS, acc, tolerance=0.02, best=0.95) != largest_lr_within(
      LRS, acc, tolerance=0.02)
  assert math.isnan(largest_lr_within(LRS, acc, tolerance=0.02, best=0.95))
  assert math.isnan(largest_lr_within(LRS, [np.nan] * 5, tolerance=0.02))


@hypothesis.settings(max_examples=30, deadline=None, database=None, derandomize=True)
@hypothesis.given(acc=st.lists(st.floats(0, 1), min_size=5, max_size=5),
                  tolerance=st.floats(0, 0.5))
def test_largest_lr_within_equals_a_plain_loop(acc, tolerance):
  best = max(acc)
  want = max(lr for lr, a in zip(LRS, acc) if a >= best - tolerance)
  assert largest_lr_within(LRS, acc, tolerance=tolerance) == want


def test_largest_lr_within_rejects_bad_input():
  with pytest.raises(ValueError, match="must be 1-D of one length"):
    largest_lr_within(LRS, [0.5, 0.6], tolerance=0.02)
  with pytest.raises(ValueError, match=r"tolerance must be >= 0; got -0.1"):
    largest_lr_within(LRS, [0.5] * 5, tolerance=-0.1)


def test_diverged():
  got = diverged(np.array([[0, 0, 2], [0, 0, 0]]), np.full((2, 3), 2.3),
                 np.array([[0.5, 2.4, 0.5], [np.inf, 2.3, 0.1]]))
  np.testing.assert_array_equal(got, [[False, True, True], [True, False, False]])


def test_docstring_examples_run():
  assert doctest.testmod(lr_range).failed == 0
