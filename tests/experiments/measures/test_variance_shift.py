"""Dropout's variance shift: closed forms against NumPy float64 Monte Carlo and sample maths."""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments.measures import variance_shift
from experiments.measures.variance_shift import (dropout_variance, measured_shift_ratio,
                                                 shift_ratio)


@settings(max_examples=25, deadline=None)
@given(keep=st.floats(0.2, 1.0), mean=st.floats(-3.0, 3.0), var=st.floats(0.1, 4.0))
def test_dropout_variance_matches_a_float64_monte_carlo(keep, mean, var):
  rng = np.random.default_rng(0)
  n = 400_000
  x = mean + np.sqrt(var) * rng.standard_normal(n)
  y = x * (rng.random(n) < keep) / keep
  expected = np.var(y)
  assert dropout_variance(keep, mean, var) == pytest.approx(expected, rel=0.03)


def test_shift_ratio_closed_form_values():
  # c = 0: Delta = p; c^2 = v, p = 1/2: Delta = v / (4v - v) = 1/3; p = 1: no shift.
  np.testing.assert_allclose(shift_ratio([0.3, 0.9], 0.0, 2.0), [0.3, 0.9])
  np.testing.assert_allclose(shift_ratio(0.5, 2.0, 4.0), 1 / 3)
  np.testing.assert_allclose(shift_ratio(1.0, 5.0, 0.7), 1.0)
  np.testing.assert_allclose(shift_ratio(0.5, 0.0, 1.0, batch_size=11), 0.5 * 11 / 10)


def test_shift_ratio_of_zero_variance_and_zero_mean_is_nan():
  assert np.isnan(shift_ratio(0.5, 0.0, 0.0))
  assert shift_ratio(0.5, 1.0, 0.0) == 0.0   # a constant input still gains variance


@pytest.mark.parametrize("call, match", [
    (lambda: dropout_variance(0.0, 0.0, 1.0), "keep_prob must be in \\(0, 1\\]"),
    (lambda: shift_ratio(1.5, 0.0, 1.0), "keep_prob must be in \\(0, 1\\]"),
    (lambda: dropout_variance(0.5, 0.0, -1.0), "var must be >= 0"),
    (lambda: shift_ratio(0.5, 0.0, 1.0, batch_size=1), "batch_size must be an int >= 2"),
    (lambda: shift_ratio(0.5, 0.0, 1.0, batch_size=True), "batch_size must be an int >= 2"),
    (lambda: measured_shift_ratio(jax.random.key(0), jnp.ones(4), rate=1.0),
     "rate must be in \\[0, 1\\)"),
])
def test_bad_arguments_raise_value_errors_naming_the_function(call, match):
  with pytest.raises(ValueError, match=match) as info:
    call()
  assert "experiments.measures.variance_shift." in str(info.value)
  assert "got" in str(info.value)


def test_measured_ratio_equals_the_float64_sample_ratio_of_the_same_mask():
  x = jax.random.normal(jax.random.key(3), (5000, 3)) * jnp.array([1.0, 2.0, 0.5]) + 1.0
  key = jax.random.key(4)
  measured = np.asarray(measured_shift_ratio(key, x, rate=0.3, axis=0))
  y = np.asarray(jaxnorm_dropout(key, x, 0.3), np.float64)
  x64 = np.asarray(x, np.float64)
  np.testing.assert_allclose(measured, x64.var(0) / y.var(0), rtol=1e-4)


def jaxnorm_dropout(key, x, rate):
  from jaxnorm import functional as F  # pylint: disable=import-outside-toplevel
  return F.dropout(key, x, rate=rate)


def test_measured_ratio_approaches_delta_on_large_samples():
  x = jax.random.normal(jax.random.key(0), (200_000,)) * np.sqrt(0.5) + 2.0
  for rate in (0.1, 0.5):
    r = float(measured_shift_ratio(jax.random.key(1), x, rate=rate))
    assert r == pytest.approx(float(shift_ratio(1 - rate, 2.0, 0.5)), rel=0.02)


def test_measured_ratio_of_a_constant_feature_is_nan_when_nothing_varies():
  r = measured_shift_ratio(jax.random.key(0), jnp.zeros((64,)), rate=0.5)
  assert np.isnan(float(r))


def test_docstring_examples_run():
  result = doctest.testmod(variance_shift, optionflags=doctest.NORMALIZE_WHITESPACE)
  assert result.attempted > 0 and result.failed == 0
