"""NNX modules for structured dropout in attention models: attention weights, tokens and
patches. Keys, modes and call-time rates as in :class:`jaxnorm.nnx.Dropout`; the masks
are those of :mod:`jaxnorm.functional` (the linen modules' for the same key)."""

from __future__ import annotations

import jax
from flax.nnx import rnglib

from jaxnorm import _frontend
from jaxnorm import functional as F
from jaxnorm.nnx import _base


class _Structured(_base.KeyedNoise):
  """Shared plumbing: the mode, a call-time rate, the key (None: nothing is dropped)."""

  def _key_and_rate(self, deterministic, rngs, rate):
    name = type(self).__name__
    deterministic = _base.first_flag(deterministic, self.deterministic,
                                     flag="deterministic", layer=name)
    rate = self.rate if rate is None else rate
    _frontend.check_dropout_rate(rate, fn=f"jaxnorm.nnx.{name}")
    if _frontend.dropout_is_identity(rate, deterministic):
      return None, rate
    return _base.draw_key(rngs, self.rngs, self.rng_collection, f"jaxnorm.nnx.{name}"), rate


class AttentionDropout(_Structured):
  """Dropout on attention probabilities ``(..., heads, q, k)``.

  See :func:`jaxnorm.functional.attention_dropout`; ``share_across_heads`` and
  ``share_across_batch`` together give Flax's ``broadcast_dropout=True`` mask. A call
  may override ``rate`` (traced, e.g. a schedule).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxnorm import nnx as jnnx
    >>> layer = jnnx.AttentionDropout(0.1, share_across_heads=True, rngs=nnx.Rngs(dropout=0))
    >>> layer(jax.nn.softmax(jnp.zeros((2, 4, 5, 5)))).shape
    (2, 4, 5, 5)
  """

  def __init__(self, rate: float, *, share_across_heads: bool = False,
               share_across_batch: bool = False, head_axis: int = -3,
               deterministic: bool | None = False, rng_collection: str = "dropout",
               rngs: rnglib.Rngs | rnglib.RngStream | None = None):
    super().__init__(rate, deterministic=deterministic, rng_collection=rng_collection,
                     rngs=rngs)
    self.share_across_heads = share_across_heads
    self.share_across_batch = share_across_batch
    self.head_axis = head_axis

  def __call__(self, weights, *, deterministic: bool | None = None, rngs=None,
               rate: float | jax.Array | None = None) -> jax.Array:
    key, rate = self._key_and_rate(deterministic, rngs, rate)
    if key is None:
      return weights
    return F.attention_dropout(key, weights, rate=rate,
                               share_across_heads=self.share_across_heads,
                               share_across_batch=self.share_across_batch,
                               head_axis=self.head_axis)


class TokenDropout(_Structured):
  """Drops whole tokens (rescaling the rest), never the first ``num_prefix_tokens``.

  See :func:`jaxnorm.functional.token_dropout`. A call may override ``rate``.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxnorm import nnx as jnnx
    >>> layer = jnnx.TokenDropout(0.25, num_prefix_tokens=1, rngs=nnx.Rngs(dropout=0))
    >>> layer(jnp.ones((2, 17, 8))).shape
    (2, 17, 8)
  """

  def __init__(self, rate: float, *, token_axis: int = -2, num_prefix_tokens: int = 0,
               deterministic: bool | None = False, rng_collection: str = "dropout",
               rngs: rnglib.Rngs | rnglib.RngStream | None = None):
    super().__init__(rate, deterministic=deterministic, rng_collection=rng_collection,
                     rngs=rngs)
    self.token_axis = token_axis
    self.num_prefix_tokens = num_prefix_tokens

  def __call__(self, x, *, deterministic: bool | None = None, rngs=None,
               rate: float | jax.Array | None = None) -> jax.Array:
    key, rate = self._key_and_rate(deterministic, rngs, rate)
    if key is None:
      return x
    return F.token_dropout(key, x, rate=rate, token_axis=self.token_axis,
                           num_prefix_tokens=self.num_prefix_tokens)


class PatchDrop(_Structured):
  """Keeps a random subset of the patch tokens; returns ``(tokens, kept_indices)``.

  See :func:`jaxnorm.functional.patch_drop`. ``rate`` is a Python number (it sets the
  output's shape). In evaluation mode all tokens are returned, with indices ``0..N-1``.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxnorm import nnx as jnnx
    >>> layer = jnnx.PatchDrop(0.5, num_prefix_tokens=1, rngs=nnx.Rngs(dropout=0))
    >>> tokens, idx = layer(jnp.ones((2, 17, 8)))
    >>> tokens.shape, idx.shape
    ((2, 9, 8), (2, 8))
  """

  def __init__(self, rate: float, *, token_axis: int = -2, num_prefix_tokens: int = 0,
               deterministic: bool | None = False, rng_collection: str = "dropout",
               rngs: rnglib.Rngs | rnglib.RngStream | None = None):
    super().__init__(rate, deterministic=deterministic, rng_collection=rng_collection,
                     rngs=rngs)
    self.token_axis = token_axis
    self.num_prefix_tokens = num_prefix_tokens

  def __call__(self, x, *, deterministic: bool | None = None, rngs=None):
    key, rate = self._key_and_rate(deterministic, rngs, None)
    return F.patch_drop(key, x, rate=0.0 if key is None else rate,
                        token_axis=self.token_axis,
                        num_prefix_tokens=self.num_prefix_tokens)
