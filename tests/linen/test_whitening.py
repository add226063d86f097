"""The linen whitening modules (DecorrelatedBatchNorm, IterNorm): variables, training
and evaluation against a float64 NumPy reference written here, dtype rules against
flax.linen.BatchNorm, and jitted optax training."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

import jaxnorm

TOL = 2e-5
EPS = 1e-5


def _f64(a):
  return np.asarray(np.asarray(a, np.float32) if a.dtype == jnp.bfloat16 else a,
                    np.float64)


def _flat(tree):
  return traverse_util.flatten_dict(jax.device_get(dict(tree)), sep="/")


def _data(shape=(8, 3, 3, 8), seed=0):
  rng = np.random.default_rng(seed)
  mix = np.eye(shape[-1]) + 0.5 * rng.normal(size=(shape[-1],) * 2)
  return jnp.asarray(1.0 + rng.normal(size=shape) @ mix, jnp.float32)


def _whitening64(cov, iterations):
  sigma = cov + EPS * np.eye(cov.shape[-1])
  if iterations is None:
    w, v = np.linalg.eigh(sigma)
    return (v / np.sqrt(w)[..., None, :]) @ np.swapaxes(v, -1, -2)
  trace = np.trace(sigma, axis1=-2, axis2=-1)[..., None, None]
  p = np.broadcast_to(np.eye(cov.shape[-1]), cov.shape)
  for _ in range(iterations):
    p = 1.5 * p - 0.5 * p @ p @ p @ (sigma / trace)
  return p / np.sqrt(trace)


def _apply64(x, mean, whitening, scale, bias, group_size):
  rows = _f64(x).reshape(-1, x.shape[-1]) - mean
  groups = x.shape[-1] // group_size
  y = np.einsum("gji,mgi->mgj", whitening, rows.reshape(-1, groups, group_size))
  return y.reshape(x.shape) * scale + bias


def _ref_train(x, variables, group_size, momentum, iterations):
  rows = _f64(x).reshape(-1, x.shape[-1])
  mean = rows.mean(0)
  dev = (rows - mean).reshape(-1, x.shape[-1] // group_size, group_size)
  whitening = _whitening64(np.einsum("mgi,mgj->gij", dev, dev) / len(rows), iterations)
  p, s = variables["params"], variables["batch_stats"]
  y = _apply64(x, mean, whitening, _f64(p["scale"]), _f64(p["bias"]), group_size)
  return (y, momentum * _f64(s["mean"]) + (1 - momentum) * mean,
          momentum * _f64(s["whitening"]) + (1 - momentum) * whitening)


def _module(name, **kwargs):
  if name == "IterNorm":
    return jaxnorm.IterNorm(group_size=4, iterations=4, **kwargs)
  return jaxnorm.DecorrelatedBatchNorm(group_size=4, **kwargs)


def _randomize(variables, seed=1):
  rng = np.random.default_rng(seed)
  p, s = variables["params"], variables["batch_stats"]
  a = rng.normal(size=s["whitening"].shape)
  return {"params": {"scale": jnp.asarray(rng.uniform(0.5, 1.5, p["scale"].shape),
                                          jnp.float32),
                     "bias": jnp.asarray(rng.normal(size=p["bias"].shape), jnp.float32)},
          "batch_stats": {"mean": jnp.asarray(rng.normal(size=s["mean"].shape),
                                              jnp.float32),
                          "whitening": jnp.asarray(s["whitening"] + 0.1 * (
                              a + np.swapaxes(a, -1, -2)), jnp.float32)}}


NAMES = ["DecorrelatedBatchNorm", "IterNorm"]


@pytest.mark.parametrize("name", NAMES)
def test_variables_and_init_leaves_stats(name):
  x = _data() + 3.0
  variables = _module(name, use_running_average=False, momentum=0.0).init(
      jax.random.key(0), x)
  got = {k: (v.shape, v.dtype) for k, v in _flat(variables).items()}
  assert got == {"params/scale": ((8,), jnp.float32), "params/bias": ((8,), jnp.float32),
                 "batch_stats/mean": ((8,), jnp.float32),
                 "batch_stats/whitening": ((2, 4, 4), jnp.float32)}
  np.testing.assert_array_equal(np.asarray(variables["batch_stats"]["mean"]), 0.0)
  np.testing.assert_array_equal(np.asarray(variables["batch_stats"]["whitening"]),
                                np.broadcast_to(np.eye(4), (2, 4, 4)))
  # init needs no batch large enough to whiten (as flax BatchNorm's init).
  _module(name, use_running_average=False).init(jax.random.key(0), x[:1, :1, :1])


@pytest.mark.parametrize("name", NAMES)
def test_training_step_matches_float64_and_updates_stats(name):
  x = _data(seed=2)
  module = _module(name, use_running_average=False, momentum=0.7)
  variables = _randomize(module.init(jax.random.key(0), x))
  y, updates = jax.jit(lambda v, x: module.apply(v, x, mutable=["batch_stats"]))(
      variables, x)
  ref_y, ref_mean, ref_w = _ref_train(x, variables, 4, 0.7,
                                      4 if name == "IterNorm" else None)
  np.testing.assert_allclose(_f64(y), ref_y, rtol=TOL, atol=TOL * np.abs(ref_y).max())
  new = updates["batch_stats"]
  np.testing.assert_allclose(_f64(new["mean"]), ref_mean, rtol=TOL, atol=TOL)
  np.testing.assert_allclose(_f64(new["whitening"]), ref_w, rtol=TOL,
                             atol=TOL * np.abs(ref_w).max())


@pytest.mark.parametrize("name", NAMES)
def test_evaluation_uses_running_stats(name):
  x = _data(seed=3)
  module = _module(name)
  variables = _randomize(module.init(jax.random.key(0), x, use_running_average=True))
  y = module.apply(variables, x, use_running_average=True)
  p, s = variables["params"], variables["batch_stats"]
  expected = _apply64(x, _f64(s["mean"]), _f64(s["whitening"]), _f64(p["scale"]),
                      _f64(p["bias"]), 4)
  np.testing.assert_allclose(_f64(y), expected, rtol=TOL, atol=TOL * np.abs(expected).max())


def test_mask_reaches_the_statistics():
  x = _data((48, 8), seed=4)
  mask = (np.arange(48) % 4 != 0)[:, None]
  module = _module("DecorrelatedBatchNorm", use_running_average=False, momentum=0.0)
  variables = module.init(jax.random.key(0), x)
  _, padded = module.apply(variables, jnp.where(mask, x, 1e5), mask=mask,
                           mutable=["batch_stats"])
  _, alone = module.apply(variables, x[mask[:, 0]], mutable=["batch_stats"])
  for k in ("mean", "whitening"):
    np.testing.assert_allclose(np.asarray(padded["batch_stats"][k]),
                               np.asarray(alone["batch_stats"][k]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype,param_dtype", [(None, jnp.float32), (None, jnp.bfloat16),
                                               (jnp.bfloat16, jnp.float32)])
def test_dtype_rules_follow_flax_batch_norm(dtype, param_dtype):
  x = _data((32, 8), seed=5).astype(jnp.bfloat16)
  ours = jaxnorm.DecorrelatedBatchNorm(group_size=4, use_running_average=False,
                                       dtype=dtype, param_dtype=param_dtype)
  theirs = nn.BatchNorm(use_running_average=False, dtype=dtype, param_dtype=param_dtype)
  variables = ours.init(jax.random.key(0), x)
  y, updates = ours.apply(variables, x, mutable=["batch_stats"])
  y_flax, _ = theirs.apply(theirs.init(jax.random.key(0), x), x, mutable=["batch_stats"])
  assert y.dtype == y_flax.dtype
  assert variables["params"]["scale"].dtype == param_dtype
  assert updates["batch_stats"]["whitening"].dtype == jnp.float32


@pytest.mark.parametrize("name", NAMES)
def test_jitted_optax_training_decreases_the_loss(name):
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
      x = nn.Dense(8)(x)
      x = _module(name, use_running_average=not train)(x)
      return nn.Dense(3)(nn.relu(x))

  rng = np.random.default_rng(6)
  x = jnp.asarray(rng.normal(size=(64, 5)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 3, 64))
  model = Net()
  variables = model.init(jax.random.key(0), x, train=False)
  tx = optax.adam(1e-2)
  params, stats = variables["params"], variables["batch_stats"]
  opt_state = tx.init(params)

  @jax.jit
  def step(params, stats, opt_state):
    def loss_fn(params):
      logits, updates = model.apply({"params": params, "batch_stats": stats}, x,
                                    train=True, mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates
    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    changes, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, changes), updates["batch_stats"], opt_state, loss

  losses = []
  for _ in range(30):
    params, stats, opt_state, loss = step(params, stats, opt_state)
    losses.append(float(loss))
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.05, losses
  (layer_stats,) = stats.values()
  assert not np.allclose(np.asarray(layer_stats["whitening"]), np.eye(4))
  logits = model.apply({"params": params, "batch_stats": stats}, x, train=False)
  assert np.all(np.isfinite(np.asarray(logits)))
