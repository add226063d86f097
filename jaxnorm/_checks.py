"""Input validation shared by every jaxnorm layer.

Each check raises ``TypeError`` (wrong kind of value) or ``ValueError`` (right kind,
wrong value) with a message that names the function, the argument, the rule, the value
received and, where there is one, the fix. Values traced under ``jax.jit`` cannot be
inspected; the checks skip them and the caller documents what happens then.

Range checks are written as ``not (low <= v <= high)`` so that NaN, which fails every
comparison, is always rejected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def _shown(value: Any) -> str:
  """A short description of ``value`` for an error message."""
  shape = getattr(value, "shape", None)
  if shape is not None and tuple(shape) != ():
    return f"an array of shape {tuple(shape)} and dtype {getattr(value, 'dtype', '?')}"
  text = repr(value)
  return text if len(text) <= 80 else text[:77] + "..."


def is_prng_key(value: Any) -> bool:
  """Whether ``value`` is a typed PRNG key array (``jax.random.key``)."""
  dtype = getattr(value, "dtype", None)
  return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def concrete_float(value: Any) -> float | None:
  """Returns ``value`` as a Python float, or ``None`` when it is traced under a transform.

  Only for values already checked with :func:`scalar` (or known to be numbers).
  """
  if isinstance(value, jax.core.Tracer):
    return None
  try:
    return float(value)
  except (TypeError, ValueError, jax.errors.ConcretizationTypeError):
    return None


def scalar(value: Any, *, name: str, fn: str) -> float | None:
  """Checks that ``value`` is one real number; returns it as a float (None if traced).

  Accepted: Python ``int``/``float``, NumPy real scalars and 0-d real arrays (NumPy or
  JAX, concrete or traced). Rejected with ``TypeError``: ``bool`` (``True`` is not a
  momentum), strings (``'0.9'``), ``None``, complex numbers and arrays with more than one
  element.
  """
  if isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{fn}: {name} must be a number, not a bool; got {value!r}.")
  if isinstance(value, (str, bytes)):
    fix = ""
    try:
      fix = f" Write it without quotes: {name}={float(value)!r}."
    except ValueError:
      pass
    raise TypeError(f"{fn}: {name} must be a number, not a string; got {value!r}.{fix}")
  if isinstance(value, (int, float, np.integer, np.floating)):
    return float(value)
  dtype = getattr(value, "dtype", None)
  shape = getattr(value, "shape", None)
  if dtype is None or shape is None:
    raise TypeError(f"{fn}: {name} must be a number; got {_shown(value)} "
                    f"({type(value).__name__}).")
  if tuple(shape) != ():
    raise TypeError(f"{fn}: {name} must be a single number (a scalar); got "
                    f"{_shown(value)}. Pass one value, e.g. float({name}[0]) if they "
                    "are all equal.")
  if is_prng_key(value) or not (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(
      dtype, jnp.floating)) or dtype == jnp.bool_:
    raise TypeError(f"{fn}: {name} must be a real number; got a scalar of dtype {dtype}.")
  if isinstance(value, jax.core.Tracer):
    return None
  return float(value)


def check_range(value: Any, *, name: str, fn: str, low: float | None = None,
                high: float | None = None, low_open: bool = False,
                high_open: bool = False, finite: bool = False,
                hint: str = "") -> float | None:
  """Checks a real scalar against ``[low, high]`` (open ends optional); NaN fails.

  Returns the value as a float, or None when traced (then nothing is checked). With
  ``finite``, infinities are rejected too.
  """
  v = scalar(value, name=name, fn=fn)
  if v is None:
    return None
  ok = not math.isnan(v)
  if low is not None:
    ok = ok and (v > low if low_open else v >= low)
  if high is not None:
    ok = ok and (v < high if high_open else v <= high)
  if not ok:
    if low is not None and high is not None:
      rule = (f"in {'(' if low_open else '['}{low:g}, {high:g}"
              f"{')' if high_open else ']'}")
    elif low is not None:
      rule = f"{'>' if low_open else '>='} {low:g}"
    elif high is not None:
      rule = f"{'<' if high_open else '<='} {high:g}"
    else:
      rule = "a number (not NaN)"
    raise ValueError(f"{fn}: {name} must be {rule}; got {value!r}.{hint}")
  if finite and math.isinf(v):
    raise ValueError(f"{fn}: {name} must be finite; got {value!r}.{hint}")
  return v


def check_in_unit_interval(value: Any, *, name: str, fn: str, hint: str = "") -> None:
  """Raises unless ``value`` is a real number in [0, 1] (or traced)."""
  check_range(value, name=name, fn=fn, low=0.0, high=1.0, hint=hint)


def check_positive(value: Any, *, name: str, fn: str, hint: str = "") -> None:
  """Raises unless ``value`` is a finite real number > 0 (or traced)."""
  check_range(value, name=name, fn=fn, low=0.0, low_open=True, finite=True, hint=hint)


def check_int(value: Any, *, name: str, fn: str, low: int | None = None,
              hint: str = "") -> int:
  """Returns ``value`` as an int; ``TypeError`` unless it is one (``bool`` is not)."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"{fn}: {name} must be an int; got {_shown(value)} "
                    f"({type(value).__name__}).{hint}")
  if low is not None and value < low:
    raise ValueError(f"{fn}: {name} must be >= {low}; got {value!r}.{hint}")
  return int(value)


def check_epsilon(epsilon: Any, *, fn: str, dtype: Any) -> float:
  """Returns ``epsilon`` as a Python float after checking it for a computation in ``dtype``.

  It must be a constant (it is part of the compiled computation), a real number, finite
  and at least ``finfo.tiny / finfo.eps**2`` of the dtype the statistics are computed in
  (float32 for half-precision and float32 inputs: about 8e-25): XLA flushes numbers
  below ``finfo.tiny`` to zero, and a smaller epsilon would no longer dominate what that
  flush can lose from a sum of squares.
  """
  if isinstance(epsilon, jax.core.Tracer):
    raise TypeError(
        f"{fn}: epsilon must be a Python number, not a value traced under a transform; "
        f"got {epsilon!r}. Pass it as a constant (it is part of the compiled computation).")
  try:
    value = scalar(epsilon, name="epsilon", fn=fn)
  except TypeError:
    raise TypeError(f"{fn}: epsilon must be a positive number such as 1e-5; got "
                    f"{_shown(epsilon)}.") from None
  hint = " It keeps 1/sqrt(var + epsilon) finite; 1e-5 is usual."
  check_range(value, name="epsilon", fn=fn, low=0.0, low_open=True, finite=True, hint=hint)
  info = jnp.finfo(jnp.promote_types(dtype, jnp.float32))
  smallest = float(info.tiny) / float(info.eps) ** 2
  if not smallest <= value <= float(info.max):
    raise ValueError(
        f"{fn}: epsilon={value!r} is outside [{smallest:.3g}, {float(info.max):.3g}], the "
        f"range it can have in {info.dtype}, the dtype the statistics are computed in: "
        f"below it, values that {info.dtype} flushes to zero would matter next to "
        f"epsilon; above it, it overflows.{hint}")
  return value


def ensure_floating(x: Any, *, name: str, fn: str, allow_complex: bool = False
                    ) -> jax.Array:
  """Returns ``x`` as a JAX array, raising ``TypeError`` unless it is floating point.

  A PRNG key in the place of data (``dropout(x, key)`` with the arguments swapped) gets
  its own message. Complex arrays are accepted only with ``allow_complex``.
  """
  if is_prng_key(x):
    raise TypeError(
        f"{fn}: {name} is a PRNG key ({getattr(x, 'dtype', '')}), not data. Were the "
        f"arguments swapped? Keys come first: {fn.rsplit('.', 1)[-1]}(key, x, ...).")
  if x is None or isinstance(x, (str, bytes)):
    raise TypeError(f"{fn}: {name} must be an array; got {x!r}.")
  try:
    dtype = jnp.result_type(x) if hasattr(x, "dtype") else np.asarray(x).dtype
  except TypeError:
    raise TypeError(f"{fn}: {name} must be an array; got {type(x).__name__}.") from None
  if jnp.issubdtype(dtype, jnp.complexfloating):
    if allow_complex:
      return jnp.asarray(x)
    raise TypeError(
        f"{fn}: {name} has the complex dtype {dtype}; complex inputs are supported by "
        "batch_norm, layer_norm, group_norm, instance_norm, rms_norm, moments and "
        "dropout (as in flax), not here. Normalize the real and imaginary parts "
        "separately if that is what you mean.")
  if not jnp.issubdtype(dtype, jnp.floating):
    kinds = "float16, bfloat16, float32 or float64" + (
        ", or complex" if allow_complex else "")
    raise TypeError(
        f"{fn}: {name} must be a floating-point array ({kinds}); got dtype {dtype}. "
        f"Cast it first, e.g. {name}.astype(jnp.float32).")
  return jnp.asarray(x)


def canonical_axes(
    axis: int | Sequence[int], shape: Sequence[int], *, name: str, fn: str,
    allow_empty: bool = True,
) -> tuple[int, ...]:
  """Returns ``axis`` as a sorted tuple of non-negative, distinct axes of ``shape``.

  ``axis`` is an int or a tuple/list of ints (not a float, bool, string or None). With
  ``allow_empty=False`` an empty tuple (no axis at all) is rejected.
  """
  ndim = len(shape)

  def is_int(a):
    return isinstance(a, (int, np.integer)) and not isinstance(a, (bool, np.bool_))

  if is_int(axis):
    axes = (axis,)
  elif isinstance(axis, (tuple, list)) and all(is_int(a) for a in axis):
    axes = tuple(axis)
  else:
    fix = ""
    if isinstance(axis, (float, np.floating)) and float(axis).is_integer():
      fix = f" Write {name}={int(axis)}."
    raise TypeError(f"{fn}: {name} must be an int or a tuple of ints (axes of "
                    f"x.shape={tuple(shape)}); got {_shown(axis)} "
                    f"({type(axis).__name__}).{fix}")
  if not axes and not allow_empty:
    raise ValueError(f"{fn}: {name}=() names no axis, so there is nothing to normalize "
                     f"over (x.shape={tuple(shape)}); name at least one axis, e.g. "
                     f"{name}=-1.")
  if axes and ndim == 0:
    raise ValueError(f"{fn}: x is 0-d (shape ()), so it has no axis {name}={axis!r}; "
                     "pass an array with at least one dimension, e.g. x[None].")
  for a in axes:
    if not -ndim <= a < ndim:
      raise ValueError(
          f"{fn}: {name}={axis!r} is out of range for x.shape={tuple(shape)} "
          f"(ndim {ndim}); use axes in [{-ndim}, {ndim - 1}].")
  canonical = tuple(int(a) % ndim for a in axes)
  if len(set(canonical)) != len(canonical):
    raise ValueError(
        f"{fn}: {name}={axis!r} names the same axis twice for x.shape={tuple(shape)}; "
        "list each axis once.")
  return tuple(sorted(canonical))


def check_axis_name(axis_name: Any, *, fn: str) -> None:
  """Checks that ``axis_name`` (if given) names a mapped axis bound where it is used.

  A misspelled name under ``shard_map`` would otherwise end in a bare
  ``AssertionError`` from inside JAX.
  """
  if axis_name is None:
    return
  names = axis_name if isinstance(axis_name, tuple) else (axis_name,)
  for n in names:
    try:
      hash(n)
    except TypeError:
      raise TypeError(f"{fn}: axis_name must be a mapped axis name (a string, or a tuple "
                      f"of them); got {_shown(axis_name)}.") from None
  try:
    lax.axis_size(axis_name)
  except NameError as error:
    raise ValueError(
        f"{fn}: axis_name={axis_name!r} is not bound here ({error}). Statistics across "
        f"devices need the call to run inside jax.shard_map (mesh axis {axis_name!r}), "
        f"jax.pmap(..., axis_name={axis_name!r}) or jax.vmap(..., axis_name="
        f"{axis_name!r}), with that exact name; under plain jax.jit with sharded inputs "
        "leave axis_name=None (XLA inserts the collectives).") from error


def check_static_bool(value: Any, *, name: str, fn: str) -> bool:
  """Returns ``value`` as a Python bool; it selects a code path, so it cannot be traced."""
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  raise TypeError(
      f"{fn}: {name} must be a Python bool (it selects the code path at trace time); got "
      f"{value!r}. Mark it static (jax.jit(..., static_argnames=...)) or branch with "
      "jax.lax.cond.")


def check_values_per_group(count: int, *, fn: str, x_shape: Sequence[int], axis_desc: str,
                           mask: Any, axis_name: Any) -> None:
  """Rejects a centred normalization over groups of exactly one value.

  Each value would be its own mean, so the output is the bias everywhere, whatever the
  input. With a mask or ``axis_name`` the number of values is not known statically and
  nothing is checked; empty groups (no value at all) are allowed.
  """
  if count == 1 and mask is None and axis_name is None:
    raise ValueError(
        f"{fn}: normalizing over groups of one value gives 0 everywhere (each value is "
        f"its own mean); x.shape={tuple(x_shape)} with {axis_desc} gives 1 value per "
        "group. Normalize over axes with more than one value.")


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
        "jnp.arange(T).")
  shape = tuple(shape)
  try:
    broadcast = jnp.broadcast_shapes(mask.shape, shape)
  except ValueError:
    broadcast = None
  if broadcast != shape:
    raise ValueError(
        f"{fn}: mask.shape={mask.shape} does not broadcast to x.shape={shape}; give the "
        "mask size 1 (or the size of x) on every axis, aligned from the right.")
  return broadcast_to_rank(mask.astype(jnp.bool_), len(shape))


def check_shape(
    value: jax.Array, expected: tuple[int, ...], *, name: str, fn: str, context: str
) -> None:
  """Raises ``ValueError`` if ``value.shape`` differs from ``expected``."""
  if tuple(value.shape) != tuple(expected):
    raise ValueError(
        f"{fn}: {name} has shape {tuple(value.shape)} but must have shape "
        f"{tuple(expected)} ({context}).")
