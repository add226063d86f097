"""What the Flax front-ends (``jaxnorm.linen``, ``jaxnorm.nnx``) share, written once.

Feature axes and parameter shapes, Flax's output-dtype rule, the batch-norm mode
logic (training, evaluation, frozen statistics, evaluation with batch statistics) and
the dropout shortcuts. No Flax import: both front-ends build on this module, and
:mod:`jaxnorm.functional` stays free of Flax.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxnorm import _checks


def output_dtype(*arrays: Any, dtype: Any = None) -> Any:
  """Flax's dtype rule: ``dtype`` if given, else the result type of ``arrays``.

  ``None`` entries (absent scale or bias) are ignored; an inferred integer type is
  promoted to a floating type, as ``flax.linen.dtypes.canonicalize_dtype`` and
  ``flax.nnx.nn.dtypes.canonicalize_dtype`` do.

  Example:
    >>> import jax.numpy as jnp
    >>> output_dtype(jnp.ones(2, jnp.bfloat16), jnp.ones(2, jnp.float32))
    dtype('float32')
    >>> output_dtype(jnp.ones(2, jnp.float32), None, dtype=jnp.bfloat16)
    <class 'jax.numpy.bfloat16'>
  """
  if dtype is None:
    dtype = jnp.result_type(*(jnp.asarray(a) for a in arrays if a is not None))
    if not jnp.issubdtype(dtype, jnp.inexact):
      dtype = jnp.promote_types(jnp.float32, dtype)
  if not jnp.issubdtype(dtype, jnp.inexact):
    raise ValueError(f"jaxnorm: dtype must be a floating-point (inexact) dtype; got "
                     f"{dtype}. Use e.g. dtype=jnp.float32 or dtype=None (inferred).")
  return dtype


def widen(x: jax.Array, out_dtype: Any) -> jax.Array:
  """``x`` widened to ``out_dtype`` when that is wider, so no precision is lost."""
  return x.astype(jnp.promote_types(x.dtype, out_dtype))


def feature_shape(shape: Sequence[int], axes: tuple[int, ...]) -> tuple[int, ...]:
  """The sizes of ``shape`` on ``axes``: the shape of per-feature parameters."""
  return tuple(shape[a] for a in axes)


def broadcast_params(x: jax.Array, axes: tuple[int, ...], *params):
  """Reshapes feature-shaped (or flat) parameters to broadcast against ``x``.

  Sizes of ``x`` on ``axes``, 1 elsewhere; ``None`` stays ``None``.
  """
  shape = tuple(x.shape[a] if a in axes else 1 for a in range(x.ndim))
  return tuple(None if p is None else p.reshape(shape) for p in params)


def check_num_features(num_features: int, x_shape: Sequence[int], axes: tuple[int, ...],
                       *, axis_desc: str, fn: str) -> tuple[int, ...]:
  """Returns the sizes of ``x`` on ``axes``, checking they hold ``num_features`` values.

  NNX layers create their parameters at construction, flat with ``num_features``
  entries; the features of ``x`` (its sizes on ``axes``) must hold as many.
  """
  shape = feature_shape(x_shape, axes)
  if math.prod(shape) != num_features:
    raise ValueError(
        f"{fn}: the layer was built with num_features={num_features} but x.shape="
        f"{tuple(x_shape)} has {math.prod(shape)} features on {axis_desc} (sizes "
        f"{shape}). Build the layer with num_features={math.prod(shape)}, or pass an "
        "input whose feature axes hold num_features values.")
  return shape


def running_stats_init(shape: Sequence[int]) -> tuple[jax.Array, jax.Array]:
  """Initial running statistics: mean zeros and var ones, float32 (as Flax)."""
  return jnp.zeros(tuple(shape), jnp.float32), jnp.ones(tuple(shape), jnp.float32)


class BatchNormMode(NamedTuple):
  """What a batch-norm call does.

  Attributes:
    batch_statistics: normalize with the batch's own statistics (else the running ones).
    update: write the new running statistics back.
  """

  batch_statistics: bool
  update: bool


def batch_norm_mode(use_running_average: bool, *, freeze_stats: bool = False,
                    eval_with_batch_stats: bool = False) -> BatchNormMode:
  """The mode of a batch-norm call from its flags.

  Training (``use_running_average=False``) uses and updates batch statistics;
  evaluation uses the running ones. ``freeze_stats`` always uses the running
  statistics and never updates them; ``eval_with_batch_stats`` normalizes evaluation
  batches with their own statistics without updating the running ones.

  Example:
    >>> batch_norm_mode(False)
    BatchNormMode(batch_statistics=True, update=True)
    >>> batch_norm_mode(True, eval_with_batch_stats=True)
    BatchNormMode(batch_statistics=True, update=False)
    >>> batch_norm_mode(False, freeze_stats=True)
    BatchNormMode(batch_statistics=False, update=False)
  """
  batch_statistics = (not use_running_average or eval_with_batch_stats) and not freeze_stats
  return BatchNormMode(batch_statistics, batch_statistics and not use_running_average)


def dropout_is_identity(rate: Any, deterministic: bool) -> bool:
  """True when a dropout call returns its input unchanged (deterministic or rate 0)."""
  return bool(deterministic) or _checks.concrete_float(rate) == 0.0


def dropout_drops_all(rate: Any) -> bool:
  """True for a concrete ``rate`` of 1: the output is zeros and no key is drawn (as Flax)."""
  return _checks.concrete_float(rate) == 1.0


def check_dropout_rate(rate: Any, *, fn: str) -> None:
  """Raises ``ValueError`` for a concrete ``rate`` outside [0, 1]."""
  _checks.check_in_unit_interval(
      rate, name="rate", fn=fn,
      hint=" rate is the probability of dropping an element, not of keeping it.")


def concrete_dropout_init_logit(init_rate: float, *, fn: str) -> float:
  """The logit of ``init_rate``, which must lie in the open interval (0, 1)."""
  rate = _checks.scalar(init_rate, name="init_rate", fn=fn)  # a number, not a bool/str
  if rate is None or not 0.0 < rate < 1.0:  # NaN fails too
    raise ValueError(f"{fn}: init_rate must be in the open interval (0, 1) (its logit is "
                     f"learned); got {init_rate!r}.")
  return math.log(rate) - math.log1p(-rate)
