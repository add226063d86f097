"""Tests for the linen dropout family: SpatialDropout, DropPath, AlphaDropout,
GaussianDropout, ClassicDropout, DropConnectDense, ConcreteDropoutDense, and the
call-time ``rate`` of Dropout (schedules) and key discipline inside Flax models.

References: flax.linen.Dense, float64 NumPy formulas and binomial statistics (a keep
fraction of n Bernoulli(q) draws has sigma = sqrt(q (1 - q) / n); we allow 4 sigma).

Runtime: each XLA compilation that contains a PRNG costs about a second on CPU and eager
jax.random calls compile once per shape, so inputs come from NumPy and the tests share
a few shapes (X_SHAPE; one DropConnectDense layout).
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxnorm.linen as jl
from jaxnorm import functional as F


def _to64(a):
  return np.asarray(a, np.float64)


X_SHAPE = (8, 5, 4, 6)  # NHWC, used by every module test


def _x(shape=X_SHAPE, seed=0):
  # Strictly positive, so a zero in the output comes from a mask only.
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.uniform(0.5, 1.5, shape), jnp.float32)


class _DrawKey(nn.Module):
  """Returns the key a top-level module gets from ``make_rng('dropout')``."""

  @nn.compact
  def __call__(self):
    return self.make_rng("dropout")


def _module_key(key):
  """What ``self.make_rng(...)`` yields in a top-level module whose stream is ``key``.

  Flax derives it from the stream's key and the module path, not from the stream
  name, so this is the key a top-level jaxnorm module gets from any stream seeded with
  ``key``.
  """
  return _DrawKey().apply({}, rngs={"dropout": key})


# Keyed noise modules: (constructor, functional twin given the module's key).
NOISE_MODULES = {
    "SpatialDropout": (lambda **kw: jl.SpatialDropout(0.5, **kw),
                       lambda k, x: F.spatial_dropout(k, x, rate=0.5, channel_axis=-1)),
    "SpatialDropoutNCHW": (lambda **kw: jl.SpatialDropout(0.5, channel_axis=1, **kw),
                           lambda k, x: F.spatial_dropout(k, x, rate=0.5,
                                                          channel_axis=1)),
    "DropPath": (lambda **kw: jl.DropPath(0.5, **kw),
                 lambda k, x: F.drop_path(k, x, rate=0.5, mode="row")),
    "DropPathBatch": (lambda **kw: jl.DropPath(0.5, mode="batch", **kw),
                      lambda k, x: F.drop_path(k, x, rate=0.5, mode="batch")),
    "AlphaDropout": (lambda **kw: jl.AlphaDropout(0.3, **kw),
                     lambda k, x: F.alpha_dropout(k, x, rate=0.3)),
    "GaussianDropout": (lambda **kw: jl.GaussianDropout(0.3, **kw),
                        lambda k, x: F.gaussian_dropout(k, x, rate=0.3)),
    "ClassicDropout": (lambda **kw: jl.ClassicDropout(0.4, **kw),
                       lambda k, x: F.classic_dropout(k, x, rate=0.4, train=True)),
}
NAMES = sorted(NOISE_MODULES)


# --------------------------------------------------------------------------------------
# deterministic


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("where", ["constructor", "call"])
def test_deterministic_mode(name, where):
  make, _ = NOISE_MODULES[name]
  x = _x()
  if where == "constructor":
    y = make(deterministic=True).apply({}, x)  # no rng needed either
  else:
    y = make().apply({}, x, deterministic=True)
  if name == "ClassicDropout":
    # Non-inverted dropout: evaluation scales by (1 - rate); float32 rounding 1e-6.
    np.testing.assert_allclose(_to64(y), _to64(x) * (1 - 0.4), rtol=1e-6)
  else:
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x))
  assert y.dtype == x.dtype


@pytest.mark.parametrize("name", NAMES)
def test_training_mode_applies_noise_and_needs_rng(name):
  make, _ = NOISE_MODULES[name]
  x = _x()
  y = make().apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
  assert not np.array_equal(np.asarray(y), np.asarray(x))
  with pytest.raises(Exception, match="dropout"):  # flax.errors.InvalidRngError
    make().apply({}, x, deterministic=False)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_must_be_given(name):
  make, _ = NOISE_MODULES[name]
  with pytest.raises(ValueError, match="deterministic"):
    make().apply({}, _x(), rngs={"dropout": jax.random.key(0)})


# --------------------------------------------------------------------------------------
# rng streams


@pytest.mark.parametrize("name", NAMES)
def test_draws_from_dropout_stream(name):
  make, functional = NOISE_MODULES[name]
  x = _x()
  key = jax.random.key(2)
  y = make().apply({}, x, deterministic=False, rngs={"dropout": key})
  expected = functional(_module_key(key), x)
  np.testing.assert_allclose(_to64(y), _to64(expected), rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(np.asarray(y) != 0, np.asarray(expected) != 0)


@pytest.mark.parametrize("name", NAMES)
def test_rng_collection_selects_stream(name):
  make, functional = NOISE_MODULES[name]
  x = _x()
  k_other, k_dropout = jax.random.key(3), jax.random.key(4)
  y = _to64(make(rng_collection="other").apply(
      {}, x, deterministic=False, rngs={"other": k_other, "dropout": k_dropout}))
  from_other = _to64(functional(_module_key(k_other), x))
  from_dropout = _to64(functional(_module_key(k_dropout), x))
  np.testing.assert_allclose(y, from_other, rtol=1e-6, atol=1e-7)
  assert not np.allclose(y, from_dropout)
  # Only the 'dropout' stream given: the 'other' stream is missing.
  with pytest.raises(Exception, match="other"):
    make(rng_collection="other").apply({}, x, deterministic=False,
                                       rngs={"dropout": k_dropout})


def _two_layer_model(make):
  class TwoLayers(nn.Module):

    @nn.compact
    def __call__(self, x):
      return make()(x, deterministic=False), make()(x, deterministic=False)

  return TwoLayers()


@pytest.mark.parametrize("name", ["Dropout"] + NAMES)
def test_two_layers_one_stream_never_share_a_mask(name):
  make = (lambda: jl.Dropout(0.5)) if name == "Dropout" else NOISE_MODULES[name][0]
  # Same input fed to both layers: identical outputs would mean a shared key.
  x = jnp.ones(X_SHAPE, jnp.float32)
  model = _two_layer_model(make)
  for seed in range(3):
    a, b = model.apply({}, x, rngs={"dropout": jax.random.key(seed)})
    assert not np.array_equal(np.asarray(a), np.asarray(b)), (name, seed)
  if name == "Dropout":
    # Elementwise Bernoulli(0.5) masks of independent keys agree on each of n elements
    # with probability 1/2: the agreement fraction is within 4 sigma of 0.5.
    a, b = (np.asarray(o) != 0 for o in (a, b))
    assert abs(np.mean(a == b) - 0.5) < 4 * math.sqrt(0.25 / a.size)


def test_fold_in_step_keys_give_new_masks_per_step():
  class Net(nn.Module):

    @nn.compact
    def __call__(self, x, train):
      return jl.Dropout(0.5, deterministic=not train)(x)

  x = jnp.ones(X_SHAPE, jnp.float32)
  base = jax.random.key(5)

  @jax.jit
  def step(step_index):
    return Net().apply({}, x, train=True,
                       rngs={"dropout": jax.random.fold_in(base, step_index)})

  masks = [np.asarray(step(s)) != 0 for s in range(6)]
  for i in range(6):
    for j in range(i + 1, 6):
      assert not np.array_equal(masks[i], masks[j]), (i, j)
  np.testing.assert_array_equal(np.asarray(step(3)) != 0, masks[3])  # reproducible


# --------------------------------------------------------------------------------------
# Dropout: rate at call time (schedules)


def test_dropout_traced_call_time_rate_one_trace():
  traces = []
  n = 100_000
  x = jnp.ones((n,), jnp.float32)
  module = jl.Dropout(0.5)  # attribute overridden by the call-time rate

  @jax.jit
  def keep_fraction(rate, key):
    traces.append(1)  # Python side effect: runs once per trace
    y = module.apply({}, x, deterministic=False, rngs={"dropout": key}, rate=rate)
    return jnp.mean(y != 0), jnp.max(y)

  for i, rate in enumerate([0.0, 0.1, 0.3, 0.6, 0.9]):
    frac, y_max = keep_fraction(jnp.float32(rate), jax.random.key(10 + i))
    # Keep fraction of n Bernoulli(1 - rate) draws: 4 sigma (exact 1 at rate 0).
    sigma = math.sqrt(rate * (1 - rate) / n)
    assert abs(float(frac) - (1 - rate)) <= 4 * sigma, (rate, float(frac), sigma)
    # Kept elements are scaled by the call-time rate, not the attribute's.
    assert float(y_max) == pytest.approx(1 / (1 - rate), rel=1e-6)
  assert len(traces) == 1


def test_dropout_call_time_rate_overrides_attribute_static():
  x = _x()
  key = jax.random.key(6)
  y = jl.Dropout(0.9).apply({}, x, deterministic=False, rngs={"dropout": key}, rate=0.2)
  expected = nn.Dropout(0.2).apply({}, x, deterministic=False, rngs={"dropout": key})
  np.testing.assert_array_equal(np.asarray(y), np.asarray(expected))


def test_dropout_call_time_rate_deterministic_is_identity():
  x = _x()
  y = jl.Dropout(0.5).apply({}, x, deterministic=True, rate=0.9)
  np.testing.assert_array_equal(np.asarray(y), np.asarray(x))
  y = jax.jit(lambda r: jl.Dropout(0.5, deterministic=True).apply({}, x, rate=r))(0.9)
  np.testing.assert_array_equal(np.asarray(y), np.asarray(x))


@pytest.mark.parametrize("rate", [-0.1, 1.5])
def test_dropout_call_time_rate_validated(rate):
  with pytest.raises(ValueError, match="rate") as info:
    jl.Dropout(0.5).apply({}, _x(), deterministic=False,
                          rngs={"dropout": jax.random.key(0)}, rate=rate)
  assert str(rate) in str(info.value)


# --------------------------------------------------------------------------------------
# DropConnectDense


D_IN, D_OUT = 48, 64  # one DropConnectDense layout for all its tests


@pytest.fixture(scope="module")
def drop_connect_variables():
  """Initialized params with a nonzero bias (the default init is zeros)."""
  variables = jl.DropConnectDense(D_OUT).init(jax.random.key(0), jnp.zeros((1, D_IN)),
                                               deterministic=True)
  bias = np.random.default_rng(1).normal(size=(D_OUT,)).astype(np.float32)
  return {"params": {"kernel": variables["params"]["kernel"], "bias": jnp.asarray(bias)}}


def test_drop_connect_dense_params_like_flax_dense():
  x = jnp.zeros((1, D_IN))
  ours = jl.DropConnectDense(D_OUT).init(jax.random.key(0), x, deterministic=True)
  theirs = nn.Dense(D_OUT).init(jax.random.key(0), x)
  assert set(ours) == {"params"}
  assert set(ours["params"]) == {"kernel", "bias"}
  shapes = lambda t: jax.tree.map(lambda a: (a.shape, a.dtype), t)
  assert shapes(ours) == shapes(theirs)


def test_drop_connect_dense_deterministic_equals_flax_dense(drop_connect_variables):
  x = jnp.asarray(np.random.default_rng(2).normal(size=(6, D_IN)), jnp.float32)
  y = jl.DropConnectDense(D_OUT, rate=0.5).apply(drop_connect_variables, x,
                                                 deterministic=True)
  expected = nn.Dense(D_OUT).apply(drop_connect_variables, x)
  np.testing.assert_allclose(_to64(y), _to64(expected), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("rate", [0.3, 0.5])
def test_drop_connect_dense_mask_on_kernel_shared_over_batch(drop_connect_variables,
                                                             rate):
  module = jl.DropConnectDense(D_OUT, rate=rate)
  w = _to64(drop_connect_variables["params"]["kernel"])
  b = _to64(drop_connect_variables["params"]["bias"])
  # One batch: D_IN one-hot rows (they read the effective kernel row by row) followed
  # by random rows (they must see the same effective kernel).
  x_rand = np.random.default_rng(3).normal(size=(16, D_IN)).astype(np.float32)
  x = jnp.concatenate([jnp.eye(D_IN), jnp.asarray(x_rand)], axis=0)
  y = _to64(module.apply(drop_connect_variables, x, deterministic=False,
                         rngs={"dropout": jax.random.key(3)}))
  k_eff = y[:D_IN] - b  # row i = effective kernel row i; the bias is never dropped
  # Each kernel entry is 0 (dropped) or W / (1 - rate) (kept); float32 rounding.
  kept = np.isclose(k_eff, w / (1 - rate), rtol=1e-5, atol=1e-6)
  dropped = np.abs(k_eff) < 1e-6
  assert np.all(kept | dropped)
  # Keep fraction of the D_IN * D_OUT kernel entries: Bernoulli(1 - rate), 4 sigma.
  sigma = math.sqrt(rate * (1 - rate) / kept.size)
  assert abs(kept.mean() - (1 - rate)) < 4 * sigma, (kept.mean(), sigma)
  # The rest of the batch uses that same mask: y = x @ (mask * W / (1 - rate)) + b.
  k_masked = np.where(kept, w / (1 - rate), 0.0)
  np.testing.assert_allclose(y[D_IN:], _to64(x_rand) @ k_masked + b, rtol=1e-5,
                             atol=1e-5)


def test_drop_connect_dense_new_mask_per_key(drop_connect_variables):
  module = jl.DropConnectDense(D_OUT, rate=0.5)
  x = jnp.eye(D_IN)
  y1, y2 = (module.apply(drop_connect_variables, x, deterministic=False,
                         rngs={"dropout": jax.random.key(s)}) for s in (1, 2))
  assert not np.array_equal(np.asarray(y1), np.asarray(y2))


# --------------------------------------------------------------------------------------
# ConcreteDropoutDense


def _concrete_reg64(logit, kernel, input_dim, lam_w, lam_p):
  p = 1.0 / (1.0 + math.exp(-float(logit)))
  return (lam_w * float(np.sum(_to64(kernel) ** 2)) / (1 - p)
          + lam_p * input_dim * (p * math.log(p) + (1 - p) * math.log(1 - p)))


@pytest.fixture(scope="module")
def concrete_setup():
  module = jl.ConcreteDropoutDense(4, weight_regularizer=1e-2, dropout_regularizer=5e-2,
                                   init_rate=0.2)
  x = jnp.asarray(np.random.default_rng(7).normal(size=(32, 10)), jnp.float32)
  variables = module.init(jax.random.key(8), x, deterministic=True)
  return module, {"params": variables["params"]}, x


def test_concrete_dropout_dense_params_and_init_rate(concrete_setup):
  _, variables, _ = concrete_setup
  params = variables["params"]
  assert float(jax.nn.sigmoid(params["dropout_logit"])) == pytest.approx(0.2, rel=1e-6)
  assert params["dense"]["kernel"].shape == (10, 4)
  assert params["dense"]["bias"].shape == (4,)


@pytest.mark.parametrize("deterministic", [True, False])
def test_concrete_dropout_dense_sows_regularizer(concrete_setup, deterministic):
  module, variables, x = concrete_setup
  _, state = module.apply(variables, x, deterministic=deterministic,
                          rngs={"dropout": jax.random.key(9)}, mutable=["losses"])
  (reg,) = state["losses"]["concrete_dropout"]
  params = variables["params"]
  expected = _concrete_reg64(params["dropout_logit"], params["dense"]["kernel"],
                             input_dim=10, lam_w=1e-2, lam_p=5e-2)
  # float32 evaluation of the float64 formula: relative 1e-5.
  assert float(reg) == pytest.approx(expected, rel=1e-5)


def test_concrete_dropout_dense_deterministic_equals_dense(concrete_setup):
  module, variables, x = concrete_setup
  y = module.apply(variables, x, deterministic=True, mutable=["losses"])[0]
  expected = nn.Dense(4).apply({"params": variables["params"]["dense"]}, x)
  np.testing.assert_allclose(_to64(y), _to64(expected), rtol=1e-6, atol=1e-6)


def test_concrete_dropout_dense_training_step_moves_logit(concrete_setup):
  module, variables, x = concrete_setup
  target = jnp.asarray(np.random.default_rng(10).normal(size=(32, 4)), jnp.float32)
  tx = optax.sgd(0.1)

  @jax.jit
  def train_step(params, opt_state, key):
    def loss_fn(params):
      y, state = module.apply({"params": params}, x, deterministic=False,
                              rngs={"dropout": key}, mutable=["losses"])
      reg = sum(jax.tree.leaves(state["losses"]))
      return jnp.mean((y - target) ** 2) + reg

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, grads, loss

  params = variables["params"]
  new_params, _, grads, loss = train_step(params, tx.init(params), jax.random.key(11))
  g = float(grads["dropout_logit"])
  assert np.isfinite(float(loss))
  assert np.isfinite(g) and g != 0.0
  assert float(new_params["dropout_logit"]) != float(params["dropout_logit"])


@pytest.mark.parametrize("init_rate", [0.0, 1.0])
def test_concrete_dropout_dense_endpoint_init_rate_error_names_argument(init_rate):
  with pytest.raises(ValueError, match="init_rate"):
    jl.ConcreteDropoutDense(3, init_rate=init_rate).init(
        jax.random.key(0), jnp.ones((2, 4)), deterministic=True)


@pytest.mark.parametrize("init_rate", [-0.1, 1.5])
def test_concrete_dropout_dense_bad_init_rate_raises(init_rate):
  with pytest.raises(ValueError, match="init_rate") as info:
    jl.ConcreteDropoutDense(3, init_rate=init_rate).init(
        jax.random.key(0), jnp.ones((2, 4)), deterministic=True)
  assert str(init_rate) in str(info.value)
