"""Tests for reversible instance normalization (revin_normalize / revin_denormalize).

References: float64 NumPy written here from the paper's formulas (two-pass statistics
over the valid time steps), and ``jax.grad`` of a float64 ``jnp`` version of them.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm import functional as F

TOL = 1e-5


def _f64(a):
  return np.asarray(np.asarray(a, np.float32) if a.dtype == jnp.bfloat16 else a,
                    np.float64)


def _assert_close(actual, expected, tol=TOL, what=""):
  actual, expected = _f64(actual), _f64(expected)
  assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
  scale = max(1.0, float(np.max(np.abs(expected))))
  np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale, err_msg=what)


def ref_revin(x, scale, bias, *, epsilon=1e-5, mask=None):
  """Float64 ``(x_hat, mean, std)`` for ``(batch, time, variables)``."""
  x = _f64(x)
  m = np.ones(x.shape, bool) if mask is None else np.broadcast_to(mask, x.shape)
  count = np.maximum(m.sum(1, keepdims=True), 1)
  mean = np.where(m, x, 0).sum(1, keepdims=True) / count
  var = np.where(m, (x - mean) ** 2, 0).sum(1, keepdims=True) / count
  std = np.sqrt(var + epsilon)
  y = (x - mean) / std
  if scale is not None:
    y = y * _f64(scale)
  if bias is not None:
    y = y + _f64(bias)
  return y, mean, std


def _series(shape=(3, 20, 4), seed=0, level=5.0):
  rng = np.random.default_rng(seed)
  levels = level * rng.normal(size=(shape[0], 1, shape[2]))
  scales = rng.uniform(0.5, 3.0, size=(shape[0], 1, shape[2]))
  return (levels + scales * rng.normal(size=shape)).astype(np.float32)


def _affine(channels=4, seed=1):
  rng = np.random.default_rng(seed)
  return (rng.uniform(0.5, 1.5, channels).astype(np.float32),
          rng.normal(size=channels).astype(np.float32))


normalize = jax.jit(F.revin_normalize)
denormalize = jax.jit(F.revin_denormalize)


@pytest.mark.parametrize("affine", [False, True])
def test_normalize_matches_float64_and_returns_its_statistics(affine):
  x = _series()
  scale, bias = _affine() if affine else (None, None)
  y, stats = normalize(x, scale, bias)
  ref_y, ref_mean, ref_std = ref_revin(x, scale, bias)
  _assert_close(y, ref_y, what="x_hat")
  _assert_close(stats.mean, ref_mean, what="mean")
  _assert_close(stats.std, ref_std, what="std")
  assert stats.mean.shape == stats.std.shape == (3, 1, 4)
  assert y.dtype == jnp.float32 and stats.mean.dtype == jnp.float32


@pytest.mark.parametrize("affine", [False, True])
def test_denormalize_inverts_normalize_also_on_a_forecast_horizon(affine):
  x = _series(level=1e3)  # large levels: the statistics must not lose them
  scale, bias = _affine() if affine else (None, None)
  y, stats = normalize(x, scale, bias)
  _assert_close(denormalize(y, scale, bias, stats), x, what="round trip")
  # A "forecast" of another length in normalized units maps back with the same stats.
  forecast = jnp.asarray(np.random.default_rng(2).normal(size=(3, 7, 4)), jnp.float32)
  _, mean, std = ref_revin(x, None, None)
  expected = _f64(forecast)
  if affine:
    expected = (expected - _f64(bias)) / _f64(scale)
  _assert_close(denormalize(forecast, scale, bias, stats), expected * std + mean,
                what="horizon")


def test_padded_steps_do_not_enter_the_statistics():
  x = _series(seed=3)
  lengths = np.array([20, 11, 5])
  mask = (np.arange(20)[None, :] < lengths[:, None])[..., None]
  x_padded = np.where(mask, x, 1e6).astype(np.float32)
  scale, bias = _affine()
  y, stats = normalize(x_padded, scale, bias, mask=mask)
  ref_y, ref_mean, ref_std = ref_revin(x_padded, scale, bias, mask=mask)
  _assert_close(stats.mean, ref_mean, what="mean")
  _assert_close(stats.std, ref_std, what="std")
  _assert_close(np.where(mask, y, 0), np.where(mask, ref_y, 0), what="valid x_hat")
  # Each series equals normalizing its valid prefix alone.
  for b, n in enumerate(lengths):
    alone, _ = normalize(x[b:b + 1, :n], scale, bias)
    _assert_close(y[b:b + 1, :n], alone, what=f"series {b}")
  _assert_close(denormalize(y, scale, bias, stats), x_padded, tol=1e-5, what="round trip")


def test_series_without_valid_steps_is_finite():
  x = _series(seed=4)
  mask = np.zeros((3, 20, 1), bool)
  mask[0] = True
  y, stats = normalize(x, None, None, mask=mask)
  assert np.all(np.isfinite(np.asarray(y)))
  np.testing.assert_array_equal(np.asarray(stats.mean[1:]), 0.0)
  np.testing.assert_allclose(np.asarray(stats.std[1:]), np.sqrt(1e-5), rtol=1e-6)


def _loss_ref(x, scale, bias, target):
  """Float64 jnp RevIN around a linear 'model': normalize, scale by 0.7, denormalize."""
  mean = x.mean(1, keepdims=True)
  std = jnp.sqrt(((x - mean) ** 2).mean(1, keepdims=True) + 1e-5)
  h = (x - mean) / std * scale + bias
  out = (0.7 * h - bias) / scale * std + mean
  return jnp.sum((out - target) ** 2 * jnp.cos(h))


def _loss_ours(x, scale, bias, target):
  h, stats = F.revin_normalize(x, scale, bias)
  out = F.revin_denormalize(0.7 * h, scale, bias, stats)
  return jnp.sum((out - target) ** 2 * jnp.cos(h))


def test_gradients_match_float64_autodiff_reference():
  x = _series(seed=5)
  scale, bias = _affine(seed=6)
  target = _series(seed=7)
  got = jax.jit(jax.grad(_loss_ours, (0, 1, 2)))(x, scale, bias, target)
  with jax.enable_x64(True):
    args = [jnp.asarray(a, jnp.float64) for a in (x, scale, bias, target)]
    expected = jax.jit(jax.grad(_loss_ref, (0, 1, 2)))(*args)
    expected = [np.asarray(e) for e in expected]
  for name, g, e in zip(("x", "scale", "bias"), got, expected):
    _assert_close(g, e, 1e-4, f"d{name}")


def test_bfloat16_keeps_dtype_and_float32_statistics():
  x = _series(seed=8).astype(jnp.bfloat16)
  y, stats = normalize(x, None, None)
  assert y.dtype == jnp.bfloat16 and stats.mean.dtype == jnp.float32
  ref_y, _, _ = ref_revin(x, None, None)
  _assert_close(y, ref_y, 2e-2, "bf16")
  assert denormalize(y, None, None, stats).dtype == jnp.bfloat16


def test_other_layouts_channels_first():
  """(batch, variables, time) with axis=1: the time axis is reduced."""
  x = _series(seed=9)
  y, stats = F.revin_normalize(x.swapaxes(1, 2), None, None, axis=1)
  ref_y, _, _ = ref_revin(x, None, None)
  _assert_close(y, ref_y.swapaxes(1, 2))
  assert stats.mean.shape == (3, 4, 1)
  _assert_close(F.revin_denormalize(y, None, None, stats, axis=1), x.swapaxes(1, 2))


def test_errors_name_the_argument_and_the_fix():
  x = _series()
  with pytest.raises(ValueError, match="revin_normalize: axis=0 includes axis 0, the batch"):
    F.revin_normalize(x, None, None, axis=0)
  with pytest.raises(ValueError, match=r"revin_normalize: scale has shape \(3,\) but must "
                                       r"have shape \(4,\)"):
    F.revin_normalize(x, jnp.ones(3), None)
  with pytest.raises(TypeError, match="x must be a floating-point array"):
    F.revin_normalize(x.astype(np.int32), None, None)
  with pytest.raises(ValueError, match="epsilon must be > 0"):
    F.revin_normalize(x, None, None, epsilon=-1.0)
  _, stats = F.revin_normalize(x, None, None)
  with pytest.raises(ValueError, match=r"revin_denormalize: stats.mean has shape "
                                       r"\(3, 1, 4\), which does not broadcast to "
                                       r"y.shape=\(2, 5, 4\)"):
    F.revin_denormalize(jnp.ones((2, 5, 4)), None, None, stats)
  with pytest.raises(TypeError, match="stats must be the RevINStats"):
    F.revin_denormalize(x, None, None, stats.mean)
  with pytest.raises(ValueError, match=r"revin_denormalize: bias has shape \(5,\)"):
    F.revin_denormalize(x, None, jnp.ones(5), stats)


@pytest.mark.parametrize("std,mean", [(1e30, 2.0), (1e20, -1.0), (1e-30, 3.0),
                                      (1.0, 1e4)])
def test_any_finite_scale(std, mean):
  """Data whose squares overflow (std 1e20, 1e30) or underflow (1e-30) float32, and
  data far from zero: the output, the returned std (finite even where the variance is
  not) and the round trip match float64."""
  rng = np.random.default_rng(5)
  x = (rng.normal(size=(3, 64, 4)) * std + mean * std).astype(np.float32)
  scale, bias = np.linspace(0.5, 1.5, 4), np.linspace(-0.2, 0.2, 4)
  y, stats = jax.jit(lambda x: F.revin_normalize(x, scale, bias))(x)
  y_ref, mean_ref, std_ref = ref_revin(x, scale, bias)
  _assert_close(y, y_ref, what="y")
  np.testing.assert_allclose(_f64(stats.std), std_ref, rtol=TOL)
  np.testing.assert_allclose(_f64(stats.mean), mean_ref, rtol=TOL, atol=TOL * std)
  # The round trip without the affine part (a bias of 0.2 would swamp outputs of 3e-28).
  y, stats = jax.jit(lambda x: F.revin_normalize(x, None, None))(x)
  back = F.revin_denormalize(y, None, None, stats)
  np.testing.assert_allclose(_f64(back), _f64(x), rtol=1e-4, atol=1e-4 * std)
