"""Mean absolute correlation, against NumPy's corrcoef in float64."""

from __future__ import annotations

import doctest

import chex
import hypothesis
import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import strategies as st

from experiments.measures import correlation
from experiments.measures.correlation import mean_abs_correlation

HYPOTHESIS = hypothesis.settings(max_examples=25, deadline=None, database=None,
                                 derandomize=True)


def _reference(h, group_size=None):
  corr = np.corrcoef(np.asarray(h, np.float64), rowvar=False)
  channels = corr.shape[0]
  values = [abs(corr[j, k]) for j in range(channels) for k in range(j + 1, channels)
            if group_size is None or j // group_size == k // group_size]
  return float(np.mean(values))


class MeanAbsCorrelationTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_numpy_corrcoef(self):
    rng = np.random.default_rng(0)
    h = rng.normal(size=(200, 8)) @ rng.normal(size=(8, 8)) + 5.0
    for group_size in (None, 2, 4):
      got = self.variant(lambda h, g=group_size: mean_abs_correlation(h, group_size=g))(
          h.astype(np.float32))
      np.testing.assert_allclose(float(got), _reference(h, group_size), rtol=1e-4)


def test_known_answers():
  x = np.random.default_rng(1).normal(size=(1000, 1))
  # Perfectly (anti-)correlated features: 1; whitened features: ~0.
  assert float(mean_abs_correlation(np.hstack([x, -2 * x, 3 * x + 1]))) == pytest.approx(
      1.0, abs=1e-5)
  white = np.linalg.qr(np.random.default_rng(2).normal(size=(1000, 4)))[0]
  white -= white.mean(0)
  assert float(mean_abs_correlation(white)) < 0.1


def test_constant_features_are_left_out():
  x = np.random.default_rng(3).normal(size=(100, 1))
  h = np.hstack([x, np.ones_like(x), 2 * x])
  assert float(mean_abs_correlation(h)) == pytest.approx(1.0, abs=1e-5)
  assert np.isnan(float(mean_abs_correlation(np.ones((10, 3)))))


@HYPOTHESIS
@hypothesis.given(h=hnp.arrays(np.float64, st.sampled_from([(30, 4), (50, 6)]),
                               elements=st.floats(-10, 10)))
def test_property_matches_numpy(h):
  hypothesis.assume(np.all(np.std(h, axis=0) > 1e-3))
  got = float(mean_abs_correlation(h.astype(np.float32), group_size=2))
  np.testing.assert_allclose(got, _reference(h, 2), rtol=1e-3, atol=1e-4)


def test_bad_input_is_named():
  with pytest.raises(ValueError, match="mean_abs_correlation: h must be 2-D"):
    mean_abs_correlation(np.ones((2, 3, 4)))
  with pytest.raises(ValueError, match="group_size must be >= 2 and divide the 6"):
    mean_abs_correlation(np.ones((5, 6)), group_size=4)


def test_docstring_examples_run():
  assert doctest.testmod(correlation).failed == 0
