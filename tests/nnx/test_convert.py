"""Checkpoints move between the linen and NNX front-ends (state_from_linen / state_to_linen)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxnorm.linen as jl
from jaxnorm import nnx as jnnx
from jaxnorm import training


class LinenNet(nn.Module):
  """Auto-named linen modules: Dense_0, BatchNorm_0, BatchRenorm_0, Dropout_0, Dense_1."""

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(8)(x)
    x = jl.BatchNorm(use_running_average=not train, momentum=0.8)(x)
    x = jl.BatchRenorm(use_running_average=not train, momentum=0.8)(nn.relu(x))
    x = jl.Dropout(0.2, deterministic=not train)(x)
    return nn.Dense(3)(x)


class NNXNet(nnx.Module):

  def __init__(self, rngs):
    self.linear1 = nnx.Linear(5, 8, rngs=rngs)
    self.bn = jnnx.BatchNorm(8, momentum=0.8, rngs=rngs)
    self.renorm = jnnx.BatchRenorm(8, momentum=0.8, rngs=rngs)
    self.drop = jnnx.Dropout(0.2, rngs=rngs)
    self.linear2 = nnx.Linear(8, 3, rngs=rngs)

  def __call__(self, x):
    x = self.renorm(nnx.relu(self.bn(self.linear1(x))))
    return self.linear2(self.drop(x))


RENAME = {"Dense_0": "linear1", "BatchNorm_0": "bn", "BatchRenorm_0": "renorm",
          "Dense_1": "linear2"}


def _x(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _trained_linen():
  model = LinenNet()
  variables = model.init(jax.random.key(0), _x((2, 5)), train=False)
  state = training.TrainState.create(apply_fn=model.apply, params=variables["params"],
                                     batch_stats=variables["batch_stats"],
                                     tx=optax.sgd(0.1), rng=jax.random.key(1))
  step = jax.jit(training.make_train_step())
  for i in range(3):
    state, _ = step(state, (_x((16, 5), seed=i), jnp.arange(16) % 3))
  return model, state.variables


def test_linen_checkpoint_runs_in_nnx_and_back_exactly():
  model, variables = _trained_linen()
  net = NNXNet(nnx.Rngs(5))
  nnx.update(net, jnnx.state_from_linen(net, variables, rename=RENAME))
  net.eval()
  x = _x((7, 5), seed=9)
  np.testing.assert_allclose(net(x), model.apply(variables, x, train=False), rtol=1e-6,
                             atol=1e-6)
  assert int(net.renorm.step[...]) == 3
  back = jnnx.state_to_linen(net, rename=RENAME)
  flat_back = jax.tree_util.tree_flatten_with_path(back)[0]
  flat_orig = jax.tree_util.tree_flatten_with_path(jax.device_get(dict(variables)))[0]
  assert [p for p, _ in flat_back] == [p for p, _ in flat_orig]
  for (path, a), (_, b) in zip(flat_back, flat_orig):
    np.testing.assert_array_equal(a, b, err_msg=str(path))


def test_named_linen_modules_need_no_rename():
  class Named(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.Dense(8, name="linear1")(x)
      x = jl.BatchNorm(use_running_average=True, name="bn")(x)
      return x

  class Small(nnx.Module):
    def __init__(self, rngs):
      self.linear1 = nnx.Linear(5, 8, rngs=rngs)
      self.bn = jnnx.BatchNorm(8, use_running_average=True, rngs=rngs)

    def __call__(self, x):
      return self.bn(self.linear1(x))

  variables = Named().init(jax.random.key(0), _x((2, 5)))
  net = Small(nnx.Rngs(3))
  nnx.update(net, jnnx.state_from_linen(net, variables))
  np.testing.assert_allclose(net(_x((4, 5))), Named().apply(variables, _x((4, 5))),
                             rtol=1e-6)


def test_flax_linen_batch_norm_checkpoint_loads_into_jaxnorm_nnx():
  layer = nn.BatchNorm(use_running_average=True)
  variables = layer.init(jax.random.key(0), _x((4, 6)))
  variables = jax.tree.map(lambda v: v + 0.5, variables)
  ours = jnnx.BatchNorm(6, use_running_average=True, rngs=nnx.Rngs(0))
  nnx.update(ours, jnnx.state_from_linen(ours, variables))
  x = _x((4, 6), seed=2)
  np.testing.assert_allclose(ours(x), layer.apply(variables, x), rtol=1e-5, atol=1e-6)


def test_lists_map_through_prefix_renames():
  class Stack(nnx.Module):
    def __init__(self, rngs):
      self.blocks = nnx.List([jnnx.LayerNorm(4, rngs=rngs) for _ in range(2)])

  net = Stack(nnx.Rngs(0))
  variables = jnnx.state_to_linen(net, rename={"blocks_0": "blocks/0", "blocks_1": "blocks/1"})
  assert sorted(variables["params"]) == ["blocks_0", "blocks_1"]
  restored = jnnx.state_from_linen(net, variables,
                                   rename={"blocks_0": "blocks/0", "blocks_1": "blocks/1"})
  assert sorted(nnx.to_flat_state(restored).paths) == sorted(
      nnx.to_flat_state(nnx.state(net, nnx.Param)).paths)


def test_mismatches_are_listed_with_the_fix():
  _, variables = _trained_linen()
  net = NNXNet(nnx.Rngs(0))
  with pytest.raises(ValueError) as error:
    jnnx.state_from_linen(net, variables)          # auto names, no rename
  message = str(error.value)
  assert "jaxnorm.nnx.state_from_linen" in message
  assert "NNX linear1/kernel (Param): no linen variable params/linear1/kernel" in message
  assert "linen params/Dense_0/kernel: no NNX variable takes it" in message
  assert "rename=" in message
  wrong = dict(RENAME, Dense_0="linear2", Dense_1="linear1")
  with pytest.raises(ValueError, match="NNX linear1/kernel has shape \\(5, 8\\)"):
    jnnx.state_from_linen(net, variables, rename=wrong)
