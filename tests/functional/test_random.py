"""The fused threefry sampler (jaxnorm.functional._random) against jax.random.

Every comparison is bit for bit against ``jax.random`` itself or ``flax.linen.Dropout``
given the same key (independent implementations of the same draw), never against
jaxnorm.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxnorm import functional as F
from jaxnorm.functional import _random

SHAPES = [(), (7,), (5, 1, 3)]


def _keys():
  return {"typed": jax.random.key(0), "raw": jax.random.PRNGKey(1),
          "folded": jax.random.fold_in(jax.random.key(2), 3),
          "split": jax.random.split(jax.random.key(4))[1]}


def _equal(a, b):
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert a.dtype == b.dtype and a.shape == b.shape


@pytest.mark.parametrize("shape,key_name", [(shape, "typed") for shape in SHAPES] + [
    ((33, 65), name) for name in _keys()], ids=str)
def test_samplers_equal_jax_random(shape, key_name):
  key = _keys()[key_name]
  assert _random.fusable(key, shape)
  _equal(_random.random_bits(key, shape), jax.random.bits(key, shape, jnp.uint32))
  _equal(_random.bernoulli(key, 0.3, shape), jax.random.bernoulli(key, 0.3, shape))
  _equal(_random.uniform(key, shape), jax.random.uniform(key, shape))
  _equal(_random.uniform(key, shape, jnp.float32, 1e-7, 1 - 1e-7),
         jax.random.uniform(key, shape, jnp.float32, 1e-7, 1 - 1e-7))
  _equal(_random.normal(key, shape), jax.random.normal(key, shape))


def test_four_dimensional_bits_equal_jax_random():
  key = jax.random.key(21)
  _equal(_random.bernoulli(key, 0.5, (2, 3, 4, 5)), jax.random.bernoulli(key, 0.5, (2, 3, 4, 5)))


_draws = (jax.jit(lambda k, p: _random.bernoulli(k, p, (11, 13))),
          jax.jit(lambda k, p: jax.random.bernoulli(k, p, (11, 13))))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), p=st.floats(0.0, 1.0, width=32))
def test_bernoulli_equals_jax_random_property(seed, p):
  key = jax.random.key(seed)
  ours, theirs = _draws
  _equal(ours(key, p), theirs(key, p))


def test_bernoulli_traced_probability_and_extremes():
  key = jax.random.key(5)
  for p in (0.0, 1.0, np.float32(0.5), jnp.float32(0.25)):
    _equal(_random.bernoulli(key, p, (300,)), jax.random.bernoulli(key, p, (300,)))
  draw = jax.jit(lambda k, p: _random.bernoulli(k, p, (300,)))
  _equal(draw(key, 0.6), jax.random.bernoulli(key, 0.6, (300,)))


@pytest.mark.parametrize("make", [
    lambda: jax.random.key(0, impl="rbg"),
    lambda: jax.random.key(0, impl="unsafe_rbg"),
])
def test_other_key_implementations_take_jax_random(make):
  key = make()
  assert not _random.fusable(key, (4, 5))
  _equal(_random.bernoulli(key, 0.5, (4, 5)), jax.random.bernoulli(key, 0.5, (4, 5)))
  _equal(_random.uniform(key, (4, 5)), jax.random.uniform(key, (4, 5)))
  _equal(_random.normal(key, (4, 5)), jax.random.normal(key, (4, 5)))


def test_legacy_threefry_layout_takes_jax_random():
  key = jax.random.key(6)
  with jax.threefry_partitionable(False):
    assert not _random.fusable(key, (9, 4))
    _equal(_random.bernoulli(key, 0.5, (9, 4)), jax.random.bernoulli(key, 0.5, (9, 4)))
    _equal(_random.normal(key, (9, 4)), jax.random.normal(key, (9, 4)))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_narrow_dtypes_take_jax_random(dtype):
  key = jax.random.key(7)
  _equal(_random.uniform(key, (6, 5), dtype), jax.random.uniform(key, (6, 5), dtype))
  _equal(_random.normal(key, (6, 5), dtype), jax.random.normal(key, (6, 5), dtype))
  p = jnp.asarray(0.3, dtype)
  _equal(_random.bernoulli(key, p, (6, 5)), jax.random.bernoulli(key, p, (6, 5)))


def test_same_values_under_jit_and_vmap():
  keys = jax.random.split(jax.random.key(8), 4)
  expected = jnp.stack([jax.random.bernoulli(k, 0.4, (3, 7)) for k in keys])
  _equal(jax.vmap(lambda k: _random.bernoulli(k, 0.4, (3, 7)))(keys), expected)
  _equal(jax.jit(jax.vmap(lambda k: _random.bernoulli(k, 0.4, (3, 7))))(keys), expected)
  expected = jnp.stack([jax.random.normal(k, (3, 7)) for k in keys])
  _equal(jax.jit(jax.vmap(lambda k: _random.normal(k, (3, 7))))(keys), expected)


# --- dropout and the family: the same outputs as flax / jax.random draws ------------


def _flax_dropout(key, x, rate, broadcast_dims=()):
  """flax.linen.Dropout's output with its mask drawn from ``key`` itself."""
  return nn.Dropout(rate, broadcast_dims=broadcast_dims).apply(
      {}, x, deterministic=False, rng=key)


@pytest.mark.parametrize("dtype,shape,broadcast_dims", [
    (jnp.float32, (37,), ()), (jnp.bfloat16, (8, 33), ()), (jnp.float16, (4, 5, 6), (1,)),
    (jnp.float32, (2, 3, 4, 8), (1, 2)), (jnp.bfloat16, (6, 10), (0,)),
    (jnp.float32, (3, 4), (0, 1))], ids=str)
def test_dropout_equals_flax_bit_for_bit(dtype, shape, broadcast_dims):
  x = jax.random.normal(jax.random.key(9), shape, jnp.float32).astype(dtype)
  key = jax.random.key(10)
  expected = _flax_dropout(key, x, 0.3, broadcast_dims)
  _equal(F.dropout(key, x, rate=0.3, broadcast_dims=broadcast_dims), expected)
  jitted = jax.jit(lambda k, x: F.dropout(k, x, rate=0.3, broadcast_dims=broadcast_dims))
  _equal(jitted(key, x), expected)


def test_dropout_traced_rate_equals_jax_random_draw():
  x = jax.random.normal(jax.random.key(11), (64, 16))
  key = jax.random.key(12)
  y = jax.jit(lambda r: F.dropout(key, x, rate=r))(0.25)
  keep = jax.random.bernoulli(key, 1.0 - jnp.float32(0.25), x.shape)
  _equal(y != 0, keep)


def test_dropout_vmapped_over_keys_equals_per_key_flax():
  x = jax.random.normal(jax.random.key(13), (16, 12))
  keys = jax.random.split(jax.random.key(14), 5)
  got = jax.jit(jax.vmap(lambda k: F.dropout(k, x, rate=0.5)))(keys)
  expected = jnp.stack([_flax_dropout(k, x, 0.5) for k in keys])
  _equal(got, expected)


def test_dropout_gradient_uses_the_same_mask():
  x = jax.random.normal(jax.random.key(15), (32, 8))
  key = jax.random.key(16)
  grad = jax.jit(jax.grad(lambda x: jnp.sum(F.dropout(key, x, rate=0.4) * 2.0)))(x)
  keep = np.asarray(jax.random.bernoulli(key, 0.6, x.shape))
  np.testing.assert_array_equal(np.asarray(grad), np.where(keep, 2.0 / np.float32(0.6), 0))


def test_family_members_equal_their_jax_random_draws():
  x = jax.random.normal(jax.random.key(17), (24, 10))
  key = jax.random.key(18)
  keep = jax.random.bernoulli(key, 0.8, x.shape)
  _equal(F.classic_dropout(key, x, rate=0.2, train=True), jnp.where(keep, x, 0))
  alpha = np.asarray(F.alpha_dropout(key, x, rate=0.2))
  saturated = np.isclose(alpha, alpha[~np.asarray(keep)][0]) if (~keep).any() else None
  np.testing.assert_array_equal(saturated, ~np.asarray(keep))
  noise = jax.random.normal(key, x.shape, jnp.float32)
  std = np.sqrt(np.float32(0.3) / np.float32(0.7))
  np.testing.assert_allclose(np.asarray(F.gaussian_dropout(key, x, rate=0.3)),
                             np.asarray(x) * (1 + std * np.asarray(noise)), rtol=1e-6)
  u = np.asarray(jax.random.uniform(key, x.shape, jnp.float32, 1e-7, 1 - 1e-7), np.float64)
  p = 1 / (1 + np.exp(2.0))
  z = 1 / (1 + np.exp(-(np.log(p) - np.log1p(-p) + np.log(u) - np.log1p(-u)) / 0.1))
  np.testing.assert_allclose(
      np.asarray(F.concrete_dropout(key, x, logit=jnp.asarray(-2.0))),
      np.asarray(x, np.float64) * (1 - z) / (1 - p), rtol=2e-4, atol=1e-5)


N_DEV = 8


@pytest.mark.skipif(jax.device_count() < N_DEV, reason="needs 8 (simulated) devices")
def test_sharded_dropout_equals_unsharded_without_collectives():
  mesh = Mesh(np.array(jax.devices()[:N_DEV]), ("d",))
  x = jax.random.normal(jax.random.key(19), (64, 24))
  key = jax.random.key(20)
  fn = jax.jit(lambda k, x: F.dropout(k, x, rate=0.5))
  expected = _flax_dropout(key, x, 0.5)
  for spec in (P("d"), P(None, "d")):
    x_sharded = jax.device_put(x, NamedSharding(mesh, spec))
    _equal(fn(key, x_sharded), expected)
    hlo = fn.lower(key, x_sharded).compile().as_text()
    assert "all-gather" not in hlo and "all-reduce" not in hlo
