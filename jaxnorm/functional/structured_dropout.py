"""Structured dropout for attention models: attention weights, tokens and patches.

Keyed and pure like the rest of the dropout family (``key`` first, the same key gives
the same mask with and without ``jax.jit``); the random draws go through
:mod:`jaxnorm.functional.stochastic`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxnorm import _checks
from jaxnorm.functional.stochastic import _check_key, _static_rate, _uniform, dropout


def attention_dropout(
    key: jax.Array,
    weights: jax.Array,
    *,
    rate: float | jax.Array,
    share_across_heads: bool = False,
    share_across_batch: bool = False,
    head_axis: int = -3,
) -> jax.Array:
  r"""Inverted dropout on attention probabilities (after the softmax).

  .. math::
    \tilde A_{\dots h q k} = \frac{b_{\dots h q k}\, A_{\dots h q k}}{1 - p}, \qquad
    b \sim \text{Bernoulli}(1 - p)

  for attention weights ``A`` laid out ``(..., heads, queries, keys)`` (Flax's
  layout), :math:`p` = ``rate``. Each query loses a random subset of the keys it
  attends to (its row no longer sums to 1; in expectation it does). With
  ``share_across_heads`` one mask serves every head (``b`` does not depend on
  :math:`h`), with ``share_across_batch`` every example; both together give the mask of
  ``flax.linen.dot_product_attention_weights(..., broadcast_dropout=True)``, bit for
  bit with the same key. ``rate`` may be traced (no recompilation per value); ``rate ==
  1`` gives zeros with zero gradients.

  Args:
    key: a PRNG key.
    weights: floating-point attention probabilities ``(..., heads, q, k)``.
    rate: drop probability in [0, 1].
    share_across_heads: one mask for all heads.
    share_across_batch: one mask for all leading (batch) axes.
    head_axis: the heads axis; the last two axes are queries and keys.

  Returns:
    An array like ``weights``.

  Example:
    >>> import jax
    >>> from jaxnorm import functional as F
    >>> logits = jax.random.normal(jax.random.key(0), (2, 4, 5, 5))   # (B, H, Q, K)
    >>> probs = F.attention_dropout(jax.random.key(1), jax.nn.softmax(logits), rate=0.1,
    ...                             share_across_heads=True)
    >>> bool(((probs[:, 0] == 0) == (probs[:, 1] == 0)).all())       # same mask per head
    True

  References:
    Vaswani et al., "Attention Is All You Need", NeurIPS 2017 (its reference
    implementation drops the attention weights).
  """
  fn = "jaxnorm.functional.attention_dropout"
  weights = _checks.ensure_floating(weights, name="weights", fn=fn)
  share_heads = _checks.check_static_bool(share_across_heads, name="share_across_heads",
                                          fn=fn)
  share_batch = _checks.check_static_bool(share_across_batch, name="share_across_batch",
                                          fn=fn)
  if weights.ndim < 3:
    raise ValueError(f"{fn}: weights must be (..., heads, queries, keys) with at least 3 "
                     f"dimensions; got weights.shape={tuple(weights.shape)}.")
  (heads,) = _checks.canonical_axes(head_axis, weights.shape, name="head_axis", fn=fn)
  if heads >= weights.ndim - 2:
    raise ValueError(f"{fn}: head_axis={head_axis} names the queries or keys axis of "
                     f"weights.shape={tuple(weights.shape)}; the last two axes are "
                     "(queries, keys), the heads axis comes before them (default -3).")
  dims = ((heads,) if share_heads else ()) + (
      tuple(a for a in range(weights.ndim - 2) if a != heads) if share_batch else ())
  return dropout(key, weights, rate=rate, broadcast_dims=tuple(sorted(dims)))


def _prefix(num_prefix_tokens, tokens, x_shape, token_axis, fn) -> int:
  if isinstance(num_prefix_tokens, np.integer):
    num_prefix_tokens = int(num_prefix_tokens)
  if not isinstance(num_prefix_tokens, int) or isinstance(num_prefix_tokens, bool) or (
      not 0 <= num_prefix_tokens <= tokens):
    raise ValueError(
        f"{fn}: num_prefix_tokens must be an int in [0, {tokens}] (the tokens at the start "
        f"of axis {token_axis} that are never dropped, e.g. 1 for a class token); got "
        f"{num_prefix_tokens!r} for x.shape={tuple(x_shape)}.")
  return num_prefix_tokens


def _split_prefix(x, axis, prefix):
  return (lax.slice_in_dim(x, 0, prefix, axis=axis),
          lax.slice_in_dim(x, prefix, x.shape[axis], axis=axis))


def token_dropout(
    key: jax.Array,
    x: jax.Array,
    *,
    rate: float | jax.Array,
    token_axis: int = -2,
    num_prefix_tokens: int = 0,
) -> jax.Array:
  r"""Drops whole tokens (positions) of a sequence and rescales the rest.

  .. math::
    y_{n t \cdot} = \frac{b_{n t}\, x_{n t \cdot}}{1 - p}, \qquad
    b \sim \text{Bernoulli}(1 - p)

  One draw per token: the mask varies along every axis up to ``token_axis`` (batch
  and tokens) and is shared along the axes after it (the features), so a dropped token
  is zero in all its features. The first ``num_prefix_tokens`` tokens (a class token,
  register tokens) are never dropped nor rescaled. ``rate`` may be traced (no
  recompilation); ``rate == 1`` zeros every token but the prefix. Inverted, so
  :math:`E[y] = x` and evaluation uses ``x`` as is.

  Args:
    key: a PRNG key.
    x: floating-point tokens, e.g. ``(batch, tokens, features)``.
    rate: probability of dropping a token, in [0, 1].
    token_axis: the tokens axis (default -2: features last).
    num_prefix_tokens: tokens at the start of ``token_axis`` that are always kept.

  Returns:
    An array like ``x``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxnorm import functional as F
    >>> x = jnp.ones((2, 9, 4))                          # class token + 8 patches
    >>> y = F.token_dropout(jax.random.key(0), x, rate=0.5, num_prefix_tokens=1)
    >>> bool((y[:, 0] == 1).all()), sorted(set(y[:, 1:].ravel().tolist()))
    (True, [0.0, 2.0])

  References:
    Gal & Ghahramani, "A Theoretically Grounded Application of Dropout in Recurrent
    Neural Networks", NeurIPS 2016 (dropping whole words of a sequence).
  """
  fn = "jaxnorm.functional.token_dropout"
  x = _checks.ensure_floating(x, name="x", fn=fn)
  _static_rate(rate, fn)
  (axis,) = _checks.canonical_axes(token_axis, x.shape, name="token_axis", fn=fn)
  prefix = _prefix(num_prefix_tokens, x.shape[axis], x.shape, token_axis, fn)
  dims = tuple(range(axis + 1, x.ndim))
  if prefix == 0:
    return dropout(key, x, rate=rate, broadcast_dims=dims)
  kept, rest = _split_prefix(x, axis, prefix)
  return jnp.concatenate([kept, dropout(key, rest, rate=rate, broadcast_dims=dims)],
                         axis=axis)


def patch_drop(
    key: jax.Array,
    x: jax.Array,
    *,
    rate: float,
    token_axis: int = -2,
    num_prefix_tokens: int = 0,
) -> tuple[jax.Array, jax.Array]:
  r"""PatchDrop: keeps a random subset of the patch tokens, returning their indices.

  Of the ``N`` patch tokens (after ``num_prefix_tokens`` class/register tokens, which
  are always kept) each example keeps :math:`K = \max(1, \mathrm{round}((1-p) N))`
  chosen uniformly without replacement, in their original order; nothing is
  rescaled (tokens are removed, not zeroed). The sequence gets shorter, which is what
  saves compute in a vision transformer; the indices let a model or a loss gather the
  matching targets or positions (``jnp.take_along_axis``).

  ``rate`` sets the shape of the output, so it must be a concrete Python number, not a
  value traced under ``jax.jit`` (mark it static); changing it recompiles.

  Args:
    key: a PRNG key.
    x: floating-point tokens, e.g. ``(batch, tokens, features)``; positional
      embeddings should already be added.
    rate: fraction of patch tokens to drop, in [0, 1).
    token_axis: the tokens axis (default -2); the axes before it are batch axes
      (one subset each), the axes after it are features.
    num_prefix_tokens: tokens at the start of ``token_axis`` that are always kept.

  Returns:
    ``(tokens, indices)``: ``tokens`` has ``num_prefix_tokens + K`` tokens along
    ``token_axis``; ``indices`` (int32, the batch axes then ``K``) are the kept
    patches' positions among the ``N`` patches (not counting the prefix), ascending.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxnorm import functional as F
    >>> x = jnp.arange(2 * 9 * 3, dtype=jnp.float32).reshape(2, 9, 3)
    >>> tokens, idx = F.patch_drop(jax.random.key(0), x, rate=0.5, num_prefix_tokens=1)
    >>> tokens.shape, idx.shape
    ((2, 5, 3), (2, 4))
    >>> bool((tokens[:, 1:] == jnp.take_along_axis(x[:, 1:], idx[..., None], 1)).all())
    True

  References:
    Liu et al., "PatchDropout: Economizing Vision Transformers Using Patch Dropout",
    WACV 2023.
  """
  fn = "jaxnorm.functional.patch_drop"
  x = _checks.ensure_floating(x, name="x", fn=fn)
  if _checks.concrete_float(rate) is None:
    raise TypeError(
        f"{fn}: rate sets the number of kept tokens, a static shape, so it must be a "
        f"Python number, not a value traced under a transform; got {rate!r}. Mark it "
        "static (jax.jit(..., static_argnames='rate')).")
  rate = _static_rate(rate, fn)
  if rate == 1.0:
    raise ValueError(f"{fn}: rate must be < 1 (PatchDrop keeps max(1, round((1 - rate) "
                     "* N)) patches, and at least one); got 1.0.")
  (axis,) = _checks.canonical_axes(token_axis, x.shape, name="token_axis", fn=fn)
  prefix = _prefix(num_prefix_tokens, x.shape[axis], x.shape, token_axis, fn)
  kept_prefix, patches = _split_prefix(x, axis, prefix)
  num_patches = patches.shape[axis]
  batch_shape = x.shape[:axis]
  if rate == 0.0 or num_patches == 0:
    indices = jnp.broadcast_to(jnp.arange(num_patches, dtype=jnp.int32),
                               batch_shape + (num_patches,))
    return x, indices
  _check_key(key, fn)
  num_keep = max(1, round((1.0 - rate) * num_patches))
  scores = _uniform(key, batch_shape + (num_patches,))
  indices = jnp.sort(lax.top_k(scores, num_keep)[1], axis=-1).astype(jnp.int32)
  gather = indices.reshape(indices.shape + (1,) * (x.ndim - axis - 1))
  kept = jnp.take_along_axis(patches, gather, axis=axis)
  return jnp.concatenate([kept_prefix, kept], axis=axis), indices
