"""jaxnorm.nnx.Dropout vs flax.nnx.Dropout: masks, keys, modes, edge rates and errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxnorm import nnx as jnnx


def _x(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


class _Net(nnx.Module):
  """Two dropout layers (different shapes) around a linear layer."""

  def __init__(self, lib, rngs):
    self.drop1 = lib.Dropout(0.3, rngs=rngs)
    self.linear = nnx.Linear(6, 4, rngs=rngs)
    self.drop2 = lib.Dropout(0.5, broadcast_dims=(0,), rngs=rngs)

  def __call__(self, x):
    return self.drop2(self.linear(self.drop1(x)))


@pytest.mark.parametrize("rngs", [lambda: nnx.Rngs(0), lambda: nnx.Rngs(params=1, dropout=2)],
                         ids=["default-stream", "dropout-stream"])
def test_same_masks_as_flax_call_after_call(rngs):
  theirs, ours = _Net(nnx, rngs()), _Net(jnnx, rngs())
  x = _x((5, 6))
  for _ in range(3):   # each call advances the layers' streams alike
    np.testing.assert_array_equal(ours(x), theirs(x))
  theirs.eval()
  ours.eval()
  np.testing.assert_array_equal(ours(x), theirs(x))
  theirs.train()
  ours.train()
  np.testing.assert_array_equal(ours(x), theirs(x))
  assert jax.tree.map(jnp.shape, nnx.state(ours)) == jax.tree.map(jnp.shape, nnx.state(theirs))


@pytest.mark.parametrize("kind", ["key", "stream", "rngs"])
def test_call_time_rngs_match_flax(kind):
  make = {"key": lambda: jax.random.key(7), "stream": lambda: nnx.Rngs(dropout=7).dropout,
          "rngs": lambda: nnx.Rngs(dropout=7)}[kind]
  theirs, ours = nnx.Dropout(0.4), jnnx.Dropout(0.4)   # no stream of their own
  x = _x((4, 8), seed=1)
  np.testing.assert_array_equal(ours(x, rngs=make()), theirs(x, rngs=make()))


def test_broadcast_dims_and_keep_scaling():
  ours = jnnx.Dropout(0.25, broadcast_dims=(1,), rngs=nnx.Rngs(3))
  y = np.asarray(ours(jnp.ones((64, 5))))
  assert set(np.unique(y)) <= {np.float32(0.0), np.float32(1.0) / np.float32(0.75)}
  assert np.all(y == y[:, :1])               # one mask value per row


def test_modes_view_and_call_flag():
  layer = jnnx.Dropout(0.5, rngs=nnx.Rngs(0))
  x = _x((3, 8))
  assert not np.array_equal(layer(x), x)
  np.testing.assert_array_equal(layer(x, deterministic=True), x)
  view = nnx.view(layer, deterministic=True)
  np.testing.assert_array_equal(view(x), x)
  assert not layer.deterministic
  np.testing.assert_array_equal(nnx.view(_Net(jnnx, nnx.Rngs(0)), deterministic=True)(x[:, :6]),
                                nnx.view(_Net(nnx, nnx.Rngs(0)), deterministic=True)(x[:, :6]))


def test_edge_rates_like_flax():
  x = _x((4, 4))
  for lib in (nnx, jnnx):
    np.testing.assert_array_equal(lib.Dropout(0.0, rngs=nnx.Rngs(0))(x), x)
    layer = lib.Dropout(1.0)                 # no key is needed: nothing is drawn
    np.testing.assert_array_equal(layer(x), jnp.zeros_like(x))
    grad = jax.grad(lambda x: jnp.sum(layer(x)))(x)
    np.testing.assert_array_equal(grad, jnp.zeros_like(x))


def test_traced_rate_gives_flax_mask_without_recompiling():
  x = _x((6, 10), seed=2)
  ours = jnnx.Dropout(0.9)
  traces = []

  @jax.jit
  def apply(rate, key):
    traces.append(None)
    return ours(x, rngs=key, rate=rate)

  for rate in (0.2, 0.6):
    expected = nnx.Dropout(rate)(x, rngs=jax.random.key(4))
    np.testing.assert_allclose(apply(jnp.float32(rate), jax.random.key(4)), expected,
                               rtol=1e-6)
  assert len(traces) == 1


def test_errors():
  x = _x((2, 3))
  with pytest.raises(ValueError, match="no rngs were given"):
    jnnx.Dropout(0.5)(x)
  with pytest.raises(ValueError):            # flax raises a ValueError too
    nnx.Dropout(0.5)(x)
  with pytest.raises(TypeError, match="rngs must be an nnx.Rngs"):
    jnnx.Dropout(0.5, rngs=3)
  with pytest.raises(ValueError, match="rate must be in \\[0, 1\\]"):
    jnnx.Dropout(1.5, rngs=nnx.Rngs(0))(x)
  with pytest.raises(ValueError, match="(?s)no `deterministic` argument.*nnx.view"):
    jnnx.Dropout(0.5, deterministic=None, rngs=nnx.Rngs(0))(x)
