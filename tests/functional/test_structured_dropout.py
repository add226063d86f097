"""Tests for attention-weight dropout, token dropout and PatchDrop.

References: flax.linen.dot_product_attention_weights (an independent implementation of
attention dropout), NumPy for gathers and masks, and binomial bounds for the rates.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm import functional as F


SHAPE = (4, 3, 8, 8)  # (batch, heads, q, k); one shape keeps the compilations few


def _probs(shape=SHAPE, seed=0):
  return jax.nn.softmax(jax.random.normal(jax.random.key(seed), shape), axis=-1)


def _binomial_ok(kept, total, keep_prob, sigmas=5.0):
  """|kept - total p| within ``sigmas`` binomial standard deviations."""
  return abs(kept - total * keep_prob) <= sigmas * np.sqrt(total * keep_prob *
                                                           (1 - keep_prob))


# ------------------------------------------------------------------ attention dropout


@pytest.mark.parametrize("broadcast_dropout", [True, False])
def test_attention_dropout_matches_flax_attention_weights(broadcast_dropout):
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(4, 8, 3, 2)), jnp.float32)  # (batch, q, heads, dim)
  k = jnp.asarray(rng.normal(size=(4, 8, 3, 2)), jnp.float32)
  key = jax.random.key(7)
  theirs = nn.dot_product_attention_weights(q, k, dropout_rng=key, dropout_rate=0.3,
                                            deterministic=False,
                                            broadcast_dropout=broadcast_dropout)
  plain = nn.dot_product_attention_weights(q, k)
  ours = F.attention_dropout(key, plain, rate=0.3, share_across_heads=broadcast_dropout,
                             share_across_batch=broadcast_dropout)
  np.testing.assert_array_equal(np.asarray(ours) == 0, np.asarray(theirs) == 0)
  np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-6, atol=0)


def test_attention_dropout_sharing_options():
  probs = _probs()
  key = jax.random.key(1)
  dropped = lambda **kw: np.asarray(F.attention_dropout(key, probs, rate=0.5, **kw)) == 0
  heads = dropped(share_across_heads=True)
  assert np.all(heads == heads[:, :1]) and not np.all(heads == heads[:1])
  batch = dropped(share_across_batch=True)
  assert np.all(batch == batch[:1]) and not np.all(batch == batch[:, :1])
  both = dropped(share_across_heads=True, share_across_batch=True)
  assert np.all(both == both[:1, :1])
  neither = dropped()
  assert not np.all(neither == neither[:, :1]) and not np.all(neither == neither[:1])
  # Layout (heads, batch, q, k) with head_axis=0.
  moved = np.asarray(F.attention_dropout(key, jnp.swapaxes(probs, 0, 1), rate=0.5,
                                         share_across_heads=True, head_axis=0)) == 0
  assert np.all(moved == moved[:1]) and not np.all(moved == moved[:, :1])


def test_attention_dropout_values_rate_and_rescaling():
  probs = _probs(seed=2)
  out = np.asarray(F.attention_dropout(jax.random.key(3), probs, rate=0.25), np.float64)
  p = np.asarray(probs, np.float64)
  kept = out != 0
  np.testing.assert_allclose(out[kept], p[kept] / 0.75, rtol=1e-6)
  assert _binomial_ok(kept.sum(), kept.size, 0.75)
  # Rows sum to 1 in expectation: Var(row sum) = sum p^2 (1 - q) / q with q = 0.75.
  rows = out.sum(-1).ravel()
  sd_of_mean = np.sqrt(np.sum(p ** 2) * (0.25 / 0.75)) / rows.size
  assert abs(rows.mean() - 1.0) < 5 * sd_of_mean


def test_attention_dropout_traced_rate_gives_the_same_mask():
  probs = _probs()
  key = jax.random.key(4)
  static = F.attention_dropout(key, probs, rate=0.4)
  traced = jax.jit(lambda r: F.attention_dropout(key, probs, rate=r))(0.4)
  np.testing.assert_allclose(np.asarray(traced), np.asarray(static), rtol=1e-6)
  zero_grad = jax.grad(lambda p: F.attention_dropout(key, p, rate=1.0).sum())(probs)
  np.testing.assert_array_equal(np.asarray(zero_grad), 0.0)
  np.testing.assert_array_equal(np.asarray(F.attention_dropout(key, probs, rate=0.0)),
                                np.asarray(probs))


def test_attention_dropout_errors():
  fn = "jaxnorm.functional.attention_dropout"
  with pytest.raises(ValueError, match=f"{fn}: head_axis=-2 names the queries or keys"):
    F.attention_dropout(jax.random.key(0), _probs(), rate=0.1, head_axis=-2)
  with pytest.raises(ValueError, match=r"at least 3 dimensions; got weights.shape=\(8, 8\)"):
    F.attention_dropout(jax.random.key(0), _probs()[0, 0], rate=0.1)
  with pytest.raises(ValueError, match="rate must be in \\[0, 1\\]"):
    F.attention_dropout(jax.random.key(0), _probs(), rate=1.5)
  with pytest.raises(TypeError, match="share_across_heads must be a Python bool"):
    F.attention_dropout(jax.random.key(0), _probs(), rate=0.1, share_across_heads=1)
  with pytest.raises(TypeError, match="key must be a JAX PRNG key"):
    F.attention_dropout(0, _probs(), rate=0.1)


# ---------------------------------------------------------------------- token dropout


def test_token_dropout_drops_whole_tokens_keeps_the_prefix_and_rescales():
  x = jax.random.normal(jax.random.key(5), (16, 17, 4)) + 3.0  # no exact zeros
  out = np.asarray(F.token_dropout(jax.random.key(6), x, rate=0.3, num_prefix_tokens=1),
                   np.float64)
  x64 = np.asarray(x, np.float64)
  np.testing.assert_array_equal(out[:, 0], x64[:, 0])  # the class token, untouched
  dropped = np.all(out[:, 1:] == 0, axis=-1)
  kept = np.all(out[:, 1:] != 0, axis=-1)
  assert np.all(dropped | kept)  # a token is dropped in all its features or none
  np.testing.assert_allclose(out[:, 1:][kept], x64[:, 1:][kept] / 0.7, rtol=1e-6)
  assert _binomial_ok(kept.sum(), kept.size, 0.7)
  assert len({tuple(row) for row in dropped}) > 1  # each example has its own mask


def test_token_dropout_traced_rate_jit_and_gradient():
  x = jax.random.normal(jax.random.key(7), (16, 17, 4))
  key = jax.random.key(8)
  eager = F.token_dropout(key, x, rate=0.5, num_prefix_tokens=2)
  jitted = jax.jit(lambda x, r: F.token_dropout(key, x, rate=r, num_prefix_tokens=2))(
      x, 0.5)
  np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), rtol=1e-6)
  grad = np.asarray(jax.grad(lambda x: F.token_dropout(key, x, rate=0.5,
                                                       num_prefix_tokens=2).sum())(x))
  expected = np.where(np.asarray(eager) != 0, 2.0, 0.0)
  expected[:, :2] = 1.0
  np.testing.assert_allclose(grad, expected, rtol=1e-6)


def test_token_dropout_other_layouts_and_edges():
  x = jnp.ones((6, 4, 2, 5))  # (batch, tokens, heads, dim): the mask is per (b, t)
  out = np.asarray(F.token_dropout(jax.random.key(9), x, rate=0.5, token_axis=1))
  assert np.all(out == out[:, :, :1, :1])
  np.testing.assert_array_equal(np.asarray(F.token_dropout(None, x, rate=0.0)), 1.0)
  all_prefix = F.token_dropout(jax.random.key(0), x, rate=0.9, token_axis=1,
                               num_prefix_tokens=4)
  np.testing.assert_array_equal(np.asarray(all_prefix), 1.0)
  with pytest.raises(ValueError, match=r"num_prefix_tokens must be an int in \[0, 4\]"):
    F.token_dropout(jax.random.key(0), x, rate=0.1, token_axis=1, num_prefix_tokens=5)
  with pytest.raises(ValueError, match="token_axis=7 is out of range"):
    F.token_dropout(jax.random.key(0), x, rate=0.1, token_axis=7)


# ------------------------------------------------------------------------- PatchDrop


def test_patch_drop_keeps_a_sorted_subset_and_the_prefix():
  x = jax.random.normal(jax.random.key(10), (5, 17, 6))
  tokens, idx = F.patch_drop(jax.random.key(11), x, rate=0.75, num_prefix_tokens=1)
  assert tokens.shape == (5, 1 + 4, 6) and idx.shape == (5, 4) and idx.dtype == jnp.int32
  x64, idx = np.asarray(x, np.float64), np.asarray(idx)
  np.testing.assert_array_equal(np.asarray(tokens[:, 0]), x64[:, 0])
  for b in range(5):
    assert np.all(np.diff(idx[b]) > 0) and 0 <= idx[b].min() and idx[b].max() < 16
    np.testing.assert_array_equal(np.asarray(tokens[b, 1:], np.float64),
                                  x64[b, 1:][idx[b]])
  assert len({tuple(row) for row in idx}) > 1  # each example draws its own subset


@pytest.mark.parametrize("rate,patches,expected", [
    (0.5, 16, 8), (0.75, 196, 49), (0.1, 10, 9), (0.99, 16, 1), (0.3, 7, 5)])
def test_patch_drop_number_kept(rate, patches, expected):
  tokens, idx = jax.eval_shape(lambda x: F.patch_drop(jax.random.key(0), x, rate=rate),
                               jnp.zeros((2, patches, 3)))
  assert idx.shape == (2, expected) and tokens.shape == (2, expected, 3)


def test_patch_drop_is_uniform_over_patches():
  """Over 4000 draws each of 12 patches is kept with probability 4/12."""
  keys = jax.random.split(jax.random.key(12), 4000)
  idx = jax.jit(jax.vmap(lambda k: F.patch_drop(k, jnp.zeros((12, 2)), rate=2 / 3)[1]))(
      keys)
  counts = np.bincount(np.asarray(idx).ravel(), minlength=12)
  for c in counts:
    assert _binomial_ok(c, 4000, 1 / 3)


def test_patch_drop_rate_zero_jit_and_gradient():
  x = jax.random.normal(jax.random.key(13), (3, 9, 4))
  tokens, idx = F.patch_drop(jax.random.key(0), x, rate=0.0, num_prefix_tokens=1)
  np.testing.assert_array_equal(np.asarray(tokens), np.asarray(x))
  np.testing.assert_array_equal(np.asarray(idx), np.broadcast_to(np.arange(8), (3, 8)))
  key = jax.random.key(14)
  eager = F.patch_drop(key, x, rate=0.5)
  jitted = jax.jit(F.patch_drop, static_argnames="rate")(key, x, rate=0.5)
  for a, b in zip(eager, jitted):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  grad = np.asarray(jax.grad(lambda x: F.patch_drop(key, x, rate=0.5)[0].sum())(x))
  expected = np.zeros(x.shape)
  for b, row in enumerate(np.asarray(eager[1])):
    expected[b, row] = 1.0
  np.testing.assert_array_equal(grad, expected)


def test_patch_drop_errors():
  x = jnp.zeros((2, 9, 4))
  with pytest.raises(TypeError, match="rate sets the number of kept tokens, a static shape"):
    jax.jit(lambda r: F.patch_drop(jax.random.key(0), x, rate=r))(0.5)
  with pytest.raises(ValueError, match="patch_drop: rate must be < 1"):
    F.patch_drop(jax.random.key(0), x, rate=1.0)
  with pytest.raises(ValueError, match="rate must be in \\[0, 1\\]"):
    F.patch_drop(jax.random.key(0), x, rate=-0.1)
  with pytest.raises(ValueError, match="num_prefix_tokens must be an int"):
    F.patch_drop(jax.random.key(0), x, rate=0.5, num_prefix_tokens=-1)
  with pytest.raises(TypeError, match="key must be a JAX PRNG key"):
    F.patch_drop("key", x, rate=0.5)
