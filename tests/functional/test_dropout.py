"""Tests for jaxnorm.functional.dropout.

References are closed-form statistics (binomial keep counts), NumPy, and
``flax.linen.Dropout`` given the same key; never jaxnorm against itself.
"""

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxnorm.functional import dropout

N_LARGE = 200_000


def _keys():
  """A typed key and a raw (legacy uint32) key for the same seed."""
  return {"typed": jax.random.key(0), "raw": jax.random.PRNGKey(0)}


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5, 0.9])
def test_keep_fraction_within_four_sigma(rate):
  x = jnp.ones((N_LARGE,), jnp.float32)
  y = np.asarray(dropout(jax.random.key(1), x, rate=rate))
  keep = 1.0 - rate
  sigma = math.sqrt(keep * rate / N_LARGE)
  frac = np.mean(y != 0)
  assert abs(frac - keep) < 4 * sigma, (frac, keep, sigma)


@pytest.mark.parametrize("rate", [0.2, 0.5, 0.8])
def test_mean_preserved(rate):
  # y_i = b_i / (1 - p) with b_i ~ Bernoulli(1 - p): E[y] = 1,
  # std of the sample mean = sqrt(p (1 - p) / n) / (1 - p).
  x = jnp.ones((N_LARGE,), jnp.float32)
  y = np.asarray(dropout(jax.random.key(2), x, rate=rate), np.float64)
  sigma = math.sqrt(rate * (1 - rate) / N_LARGE) / (1 - rate)
  assert abs(y.mean() - 1.0) < 4 * sigma, (y.mean(), sigma)


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.75])
def test_kept_values_are_rescaled(rate):
  x = jax.random.normal(jax.random.key(3), (64, 33), jnp.float32)
  y = np.asarray(dropout(jax.random.key(4), x, rate=rate))
  x64 = np.asarray(x, np.float64)
  kept = y != 0
  assert 0 < kept.sum() < kept.size
  np.testing.assert_allclose(y[kept], x64[kept] / (1 - rate), rtol=1e-6)
  np.testing.assert_array_equal(y[~kept], 0.0)


@settings(max_examples=15, deadline=None)
@given(rate=st.floats(0.05, 0.95), seed=st.integers(0, 2**31 - 1))
def test_output_is_zero_or_rescaled_input_property(rate, seed):
  x = jax.random.uniform(jax.random.key(seed), (16, 8), jnp.float32, 0.5, 2.0)
  y = np.asarray(dropout(jax.random.key(seed + 1), x, rate=rate), np.float64)
  expected = np.asarray(x, np.float64) / (1 - rate)
  ok = (y == 0) | np.isclose(y, expected, rtol=1e-6, atol=0)
  assert ok.all()


def test_rate_zero_returns_x_exactly():
  x = jax.random.normal(jax.random.key(5), (7, 9))
  y = dropout(jax.random.key(6), x, rate=0.0)
  np.testing.assert_array_equal(np.asarray(y), np.asarray(x))
  assert y.dtype == x.dtype


def test_rate_zero_traced_returns_x_exactly():
  x = jax.random.normal(jax.random.key(5), (7, 9))
  y = jax.jit(lambda r: dropout(jax.random.key(6), x, rate=r))(0.0)
  np.testing.assert_array_equal(np.asarray(y), np.asarray(x))


def test_rate_one_python_float_zeros_and_zero_finite_grad():
  x = jax.random.normal(jax.random.key(8), (5, 6))
  y = dropout(jax.random.key(9), x, rate=1.0)
  np.testing.assert_array_equal(np.asarray(y), np.zeros((5, 6)))
  g = jax.grad(lambda x: jnp.sum(dropout(jax.random.key(9), x, rate=1.0) * 3.0))(x)
  g = np.asarray(g)
  assert np.all(np.isfinite(g))
  np.testing.assert_array_equal(g, np.zeros((5, 6)))


def test_rate_one_traced_zeros_and_zero_finite_grad():
  x = jax.random.normal(jax.random.key(8), (5, 6))
  key = jax.random.key(9)

  @jax.jit
  def f(x, rate):
    return dropout(key, x, rate=rate)

  np.testing.assert_array_equal(np.asarray(f(x, 1.0)), np.zeros((5, 6)))
  g = jax.jit(jax.grad(lambda x, r: jnp.sum(f(x, r) * 3.0)))(x, 1.0)
  g = np.asarray(g)
  assert np.all(np.isfinite(g))
  np.testing.assert_array_equal(g, np.zeros((5, 6)))


def test_grad_wrt_rate_traced():
  x = jax.random.normal(jax.random.key(10), (32, 8))
  key = jax.random.key(11)
  grad_rate = jax.jit(jax.grad(lambda r: jnp.sum(dropout(key, x, rate=r))))
  g1 = grad_rate(1.0)
  assert np.isfinite(float(g1))
  # Inside (0, 1): d/dp sum(b x / (1 - p)) = sum(b x) / (1 - p)^2, b from flax's mask.
  rate = 0.4
  y_flax = np.asarray(nn.Dropout(rate).apply({}, x, deterministic=False, rng=key))
  kept = y_flax != 0
  expected = np.sum(np.asarray(x, np.float64)[kept]) / (1 - rate) ** 2
  np.testing.assert_allclose(float(grad_rate(rate)), expected, rtol=1e-4, atol=1e-4)


class SameKeySameMaskTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_same_key_same_mask_as_flax_bernoulli_draw(self):
    x = jax.random.normal(jax.random.key(12), (40, 30))
    key = jax.random.key(13)
    fn = self.variant(lambda key, x: dropout(key, x, rate=0.3))
    y1 = np.asarray(fn(key, x))
    y2 = np.asarray(fn(key, x))
    np.testing.assert_array_equal(y1, y2)
    # The mask is a function of the key only: it is flax's Bernoulli draw.
    expected_keep = np.asarray(jax.random.bernoulli(key, 0.7, (40, 30)))
    np.testing.assert_array_equal(y1 != 0, expected_keep)


def test_same_key_same_mask_with_and_without_jit():
  x = jax.random.normal(jax.random.key(14), (50, 20))
  key = jax.random.key(15)
  eager = np.asarray(dropout(key, x, rate=0.5))
  jitted = np.asarray(jax.jit(lambda k, x: dropout(k, x, rate=0.5))(key, x))
  np.testing.assert_array_equal(eager != 0, jitted != 0)
  np.testing.assert_allclose(eager, jitted, rtol=1e-6)


def test_different_keys_different_masks():
  x = jnp.ones((64, 64))
  masks = [np.asarray(dropout(jax.random.key(s), x, rate=0.5)) != 0 for s in range(4)]
  for i in range(4):
    for j in range(i + 1, 4):
      # Independent masks agree on about half the positions, never all.
      agree = np.mean(masks[i] == masks[j])
      assert 0.4 < agree < 0.6, (i, j, agree)


def test_traced_rate_one_compilation_many_values():
  traces = []
  key = jax.random.key(16)
  x = jnp.ones((100_000,), jnp.float32)

  @jax.jit
  def f(rate):
    traces.append(1)  # Python side effect: runs once per trace
    return jnp.mean(dropout(key, x, rate=rate) != 0)

  n = x.size
  for rate in [0.1, 0.25, 0.5, 0.75, 0.9]:
    frac = float(f(rate))
    sigma = math.sqrt(rate * (1 - rate) / n)
    assert abs(frac - (1 - rate)) < 4 * sigma, (rate, frac)
  assert len(traces) == 1


@pytest.mark.parametrize("rate", [0.2, 0.6])
def test_traced_rate_matches_static_rate(rate):
  x = jax.random.normal(jax.random.key(17), (30, 40))
  key = jax.random.key(18)
  y_traced = np.asarray(jax.jit(lambda r: dropout(key, x, rate=r))(rate))
  y_flax = np.asarray(nn.Dropout(rate).apply({}, x, deterministic=False, rng=key))
  np.testing.assert_array_equal(y_traced != 0, y_flax != 0)
  np.testing.assert_allclose(y_traced, y_flax, rtol=1e-6)


def test_broadcast_dims_drops_whole_channels():
  n, h, w, c = 8, 5, 6, 16
  x = jax.random.uniform(jax.random.key(19), (n, h, w, c), jnp.float32, 0.5, 1.5)
  y = np.asarray(dropout(jax.random.key(20), x, rate=0.5, broadcast_dims=(1, 2)))
  x64 = np.asarray(x, np.float64)
  zero = y == 0
  # Each (example, channel) plane is dropped entirely or kept entirely.
  per_plane = zero.reshape(n, h * w, c)
  assert np.all(per_plane.all(axis=1) | (~per_plane).all(axis=1))
  dropped_planes = per_plane.all(axis=1)
  assert 0 < dropped_planes.sum() < dropped_planes.size
  np.testing.assert_allclose(y[~zero], x64[~zero] / 0.5, rtol=1e-6)


@pytest.mark.parametrize("rate,broadcast_dims,key_kind", [
    (0.1, (), "typed"),
    (0.5, (), "typed"),
    (0.9, (), "typed"),
    (0.5, (1, 2), "typed"),
    (0.3, (0,), "typed"),
    (0.7, (-1,), "typed"),
    (0.5, (), "raw"),
    (0.2, (1, 2), "raw"),
])
def test_bit_identical_to_flax(rate, broadcast_dims, key_kind):
  key = _keys()[key_kind]
  x = jax.random.normal(jax.random.key(21), (4, 5, 6, 3))
  ours = dropout(key, x, rate=rate, broadcast_dims=broadcast_dims)
  theirs = nn.Dropout(rate, broadcast_dims=broadcast_dims).apply(
      {}, x, deterministic=False, rng=key)
  assert ours.dtype == theirs.dtype
  np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


def test_bf16_keeps_dtype_and_matches_flax():
  x = jax.random.normal(jax.random.key(22), (16, 16)).astype(jnp.bfloat16)
  key = jax.random.key(23)
  y = dropout(key, x, rate=0.3)
  assert y.dtype == jnp.bfloat16
  y_flax = nn.Dropout(0.3).apply({}, x, deterministic=False, rng=key)
  np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(y_flax, np.float32))
  y_traced = jax.jit(lambda r: dropout(key, x, rate=r))(0.3)
  assert y_traced.dtype == jnp.bfloat16


@pytest.mark.parametrize("rate", [-0.1, 1.5])
def test_rate_out_of_range_raises(rate):
  x = jnp.ones((3, 4))
  with pytest.raises(ValueError, match=r"rate") as info:
    dropout(jax.random.key(0), x, rate=rate)
  assert str(rate) in str(info.value)


def test_integer_input_raises_type_error():
  with pytest.raises(TypeError, match=r"\bx\b"):
    dropout(jax.random.key(0), jnp.ones((3, 4), jnp.int32), rate=0.5)


@pytest.mark.parametrize("bad_key", [0, 1.5, "key"])
def test_non_key_raises_type_error(bad_key):
  with pytest.raises(TypeError, match=r"PRNG key"):
    dropout(bad_key, jnp.ones((3, 4)), rate=0.5)


def test_key_and_x_swapped_raises_type_error():
  x = jnp.ones((3, 4))
  with pytest.raises(TypeError):
    dropout(x, jax.random.key(0), rate=0.5)


@pytest.mark.parametrize("broadcast_dims", [(4,), (-5,), (0, 7)])
def test_broadcast_dims_out_of_range_raises(broadcast_dims):
  x = jnp.ones((2, 3, 4, 5))
  with pytest.raises(ValueError, match=r"broadcast_dims") as info:
    dropout(jax.random.key(0), x, rate=0.5, broadcast_dims=broadcast_dims)
  assert "(2, 3, 4, 5)" in str(info.value)
