"""Percentile tracking and drift, against NumPy in float64 and hand-computed answers."""

from __future__ import annotations

import doctest

import chex
import hypothesis
import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import strategies as st

from experiments.measures import percentiles
from experiments.measures.percentiles import (FIG1_PERCENTILES, percentile_drift,
                                              unit_percentiles)

HYPOTHESIS = hypothesis.settings(max_examples=25, deadline=None, database=None,
                                 derandomize=True)


class UnitPercentilesTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_numpy_float64(self):
    h = np.random.default_rng(0).normal(size=(37, 5)) * [1.0, 3.0, 0.1, 10.0, 1.0]
    got = self.variant(unit_percentiles)(h.astype(np.float32))
    want = np.percentile(h, FIG1_PERCENTILES, axis=0)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


@HYPOTHESIS
@hypothesis.given(h=hnp.arrays(np.float32, st.sampled_from([(1, 3), (7, 2), (40, 4)]),
                               elements=st.floats(-100, 100, width=32)),
                  q=st.lists(st.floats(0, 100), min_size=3, max_size=3))
def test_unit_percentiles_property_matches_numpy(h, q):
  # Few distinct shapes: each new shape compiles the sort again.
  got = np.asarray(unit_percentiles(h, q))
  want = np.percentile(h.astype(np.float64), q, axis=0)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)


def test_unit_percentiles_rejects_non_2d():
  with pytest.raises(ValueError, match=r"unit_percentiles: h must be \(examples, units\); "
                     r"got shape \(3,\)"):
    unit_percentiles(np.zeros(3, np.float32))


def test_drift_hand_computed():
  # Two seeds, four evaluations, two percentiles, one unit.
  q = np.zeros((2, 4, 2, 1))
  q[0, :, 0, 0] = [5.0, 1.0, 1.5, 0.0]   # seed 0, low percentile: drifts by 1.0 after e=1
  q[0, :, 1, 0] = [9.0, 2.0, 2.0, 4.5]   # high percentile: by 2.5
  q[1, :, :, 0] = 7.0                     # seed 1: constant
  np.testing.assert_allclose(percentile_drift(q, start=1), [[2.5], [0.0]])
  # From the start the early jump counts.
  np.testing.assert_allclose(percentile_drift(q, start=0)[0], [7.0])


@HYPOTHESIS
@hypothesis.given(q=hnp.arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(1, 3),
                                                     st.integers(1, 4)),
                               elements=st.floats(-10, 10)), data=st.data())
def test_drift_equals_a_plain_loop(q, data):
  start = data.draw(st.integers(0, q.shape[0] - 1))
  want = np.zeros(q.shape[-1])
  for u in range(q.shape[-1]):
    for p in range(q.shape[1]):
      for e in range(start, q.shape[0]):
        want[u] = max(want[u], abs(q[e, p, u] - q[start, p, u]))
  np.testing.assert_allclose(percentile_drift(q, start), want)


def test_drift_rejects_bad_start_and_shape():
  with pytest.raises(ValueError, match=r"start must be an evaluation index in \[0, 2\]; got 3"):
    percentile_drift(np.zeros((3, 2, 1)), start=3)
  with pytest.raises(ValueError, match="percentile_drift: q must be"):
    percentile_drift(np.zeros((3, 2)), start=0)


def test_docstring_examples_run():
  assert doctest.testmod(percentiles).failed == 0
