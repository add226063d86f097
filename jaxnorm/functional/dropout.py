"""PRNG-keyed dropout: randomness is an explicit key argument, never hidden state."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from jaxnorm import _checks


def _check_key(key, fn: str) -> None:
  dtype = getattr(key, "dtype", None)
  is_typed_key = dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
  is_raw_key = dtype == jnp.uint32 and getattr(key, "shape", None) == (2,)
  if not (is_typed_key or is_raw_key):
    raise TypeError(
        f"{fn}: key must be a JAX PRNG key (jax.random.key(seed) or "
        f"jax.random.PRNGKey(seed)); got {type(key).__name__} with dtype {dtype}. "
        "The key comes first: dropout(key, x, rate=...).")


def dropout(
    key: jax.Array,
    x: jax.Array,
    *,
    rate: float | jax.Array,
    broadcast_dims: Sequence[int] = (),
) -> jax.Array:
  r"""Inverted dropout: drop each element with probability ``rate``, rescale the rest.

  .. math::
    y = \frac{b \odot x}{1 - p}, \qquad b \sim \text{Bernoulli}(1 - p)

  with :math:`p` = ``rate``, so :math:`E[y] = x`. The mask is shared along
  ``broadcast_dims`` (e.g. ``(1, 2)`` on NHWC drops whole channels). The mask is a
  function of ``key`` and the mask shape only: the same key gives the same mask with or
  without ``jax.jit`` and the same mask as ``flax.linen.Dropout`` given the same key.

  ``rate`` may be traced (a schedule under ``jax.jit``: no recompilation per value);
  traced values are not range-checked. ``rate == 1`` gives zeros with zero (finite)
  gradients; ``rate == 0`` returns ``x``.

  Args:
    key: a PRNG key; split or ``fold_in`` it per layer and per step yourself.
    x: floating-point input.
    rate: drop probability in [0, 1] (not the keep probability).
    broadcast_dims: axes along which the mask is shared.

  Returns:
    An array like ``x``.

  References:
    Srivastava et al., "Dropout: A Simple Way to Prevent Neural Networks from
    Overfitting", JMLR 2014.
  """
  fn = "jaxnorm.functional.dropout"
  x = _checks.ensure_floating(x, name="x", fn=fn)
  _checks.check_in_unit_interval(
      rate, name="rate", fn=fn,
      hint=" rate is the probability of dropping an element, not of keeping it.")
  dims = (_checks.canonical_axes(broadcast_dims, x.shape, name="broadcast_dims", fn=fn)
          if len(broadcast_dims) else ())
  static_rate = _checks.concrete_float(rate)
  if static_rate == 0.0:
    return x
  if static_rate == 1.0:
    return jnp.zeros_like(x)
  _check_key(key, fn)
  mask_shape = tuple(1 if a in dims else n for a, n in enumerate(x.shape))
  if static_rate is not None:
    keep_prob = 1.0 - static_rate
    keep = jax.random.bernoulli(key, p=keep_prob, shape=mask_shape)
    return lax.select(jnp.broadcast_to(keep, x.shape), x / keep_prob, jnp.zeros_like(x))
  keep_prob = 1.0 - jnp.asarray(rate, jnp.float32)
  keep = jax.random.bernoulli(key, p=keep_prob, shape=mask_shape)
  # Where nothing is kept, divide by 1 instead of 0 so no inf/NaN reaches the gradient.
  safe_keep_prob = jnp.where(keep_prob > 0, keep_prob, 1.0).astype(x.dtype)
  return jnp.where(jnp.broadcast_to(keep, x.shape), x / safe_keep_prob, jnp.zeros_like(x))
