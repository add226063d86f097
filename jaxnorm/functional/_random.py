"""Bernoulli, uniform and normal noise with ``jax.random``'s bits, fused by XLA.

``jax.random`` lowers the threefry-2x32 hash on the CPU as a rolled loop that writes
full-size arrays on every round, so drawing a dropout mask costs many passes over
memory. Here the same hash is written with ``jnp`` integer operations, unrolled, so
that XLA fuses it with the comparison (and with the multiply of dropout) into one
elementwise loop. For default threefry keys (typed ``jax.random.key`` or raw
``jax.random.PRNGKey``, with ``jax_threefry_partitionable`` on, JAX's default) the
values are bit for bit those of ``jax.random.bernoulli`` / ``uniform`` / ``normal``
given the same key, shape and dtype, and so the same masks as ``flax.linen.Dropout``.
Other key implementations, other dtypes and the legacy (non-partitionable) threefry
layout take the ``jax.random`` functions themselves.

Reference: Salmon et al., "Parallel Random Numbers: As Easy as 1, 2, 3", SC 2011
(threefry); JAX's ``jax._src.random`` for the counter layout and the bits-to-float map.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def _threefry_key_words(key) -> tuple[jax.Array, jax.Array] | None:
  """The two uint32 words of a threefry-2x32 key, or ``None`` for any other key."""
  if not jax.config.jax_threefry_partitionable:
    return None  # the legacy counter layout: leave it to jax.random
  dtype = getattr(key, "dtype", None)
  if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    if key.shape or str(jax.random.key_impl(key)) != "threefry2x32":
      return None
    data = jax.random.key_data(key)
  elif dtype == jnp.uint32 and getattr(key, "shape", None) == (2,):
    if jax.config.jax_default_prng_impl != "threefry2x32":
      return None
    data = key
  else:
    return None
  return data[0], data[1]


def _rotate_left(v: jax.Array, distance: int) -> jax.Array:
  return lax.shift_left(v, np.uint32(distance)) | lax.shift_right_logical(
      v, np.uint32(32 - distance))


def threefry2x32(k1, k2, x1, x2) -> tuple[jax.Array, jax.Array]:
  """The threefry-2x32 block cipher (20 rounds), unrolled, on broadcastable uint32 arrays."""
  keys = (k1, k2, k1 ^ k2 ^ _PARITY)
  x1, x2 = x1 + keys[0], x2 + keys[1]
  for block in range(5):
    for distance in _ROTATIONS[block % 2]:
      x1 = x1 + x2
      x2 = _rotate_left(x2, distance) ^ x1
    x1 = x1 + keys[(block + 1) % 3]
    x2 = x2 + keys[(block + 2) % 3] + np.uint32(block + 1)
  return x1, x2


def _counters(shape: tuple[int, ...]) -> jax.Array:
  """The row-major element index as uint32, built from per-axis iotas.

  As in ``jax.random``, a sum of broadcast iotas times strides (not a reshaped 1-D
  iota), which XLA's SPMD partitioner splits along any sharded axis without moving
  data.
  """
  if not shape:
    return jnp.zeros((), jnp.uint32)
  strides = np.cumprod((1,) + shape[:0:-1])[::-1]
  index = jnp.zeros(shape, jnp.uint32)
  for axis, stride in enumerate(strides):
    if shape[axis] > 1:
      index = index + lax.broadcasted_iota(jnp.uint32, shape, axis) * np.uint32(stride)
  return index


def fusable(key: jax.Array, shape: Sequence[int]) -> bool:
  """Whether :func:`random_bits` reproduces ``jax.random`` for this key and shape.

  True for a default threefry key (typed or raw) with fewer than 2**32 elements.
  """
  return (_threefry_key_words(key) is not None
          and math.prod(int(n) for n in shape) < 2**32)


def random_bits(key: jax.Array, shape: Sequence[int]) -> jax.Array:
  """32 random bits per element, equal to ``jax.random.bits(key, shape, uint32)``.

  Only for keys and shapes that are :func:`fusable`.
  """
  # Counter i is the 64-bit pair (hi, lo) = (0, i); the two output words are xor-ed.
  hi, lo = threefry2x32(*_threefry_key_words(key), jnp.zeros((), jnp.uint32),
                        _counters(tuple(int(n) for n in shape)))
  return hi ^ lo


def _is_float32(dtype) -> bool:
  return jnp.dtype(dtype) == jnp.float32


# The samplers are compiled as a whole, as jax.random's are: XLA may contract
# ``floats * (maxval - minval) + minval`` into a fused multiply-add, which op-by-op
# (eager) execution would not, and the values must not depend on that.
@functools.partial(jax.jit, static_argnames=("shape", "dtype"))
def uniform(key: jax.Array, shape: Sequence[int], dtype=jnp.float32, minval=0.0,
            maxval=1.0) -> jax.Array:
  """``jax.random.uniform(key, shape, dtype, minval, maxval)``, the same values.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxnorm.functional import _random
    >>> key = jax.random.key(0)
    >>> bool(jnp.all(_random.uniform(key, (3, 5)) == jax.random.uniform(key, (3, 5))))
    True
  """
  if not (_is_float32(dtype) and fusable(key, shape)):
    return jax.random.uniform(key, shape, dtype, minval, maxval)
  bits = random_bits(key, shape)
  # The mantissa of a float in [1, 2), minus 1; then scaled as jax.random does.
  floats = lax.bitcast_convert_type(
      lax.shift_right_logical(bits, np.uint32(32 - 23)) | np.uint32(0x3F800000),
      jnp.float32) - np.float32(1.0)
  minval = lax.convert_element_type(minval, jnp.float32)
  maxval = lax.convert_element_type(maxval, jnp.float32)
  return lax.max(minval, floats * (maxval - minval) + minval)


@functools.partial(jax.jit, static_argnames=("shape",))
def bernoulli(key: jax.Array, p, shape: Sequence[int]) -> jax.Array:
  """``jax.random.bernoulli(key, p, shape)``: the same booleans for the same key.

  Example:
    >>> import jax
    >>> from jaxnorm.functional import _random
    >>> key = jax.random.key(1)
    >>> bool((_random.bernoulli(key, 0.7, (64,)) == jax.random.bernoulli(key, 0.7, (64,))).all())
    True
  """
  if not (_is_float32(lax.dtype(p)) and fusable(key, shape)):
    return jax.random.bernoulli(key, p, shape)
  return uniform(key, shape, jnp.float32) < lax.convert_element_type(p, jnp.float32)


@functools.partial(jax.jit, static_argnames=("shape", "dtype"))
def normal(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
  """``jax.random.normal(key, shape, dtype)``: the same values for the same key.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxnorm.functional import _random
    >>> key = jax.random.key(2)
    >>> bool(jnp.all(_random.normal(key, (4, 4)) == jax.random.normal(key, (4, 4))))
    True
  """
  if not (_is_float32(dtype) and fusable(key, shape)):
    return jax.random.normal(key, shape, dtype)
  low = np.nextafter(np.float32(-1.0), np.float32(0.0), dtype=np.float32)
  u = uniform(key, shape, jnp.float32, low, np.float32(1.0))
  return lax.mul(np.float32(np.sqrt(2)), lax.erf_inv(u))
