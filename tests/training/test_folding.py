"""BN folding: the folded network without BN reproduces the evaluation outputs."""

import flax.linen as nn
import jax
import numpy as np
import pytest

import jaxnorm
from jaxnorm import training


class MLP(nn.Module):
  use_bn: bool = True

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(32, use_bias=not self.use_bn)(x)  # BN makes the bias redundant
    if self.use_bn:
      x = jaxnorm.BatchNorm(use_running_average=not train, epsilon=1e-3)(x)
    x = nn.relu(x)
    x = nn.Dense(16)(x)
    if self.use_bn:
      x = nn.BatchNorm(use_running_average=not train)(x)
    return nn.Dense(5)(nn.relu(x))


class CNN(nn.Module):
  use_bn: bool = True

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(8, (3, 3))(x)
    if self.use_bn:
      x = jaxnorm.BatchNorm(use_running_average=not train)(x)
    x = nn.relu(x)
    return nn.Dense(4)(x.mean((1, 2)))


def _trained_variables(model, x):
  variables = model.init(jax.random.key(0), x, train=False)
  for i in range(5):  # a few EMA updates so the statistics are not (0, 1)
    _, updates = model.apply(variables, x * (1 + 0.1 * i) + i, train=True,
                             mutable=["batch_stats"])
    variables = {**variables, **updates}
  # Non-trivial BN affine parameters.
  params = jax.tree_util.tree_map_with_path(
      lambda path, p: p * 1.7 + 0.3 if "BatchNorm" in str(path) else p, variables["params"])
  return {**variables, "params": params}


@pytest.mark.parametrize("network, shape", [(MLP, (64, 10)), (CNN, (8, 6, 6, 3))])
def test_folded_network_matches(network, shape):
  x = jax.random.normal(jax.random.key(1), shape) * 2 + 1
  variables = _trained_variables(network(), x)
  pairs = training.find_foldable_pairs(network().apply, variables, x, train=False)
  assert len(pairs) == (2 if network is MLP else 1)
  folded = training.fold_batch_norm(variables, pairs)
  assert not any("BatchNorm" in name for name in folded)
  expected = network().apply(variables, x, train=False)
  got = network(use_bn=False).apply({"params": folded}, x, train=False)
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-5)


def test_pairs_name_the_layers_and_epsilon():
  x = np.ones((4, 10), np.float32)
  variables = MLP().init(jax.random.key(0), x, train=False)
  pairs = training.find_foldable_pairs(MLP().apply, variables, x, train=False)
  assert pairs == [training.FoldPair(("Dense_0",), ("BatchNorm_0",), 1e-3),
                   training.FoldPair(("Dense_1",), ("BatchNorm_1",), 1e-5)]


def test_bn_not_after_a_linear_layer_is_not_folded():
  class BNFirst(nn.Module):
    @nn.compact
    def __call__(self, x, train):
      x = jaxnorm.BatchNorm(use_running_average=not train)(x)
      return nn.Dense(3)(nn.relu(x))

  x = np.ones((4, 5), np.float32)
  variables = BNFirst().init(jax.random.key(0), x, train=False)
  assert training.find_foldable_pairs(BNFirst().apply, variables, x, train=False) == []


def test_feature_mismatch_is_an_error():
  x = np.ones((4, 10), np.float32)
  variables = MLP().init(jax.random.key(0), x, train=False)
  wrong = training.FoldPair(("Dense_0",), ("BatchNorm_1",), 1e-5)
  with pytest.raises(ValueError, match=r"BatchNorm_1 has statistics of shape \(16,\) but "
                     r"Dense_0 has 32 output features"):
    training.fold_batch_norm(variables, [wrong])


@pytest.mark.parametrize("var", [np.nan, -1e-3, -0.5])
def test_non_finite_folded_weights_are_an_error(var):
  """A NaN running variance, or var + epsilon <= 0, would fold into dead weights."""
  x = np.ones((4, 10), np.float32)
  variables = MLP().init(jax.random.key(0), x, train=False)
  pairs = training.find_foldable_pairs(MLP().apply, variables, x, train=False)
  stats = jax.tree.map(lambda a: a, variables["batch_stats"])
  stats["BatchNorm_0"]["var"] = stats["BatchNorm_0"]["var"].at[3].set(var)
  with pytest.raises(ValueError, match="folding BatchNorm_0 into Dense_0 gives non-finite"):
    training.fold_batch_norm({**variables, "batch_stats": stats}, pairs)
