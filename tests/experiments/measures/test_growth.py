"""The growth-factor fit and the safe log-norm, on inputs whose answer is known."""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from experiments.measures import growth
from experiments.measures.growth import fit_growth_factor, log_squared_norm


@settings(max_examples=30, deadline=None)
@given(factor=st.floats(0.05, 3.0), scale=st.floats(1e-20, 1e20), layers=st.integers(3, 60))
def test_exact_geometric_norms_give_the_factor(factor, scale, layers):
  # v_l = C * factor**(L - l), l = 1..L, built in float64 logs.
  log_values = np.log(scale) + np.arange(layers, 0, -1) * np.log(factor)
  fit = fit_growth_factor(log_values)
  assert fit.factor == pytest.approx(factor, rel=1e-9)
  assert fit.layers == layers
  assert fit.stderr == pytest.approx(0.0, abs=1e-7)


def test_noisy_norms_match_scipy_linregress_and_recover_the_factor():
  rng = np.random.default_rng(0)
  layers, factor = 40, 1.4669
  log_values = 3.0 + np.arange(layers, 0, -1) * np.log(factor) + rng.normal(0, 0.3, layers)
  fit = fit_growth_factor(log_values)
  reference = scipy_stats.linregress(np.arange(layers), log_values)
  assert fit.log_factor == pytest.approx(-reference.slope, rel=1e-10)
  assert fit.stderr == pytest.approx(reference.stderr, rel=1e-10)
  # 0.3 noise over 40 layers: stderr of the log-slope ~ 0.3 / sqrt(40**3 / 12) ~ 0.004.
  assert abs(np.log(fit.factor) - np.log(factor)) < 4 * reference.stderr
  assert fit.factor == pytest.approx(factor, rel=0.02)


def test_random_walk_of_layer_factors_is_unbiased_over_many_networks():
  """Norms that are products of random per-layer factors (as in a random network):
  the fits scatter around the mean log-factor."""
  rng = np.random.default_rng(1)
  layers, log_factor = 40, np.log(1.2)
  steps = rng.normal(log_factor, 0.05, size=(500, layers))
  log_values = np.cumsum(steps[:, ::-1], axis=1)[:, ::-1]  # grows towards layer 0
  estimates = np.array([fit_growth_factor(v).log_factor for v in log_values])
  spread = estimates.std(ddof=1)
  assert abs(estimates.mean() - log_factor) < 4 * spread / np.sqrt(len(estimates))
  assert spread < 0.02


def test_window_and_non_finite_values():
  log_values = np.arange(10, 0, -1) * np.log(2.0)
  log_values[:3] = 99.0          # a transient outside the window
  log_values[6] = -np.inf        # an underflowed norm inside it
  fit = fit_growth_factor(log_values, start=3, stop=9)
  assert fit.factor == pytest.approx(2.0, rel=1e-12)
  assert fit.layers == 5
  too_few = fit_growth_factor(np.array([1.0, -np.inf, np.nan, 0.5]))
  assert np.isnan(too_few.factor) and too_few.layers == 2


def test_vanishing_factor_below_one():
  assert fit_growth_factor(np.arange(20, 0, -1) * np.log(0.05)).factor == pytest.approx(0.05)


@pytest.mark.parametrize("kwargs, match", [
    (dict(start=5, stop=3), "start < stop"),
    (dict(start=-1), "start < stop"),
    (dict(stop=11), "<= 10"),
])
def test_bad_window_is_rejected(kwargs, match):
  with pytest.raises(ValueError, match=match):
    fit_growth_factor(np.zeros(10), **kwargs)


def test_two_dimensional_input_is_rejected():
  with pytest.raises(ValueError, match="fit_growth_factor: log_values must be 1-D"):
    fit_growth_factor(np.zeros((2, 5)))


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("scale", [1e-30, 1e-3, 1.0, 1e25])
def test_log_squared_norm_matches_float64(scale, jit):
  fn = jax.jit(log_squared_norm) if jit else log_squared_norm
  x = (np.random.default_rng(2).normal(size=(64, 32)) * scale).astype(np.float32)
  expected = np.log(np.sum(np.square(x.astype(np.float64))))
  assert float(fn(jnp.asarray(x))) == pytest.approx(expected, abs=1e-4)


def test_log_squared_norm_under_jit_and_of_zeros():
  f = jax.jit(log_squared_norm)
  assert float(f(jnp.zeros((3, 3)))) == -np.inf
  x = np.random.default_rng(3).normal(size=(16,)) * 1e-35  # squares underflow in float32
  expected = np.log(np.sum(np.square(x.astype(np.float32).astype(np.float64))))
  assert float(f(jnp.asarray(x, jnp.float32))) == pytest.approx(expected, abs=1e-4)


def test_docstring_examples_run():
  result = doctest.testmod(growth, optionflags=doctest.NORMALIZE_WHITESPACE)
  assert result.attempted > 0 and result.failed == 0
