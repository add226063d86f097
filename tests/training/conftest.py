"""Small models and data shared by the training-toolkit tests."""

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

import jaxnorm
from jaxnorm import training


class SmallNet(nn.Module):
  """Dense -> BatchNorm -> ReLU -> Dropout -> Dense: every piece the toolkit threads."""

  momentum: float = 0.9

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(16)(x)
    x = jaxnorm.BatchNorm(use_running_average=not train, momentum=self.momentum)(x)
    x = nn.relu(x)
    x = jaxnorm.Dropout(0.25, deterministic=not train)(x)
    return nn.Dense(3)(x)


@pytest.fixture
def toy_data():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(96, 6)).astype(np.float32)
  y = (x[:, 0] + x[:, 1] > 0).astype(np.int32) + (x[:, 2] > 1).astype(np.int32)
  return x, y


def make_state(seed=0, tx=None, model=None):
  model = model or SmallNet()
  variables = model.init(jax.random.key(seed), np.zeros((2, 6), np.float32), train=False)
  return training.TrainState.create(
      apply_fn=model.apply, params=variables["params"],
      batch_stats=variables["batch_stats"], tx=tx or optax.sgd(0.1, momentum=0.9),
      rng=jax.random.key(seed + 100))


@pytest.fixture
def state_factory():
  return make_state


def assert_trees_equal(a, b):
  """Same leaf paths and bitwise-equal leaves (static fields such as ``tx`` ignored)."""
  leaves_a = jax.tree_util.tree_flatten_with_path(a)[0]
  leaves_b = jax.tree_util.tree_flatten_with_path(b)[0]
  assert [p for p, _ in leaves_a] == [p for p, _ in leaves_b]
  for (path, la), (_, lb) in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(_bits(la), _bits(lb), err_msg=str(path))


def _bits(leaf):
  """A leaf as a NumPy array; a typed PRNG key as its raw data (and its impl kept)."""
  if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
    return np.asarray(jax.random.key_data(leaf))
  return np.asarray(leaf)


@pytest.fixture
def trees_equal():
  return assert_trees_equal
