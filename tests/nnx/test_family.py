"""The rest of the NNX family against the linen modules (tested against flax.linen and
float64 references in tests/linen) and the dropout family's wiring and modes.

An NNX layer and its linen namesake share their variables (``state_to_linen``); then
their outputs and new running statistics must agree in training and evaluation, with
masks, over several steps.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxnorm.functional as F
import jaxnorm.linen as jl
from jaxnorm import nnx as jnnx


def _x(shape, seed=0, loc=0.3):
  return jnp.asarray(loc + np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _randomize(layer, seed=1):
  """Non-trivial scale/bias/weights (positive where they scale)."""
  rng = np.random.default_rng(seed)
  state = nnx.state(layer, nnx.Param)
  nnx.update(layer, jax.tree.map(
      lambda leaf: (leaf * rng.uniform(0.5, 1.5, leaf.shape) + 0.2 * rng.normal(
          size=leaf.shape)).astype(leaf.dtype), state))


# (NNX layer, linen layer, input shape, batch statistics?)
FAMILY = {
    "BatchRenorm": (lambda: jnnx.BatchRenorm(4, r_max=1.5, d_max=0.5, momentum=0.7,
                                             rngs=nnx.Rngs(0)),
                    lambda: jl.BatchRenorm(r_max=1.5, d_max=0.5, momentum=0.7),
                    (16, 4), True),
    "BatchRenorm-axis1": (lambda: jnnx.BatchRenorm(3, axis=1, warmup_steps=2,
                                                   rngs=nnx.Rngs(0)),
                          lambda: jl.BatchRenorm(axis=1, warmup_steps=2), (8, 3, 5), True),
    "GhostBatchNorm": (lambda: jnnx.GhostBatchNorm(4, virtual_batch_size=4, momentum=0.8,
                                                   rngs=nnx.Rngs(0)),
                       lambda: jl.GhostBatchNorm(virtual_batch_size=4, momentum=0.8),
                       (16, 4), True),
    "SwitchNorm": (lambda: jnnx.SwitchNorm(4, momentum=0.8, rngs=nnx.Rngs(0)),
                   lambda: jl.SwitchNorm(momentum=0.8), (6, 3, 3, 4), True),
    "EvoNormB0": (lambda: jnnx.EvoNormB0(4, momentum=0.8, rngs=nnx.Rngs(0)),
                  lambda: jl.EvoNormB0(momentum=0.8), (6, 3, 3, 4), True),
    "EvoNormS0": (lambda: jnnx.EvoNormS0(8, num_groups=2, rngs=nnx.Rngs(0)),
                  lambda: jl.EvoNormS0(num_groups=2), (3, 4, 4, 8), False),
    "BatchNorm-frozen": (lambda: jnnx.BatchNorm(4, freeze_stats=True, rngs=nnx.Rngs(0)),
                         lambda: jl.BatchNorm(freeze_stats=True), (16, 4), True),
    "BatchNorm-adabn": (lambda: jnnx.BatchNorm(4, eval_with_batch_stats=True,
                                               rngs=nnx.Rngs(0)),
                        lambda: jl.BatchNorm(eval_with_batch_stats=True), (16, 4), True),
}


@nnx.jit(static_argnames=("train",))
def _nnx_call(layer, x, mask, *, train):
  if isinstance(layer, jnnx.EvoNormS0):
    return layer(x, mask=mask)
  return layer(x, use_running_average=not train, mask=mask)


@functools.partial(jax.jit, static_argnames=("module", "train", "stateful"))
def _linen_call(module, variables, x, mask, *, train, stateful):
  if not stateful:
    return module.apply(variables, x, mask=mask), variables
  y, updates = module.apply(variables, x, use_running_average=not train, mask=mask,
                            mutable=["batch_stats"])
  return y, {**variables, **updates}


@pytest.mark.parametrize("name", list(FAMILY))
@pytest.mark.parametrize("masked", [False, True], ids=["dense", "masked"])
def test_family_matches_linen_over_steps(name, masked):
  make_nnx, make_linen, shape, stateful = FAMILY[name]
  layer, module = make_nnx(), make_linen()
  _randomize(layer)
  variables = jnnx.state_to_linen(layer)
  # The linen module creates the same variable tree.
  linen_init = module.init(jax.random.key(0), _x(shape), **(
      {"use_running_average": True} if stateful else {}))
  assert jax.tree.map(jnp.shape, dict(linen_init)) == jax.tree.map(jnp.shape, variables)
  for step in range(2):
    x = _x(shape, seed=step, loc=0.5 * step)
    mask = None
    if masked:
      mask = np.random.default_rng(10 + step).random(shape[:1] + (1,) * (len(shape) - 1)) < 0.8
      mask[:4] = True
      mask = jnp.asarray(mask)
    for train in (True, False):
      y_nnx = _nnx_call(layer, x, mask, train=train)
      y_linen, variables = _linen_call(module, variables, x, mask, train=train,
                                       stateful=stateful)
      np.testing.assert_allclose(y_nnx, y_linen, rtol=1e-5, atol=1e-5,
                                 err_msg=f"step {step} train {train}")
      converted = jnnx.state_to_linen(layer)
      for leaf_nnx, leaf_linen in zip(jax.tree.leaves(converted), jax.tree.leaves(variables),
                                      strict=True):
        np.testing.assert_allclose(leaf_nnx, leaf_linen, rtol=1e-6, atol=1e-6)


def test_batch_renorm_step_is_a_batch_stat_and_counts_training_calls():
  layer = jnnx.BatchRenorm(4, rngs=nnx.Rngs(0))
  assert sorted(nnx.state(layer, nnx.BatchStat)) == ["mean", "step", "var"]
  x = _x((8, 4))
  layer(x)
  layer(x)
  layer.eval()
  layer(x)
  assert int(layer.step[...]) == 2


def test_train_eval_and_view_reach_every_family_layer():
  class Model(nnx.Module):
    def __init__(self, rngs):
      self.renorm = jnnx.BatchRenorm(4, rngs=rngs)
      self.ghost = jnnx.GhostBatchNorm(4, virtual_batch_size=4, rngs=rngs)
      self.switch = jnnx.SwitchNorm(4, rngs=rngs)
      self.evo = jnnx.EvoNormB0(4, rngs=rngs)
      self.drops = nnx.List([cls(0.2, rngs=rngs) for cls in (
          jnnx.SpatialDropout, jnnx.DropPath, jnnx.AlphaDropout, jnnx.GaussianDropout,
          jnnx.ClassicDropout)])
      self.connect = jnnx.DropConnectLinear(4, 4, rngs=rngs)

  model = Model(nnx.Rngs(0))
  model.eval()
  flags = [(getattr(m, "use_running_average", None), getattr(m, "deterministic", None))
           for _, m in nnx.iter_modules(model) if m is not model and not isinstance(m, nnx.List)]
  assert all(flag in (True, None) for pair in flags for flag in pair)
  view = nnx.view(model, use_running_average=False, deterministic=False)
  assert not view.renorm.use_running_average and not view.drops[0].deterministic
  assert model.renorm.use_running_average  # the view leaves the model as it was


@pytest.mark.parametrize("layer,reference", [
    (jnnx.SpatialDropout(0.3, rngs=nnx.Rngs(0)),
     lambda k, x: F.spatial_dropout(k, x, rate=0.3)),
    (jnnx.SpatialDropout(0.3, channel_axis=1, rngs=nnx.Rngs(0)),
     lambda k, x: F.spatial_dropout(k, x, rate=0.3, channel_axis=1)),
    (jnnx.DropPath(0.3, rngs=nnx.Rngs(0)), lambda k, x: F.drop_path(k, x, rate=0.3)),
    (jnnx.DropPath(0.3, mode="batch", rngs=nnx.Rngs(0)),
     lambda k, x: F.drop_path(k, x, rate=0.3, mode="batch")),
    (jnnx.AlphaDropout(0.3, rngs=nnx.Rngs(0)), lambda k, x: F.alpha_dropout(k, x, rate=0.3)),
    (jnnx.GaussianDropout(0.3, rngs=nnx.Rngs(0)),
     lambda k, x: F.gaussian_dropout(k, x, rate=0.3)),
    (jnnx.ClassicDropout(0.3, rngs=nnx.Rngs(0)),
     lambda k, x: F.classic_dropout(k, x, rate=0.3, train=True)),
], ids=["spatial", "spatial-nchw", "drop-path", "drop-path-batch", "alpha", "gaussian",
        "classic"])
def test_dropout_family_wiring_and_modes(layer, reference):
  x = _x((4, 3, 3, 6))
  key = jax.random.key(5)
  np.testing.assert_array_equal(layer(x, rngs=key), reference(key, x))
  # The layer's own stream: a forked key per call, as flax.nnx.Dropout draws it.
  stream = nnx.Rngs(0)["dropout"].fork()
  np.testing.assert_array_equal(layer(x), reference(stream(), x))
  np.testing.assert_array_equal(layer(x), reference(stream(), x))
  layer.eval()
  expected_eval = x * 0.7 if isinstance(layer, jnnx.ClassicDropout) else x
  np.testing.assert_allclose(layer(x), expected_eval, rtol=1e-6)
  layer.train()
  np.testing.assert_allclose(layer(x, deterministic=True), expected_eval, rtol=1e-6)


def test_drop_connect_linear_matches_nnx_linear_and_linen_dense():
  layer = jnnx.DropConnectLinear(5, 3, rate=0.4, rngs=nnx.Rngs(0))
  linear = nnx.Linear(5, 3, rngs=nnx.Rngs(0))
  assert jax.tree.map(jnp.shape, nnx.state(layer, nnx.Param)) == jax.tree.map(
      jnp.shape, nnx.state(linear, nnx.Param))
  np.testing.assert_array_equal(layer.kernel[...], linear.kernel[...])
  x = _x((4, 5))
  np.testing.assert_allclose(layer(x, deterministic=True), linear(x), rtol=1e-6)
  key = jax.random.key(2)
  dropped = F.dropout(key, layer.kernel[...], rate=0.4)
  np.testing.assert_allclose(layer(x, rngs=key), x @ dropped + layer.bias[...], rtol=1e-6)
  module = jl.DropConnectDense(3, rate=0.4)
  np.testing.assert_allclose(
      module.apply(jnnx.state_to_linen(layer), x, deterministic=True),
      layer(x, deterministic=True), rtol=1e-6)


def test_concrete_dropout_linear_matches_linen():
  layer = jnnx.ConcreteDropoutLinear(5, 3, init_rate=0.2, rngs=nnx.Rngs(0))
  module = jl.ConcreteDropoutDense(3, init_rate=0.2)
  x = _x((4, 5))
  variables = module.init(jax.random.key(0), x, deterministic=True)
  assert jax.tree.map(jnp.shape, variables["params"]) == jax.tree.map(
      jnp.shape, jnnx.state_to_linen(layer)["params"])
  variables = jnnx.state_to_linen(layer)
  y, sown = module.apply(variables, x, deterministic=True, mutable=["losses"])
  np.testing.assert_allclose(layer(x, deterministic=True), y, rtol=1e-6)
  np.testing.assert_allclose(layer.regularizer(), sown["losses"]["concrete_dropout"][0],
                             rtol=1e-6)
  np.testing.assert_allclose(jax.nn.sigmoid(layer.dropout_logit[...]), 0.2, rtol=1e-6)
  key = jax.random.key(3)
  expected = layer.dense(F.concrete_dropout(key, x, logit=layer.dropout_logit[...]))
  np.testing.assert_allclose(layer(x, rngs=key), expected, rtol=1e-6)
  with pytest.raises(ValueError, match="init_rate must be in the open interval"):
    jnnx.ConcreteDropoutLinear(5, 3, init_rate=1.0, rngs=nnx.Rngs(0))


def test_family_errors_name_the_layer():
  with pytest.raises(ValueError, match="jaxnorm.nnx.BatchRenorm: the layer was built with "
                                       "num_features=4"):
    jnnx.BatchRenorm(4, rngs=nnx.Rngs(0))(jnp.ones((8, 5)))
  with pytest.raises(ValueError, match="(?s)jaxnorm.nnx.SwitchNorm: no `use_running_average`"):
    jnnx.SwitchNorm(4, use_running_average=None, rngs=nnx.Rngs(0))(jnp.ones((8, 2, 4)))
  with pytest.raises(ValueError, match="jaxnorm.nnx.EvoNormS0: num_groups=3 does not divide"):
    jnnx.EvoNormS0(8, num_groups=3, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="no rngs were given"):
    jnnx.GaussianDropout(0.3)(jnp.ones((2, 2)))
