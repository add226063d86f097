"""The linen RevIN module: variables, both directions, masks and gradients, against a
float64 NumPy reference written here."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jaxnorm


def _series(shape=(3, 24, 4), seed=0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(20 * rng.normal(size=(shape[0], 1, shape[2]))
                     + rng.uniform(0.5, 3, (shape[0], 1, shape[2])) * rng.normal(size=shape),
                     jnp.float32)


def _stats64(x, mask=None):
  x = np.asarray(x, np.float64)
  m = np.ones(x.shape, bool) if mask is None else np.broadcast_to(mask, x.shape)
  n = m.sum(1, keepdims=True)
  mean = np.where(m, x, 0).sum(1, keepdims=True) / n
  std = np.sqrt(np.where(m, (x - mean) ** 2, 0).sum(1, keepdims=True) / n + 1e-5)
  return mean, std


class Forecaster(nn.Module):
  """RevIN around a linear map over time (96 -> 8 steps), as in the paper's setting."""

  horizon: int = 8
  affine: bool = True

  @nn.compact
  def __call__(self, x, mask=None):
    revin = jaxnorm.RevIN(num_features=x.shape[-1], affine=self.affine)
    h, stats = revin(x, mask=mask)
    h = nn.Dense(self.horizon)(h.swapaxes(1, 2)).swapaxes(1, 2)
    return revin.denormalize(h, stats)


def _variables(model, x, seed=1):
  variables = model.init(jax.random.key(0), x)
  if "RevIN_0" in variables["params"]:
    rng = np.random.default_rng(seed)
    variables["params"]["RevIN_0"] = {
        "scale": jnp.asarray(rng.uniform(0.5, 1.5, 4), jnp.float32),
        "bias": jnp.asarray(rng.normal(size=4), jnp.float32)}
  return variables


def _expected(variables, x, mask=None):
  p = variables["params"]
  mean, std = _stats64(x, mask)
  scale = np.asarray(p["RevIN_0"]["scale"], np.float64) if "RevIN_0" in p else 1.0
  bias = np.asarray(p["RevIN_0"]["bias"], np.float64) if "RevIN_0" in p else 0.0
  h = (np.asarray(x, np.float64) - mean) / std * scale + bias
  kernel = np.asarray(p["Dense_0"]["kernel"], np.float64)
  out = np.einsum("btc,th->bhc", h, kernel) + np.asarray(p["Dense_0"]["bias"],
                                                         np.float64)[None, :, None]
  return (out - bias) / scale * std + mean


def test_variables_and_both_directions_match_float64():
  x = _series()
  for affine in (True, False):
    model = Forecaster(affine=affine)
    variables = _variables(model, x)
    names = set(variables["params"])
    assert names == ({"RevIN_0", "Dense_0"} if affine else {"Dense_0"})
    if affine:
      assert {k: v.shape for k, v in variables["params"]["RevIN_0"].items()} == {
          "scale": (4,), "bias": (4,)}
    out = jax.jit(model.apply)(variables, x)
    expected = _expected(variables, x)
    np.testing.assert_allclose(np.asarray(out, np.float64), expected, rtol=1e-5,
                               atol=1e-5 * np.abs(expected).max())


def test_mask_for_padded_series():
  x = _series(seed=2)
  mask = (np.arange(24)[None, :] < np.array([24, 13, 6])[:, None])[..., None]
  padded = jnp.where(mask, x, 1e3)
  model = Forecaster(horizon=3)
  variables = _variables(model, x)
  out = model.apply(variables, padded, mask=mask)
  expected = _expected(variables, padded, mask)
  np.testing.assert_allclose(np.asarray(out, np.float64), expected, rtol=1e-5,
                             atol=1e-5 * np.abs(expected).max())
  _, stats = jaxnorm.RevIN(num_features=4).apply(
      {"params": variables["params"]["RevIN_0"]}, padded, mask=mask)
  mean, std = _stats64(x, mask)
  np.testing.assert_allclose(np.asarray(stats.mean, np.float64), mean, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(stats.std, np.float64), std, rtol=1e-5)


def test_denormalize_round_trip_and_gradients_reach_the_affine():
  x = _series(seed=3)
  revin = jaxnorm.RevIN(num_features=4)
  variables = _variables(Forecaster(), x)
  params = {"params": variables["params"]["RevIN_0"]}
  h, stats = revin.apply(params, x)
  back = revin.apply(params, h, stats, method="denormalize")
  np.testing.assert_allclose(np.asarray(back), np.asarray(x), rtol=1e-5, atol=1e-4)

  def loss(params):
    h, stats = revin.apply(params, x)
    return jnp.sum(revin.apply(params, 0.5 * h, stats, method="denormalize") ** 2)

  grads = jax.grad(loss)(params)["params"]
  # out = (0.5 h - b) / s * std + mean with h = xhat s + b: d/db = -0.5/s * std * 2 out.
  mean, std = _stats64(x)
  s = np.asarray(params["params"]["scale"], np.float64)
  b = np.asarray(params["params"]["bias"], np.float64)
  xhat = (np.asarray(x, np.float64) - mean) / std
  out = (0.5 * (xhat * s + b) - b) / s * std + mean
  d_out = 2 * out
  expected_db = np.sum(d_out * (-0.5 / s) * std, axis=(0, 1))
  expected_ds = np.sum(d_out * (0.5 * b / s ** 2) * std, axis=(0, 1))
  np.testing.assert_allclose(np.asarray(grads["bias"]), expected_db, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(grads["scale"]), expected_ds, rtol=1e-4)
