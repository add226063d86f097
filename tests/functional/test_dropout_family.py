"""Tests for the dropout family in jaxnorm.functional (everything but plain dropout).

spatial_dropout, drop_path, drop_path_rates, alpha_dropout, gaussian_dropout,
classic_dropout, concrete_dropout, concrete_dropout_regularizer and r_drop_loss.

References are closed-form statistics (binomial counts, standard errors of sample
moments), float64 NumPy formulas and numerical integration; never jaxnorm against
itself. Statistical tolerances are stated where they are used:

* a fraction of Bernoulli(q) draws over n trials has sigma = sqrt(q (1 - q) / n); we
  allow 4 sigma (two-sided false-failure probability ~6e-5 per check, and the seeds are
  fixed, so a passing test stays passing);
* a sample mean / variance is compared with 5 standard errors (SE of the mean
  sqrt(var / n), SE of the variance sqrt((mu4 - var^2) / n)).

Runtime: every XLA compilation that contains a PRNG costs about a second on CPU, and
eager jax.random calls compile once per shape. So inputs come from NumPy, the
statistical tests share a few shapes (N_STAT elements, SHAPE_4D), and the jit/vmap
checks run all functions in one jitted program.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm.functional import (
    alpha_dropout, classic_dropout, concrete_dropout, concrete_dropout_regularizer,
    drop_path, drop_path_rates, dropout, gaussian_dropout, r_drop_loss, spatial_dropout)

# SELU constants (Klambauer et al. 2017), written out independently of jaxnorm.
SELU_LAMBDA = 1.0507009873554804934193349852946
SELU_ALPHA = 1.6732632423543772848170429916717
ALPHA_PRIME = -SELU_LAMBDA * SELU_ALPHA

N_STAT = 1_000_000  # elements in the 1-D statistical tests
SHAPE_4D = (16, 4, 4, 8)  # small NHWC input for the gradient and key tests


def _uniform_np(shape, seed, low=0.5, high=1.5):
  """Strictly positive float32 input, so a zero in the output comes from a mask."""
  return jnp.asarray(np.random.default_rng(seed).uniform(low, high, shape), jnp.float32)


def _normal_np(shape, seed):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _bernoulli_sigma(q, n):
  """Standard deviation of the fraction of successes of n Bernoulli(q) draws."""
  return math.sqrt(q * (1.0 - q) / n)


def _to64(a):
  return np.asarray(a, np.float64)


# --------------------------------------------------------------------------------------
# spatial_dropout


def _map_masks(y, channel_axis):
  """(N, C, S) view of ``y != 0`` with the spatial axes flattened into S."""
  kept = _to64(y) != 0
  if channel_axis in (-1, kept.ndim - 1):
    kept = np.moveaxis(kept, -1, 1)
  return kept.reshape(kept.shape[0], kept.shape[1], -1)


@pytest.mark.parametrize("layout,channel_axis", [("NHWC", -1), ("NCHW", 1)])
@pytest.mark.parametrize("rate", [0.2, 0.5])
def test_spatial_dropout_whole_maps_kept_or_zeroed(layout, channel_axis, rate):
  n, c, h, w = 256, 32, 5, 4
  shape = (n, h, w, c) if layout == "NHWC" else (n, c, h, w)
  x = _uniform_np(shape, seed=0)
  y = spatial_dropout(jax.random.key(1), x, rate=rate, channel_axis=channel_axis)
  assert y.shape == x.shape and y.dtype == x.dtype
  kept = _map_masks(y, channel_axis)
  map_kept = kept.all(axis=2)
  map_dropped = (~kept).all(axis=2)
  # Each (example, channel) map is entirely kept or entirely zeroed.
  assert np.all(map_kept | map_dropped)
  # ... and the decision varies across channels of one example (not per example).
  assert np.any(map_kept.any(axis=1) & ~map_kept.all(axis=1))
  # Kept maps are the input scaled by 1 / (1 - rate) (float32 rounding: rtol 1e-6).
  x64, y64 = _to64(x), _to64(y)
  nz = y64 != 0
  np.testing.assert_allclose(y64[nz], x64[nz] / (1.0 - rate), rtol=1e-6)
  # Kept fraction of the n * c maps: Bernoulli(1 - rate), 4 sigma.
  frac = map_kept.mean()
  sigma = _bernoulli_sigma(1.0 - rate, n * c)
  assert abs(frac - (1.0 - rate)) < 4 * sigma, (frac, 1 - rate, sigma)


@pytest.mark.parametrize("channel_axis", [0, -4])
def test_spatial_dropout_channel_axis_zero_raises(channel_axis):
  x = jnp.ones((2, 3, 4, 5))
  with pytest.raises(ValueError, match="channel_axis") as info:
    spatial_dropout(jax.random.key(0), x, rate=0.5, channel_axis=channel_axis)
  assert "(2, 3, 4, 5)" in str(info.value)


@pytest.mark.parametrize("shape", [(8, 4), (8,)])
def test_spatial_dropout_without_spatial_axes_raises(shape):
  with pytest.raises(ValueError, match="spatial") as info:
    spatial_dropout(jax.random.key(0), jnp.ones(shape), rate=0.5, channel_axis=-1)
  assert str(shape) in str(info.value)


# --------------------------------------------------------------------------------------
# drop_path and drop_path_rates


DROP_PATH_SHAPE = (50_000, 4)


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_drop_path_row_drops_whole_examples(rate):
  n = DROP_PATH_SHAPE[0]
  x = _uniform_np(DROP_PATH_SHAPE, seed=3)
  y = _to64(drop_path(jax.random.key(4), x, rate=rate, mode="row"))
  x64 = _to64(x)
  kept_elems = y != 0
  kept_rows = kept_elems.all(axis=1)
  assert np.all(kept_rows | (~kept_elems).all(axis=1))  # whole examples
  np.testing.assert_allclose(y[kept_rows], x64[kept_rows] / (1 - rate), rtol=1e-6)
  # Keep fraction of n examples: Bernoulli(1 - rate), 4 sigma.
  sigma = _bernoulli_sigma(1 - rate, n)
  assert abs(kept_rows.mean() - (1 - rate)) < 4 * sigma, (kept_rows.mean(), sigma)


@pytest.mark.parametrize("rate", [0.2, 0.6])
def test_drop_path_row_preserves_mean(rate):
  # On ones: each row is b / (1 - p), b ~ Bernoulli(1 - p) per row, so the mean over
  # n rows has E = 1 and std sqrt(p (1 - p) / n) / (1 - p). 4 sigma.
  n = DROP_PATH_SHAPE[0]
  x = jnp.ones(DROP_PATH_SHAPE, jnp.float32)
  y = _to64(drop_path(jax.random.key(5), x, rate=rate, mode="row"))
  sigma = math.sqrt(rate * (1 - rate) / n) / (1 - rate)
  assert abs(y.mean() - 1.0) < 4 * sigma, (y.mean(), sigma)


def test_drop_path_batch_is_all_or_nothing():
  x = _uniform_np((16, 5, 3), seed=6)
  x64 = _to64(x)
  outcomes = []
  for seed in range(40):
    y = _to64(drop_path(jax.random.key(100 + seed), x, rate=0.5, mode="batch"))
    if np.all(y == 0):
      outcomes.append(False)
    else:
      np.testing.assert_allclose(y, x64 / 0.5, rtol=1e-6)
      outcomes.append(True)
  # Both outcomes occur over 40 keys (each missing with probability 2^-40).
  assert any(outcomes) and not all(outcomes)


def test_drop_path_bad_mode_raises():
  with pytest.raises(ValueError, match="mode") as info:
    drop_path(jax.random.key(0), jnp.ones((4, 3)), rate=0.5, mode="example")
  assert "'example'" in str(info.value)


@pytest.mark.parametrize("num_layers,max_rate", [(2, 0.1), (5, 0.2), (12, 0.5), (4, 0.0)])
def test_drop_path_rates_linear(num_layers, max_rate):
  rates = drop_path_rates(num_layers, max_rate)
  expected = np.linspace(0.0, max_rate, num_layers)
  assert len(rates) == num_layers
  np.testing.assert_allclose(np.asarray(rates, np.float64), expected, rtol=1e-12, atol=0)
  assert rates[0] == 0.0
  assert rates[-1] == pytest.approx(max_rate, abs=1e-15)


def test_drop_path_rates_single_layer():
  assert drop_path_rates(1, 0.3) == [0.0]


@pytest.mark.parametrize("num_layers", [0, -2])
def test_drop_path_rates_bad_num_layers_raises(num_layers):
  with pytest.raises(ValueError, match="num_layers") as info:
    drop_path_rates(num_layers, 0.1)
  assert str(num_layers) in str(info.value)


@pytest.mark.parametrize("max_rate", [-0.1, 1.5])
def test_drop_path_rates_bad_max_rate_raises(max_rate):
  with pytest.raises(ValueError, match="max_rate") as info:
    drop_path_rates(4, max_rate)
  assert str(max_rate) in str(info.value)


# --------------------------------------------------------------------------------------
# alpha_dropout


def _alpha_affine64(rate):
  q = 1.0 - rate
  a = (q + ALPHA_PRIME ** 2 * q * (1 - q)) ** -0.5
  b = -a * (1 - q) * ALPHA_PRIME
  return a, b


@pytest.fixture(scope="module")
def selu_activations():
  """SELU of 1e6 N(0, 1) draws: mean 0 and variance 1 (SELU's fixed point)."""
  return jax.nn.selu(_normal_np((N_STAT,), seed=7))


@pytest.mark.parametrize("rate", [0.05, 0.2, 0.5])
def test_alpha_dropout_keeps_zero_mean_unit_variance(selu_activations, rate):
  y = _to64(alpha_dropout(jax.random.key(8), selu_activations, rate=rate))
  n = y.size
  mean = y.mean()
  centred = y - mean
  m2 = np.mean(centred ** 2)
  m4 = np.mean(centred ** 4)
  # Standard errors of the sample mean and of the sample variance, estimated from the
  # sample itself; the population values are exactly 0 and 1 by construction.
  se_mean = math.sqrt(m2 / n)
  se_var = math.sqrt((m4 - m2 ** 2) / n)
  assert abs(mean) < 5 * se_mean, (rate, mean, se_mean)
  assert abs(m2 - 1.0) < 5 * se_var, (rate, m2, se_var)


@pytest.mark.parametrize("rate", [0.05, 0.2, 0.5])
def test_alpha_dropout_dropped_units_are_affine_saturation(selu_activations, rate):
  x64 = _to64(selu_activations)
  y = _to64(alpha_dropout(jax.random.key(9), selu_activations, rate=rate))
  a, b = _alpha_affine64(rate)
  # Every output is a * x + b (kept) or a * alpha' + b (dropped). The two are far apart
  # here: min selu over 1e6 N(0,1) draws is > alpha' (1 - e^-4), a gap > a * 0.03.
  # 1e-5: float32 rounding of a, b and of a * x + b (|values| < 10).
  kept = np.abs(y - (a * x64 + b)) < 1e-5
  dropped = ~kept
  np.testing.assert_allclose(y[dropped], a * ALPHA_PRIME + b, rtol=0, atol=2e-6)
  # Fraction dropped: Bernoulli(rate) over 1e6 units, 4 sigma.
  sigma = _bernoulli_sigma(rate, y.size)
  assert abs(dropped.mean() - rate) < 4 * sigma, (dropped.mean(), rate, sigma)


def test_alpha_dropout_rate_zero_returns_x():
  x = _normal_np((7, 9), seed=10)
  np.testing.assert_array_equal(np.asarray(alpha_dropout(jax.random.key(0), x, rate=0.0)),
                                np.asarray(x))


def test_alpha_dropout_rate_one_is_finite_or_rejected():
  x = _normal_np((N_STAT,), seed=11)
  try:
    y = alpha_dropout(jax.random.key(0), x, rate=1.0)
  except ValueError as e:
    assert "rate" in str(e)
  else:
    assert np.all(np.isfinite(np.asarray(y)))


# --------------------------------------------------------------------------------------
# gaussian_dropout


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
def test_gaussian_dropout_noise_mean_and_variance(rate):
  n = N_STAT
  x = jnp.ones((n,), jnp.float32)  # y = x * noise = noise
  noise = _to64(gaussian_dropout(jax.random.key(12), x, rate=rate))
  v = rate / (1.0 - rate)
  # Gaussian noise: SE of the mean sqrt(v / n), SE of the variance v sqrt(2 / (n - 1)).
  se_mean = math.sqrt(v / n)
  se_var = v * math.sqrt(2.0 / (n - 1))
  assert abs(noise.mean() - 1.0) < 5 * se_mean, (noise.mean(), se_mean)
  assert abs(noise.var() - v) < 5 * se_var, (noise.var(), v, se_var)


def test_gaussian_dropout_is_multiplicative():
  # Same key: the noise multiplies x elementwise (y / x is the same for any x).
  key = jax.random.key(13)
  x = _uniform_np((N_STAT,), seed=14, low=0.5, high=2.0)
  noise = _to64(gaussian_dropout(key, jnp.ones_like(x), rate=0.3))
  y = _to64(gaussian_dropout(key, x, rate=0.3))
  np.testing.assert_allclose(y, _to64(x) * noise, rtol=1e-6, atol=1e-7)


def test_gaussian_dropout_rate_one_raises():
  with pytest.raises(ValueError, match="rate") as info:
    gaussian_dropout(jax.random.key(0), jnp.ones((3,)), rate=1.0)
  assert "1.0" in str(info.value)


def test_gaussian_dropout_rate_zero_returns_x():
  x = _normal_np((6, 7), seed=15)
  y = gaussian_dropout(jax.random.key(0), x, rate=0.0)
  np.testing.assert_array_equal(np.asarray(y), np.asarray(x))


# --------------------------------------------------------------------------------------
# classic_dropout


@pytest.mark.parametrize("rate", [0.25, 0.6])
def test_classic_dropout_train_unscaled_eval_scaled(rate):
  x = _uniform_np((N_STAT,), seed=16)
  x64 = _to64(x)
  y = _to64(classic_dropout(jax.random.key(17), x, rate=rate, train=True))
  kept = y != 0
  assert 0 < kept.sum() < kept.size
  np.testing.assert_array_equal(y[kept], x64[kept])  # no rescaling at all: bitwise
  y_eval = _to64(classic_dropout(None, x, rate=rate, train=False))
  np.testing.assert_allclose(y_eval, x64 * (1 - rate), rtol=1e-6)


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
def test_classic_dropout_expectation_matches_inference_and_inverted(rate):
  n = N_STAT
  x = jnp.ones((n,), jnp.float32)
  train = _to64(classic_dropout(jax.random.key(18), x, rate=rate, train=True))
  infer = _to64(classic_dropout(None, x, rate=rate, train=False))
  # E[train] = (1 - p) = inference value; the train mean is a Bernoulli(1 - p) fraction,
  # sigma = sqrt(p (1 - p) / n), 4 sigma.
  sigma = _bernoulli_sigma(1 - rate, n)
  assert abs(train.mean() - infer[0]) < 4 * sigma, (train.mean(), infer[0], sigma)
  # Inverted dropout: E[train] = x = its inference value. Classic / (1 - p) and inverted
  # estimate the same quantity, each with std sigma / (1 - p): 4 * sqrt(2) of that.
  inverted = _to64(dropout(jax.random.key(19), x, rate=rate))
  diff = train.mean() / (1 - rate) - inverted.mean()
  assert abs(diff) < 4 * math.sqrt(2) * sigma / (1 - rate), (diff, sigma)
  # And the two inference outputs differ exactly by the factor (1 - p).
  np.testing.assert_allclose(infer / (1 - rate), np.ones(n), rtol=1e-6)


def test_classic_dropout_train_requires_static_bool():
  with pytest.raises(TypeError, match="train"):
    classic_dropout(jax.random.key(0), jnp.ones((3,)), rate=0.5, train=jnp.array(True))


# --------------------------------------------------------------------------------------
# concrete_dropout and its regularizer


def _concrete_expected_keep64(p, temperature, num=400_000):
  """E[1 - z] for the binary-concrete relaxation, midpoint rule over u in (0, 1)."""
  u = (np.arange(num) + 0.5) / num
  logit = math.log(p) - math.log1p(-p)
  s = (logit + np.log(u) - np.log1p(-u)) / temperature
  z = 0.5 * (1.0 + np.tanh(0.5 * s))  # sigmoid, overflow-free
  return float(np.mean(1.0 - z))


@pytest.mark.parametrize("p", [0.1, 0.3, 0.6])
def test_concrete_dropout_low_temperature_is_nearly_bernoulli(p):
  n = N_STAT
  temperature = 0.01
  x = jnp.ones((n,), jnp.float32)
  logit = math.log(p) - math.log1p(-p)
  y = _to64(concrete_dropout(jax.random.key(20), x, logit=jnp.float32(logit),
                             temperature=temperature))
  keep = y * (1 - p)  # = 1 - z in [0, 1]
  # 1 - z > 0.5 exactly when the logistic noise falls on the keep side, which has
  # probability 1 - p at any temperature: a Bernoulli(1 - p) fraction, 4 sigma.
  frac = np.mean(keep > 0.5)
  sigma = _bernoulli_sigma(1 - p, n)
  assert abs(frac - (1 - p)) < 4 * sigma, (frac, 1 - p, sigma)
  # Low temperature: the relaxed mask is almost binary. P(0.01 < z < 0.99) at t = 0.01
  # is below 0.25 * 2 * 0.01 * log(99) ~ 2.3%; allow 3%.
  assert np.mean((keep > 0.01) & (keep < 0.99)) < 0.03


@pytest.mark.parametrize("p,temperature", [(0.1, 0.1), (0.3, 0.1), (0.5, 0.1), (0.7, 0.1),
                                           (0.3, 0.01)])
def test_concrete_dropout_mean_preserved(p, temperature):
  n = N_STAT
  x = jnp.ones((n,), jnp.float32)
  logit = math.log(p) - math.log1p(-p)
  y = _to64(concrete_dropout(jax.random.key(21), x, logit=jnp.float32(logit),
                             temperature=temperature))
  # The relaxation is mean preserving only up to a small bias: E[1 - z] != 1 - p for
  # t > 0. Reference: E[y] = E[1 - z] / (1 - p) by numerical integration (float64).
  expected = _concrete_expected_keep64(p, temperature) / (1 - p)
  assert abs(expected - 1.0) < 0.01  # the bias itself: < 1% at t <= 0.1 (~0.45% worst)
  # Sample mean vs that value: 5 standard errors, SE estimated from the sample.
  se = y.std() / math.sqrt(n)
  assert abs(y.mean() - expected) < 5 * se, (y.mean(), expected, se)


def test_concrete_dropout_gradient_wrt_logit_finite_nonzero():
  x = _normal_np(SHAPE_4D, seed=22)
  key = jax.random.key(23)

  def loss(logit):
    return jnp.sum(concrete_dropout(key, x, logit=logit, temperature=0.1) ** 2)

  grad = jax.jit(jax.grad(loss))
  for logit in [-2.0, 0.0, 1.5]:
    g = float(grad(jnp.float32(logit)))
    assert np.isfinite(g) and g != 0.0, (logit, g)


@pytest.mark.parametrize("logit", [-3.0, -0.5, 0.0, 2.0])
def test_concrete_dropout_regularizer_matches_numpy(logit):
  input_dim = 37
  w = np.random.default_rng(0).normal(size=(input_dim, 5))
  weight_sq_norm = float(np.sum(w ** 2))
  lam_w, lam_p = 1e-2, 3e-2
  p = 1.0 / (1.0 + math.exp(-logit))
  expected = (lam_w * weight_sq_norm / (1 - p)
              + lam_p * input_dim * (p * math.log(p) + (1 - p) * math.log(1 - p)))
  got = concrete_dropout_regularizer(
      jnp.float32(logit), input_dim=input_dim, weight_sq_norm=jnp.float32(weight_sq_norm),
      weight_regularizer=lam_w, dropout_regularizer=lam_p)
  # float32 evaluation of a float64 formula: relative 1e-5.
  assert float(got) == pytest.approx(expected, rel=1e-5)


def test_concrete_dropout_regularizer_entropy_term_pushes_to_half():
  # With no weights, the term is lambda_p K (negative entropy): minimal at p = 0.5, so
  # its gradient w.r.t. the logit points away from 0.5 from either side.
  def reg(logit):
    return concrete_dropout_regularizer(logit, input_dim=10, weight_sq_norm=0.0,
                                        weight_regularizer=0.0, dropout_regularizer=1.0)

  assert float(jax.grad(reg)(jnp.float32(-1.0))) < 0
  assert float(jax.grad(reg)(jnp.float32(1.0))) > 0
  assert abs(float(jax.grad(reg)(jnp.float32(0.0)))) < 1e-6


# --------------------------------------------------------------------------------------
# r_drop_loss


def _sym_kl64(a, b):
  a, b = _to64(a), _to64(b)
  la = a - a.max(-1, keepdims=True)
  la = la - np.log(np.exp(la).sum(-1, keepdims=True))
  lb = b - b.max(-1, keepdims=True)
  lb = lb - np.log(np.exp(lb).sum(-1, keepdims=True))
  kl_ab = np.sum(np.exp(la) * (la - lb), axis=-1)
  kl_ba = np.sum(np.exp(lb) * (lb - la), axis=-1)
  return 0.5 * np.mean(kl_ab + kl_ba)


def test_r_drop_loss_matches_numpy_symmetric_kl():
  rng = np.random.default_rng(1)
  a = (3 * rng.normal(size=(16, 10))).astype(np.float32)
  b = (3 * rng.normal(size=(16, 10))).astype(np.float32)
  got = float(r_drop_loss(jnp.asarray(a), jnp.asarray(b)))
  # float32 log-softmax and sums of 10 terms: relative 1e-5.
  assert got == pytest.approx(_sym_kl64(a, b), rel=1e-5)
  assert got > 0


def test_r_drop_loss_zero_for_identical_and_symmetric():
  rng = np.random.default_rng(2)
  a = jnp.asarray(rng.normal(size=(8, 6)).astype(np.float32))
  b = jnp.asarray(rng.normal(size=(8, 6)).astype(np.float32))
  assert float(r_drop_loss(a, a)) == 0.0
  assert float(r_drop_loss(a, b)) == float(r_drop_loss(b, a))
  # Invariant to a per-row shift of the logits (it only sees the softmax).
  shifted = a + jnp.arange(8, dtype=jnp.float32)[:, None] * 10
  assert float(r_drop_loss(shifted, b)) == pytest.approx(float(r_drop_loss(a, b)),
                                                         rel=1e-5)


def test_r_drop_loss_bf16_inputs_computed_in_float32():
  rng = np.random.default_rng(3)
  a = rng.normal(size=(4, 7)).astype(np.float32)
  b = rng.normal(size=(4, 7)).astype(np.float32)
  a16, b16 = jnp.asarray(a, jnp.bfloat16), jnp.asarray(b, jnp.bfloat16)
  got = r_drop_loss(a16, b16)
  assert got.dtype == jnp.float32
  # Reference on the bf16-rounded logits, so only float32 arithmetic error remains.
  expected = _sym_kl64(np.asarray(a16, np.float32), np.asarray(b16, np.float32))
  assert float(got) == pytest.approx(expected, rel=1e-5)


def test_r_drop_loss_masked_class_is_finite():
  a = np.asarray([[0.0, -np.inf, 1.0], [2.0, -np.inf, -1.0]], np.float32)
  b = np.asarray([[1.0, -np.inf, 0.0], [0.5, -np.inf, 0.5]], np.float32)
  got = float(r_drop_loss(jnp.asarray(a), jnp.asarray(b)))
  expected = _sym_kl64(a[:, [0, 2]], b[:, [0, 2]])  # the masked class has p = 0
  assert got == pytest.approx(expected, rel=1e-5)


# --------------------------------------------------------------------------------------
# Gradients at the extremes (rate 0 and rate 1), static and traced rate.

# name -> (fn(key, x, rate), inverted?) ; classic_dropout is the non-inverted one.
MASKING_FNS = {
    "dropout": lambda k, x, r: dropout(k, x, rate=r),
    "spatial_dropout": lambda k, x, r: spatial_dropout(k, x, rate=r, channel_axis=-1),
    "drop_path_row": lambda k, x, r: drop_path(k, x, rate=r, mode="row"),
    "drop_path_batch": lambda k, x, r: drop_path(k, x, rate=r, mode="batch"),
    "classic_dropout": lambda k, x, r: classic_dropout(k, x, rate=r, train=True),
}


@pytest.fixture(scope="module")
def grad_inputs():
  x = _normal_np(SHAPE_4D, seed=24)
  c = _normal_np(SHAPE_4D, seed=25)  # loss weights
  return x, c


@pytest.mark.parametrize("name", sorted(MASKING_FNS))
@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_grad_wrt_x_finite_at_extremes_static_rate(grad_inputs, name, rate):
  fn = MASKING_FNS[name]
  x, c = grad_inputs
  key = jax.random.key(26)
  g = _to64(jax.grad(lambda x: jnp.sum(fn(key, x, rate) * c))(x))
  assert np.all(np.isfinite(g))
  # rate 0: identity, d/dx sum(c x) = c; rate 1: zeros, gradient 0.
  expected = _to64(c) if rate == 0.0 else np.zeros(x.shape)
  np.testing.assert_allclose(g, expected, rtol=1e-6, atol=0)


@functools.cache
def _traced_rate_grads():
  """(d/dx, d/drate) of sum(c * fn(key, x, rate)) for every function, in one jitted
  program with a traced rate, so all functions and both rates share one compilation."""

  def grads(key, x, c, rate):
    return {name: jax.grad(lambda x, r, fn=fn: jnp.sum(fn(key, x, r) * c),
                           argnums=(0, 1))(x, rate)
            for name, fn in MASKING_FNS.items()}

  return jax.jit(grads)


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_grads_finite_at_extremes_traced_rate(grad_inputs, rate):
  x, c = grad_inputs
  all_grads = _traced_rate_grads()(jax.random.key(27), x, c, jnp.float32(rate))
  for name, (gx, gr) in all_grads.items():
    gx, gr = _to64(gx), float(gr)
    assert np.all(np.isfinite(gx)) and np.isfinite(gr), (name, gx, gr)
    expected_gx = _to64(c) if rate == 0.0 else np.zeros(x.shape)
    np.testing.assert_allclose(gx, expected_gx, rtol=1e-6, atol=0, err_msg=name)
    # d/dp sum(c b x / (1 - p)) = sum(c b x) / (1 - p)^2 for the inverted variants:
    # at p = 0 (b = 1) that is sum(c x); at p = 1 nothing is kept, 0. The classic
    # variant has no p in its training formula and its mask is not differentiable: 0.
    inverted = name != "classic_dropout"
    expected_gr = (float(np.sum(_to64(c) * _to64(x))) if (inverted and rate == 0.0)
                   else 0.0)
    assert gr == pytest.approx(expected_gr, rel=1e-5, abs=1e-5), name


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_classic_dropout_eval_grad_wrt_traced_rate(grad_inputs, rate):
  x, c = grad_inputs
  loss = lambda x, r: jnp.sum(classic_dropout(None, x, rate=r, train=False) * c)
  gx, gr = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, jnp.float32(rate))
  # y = (1 - p) x: dy/dx = (1 - p) c, dy/dp = -sum(c x).
  np.testing.assert_allclose(_to64(gx), (1 - rate) * _to64(c), rtol=1e-6, atol=0)
  assert float(gr) == pytest.approx(-float(np.sum(_to64(c) * _to64(x))), rel=1e-5)


# --------------------------------------------------------------------------------------
# Rate validation


RATE_FNS = {
    "dropout": (lambda r: dropout(jax.random.key(0), jnp.ones((2, 3, 3, 2)), rate=r)),
    "spatial_dropout": (lambda r: spatial_dropout(jax.random.key(0),
                                                  jnp.ones((2, 3, 3, 2)), rate=r)),
    "drop_path": (lambda r: drop_path(jax.random.key(0), jnp.ones((2, 3)), rate=r)),
    "drop_path_batch": (lambda r: drop_path(jax.random.key(0), jnp.ones((2, 3)), rate=r,
                                            mode="batch")),
    "alpha_dropout": (lambda r: alpha_dropout(jax.random.key(0), jnp.ones((2, 3)),
                                              rate=r)),
    "gaussian_dropout": (lambda r: gaussian_dropout(jax.random.key(0), jnp.ones((2, 3)),
                                                    rate=r)),
    "classic_dropout_train": (lambda r: classic_dropout(jax.random.key(0),
                                                        jnp.ones((2, 3)), rate=r,
                                                        train=True)),
    "classic_dropout_eval": (lambda r: classic_dropout(None, jnp.ones((2, 3)), rate=r,
                                                       train=False)),
}


@pytest.mark.parametrize("name", sorted(RATE_FNS))
@pytest.mark.parametrize("rate", [-0.1, 1.5])
def test_rate_out_of_range_raises(name, rate):
  with pytest.raises(ValueError, match=r"\brate\b") as info:
    RATE_FNS[name](rate)
  msg = str(info.value)
  assert str(rate) in msg, msg
  assert "[0, 1]" in msg, msg


@pytest.mark.parametrize("name", ["alpha_dropout", "gaussian_dropout",
                                  "classic_dropout_train", "classic_dropout_eval"])
def test_rate_error_names_the_function_called(name):
  with pytest.raises(ValueError) as info:
    RATE_FNS[name](1.5)
  public_name = name.replace("_train", "").replace("_eval", "")
  assert f"jaxnorm.functional.{public_name}:" in str(info.value)


@pytest.mark.parametrize("name", ["spatial_dropout", "drop_path"])
def test_rate_error_names_the_function_called_delegating(name):
  with pytest.raises(ValueError) as info:
    RATE_FNS[name](1.5)
  assert f"jaxnorm.functional.{name}:" in str(info.value)


# --------------------------------------------------------------------------------------
# Key discipline: the output is a function of the key; jit and vmap do not change it.

KEYED_FNS = {
    "spatial_dropout": lambda k, x: spatial_dropout(k, x, rate=0.5),
    "drop_path": lambda k, x: drop_path(k, x, rate=0.5),
    "alpha_dropout": lambda k, x: alpha_dropout(k, x, rate=0.5),
    "gaussian_dropout": lambda k, x: gaussian_dropout(k, x, rate=0.5),
    "classic_dropout": lambda k, x: classic_dropout(k, x, rate=0.5, train=True),
    "concrete_dropout": lambda k, x: concrete_dropout(k, x, logit=jnp.float32(0.0)),
}


@pytest.fixture(scope="module")
def keyed_x():
  return _uniform_np(SHAPE_4D, seed=28)


@functools.cache
def _jit_and_vmap_all():
  """Every keyed function applied to one key and vmapped over a batch of keys, in one
  jitted program."""

  def run(key, keys, x):
    return {name: (fn(key, x), jax.vmap(fn, in_axes=(0, None))(keys, x))
            for name, fn in KEYED_FNS.items()}

  return jax.jit(run)


@pytest.fixture(scope="module")
def jit_and_vmap_outputs(keyed_x):
  key, keys = jax.random.key(29), jax.random.split(jax.random.key(30), 4)
  return key, keys, _jit_and_vmap_all()(key, keys, keyed_x)


@pytest.mark.parametrize("name", sorted(KEYED_FNS))
def test_key_determines_output_eager_jit_vmap(keyed_x, jit_and_vmap_outputs, name):
  fn = KEYED_FNS[name]
  key, keys, outputs = jit_and_vmap_outputs
  jit_out, vmapped = (_to64(o) for o in outputs[name])
  # Same key -> same output, with and without jit (same mask; values to rounding).
  eager1, eager2 = _to64(fn(key, keyed_x)), _to64(fn(key, keyed_x))
  np.testing.assert_array_equal(eager1, eager2)
  np.testing.assert_array_equal(eager1 != 0, jit_out != 0)
  # concrete_dropout's relaxed mask is a chain of log/sigmoid terms: fused differently
  # under jit, it agrees to a few float32 ulps (3e-6 relative), not one.
  rtol = 1e-5 if name == "concrete_dropout" else 1e-6
  np.testing.assert_allclose(jit_out, eager1, rtol=rtol, atol=1e-7)
  # vmap over a batch of keys equals a Python loop over the same keys.
  looped = np.stack([_to64(fn(k, keyed_x)) for k in keys])
  np.testing.assert_array_equal(vmapped != 0, looped != 0)
  np.testing.assert_allclose(vmapped, looped, rtol=rtol, atol=1e-7)
  # Different keys -> different outputs (pairwise over the five keys).
  outs = [eager1] + list(looped)
  for i in range(len(outs)):
    for j in range(i + 1, len(outs)):
      assert not np.array_equal(outs[i], outs[j]), (name, i, j)


def test_different_keys_spatial_masks_agree_about_half():
  # Two independent Bernoulli(0.5) map masks agree on each of the 256 * 32 maps with
  # probability 1/2: agreement fraction within 4 sigma of 0.5.
  x = jnp.ones((256, 5, 4, 32))  # the shape of the spatial statistics test
  m1 = _map_masks(spatial_dropout(jax.random.key(34), x, rate=0.5), -1).all(axis=2)
  m2 = _map_masks(spatial_dropout(jax.random.key(35), x, rate=0.5), -1).all(axis=2)
  agree = np.mean(m1 == m2)
  assert abs(agree - 0.5) < 4 * _bernoulli_sigma(0.5, m1.size), agree
