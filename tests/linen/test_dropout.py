"""jaxnorm.linen.Dropout is a drop-in for flax.linen.Dropout (compared with flax)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnorm
import jaxnorm.linen as jl


def _x(shape=(8, 5, 4, 8), dtype=jnp.float32, seed=0):
  return (1.0 + jax.random.normal(jax.random.key(seed), shape)).astype(dtype)


def test_top_level_reexport():
  assert jaxnorm.Dropout is jaxnorm.linen.Dropout is jl.Dropout
  assert issubclass(jl.Dropout, nn.Module)


@pytest.mark.parametrize("rate,broadcast_dims", [(0.1, ()), (0.5, ()), (0.8, ()),
                                                 (0.5, (1, 2)), (0.3, (0, -1))])
def test_same_masks_as_flax(rate, broadcast_dims):
  x = _x()
  rngs = {"dropout": jax.random.key(3)}
  y_f = nn.Dropout(rate, broadcast_dims=broadcast_dims).apply(
      {}, x, deterministic=False, rngs=rngs)
  y_o = jl.Dropout(rate, broadcast_dims=broadcast_dims).apply(
      {}, x, deterministic=False, rngs=rngs)
  assert y_o.dtype == y_f.dtype
  np.testing.assert_array_equal(np.asarray(y_o), np.asarray(y_f))
  zero = np.asarray(y_f) == 0
  assert zero.any() and not zero.all()  # a real mask, not a trivial one


def test_same_masks_as_flax_under_jit_in_a_model():
  def make(lib):
    class Net(nn.Module):

      @nn.compact
      def __call__(self, x, train: bool):
        x = lib.Dropout(0.3, deterministic=not train)(x)
        x = nn.Dense(8)(x)
        x = lib.Dropout(0.6)(x, deterministic=not train)  # a second, different mask
        return x

    return Net()

  x = _x((16, 12))
  f_net, o_net = make(nn), make(jl)
  variables = f_net.init(jax.random.key(0), x, train=False)
  assert jax.tree_util.tree_structure(o_net.init(jax.random.key(0), x, train=False)) == (
      jax.tree_util.tree_structure(variables))
  rngs = {"dropout": jax.random.key(5)}
  apply_f = jax.jit(lambda v, x, rngs: f_net.apply(v, x, train=True, rngs=rngs))
  apply_o = jax.jit(lambda v, x, rngs: o_net.apply(v, x, train=True, rngs=rngs))
  y_f, y_o = apply_f(variables, x, rngs), apply_o(variables, x, rngs)
  np.testing.assert_array_equal(np.asarray(y_o) == 0, np.asarray(y_f) == 0)
  np.testing.assert_allclose(np.asarray(y_o), np.asarray(y_f), rtol=1e-6, atol=1e-6)
  # Evaluation: no dropout at all, identical to flax.
  e_f = f_net.apply(variables, x, train=False)
  e_o = o_net.apply(variables, x, train=False)
  np.testing.assert_array_equal(np.asarray(e_o), np.asarray(e_f))


def test_rng_call_argument_like_flax():
  x = _x()
  key = jax.random.key(9)
  y_f = nn.Dropout(0.4).apply({}, x, deterministic=False, rng=key)
  y_o = jl.Dropout(0.4).apply({}, x, deterministic=False, rng=key)
  np.testing.assert_array_equal(np.asarray(y_o), np.asarray(y_f))


def test_rng_collection_other_draws_from_that_stream():
  x = _x()
  k_other, k_dropout = jax.random.key(11), jax.random.key(12)
  rngs = {"other": k_other, "dropout": k_dropout}
  y_f = nn.Dropout(0.5, rng_collection="other").apply({}, x, deterministic=False,
                                                       rngs=rngs)
  y_o = jl.Dropout(0.5, rng_collection="other").apply({}, x, deterministic=False,
                                                       rngs=rngs)
  np.testing.assert_array_equal(np.asarray(y_o), np.asarray(y_f))
  # It used the 'other' key: the same mask as the default stream seeded with k_other,
  # and not the mask the 'dropout' stream (k_dropout) gives.
  from_other = nn.Dropout(0.5).apply({}, x, deterministic=False,
                                     rngs={"dropout": k_other})
  from_dropout = nn.Dropout(0.5).apply({}, x, deterministic=False,
                                       rngs={"dropout": k_dropout})
  np.testing.assert_array_equal(np.asarray(y_o), np.asarray(from_other))
  assert np.any(np.asarray(y_o) != np.asarray(from_dropout))


def test_missing_rng_stream_raises_like_flax():
  x = _x()
  with pytest.raises(Exception) as f_err:
    nn.Dropout(0.5, rng_collection="other").apply(
        {}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
  with pytest.raises(Exception) as o_err:
    jl.Dropout(0.5, rng_collection="other").apply(
        {}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
  assert type(o_err.value) is type(f_err.value)


@pytest.mark.parametrize("where", ["constructor", "call"])
def test_deterministic_returns_input(where):
  x = _x()
  if where == "constructor":
    y = jl.Dropout(0.5, deterministic=True).apply({}, x)
  else:
    y = jl.Dropout(0.5).apply({}, x, deterministic=True)
  np.testing.assert_array_equal(np.asarray(y), np.asarray(x))
  assert y.dtype == x.dtype


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_rate_one_returns_zeros_without_rng(dtype):
  x = _x(dtype=dtype)
  y = jl.Dropout(1.0).apply({}, x, deterministic=False)  # no rng needed, as in flax
  y_f = nn.Dropout(1.0).apply({}, x, deterministic=False)
  np.testing.assert_array_equal(np.asarray(y, np.float32), np.zeros(x.shape))
  assert y.dtype == y_f.dtype == dtype
  g = jax.grad(lambda x: jnp.sum(jl.Dropout(1.0).apply({}, x, deterministic=False)))(
      x.astype(jnp.float32))
  np.testing.assert_array_equal(np.asarray(g), np.zeros(x.shape))


def test_rate_zero_returns_input_without_rng():
  x = _x()
  y = jl.Dropout(0.0).apply({}, x, deterministic=False)
  np.testing.assert_array_equal(np.asarray(y), np.asarray(x))


@pytest.mark.parametrize("ctor,call", [(True, False), (False, False), (None, None)])
def test_deterministic_merge_param_like_flax(ctor, call):
  x = _x()
  rngs = {"dropout": jax.random.key(0)}
  with pytest.raises(ValueError) as f_err:
    nn.Dropout(0.5, deterministic=ctor).apply({}, x, deterministic=call, rngs=rngs)
  with pytest.raises(ValueError) as o_err:
    jl.Dropout(0.5, deterministic=ctor).apply({}, x, deterministic=call, rngs=rngs)
  assert "deterministic" in str(o_err.value)
  assert str(o_err.value) == str(f_err.value)


def test_bf16_keeps_dtype_and_matches_flax():
  x = _x(dtype=jnp.bfloat16)
  rngs = {"dropout": jax.random.key(4)}
  y_f = nn.Dropout(0.3).apply({}, x, deterministic=False, rngs=rngs)
  y_o = jl.Dropout(0.3).apply({}, x, deterministic=False, rngs=rngs)
  assert y_o.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(y_o, np.float32), np.asarray(y_f, np.float32))


@pytest.mark.parametrize("rate", [-0.1, 1.5])
def test_rate_out_of_range_raises(rate):
  with pytest.raises(ValueError, match="rate") as info:
    jl.Dropout(rate).apply({}, _x(), deterministic=False,
                           rngs={"dropout": jax.random.key(0)})
  assert str(rate) in str(info.value)
