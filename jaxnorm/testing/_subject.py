"""One way to run a linen or an NNX model in training or evaluation mode.

The assertions of :mod:`jaxnorm.testing` take a model as users hold it — an NNX
``nnx.Module``, or a linen ``nn.Module`` with its ``variables`` — and run it through
:class:`Subject`, which never changes the model or the variables it was given.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
from flax import nnx

from jaxnorm.training.nnx_steps import reseed_streams

#: Flags a linen model's ``__call__`` may take to select the mode (value in training).
_LINEN_MODE_FLAGS = (("train", True), ("use_running_average", False),
                     ("deterministic", False))


def _linen_mode_kwargs(model: nn.Module, train: bool, fn: str) -> dict:
  parameters = inspect.signature(type(model).__call__).parameters
  for name, training_value in _LINEN_MODE_FLAGS:
    if name in parameters:
      return {name: training_value if train else not training_value}
  raise TypeError(
      f"{fn}: {type(model).__name__}.__call__ takes none of train, use_running_average, "
      "deterministic, so the mode cannot be selected; pass train_kwargs={...} and "
      "eval_kwargs={...} (the call arguments of each mode).")


def _deterministic_dropout(next_fun, args, kwargs, context):
  """linen interceptor: every layer with a ``deterministic`` flag runs deterministically.

  The flag goes to the call when the module leaves it to the call; a module that fixed
  it in its constructor sees ``deterministic=True`` for the duration of the call.
  """
  module = context.module
  if context.method_name != "__call__" or not hasattr(module, "deterministic") or (
      "deterministic" not in inspect.signature(type(module).__call__).parameters):
    return next_fun(*args, **kwargs)
  if module.deterministic is None:
    if len(args) > 1:
      args = (args[0], True, *args[2:])
    else:
      kwargs = {**kwargs, "deterministic": True}
    return next_fun(*args, **kwargs)
  original = module.deterministic
  object.__setattr__(module, "deterministic", True)  # linen modules are frozen dataclasses
  try:
    return next_fun(*args, **kwargs)
  finally:
    object.__setattr__(module, "deterministic", original)


@dataclasses.dataclass(frozen=True)
class Subject:
  """A model under test: ``run`` it in a mode and get outputs and running statistics."""

  model: Any
  variables: Any = None
  train_kwargs: Mapping[str, Any] | None = None
  eval_kwargs: Mapping[str, Any] | None = None
  fn: str = "jaxnorm.testing"

  @classmethod
  def of(cls, model, variables=None, *, train_kwargs=None, eval_kwargs=None,
         fn: str = "jaxnorm.testing") -> "Subject":
    if isinstance(model, nnx.Module):
      if variables is not None:
        raise TypeError(f"{fn}: an NNX model holds its own variables; pass variables=None "
                        "(got variables too).")
    elif isinstance(model, nn.Module):
      if variables is None:
        raise TypeError(f"{fn}: a linen model needs its variables; pass variables="
                        "model.init(...).")
    else:
      raise TypeError(f"{fn}: model must be a flax.nnx.Module or a flax.linen.Module; got "
                      f"{type(model).__name__}.")
    return cls(model, variables, train_kwargs, eval_kwargs, fn)

  @property
  def is_nnx(self) -> bool:
    return isinstance(self.model, nnx.Module)

  def stats(self):
    """The running statistics (``nnx.BatchStat`` / ``batch_stats``) as a dict of arrays."""
    if self.is_nnx:
      return nnx.to_pure_dict(nnx.state(self.model, nnx.BatchStat))
    return jax.device_get(dict(self.variables).get("batch_stats", {}))

  def params(self):
    """The parameters (``nnx.Param`` / ``params``) as a dict of arrays."""
    if self.is_nnx:
      return nnx.to_pure_dict(nnx.state(self.model, nnx.Param))
    return self.variables["params"]

  def run(self, x, *, train: bool, dropout: bool = True, key: jax.Array | None = None,
          params=None, **call_kwargs):
    """``(y, new_stats)`` of one call in training or evaluation mode.

    Evaluation is the model's own evaluation mode (``eval_kwargs``, or
    ``nnx.view(..., use_running_average=True, deterministic=True)``), nothing forced.
    In training mode ``dropout=False`` makes every layer with a ``deterministic`` flag
    deterministic, so only the batch statistics differ from evaluation.

    Args:
      x: the input.
      train: training mode (batch statistics, statistics updated) or evaluation.
      dropout: in training mode, let dropout layers sample masks.
      key: the dropout key (default ``jax.random.key(0)``).
      params: parameters to use instead of the model's (same tree as :meth:`params`).
      call_kwargs: extra arguments of the call (e.g. ``mask``).
    """
    key = jax.random.key(0) if key is None else key
    if self.is_nnx:
      model = nnx.clone(self.model)
      if params is not None:
        nnx.update(model, params)
      model = nnx.view(model, raise_if_not_found=False, use_running_average=not train,
                       deterministic=not (train and dropout))
      reseed_streams(model, key)
      y = model(x, **call_kwargs)
      return y, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    kwargs = dict((self.train_kwargs if train else self.eval_kwargs) or
                  _linen_mode_kwargs(self.model, train, self.fn))
    variables = dict(self.variables)
    if params is not None:
      variables["params"] = params
    with (nn.intercept_methods(_deterministic_dropout) if train and not dropout
          else contextlib.nullcontext()):
      y, updates = self.model.apply(variables, x, **kwargs, **call_kwargs,
                                    mutable=["batch_stats"], rngs={"dropout": key})
    return y, updates.get("batch_stats", variables.get("batch_stats", {}))

  def eval_kwargs_or_default(self) -> dict:
    """The linen call arguments of evaluation mode."""
    return dict(self.eval_kwargs or _linen_mode_kwargs(self.model, False, self.fn))
