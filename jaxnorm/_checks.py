"""Input validation shared by every jaxnorm layer.

Each check raises ``TypeError`` (wrong kind of value) or ``ValueError`` (right kind,
wrong value) with a message that names the function, the argument, the rule, the value
received and, where there is one, the fix. Values traced under ``jax.jit`` cannot be
inspected; the checks skip them and the caller documents what happens then.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def concrete_float(value: Any) -> float | None:
  """Returns ``value`` as a Python float, or ``None`` when it is traced under a transform."""
  if isinstance(value, jax.core.Tracer):
    return None
  try:
    return float(value)
  except (TypeError, jax.errors.ConcretizationTypeError):
    return None


def ensure_floating(x: Any, *, name: str, fn: str) -> jax.Array:
  """Returns ``x`` as a JAX array, raising ``TypeError`` unless it is floating point."""
  dtype = jnp.result_type(x) if hasattr(x, "dtype") else np.asarray(x).dtype
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(
        f"{fn}: {name} must be a floating-point array (float16, bfloat16, float32 or "
        f"float64); got dtype {dtype}. Cast it first, e.g. {name}.astype(jnp.float32)."
    )
  return jnp.asarray(x)


def canonical_axes(
    axis: int | Sequence[int], shape: Sequence[int], *, name: str, fn: str
) -> tuple[int, ...]:
  """Returns ``axis`` as a sorted tuple of non-negative, distinct axes of ``shape``."""
  ndim = len(shape)
  axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
  for a in axes:
    if not isinstance(a, (int, np.integer)) or isinstance(a, bool):
      raise TypeError(f"{fn}: {name} must be an int or a tuple of ints; got {axis!r}.")
    if not -ndim <= a < ndim:
      raise ValueError(
          f"{fn}: {name}={axis!r} is out of range for x.shape={tuple(shape)} "
          f"(ndim {ndim}); use axes in [{-ndim}, {ndim - 1}]."
      )
  canonical = tuple(int(a) % ndim for a in axes)
  if len(set(canonical)) != len(canonical):
    raise ValueError(
        f"{fn}: {name}={axis!r} names the same axis twice for x.shape={tuple(shape)}; "
        "list each axis once."
    )
  return tuple(sorted(canonical))


def check_in_unit_interval(value: Any, *, name: str, fn: str, hint: str = "") -> None:
  """Raises ``ValueError`` if a concrete ``value`` lies outside [0, 1]."""
  v = concrete_float(value)
  if v is not None and not 0.0 <= v <= 1.0:
    raise ValueError(f"{fn}: {name} must be in [0, 1]; got {value!r}.{hint}")


def check_positive(value: Any, *, name: str, fn: str, hint: str = "") -> None:
  """Raises ``ValueError`` if a concrete ``value`` is not > 0."""
  v = concrete_float(value)
  if v is not None and not v > 0.0:
    raise ValueError(f"{fn}: {name} must be > 0; got {value!r}.{hint}")


def check_static_bool(value: Any, *, name: str, fn: str) -> bool:
  """Returns ``value`` as a Python bool; it selects a code path, so it cannot be traced."""
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  raise TypeError(
      f"{fn}: {name} must be a Python bool (it selects the code path at trace time); got "
      f"{value!r}. Mark it static (jax.jit(..., static_argnames=...)) or branch with "
      "jax.lax.cond."
  )


def broadcast_to_rank(value: jax.Array, rank: int) -> jax.Array:
  """Prepends size-1 axes so that ``value`` has ``rank`` dimensions."""
  return value.reshape((1,) * (rank - value.ndim) + value.shape)


def check_mask(mask: Any, shape: Sequence[int], *, fn: str) -> jax.Array | None:
  """Returns ``mask`` as a boolean array of rank ``len(shape)`` that broadcasts to ``shape``."""
  if mask is None:
    return None
  mask = jnp.asarray(mask)
  if not (mask.dtype == jnp.bool_ or jnp.issubdtype(mask.dtype, jnp.integer)):
    raise TypeError(
        f"{fn}: mask must be a boolean (or 0/1 integer) array marking the valid "
        f"elements; got dtype {mask.dtype}. Use e.g. mask = lengths[:, None] > "
        "jnp.arange(T)."
    )
  shape = tuple(shape)
  try:
    broadcast = jnp.broadcast_shapes(mask.shape, shape)
  except ValueError:
    broadcast = None
  if broadcast != shape:
    raise ValueError(
        f"{fn}: mask.shape={mask.shape} does not broadcast to x.shape={shape}; give the "
        "mask size 1 (or the size of x) on every axis, aligned from the right."
    )
  return broadcast_to_rank(mask.astype(jnp.bool_), len(shape))


def check_shape(
    value: jax.Array, expected: tuple[int, ...], *, name: str, fn: str, context: str
) -> None:
  """Raises ``ValueError`` if ``value.shape`` differs from ``expected``."""
  if tuple(value.shape) != tuple(expected):
    raise ValueError(
        f"{fn}: {name} has shape {tuple(value.shape)} but must have shape "
        f"{tuple(expected)} ({context})."
    )
