"""The linen structured-dropout modules (AttentionDropout, TokenDropout, PatchDrop):
keys from the 'dropout' stream exactly as flax.linen.Dropout draws them (compared with
flax itself), deterministic mode, call-time rates and PatchDrop's outputs."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnorm

RNGS = {"dropout": jax.random.key(3)}


class Both(nn.Module):
  """Applies ``make(name='drop')`` to ``x[:, skip:]``: ours or flax's Dropout, same path."""

  make: object
  skip: int = 0

  @nn.compact
  def __call__(self, x, deterministic=False):
    out = self.make(name="drop")(x[:, self.skip:], deterministic=deterministic)
    return jnp.concatenate([x[:, :self.skip], out], axis=1)


def _x(shape=(4, 3, 8, 8), seed=0):
  return jax.random.uniform(jax.random.key(seed), shape, jnp.float32, 0.5, 1.0)


@pytest.mark.parametrize("share_heads,broadcast_dims", [(False, ()), (True, (1,))])
def test_attention_dropout_draws_as_flax_dropout(share_heads, broadcast_dims):
  x = _x()
  ours = Both(lambda name: jaxnorm.AttentionDropout(0.3, share_across_heads=share_heads,
                                                    name=name)).apply({}, x, rngs=RNGS)
  theirs = Both(lambda name: nn.Dropout(0.3, broadcast_dims=broadcast_dims, name=name)
                ).apply({}, x, rngs=RNGS)
  np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


def test_token_dropout_draws_as_flax_dropout_after_the_prefix():
  x = _x((4, 9, 5))
  ours = Both(lambda name: jaxnorm.TokenDropout(0.4, num_prefix_tokens=1, name=name)
              ).apply({}, x, rngs=RNGS)
  theirs = Both(lambda name: nn.Dropout(0.4, broadcast_dims=(2,), name=name), skip=1
                ).apply({}, x, rngs=RNGS)
  np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


def test_deterministic_and_call_time_rates():
  x = _x((4, 9, 5))
  for module in (jaxnorm.AttentionDropout(0.5), jaxnorm.TokenDropout(0.5)):
    y = x if isinstance(module, jaxnorm.TokenDropout) else _x()
    np.testing.assert_array_equal(np.asarray(module.apply({}, y, deterministic=True)),
                                  np.asarray(y))  # no rng needed
    np.testing.assert_array_equal(
        np.asarray(module.apply({}, y, deterministic=False, rate=0.0)), np.asarray(y))
    scheduled = jax.jit(lambda r: module.apply({}, y, deterministic=False, rate=r,
                                               rngs=RNGS))
    fixed = type(module)(0.25).apply({}, y, deterministic=False, rngs=RNGS)
    np.testing.assert_allclose(np.asarray(scheduled(0.25)), np.asarray(fixed), rtol=1e-6)


def test_patch_drop_module():
  x = _x((3, 17, 4))
  layer = jaxnorm.PatchDrop(0.5, num_prefix_tokens=1)
  tokens, idx = layer.apply({}, x, deterministic=False, rngs=RNGS)
  assert tokens.shape == (3, 9, 4) and idx.shape == (3, 8)
  for b in range(3):
    np.testing.assert_array_equal(np.asarray(tokens[b, 1:]),
                                  np.asarray(x[b, 1:])[np.asarray(idx[b])])
  other, _ = layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(4)})
  assert not np.array_equal(np.asarray(other), np.asarray(tokens))
  tokens, idx = layer.apply({}, x, deterministic=True)
  np.testing.assert_array_equal(np.asarray(tokens), np.asarray(x))
  np.testing.assert_array_equal(np.asarray(idx), np.broadcast_to(np.arange(16), (3, 16)))
