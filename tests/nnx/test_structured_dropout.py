"""jaxnorm.nnx AttentionDropout / TokenDropout / PatchDrop: the functional layers' masks
for the same key, the NNX modes and streams, the argument checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxnorm import functional as F
from jaxnorm import nnx as jnnx

KEY = jax.random.key(3)
PROBS = jax.nn.softmax(jax.random.normal(jax.random.key(1), (2, 4, 5, 5)))
TOKENS = jax.random.normal(jax.random.key(2), (2, 9, 6))


def test_attention_dropout_is_the_functional_mask():
  layer = jnnx.AttentionDropout(0.3, share_across_heads=True)
  got = layer(PROBS, rngs=KEY)
  want = F.attention_dropout(KEY, PROBS, rate=0.3, share_across_heads=True)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  kept = np.asarray(got) != 0
  assert (kept == kept[:, :1]).all(), "the mask is shared across heads"
  np.testing.assert_allclose(np.asarray(got)[kept], np.asarray(PROBS / 0.7)[kept], rtol=1e-6)


def test_token_dropout_keeps_prefix_and_matches_functional():
  layer = jnnx.TokenDropout(0.5, num_prefix_tokens=1)
  got = np.asarray(layer(TOKENS, rngs=KEY, rate=jnp.asarray(0.5)))
  want = np.asarray(F.token_dropout(KEY, TOKENS, rate=0.5, num_prefix_tokens=1))
  np.testing.assert_array_equal(got, want)
  np.testing.assert_allclose(got[:, 0], np.asarray(TOKENS)[:, 0], rtol=1e-6)
  dropped = (got == 0).all(axis=-1)
  assert dropped.any() and not dropped[:, 0].any()


def test_patch_drop_returns_kept_tokens_and_indices():
  layer = jnnx.PatchDrop(0.5, num_prefix_tokens=1)
  tokens, idx = layer(TOKENS, rngs=KEY)
  want_tokens, want_idx = F.patch_drop(KEY, TOKENS, rate=0.5, num_prefix_tokens=1)
  np.testing.assert_array_equal(np.asarray(tokens), np.asarray(want_tokens))
  np.testing.assert_array_equal(np.asarray(idx), np.asarray(want_idx))
  assert tokens.shape == (2, 5, 6) and idx.shape == (2, 4)
  gathered = np.take_along_axis(np.asarray(TOKENS)[:, 1:], np.asarray(idx)[..., None], 1)
  np.testing.assert_array_equal(np.asarray(tokens)[:, 1:], gathered)


@pytest.mark.parametrize("make", [
    lambda rngs: jnnx.AttentionDropout(0.5, rngs=rngs),
    lambda rngs: jnnx.TokenDropout(0.5, rngs=rngs),
])
def test_eval_mode_is_identity_and_stream_advances(make):
  x = PROBS
  layer = make(nnx.Rngs(dropout=0))
  first, second = layer(x), layer(x)
  assert not np.array_equal(np.asarray(first), np.asarray(second)), "a new mask per call"
  layer.eval()
  np.testing.assert_array_equal(np.asarray(layer(x)), np.asarray(x))
  np.testing.assert_array_equal(np.asarray(layer(x, deterministic=False, rngs=KEY) != 0),
                                np.asarray(layer(x, deterministic=False, rngs=KEY) != 0))


def test_patch_drop_in_eval_mode_returns_everything():
  layer = jnnx.PatchDrop(0.5, rngs=nnx.Rngs(dropout=0))
  layer.eval()
  tokens, idx = layer(TOKENS)
  np.testing.assert_array_equal(np.asarray(tokens), np.asarray(TOKENS))
  np.testing.assert_array_equal(np.asarray(idx), np.broadcast_to(np.arange(9), (2, 9)))


def test_errors_name_the_layer():
  with pytest.raises(ValueError, match="jaxnorm.nnx.TokenDropout"):
    jnnx.TokenDropout(0.5)(TOKENS)              # no rngs anywhere
  with pytest.raises(ValueError, match="rate"):
    jnnx.AttentionDropout(1.5, rngs=nnx.Rngs(0))(PROBS)
