"""NNX DecorrelatedBatchNorm and IterNorm against their linen twins on the same variables.

The linen modules are tested against float64 references in tests/linen and
tests/functional; here the NNX layer and the linen module share their variables
(``state_to_linen``) and must agree on outputs, new running statistics and gradients,
in training and evaluation, with masks, over several steps.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxnorm.linen as jl
from jaxnorm import nnx as jnnx

LAYERS = {
    "DecorrelatedBatchNorm": (
        lambda: jnnx.DecorrelatedBatchNorm(8, group_size=4, momentum=0.8, rngs=nnx.Rngs(0)),
        lambda: jl.DecorrelatedBatchNorm(group_size=4, momentum=0.8)),
    "IterNorm": (
        lambda: jnnx.IterNorm(8, num_groups=2, group_size=None, iterations=3, momentum=0.8,
                              rngs=nnx.Rngs(0)),
        lambda: jl.IterNorm(num_groups=2, group_size=None, iterations=3, momentum=0.8)),
}


def _x(shape, seed=0, loc=0.3):
  rng = np.random.default_rng(seed)
  mixing = rng.normal(size=(shape[-1], shape[-1]))  # correlated features
  return jnp.asarray(loc + rng.normal(size=shape) @ mixing, jnp.float32)


def _randomize(layer, seed=1):
  rng = np.random.default_rng(seed)
  state = nnx.state(layer, nnx.Param)
  nnx.update(layer, jax.tree.map(
      lambda leaf: (leaf * rng.uniform(0.5, 1.5, leaf.shape)
                    + 0.2 * rng.normal(size=leaf.shape)).astype(leaf.dtype), state))


@nnx.jit(static_argnames=("train",))
def _nnx_call(layer, x, mask, *, train):
  return layer(x, use_running_average=not train, mask=mask)


@functools.partial(jax.jit, static_argnames=("module", "train"))
def _linen_call(module, variables, x, mask, *, train):
  y, updates = module.apply(variables, x, use_running_average=not train, mask=mask,
                            mutable=["batch_stats"])
  return y, {**variables, **updates}


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("masked", [False, True], ids=["dense", "masked"])
def test_matches_linen_over_steps(name, masked):
  make_nnx, make_linen = LAYERS[name]
  layer, module = make_nnx(), make_linen()
  _randomize(layer)
  variables = jnnx.state_to_linen(layer)
  shape = (24, 8)
  linen_init = module.init(jax.random.key(0), _x(shape), use_running_average=True)
  assert jax.tree.map(jnp.shape, dict(linen_init)) == jax.tree.map(jnp.shape, variables)
  for step in range(2):
    x = _x(shape, seed=step, loc=0.5 * step)
    mask = None
    if masked:
      mask = np.random.default_rng(10 + step).random((shape[0], 1)) < 0.8
      mask[:12] = True
      mask = jnp.asarray(mask)
    for train in (True, False):
      y_nnx = _nnx_call(layer, x, mask, train=train)
      y_linen, variables = _linen_call(module, variables, x, mask, train=train)
      np.testing.assert_allclose(y_nnx, y_linen, rtol=1e-5, atol=1e-5,
                                 err_msg=f"step {step} train {train}")
      for leaf_nnx, leaf_linen in zip(jax.tree.leaves(jnnx.state_to_linen(layer)),
                                      jax.tree.leaves(variables), strict=True):
        np.testing.assert_allclose(leaf_nnx, leaf_linen, rtol=1e-6, atol=1e-6)
  # The running statistics moved away from their initial values.
  assert not np.allclose(layer.whitening[...], linen_init["batch_stats"]["whitening"])


@pytest.mark.parametrize("name", list(LAYERS))
def test_gradients_match_linen(name):
  make_nnx, make_linen = LAYERS[name]
  layer, module = make_nnx(), make_linen()
  _randomize(layer)
  variables = jnnx.state_to_linen(layer)
  x = _x((24, 8), seed=3)
  weights = jnp.asarray(np.random.default_rng(4).normal(size=(24, 8)), jnp.float32)

  def nnx_loss(layer, x):
    return jnp.sum(weights * layer(x, use_running_average=False) ** 2)

  def linen_loss(params, x):
    y, _ = module.apply({**variables, "params": params}, x, use_running_average=False,
                        mutable=["batch_stats"])
    return jnp.sum(weights * y ** 2)

  grads_nnx, gx_nnx = nnx.grad(nnx_loss, argnums=(0, 1))(layer, x)
  grads_linen, gx_linen = jax.grad(linen_loss, argnums=(0, 1))(variables["params"], x)
  np.testing.assert_allclose(gx_nnx, gx_linen, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(grads_nnx["scale"][...], grads_linen["scale"], rtol=1e-4,
                             atol=1e-5)
  np.testing.assert_allclose(grads_nnx["bias"][...], grads_linen["bias"], rtol=1e-4,
                             atol=1e-5)


def test_modes_and_view():
  class Model(nnx.Module):

    def __init__(self, rngs):
      self.dbn = jnnx.DecorrelatedBatchNorm(8, group_size=4, rngs=rngs)
      self.it = jnnx.IterNorm(8, group_size=8, rngs=rngs)

    def __call__(self, x):
      return self.it(self.dbn(x))

  model = Model(nnx.Rngs(0))
  x = _x((16, 8))
  model.eval()
  before = nnx.state(model, nnx.BatchStat)
  model(x)
  assert all(np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(before), jax.tree.leaves(nnx.state(model, nnx.BatchStat))))
  model.train()
  model(x)
  assert not np.allclose(model.dbn.mean[...], 0.0)
  assert not np.allclose(model.it.whitening[...], np.eye(8))
  view = nnx.view(model, use_running_average=True)
  assert view.dbn.use_running_average and view.it.use_running_average


def test_variables_are_float32_batch_stats_and_params():
  layer = jnnx.IterNorm(8, group_size=4, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  assert isinstance(layer.mean, nnx.BatchStat) and isinstance(layer.whitening, nnx.BatchStat)
  assert layer.mean.dtype == jnp.float32 and layer.whitening.dtype == jnp.float32
  assert isinstance(layer.scale, nnx.Param) and layer.scale.dtype == jnp.bfloat16
  assert jnnx.DecorrelatedBatchNorm(8, group_size=4, use_scale=False, use_bias=False,
                                    rngs=nnx.Rngs(0)).scale is None


def test_errors_name_the_layer():
  layer = jnnx.DecorrelatedBatchNorm(8, group_size=4, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="DecorrelatedBatchNorm"):
    layer(jnp.ones((16, 6)))
  with pytest.raises(ValueError, match="use_running_average"):
    jnnx.IterNorm(8, group_size=4, use_running_average=None, rngs=nnx.Rngs(0))(
        jnp.ones((16, 8)))
  with pytest.raises(ValueError, match="init_whitening_stats"):
    jnnx.IterNorm(8, group_size=3, rngs=nnx.Rngs(0))


# --------------------------------------------------------------------------- RevIN


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("masked", [False, True], ids=["dense", "masked"])
def test_revin_matches_linen(affine, masked):
  layer = jnnx.RevIN(3, affine=affine, rngs=nnx.Rngs(0))
  if affine:
    _randomize(layer)
  module = jl.RevIN(num_features=3, affine=affine)
  variables = jnnx.state_to_linen(layer)
  x = 5.0 + jnp.asarray(np.random.default_rng(0).normal(size=(4, 12, 3)), jnp.float32)
  mask = (jnp.arange(12)[None, :, None] < jnp.asarray([12, 9, 7, 12])[:, None, None]
          if masked else None)
  y_future = jnp.asarray(np.random.default_rng(1).normal(size=(4, 5, 3)), jnp.float32)

  def nnx_out(layer, x):
    h, stats = layer(x, mask=mask)
    return h, layer.denormalize(y_future + h[:, :5], stats)

  def linen_out(variables, x):
    h, stats = module.apply(variables, x, mask=mask)
    return h, module.apply(variables, y_future + h[:, :5], stats,
                           method=module.denormalize)

  for got, want in zip(nnx_out(layer, x), linen_out(variables, x)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  loss_nnx = lambda layer, x: jnp.sum(nnx_out(layer, x)[1] ** 2)
  loss_linen = lambda variables, x: jnp.sum(linen_out(variables, x)[1] ** 2)
  grads_nnx, gx_nnx = nnx.grad(loss_nnx, argnums=(0, 1))(layer, x)
  grads_linen, gx_linen = jax.grad(loss_linen, argnums=(0, 1))(variables, x)
  np.testing.assert_allclose(gx_nnx, gx_linen, rtol=1e-4, atol=1e-4)
  if affine:
    for name in ("scale", "bias"):
      np.testing.assert_allclose(grads_nnx[name][...], grads_linen["params"][name],
                                 rtol=1e-4, atol=1e-4)
