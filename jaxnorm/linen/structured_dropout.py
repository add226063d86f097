"""Flax modules for structured dropout in attention models: attention weights, tokens
and patches. Keys come from the ``rng_collection`` stream (``'dropout'``), as for
:class:`jaxnorm.linen.Dropout`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxnorm import _checks
from jaxnorm import functional as F


class _Structured(nn.Module):
  """Shared plumbing: ``deterministic`` merging, call-time rate, the key."""

  rate: float
  deterministic: bool | None = None
  rng_collection: str = "dropout"

  def _key_and_rate(self, deterministic, rate):
    """``(key, rate)`` for this call; ``key`` is None when nothing is dropped."""
    deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
    rate = self.rate if rate is None else rate
    if deterministic or _checks.concrete_float(rate) == 0.0:
      return None, rate
    return self.make_rng(self.rng_collection), rate


class AttentionDropout(_Structured):
  """Dropout on attention probabilities ``(..., heads, q, k)``.

  See :func:`jaxnorm.functional.attention_dropout`; ``share_across_heads`` and
  ``share_across_batch`` together give Flax's ``broadcast_dropout=True`` mask.
  ``rate`` may be overridden per call (traced, e.g. a schedule).

  Example:
    >>> import jax, jax.numpy as jnp, jaxnorm
    >>> probs = jax.nn.softmax(jnp.zeros((2, 4, 5, 5)))
    >>> layer = jaxnorm.AttentionDropout(0.1, share_across_heads=True)
    >>> layer.apply({}, probs, deterministic=False,
    ...             rngs={"dropout": jax.random.key(0)}).shape
    (2, 4, 5, 5)
  """

  share_across_heads: bool = False
  share_across_batch: bool = False
  head_axis: int = -3

  @nn.compact
  def __call__(self, weights, deterministic: bool | None = None, *,
               rate: float | jax.Array | None = None):
    key, rate = self._key_and_rate(deterministic, rate)
    if key is None:
      return weights
    return F.attention_dropout(key, weights, rate=rate,
                               share_across_heads=self.share_across_heads,
                               share_across_batch=self.share_across_batch,
                               head_axis=self.head_axis)


class TokenDropout(_Structured):
  """Drops whole tokens (rescaling the rest), never the first ``num_prefix_tokens``.

  See :func:`jaxnorm.functional.token_dropout`. ``rate`` may be overridden per call.

  Example:
    >>> import jax, jax.numpy as jnp, jaxnorm
    >>> layer = jaxnorm.TokenDropout(0.25, num_prefix_tokens=1)
    >>> layer.apply({}, jnp.ones((2, 17, 8)), deterministic=False,
    ...             rngs={"dropout": jax.random.key(0)}).shape
    (2, 17, 8)
  """

  token_axis: int = -2
  num_prefix_tokens: int = 0

  @nn.compact
  def __call__(self, x, deterministic: bool | None = None, *,
               rate: float | jax.Array | None = None):
    key, rate = self._key_and_rate(deterministic, rate)
    if key is None:
      return x
    return F.token_dropout(key, x, rate=rate, token_axis=self.token_axis,
                           num_prefix_tokens=self.num_prefix_tokens)


class PatchDrop(_Structured):
  """Keeps a random subset of the patch tokens; returns ``(tokens, kept_indices)``.

  See :func:`jaxnorm.functional.patch_drop`. ``rate`` must be a Python number (it sets
  the output's shape). When deterministic all tokens are returned, with indices
  ``0..N-1``.

  Example:
    >>> import jax, jax.numpy as jnp, jaxnorm
    >>> layer = jaxnorm.PatchDrop(0.5, num_prefix_tokens=1)
    >>> tokens, idx = layer.apply({}, jnp.ones((2, 17, 8)), deterministic=False,
    ...                           rngs={"dropout": jax.random.key(0)})
    >>> tokens.shape, idx.shape
    ((2, 9, 8), (2, 8))
  """

  token_axis: int = -2
  num_prefix_tokens: int = 0

  @nn.compact
  def __call__(self, x, deterministic: bool | None = None):
    key, rate = self._key_and_rate(deterministic, None)
    if key is None:
      rate = 0.0
    return F.patch_drop(key, x, rate=rate, token_axis=self.token_axis,
                        num_prefix_tokens=self.num_prefix_tokens)
