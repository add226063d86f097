"""Plumbing shared by the NNX modules: parameters, running statistics, mode flags, keys.

Each piece mirrors what ``flax.nnx``'s own layers do (the order in which ``rngs.params()``
is drawn, ``nnx.BatchStat`` statistics in float32, ``first_from``-style flag merging,
``set_view``), so a jaxnorm layer is a drop-in for its flax namesake.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import jax
from flax import nnx
from flax.nnx import rnglib
from flax.nnx.nn import dtypes as nnx_dtypes

from jaxnorm import _frontend
from jaxnorm import functional as F

#: The default ``promote_dtype`` of every jaxnorm NNX layer: flax.nnx's own.
promote_dtype = nnx_dtypes.promote_dtype
NO_METADATA: Mapping[str, Any] = MappingProxyType({})


def param(rngs: rnglib.Rngs, init, shape, dtype, metadata=NO_METADATA) -> nnx.Param:
  """An ``nnx.Param`` initialized with a fresh ``rngs.params()`` key (as flax draws it)."""
  return nnx.Param(init(rngs.params(), tuple(shape), dtype), **metadata)


def affine_params(module: nnx.Module, rngs: rnglib.Rngs, num_features: int, *,
                  use_scale: bool, use_bias: bool, scale_init, bias_init, param_dtype,
                  scale_metadata=NO_METADATA, bias_metadata=NO_METADATA) -> None:
  """Sets ``module.scale`` and ``module.bias`` (``(num_features,)`` Params, or None).

  The scale's key is drawn before the bias's, as in flax.nnx, so the same ``Rngs``
  give the same parameters and leave the same stream state for later layers.
  """
  shape = (num_features,)
  module.scale = (param(rngs, scale_init, shape, param_dtype, scale_metadata)
                  if use_scale else nnx.data(None))
  module.bias = (param(rngs, bias_init, shape, param_dtype, bias_metadata)
                 if use_bias else nnx.data(None))


def running_stats(module: nnx.Module, num_features: int) -> None:
  """Sets ``module.mean`` (zeros) and ``module.var`` (ones): float32 ``nnx.BatchStat``."""
  mean, var = _frontend.running_stats_init((num_features,))
  module.mean, module.var = nnx.BatchStat(mean), nnx.BatchStat(var)


def value(variable) -> jax.Array | None:
  """The array of a Variable, or None for an absent one."""
  return None if variable is None else variable[...]


def first_flag(call_value: bool | None, attribute: bool | None, *, flag: str,
               layer: str) -> bool:
  """The call's flag, else the attribute's; ``ValueError`` when both are None.

  The message lists flax.nnx's three ways of setting the flag.
  """
  if call_value is not None:
    return call_value
  if attribute is not None:
    return attribute
  raise ValueError(
      f"jaxnorm.nnx.{layer}: no `{flag}` argument was provided to {layer}: it is None "
      "both in the constructor and in the call. Consider one of the following options:"
      f"\n\n1. Pass `{flag}` to the {layer} constructor:\n\n  self.layer = "
      f"jaxnorm.nnx.{layer}(..., {flag}=True/False)\n\n2. Pass `{flag}` to the {layer} "
      f"__call__:\n\n  self.layer(x, {flag}=True/False)\n\n3. Use `nnx.view` to create a "
      f"view of the model with a specific `{flag}` value:\n\n  model_view = "
      f"nnx.view(model, {flag}=True/False)\n\n(or model.train() / model.eval()).")


def promote(module: nnx.Module, arrays: tuple) -> tuple:
  """``module.promote_dtype(arrays, dtype=module.dtype)``, as flax.nnx's layers call it."""
  return module.promote_dtype(arrays, dtype=module.dtype)


class RunningStatsNorm(nnx.Module):
  """Base of the layers with running statistics (``mean``/``var`` as ``nnx.BatchStat``).

  Holds the attributes every such layer shares and the ``use_running_average`` mode
  (``model.train()``, ``model.eval()``, ``nnx.view(model, use_running_average=...)``).
  Subclasses create their extra variables and call a :mod:`jaxnorm.functional` function.
  """

  def __init__(self, num_features: int, *, use_running_average, momentum, epsilon, dtype,
               param_dtype, use_bias, use_scale, bias_init, scale_init, promote_dtype,
               rngs, bias_metadata, scale_metadata):
    running_stats(self, num_features)
    affine_params(self, rngs, num_features, use_scale=use_scale, use_bias=use_bias,
                  scale_init=scale_init, bias_init=bias_init, param_dtype=param_dtype,
                  scale_metadata=scale_metadata, bias_metadata=bias_metadata)
    self.num_features = num_features
    self.use_running_average = use_running_average
    self.momentum = momentum
    self.epsilon = epsilon
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.use_bias = use_bias
    self.use_scale = use_scale
    self.promote_dtype = promote_dtype

  def _use_running_average(self, call_value: bool | None) -> bool:
    return first_flag(call_value, self.use_running_average, flag="use_running_average",
                      layer=type(self).__name__)

  def _promoted(self, x):
    """``(x, scale, bias, out_dtype)`` after ``promote_dtype`` over the inputs and variables.

    As in flax.nnx's BatchNorm the promotion sees ``(x, mean, var, scale, bias)``; the
    running statistics themselves always enter the math in float32.
    """
    x, _, _, scale, bias = promote(self, (x, self.mean[...], self.var[...],
                                          value(self.scale), value(self.bias)))
    return x, scale, bias, _frontend.output_dtype(x, scale, bias, dtype=self.dtype)

  def _stats(self, shape) -> F.BatchStats:
    """The running statistics reshaped to the feature shape of the input."""
    return F.BatchStats(self.mean[...].reshape(shape), self.var[...].reshape(shape))

  def _write(self, stats) -> None:
    """Stores new running statistics (flat, as created)."""
    self.mean[...] = stats.mean.reshape(self.mean.shape)
    self.var[...] = stats.var.reshape(self.var.shape)

  def set_view(self, use_running_average: bool | None = None):
    """Class method used by ``nnx.view``.

    Args:
      use_running_average: if True, the stored batch statistics will be
        used instead of computing the batch statistics on the input.
    """
    if use_running_average is not None:
      self.use_running_average = use_running_average


def stream(rngs, rng_collection: str, fn: str):
  """The layer's own RNG stream forked from ``rngs`` (as flax.nnx.Dropout), or None."""
  if isinstance(rngs, rnglib.Rngs):
    return rngs[rng_collection].fork()
  if isinstance(rngs, rnglib.RngStream):
    return rngs.fork()
  if rngs is None:
    return nnx.data(None)
  raise TypeError(f"{fn}: rngs must be an nnx.Rngs, an nnx.RngStream or None; got "
                  f"{type(rngs).__name__}. Pass rngs=nnx.Rngs(dropout=seed).")


def draw_key(call_rngs, own_stream, rng_collection: str, fn: str) -> jax.Array:
  """A key from the call's ``rngs`` (Rngs, RngStream or key), else the layer's stream."""
  rngs = call_rngs if call_rngs is not None else own_stream
  if rngs is None:
    raise ValueError(
        f"{fn}: deterministic is False, but no rngs were given, neither to the "
        "constructor nor to the call. Build the layer with rngs=nnx.Rngs(dropout=seed), "
        "or call it with rngs=..., or set deterministic=True (model.eval()).")
  if isinstance(rngs, rnglib.Rngs):
    return rngs[rng_collection]()
  if isinstance(rngs, rnglib.RngStream):
    return rngs()
  if isinstance(rngs, jax.Array):
    return rngs
  raise TypeError(f"{fn}: rngs must be an nnx.Rngs, an nnx.RngStream or a jax.Array key; "
                  f"got {type(rngs).__name__}.")


class KeyedNoise(nnx.Module):
  """Base of the stochastic layers: ``rate``, the ``deterministic`` mode and an RNG stream.

  As ``flax.nnx.Dropout``: the stream is forked from ``rngs[rng_collection]`` at
  construction, a call's ``rngs`` (Rngs, RngStream or key) takes precedence, and
  ``deterministic`` follows ``model.train()`` / ``model.eval()`` / ``nnx.view``.
  """

  def __init__(self, rate, *, deterministic: bool | None = False,
               rng_collection: str = "dropout", rngs=None):
    self.rate = rate
    self.deterministic = deterministic
    self.rng_collection = rng_collection
    self.rngs = stream(rngs, rng_collection, f"jaxnorm.nnx.{type(self).__name__}")

  def _key(self, deterministic: bool | None, rngs) -> jax.Array | None:
    """The key for this call, or None when the layer is the identity."""
    name = type(self).__name__
    deterministic = first_flag(deterministic, self.deterministic, flag="deterministic",
                               layer=name)
    if _frontend.dropout_is_identity(self.rate, deterministic):
      return None
    return draw_key(rngs, self.rngs, self.rng_collection, f"jaxnorm.nnx.{name}")

  def set_view(self, deterministic: bool | None = None):
    """Class method used by ``nnx.view``.

    Args:
      deterministic: if True, disables dropout masking.
    """
    if deterministic is not None:
      self.deterministic = deterministic


__all__ = ["KeyedNoise", "RunningStatsNorm", "affine_params", "draw_key", "first_flag",
           "param", "promote", "promote_dtype", "running_stats", "stream", "value"]
