"""Precise-BN, BN folding and MC-dropout prediction for NNX models.

The NNX counterparts of :func:`~jaxnorm.training.precise_batch_stats`,
:func:`~jaxnorm.training.find_foldable_pairs` / :func:`~jaxnorm.training.fold_batch_norm`
and :func:`~jaxnorm.training.mc_dropout_predict`, with the same math (shared with them).
Where linen intercepts module methods, these work on a copy of the model in which the
layers of interest are wrapped (``_Wrapped``); the model passed in is never changed.
The model is called as ``model(x)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx import rnglib

import jaxnorm.nnx as jnnx
from jaxnorm.training.folding import FoldPair, fold_batch_norm
from jaxnorm.training.nnx_steps import EVAL_VIEW
from jaxnorm.training.precise_bn import _merge, batch_norm_input_moments
from jaxnorm.training.uncertainty import MCPrediction, monte_carlo_predict

#: The NNX batch-norm layers precise-BN and folding act on.
BATCH_NORM_TYPES = (jnnx.BatchNorm, nnx.BatchNorm)
#: The NNX layers a BN folds into (kernel ``(..., in, out)``, optional ``bias``).
LINEAR_TYPES = (nnx.Linear, nnx.Conv)
#: The NNX dropout layers MC-dropout samples.
DROPOUT_TYPES = (jnnx.Dropout, nnx.Dropout)


class _Wrapped(nnx.Module):
  """Calls ``hook(path, module, args, kwargs, output)`` around a submodule's call."""

  def __init__(self, inner: nnx.Module, path: tuple, hook: Callable):
    self.inner = inner
    self.path = path
    self.hook = hook

  def __call__(self, *args, **kwargs):
    out = self.inner(*args, **kwargs)
    self.hook(self.path, self.inner, args, kwargs, out)
    return out


class _Identity(nnx.Module):
  """What a folded BatchNorm becomes: returns its input."""

  def __call__(self, x, *args, **kwargs):
    return x


def _get(node, path):
  for part in path:
    node = node[part] if isinstance(part, int) or isinstance(node, Mapping) else getattr(
        node, part)
  return node


def _set(node, path, value) -> None:
  parent, last = _get(node, path[:-1]), path[-1]
  if isinstance(last, int) or isinstance(parent, Mapping):
    parent[last] = value
  else:
    setattr(parent, last, value)


def _paths(model, types) -> list[tuple]:
  """Paths of the submodules of ``types`` (``()`` for the model itself)."""
  return [path for path, module in nnx.iter_modules(model) if isinstance(module, types)]


def _view(model, eval_view):
  return nnx.view(model, raise_if_not_found=False,
                  **dict(EVAL_VIEW if eval_view is None else eval_view))


def _hooked(model, paths, hook):
  """``model`` with each submodule at ``paths`` wrapped to call ``hook``."""
  for path in paths:
    if path:
      _set(model, path, _Wrapped(_get(model, path), path, hook))
  return _Wrapped(model, (), hook) if () in paths else model


def nnx_precise_batch_stats(
    model: nnx.Module,
    batches: Iterable[Any],
    *,
    eval_view: Mapping[str, Any] | None = None,
    sequential: bool = True,
) -> nnx.State:
  r"""Exact population statistics of every BatchNorm layer of an NNX model.

  For each BN layer (``jaxnorm.nnx.BatchNorm`` or ``flax.nnx.BatchNorm``), with the
  model in evaluation mode (``nnx.view(model, **eval_view)``: running statistics, no
  dropout), its inputs over all batches are pooled exactly:

  .. math::
    \mu = \frac{1}{N}\sum_i x_i, \qquad \sigma^2 = \frac{1}{N}\sum_i (x_i - \mu)^2

  (per feature, a float64 merge of per-batch counts, means and centred second moments,
  as :func:`~jaxnorm.training.precise_batch_stats`). With ``sequential`` the layers are
  recomputed in call order, each seeing the inputs produced by the new statistics of
  the layers before it.

  Args:
    model: the NNX model (not changed).
    batches: a re-iterable collection of model inputs.
    eval_view: ``nnx.view`` arguments of evaluation mode.
    sequential: recompute layer by layer (exact for the evaluation network).

  Returns:
    The model's ``nnx.BatchStat`` state with new BN statistics (float32); apply it with
    ``nnx.update(model, stats)``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxnorm import nnx as jnnx, training
    >>> model = nnx.Sequential(nnx.Linear(4, 4, rngs=nnx.Rngs(0)),
    ...                        jnnx.BatchNorm(4, rngs=nnx.Rngs(0)))
    >>> batches = [jax.random.normal(jax.random.key(i), (8, 4)) for i in range(2)]
    >>> stats = training.nnx_precise_batch_stats(model, batches)
    >>> nnx.update(model, stats)
    >>> model.layers[1].mean.shape
    (4,)
  """
  batches = list(batches)
  if not batches:
    raise ValueError(f"{_PRECISE}: batches is empty; give at least one batch of inputs.")
  work = nnx.clone(model)
  bn_paths = tuple(_paths(work, BATCH_NORM_TYPES))
  if not bn_paths:
    raise ValueError(f"{_PRECISE}: the model has no BatchNorm layer (jaxnorm.nnx.BatchNorm "
                     "or flax.nnx.BatchNorm).")
  view_items = _view_items(eval_view)
  graphdef, state = nnx.split(work)
  order = _call_order(graphdef, state, batches[0], bn_paths, view_items)

  def sweep(state):
    return [jax.device_get(_bn_input_moments(state, x, graphdef=graphdef, paths=bn_paths,
                                             view_items=view_items)) for x in batches]

  per_batch = sweep(state)
  groups = [[path] for path in order] if sequential else [order]
  for index, group in enumerate(groups):
    if index:
      per_batch = sweep(nnx.split(work)[1])
    for path in group:
      mean, var = _merge(sown[_name(path)] for sown in per_batch)
      layer = _get(work, path)
      layer.mean[...] = jnp.asarray(mean, jnp.float32).reshape(layer.mean.shape)
      layer.var[...] = jnp.asarray(var, jnp.float32).reshape(layer.var.shape)
  return nnx.state(work, nnx.BatchStat)


_PRECISE = "jaxnorm.training.nnx_precise_batch_stats"


def _name(path) -> str:
  return "/".join(map(str, path))


def _view_items(eval_view) -> tuple:
  """``eval_view`` as a hashable (static) value."""
  return tuple(sorted(dict(EVAL_VIEW if eval_view is None else eval_view).items()))


def _call_order(graphdef, state, x, paths, view_items) -> list[tuple]:
  """The paths of the layers at ``paths`` in the order the model calls them."""
  order = []

  def record(path, *_):
    if path not in order:
      order.append(path)

  def trace(state, x):
    model = nnx.view(nnx.merge(graphdef, state), raise_if_not_found=False, **dict(view_items))
    return _hooked(model, paths, record)(x)

  jax.eval_shape(trace, state, x)
  return order


@functools.partial(jax.jit, static_argnames=("graphdef", "paths", "view_items"))
def _bn_input_moments(state, x, *, graphdef, paths, view_items):
  """``{path: (count, mean, M2)}`` of the inputs of the BN layers at ``paths``."""
  recorded = {}

  def record(path, module, args, kwargs, _):
    recorded[_name(path)] = batch_norm_input_moments(args[0], module.axis,
                                                     kwargs.get("mask"), fn=_PRECISE)

  model = nnx.view(nnx.merge(graphdef, state), raise_if_not_found=False, **dict(view_items))
  _hooked(model, paths, record)(x)
  return recorded


def nnx_find_foldable_pairs(model: nnx.Module, x: jax.Array, *,
                            eval_view: Mapping[str, Any] | None = None) -> list[FoldPair]:
  """BN layers (feature axis -1) whose input is exactly a Linear/Conv output.

  Traces ``nnx.view(model, **eval_view)(x)`` abstractly (no computation). The pairs'
  paths are NNX paths (attribute names and list indices).
  """
  linear_paths = _paths(model, LINEAR_TYPES)
  bn_paths = _paths(model, BATCH_NORM_TYPES)
  graphdef, state = nnx.split(model)
  pairs: list[FoldPair] = []

  def trace(state, x):
    outputs: dict[int, tuple] = {}

    def hook(path, module, args, kwargs, out):
      if isinstance(module, LINEAR_TYPES):
        outputs[id(out)] = path
      elif id(args[0]) in outputs and module.axis in (-1, args[0].ndim - 1, (-1,)):
        pairs.append(FoldPair(outputs[id(args[0])], path, float(module.epsilon)))

    view = _hooked(_view(nnx.merge(graphdef, state), eval_view), linear_paths + bn_paths,
                   hook)
    return view(x)

  jax.eval_shape(trace, state, x)
  return pairs


def nnx_fold_batch_norm(model: nnx.Module, pairs: Sequence[FoldPair]) -> nnx.Module:
  """A copy of ``model`` with each BN of ``pairs`` folded into its linear layer.

  Each linear layer gets the folded kernel and a bias (created if it had none, with
  ``use_bias=True``); each folded BN becomes the identity. The math is
  :func:`~jaxnorm.training.fold_batch_norm`'s; use the copy in evaluation mode.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxnorm import nnx as jnnx, training
    >>> model = nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(0)),
    ...                        jnnx.BatchNorm(4, use_running_average=True, rngs=nnx.Rngs(0)))
    >>> x = jnp.ones((2, 3))
    >>> folded = training.nnx_fold_batch_norm(
    ...     model, training.nnx_find_foldable_pairs(model, x))
    >>> bool(jnp.allclose(folded(x), model(x), atol=1e-5))
    True
  """
  folded = nnx.clone(model)
  for pair in pairs:
    linear, bn = _get(folded, pair.linear), _get(folded, pair.batch_norm)
    params = {"linear": {"kernel": linear.kernel[...]}, "bn": {}}
    if linear.bias is not None:
      params["linear"]["bias"] = linear.bias[...]
    for name in ("scale", "bias"):
      if getattr(bn, name) is not None:
        params["bn"][name] = getattr(bn, name)[...]
    stats = {"bn": {"mean": bn.mean[...], "var": bn.var[...]}}
    new = fold_batch_norm({"params": params, "batch_stats": stats},
                          [FoldPair(("linear",), ("bn",), pair.epsilon)])["linear"]
    linear.kernel[...] = new["kernel"]
    if linear.bias is None:
      linear.bias = nnx.Param(new["bias"])
      linear.use_bias = True
    else:
      linear.bias[...] = new["bias"]
    _set(folded, pair.batch_norm, _Identity())
  return folded


def nnx_mc_dropout_predict(model: nnx.Module, x: jax.Array, key: jax.Array, *,
                           num_samples: int = 32,
                           eval_view: Mapping[str, Any] | None = None) -> MCPrediction:
  """MC-dropout prediction of an NNX classifier (Gal & Ghahramani, 2016).

  The model runs in evaluation mode (``nnx.view(model, **eval_view)``: running BN
  statistics) except that every ``Dropout`` layer (``jaxnorm.nnx.Dropout`` or
  ``flax.nnx.Dropout``) samples a mask; each of the ``num_samples`` passes (vmapped)
  gives each dropout layer its own key from the pass's key, so a fixed ``key`` gives a
  fixed result. Other stochastic layers stay deterministic; the model is not changed.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxnorm import nnx as jnnx, training
    >>> model = nnx.Sequential(jnnx.Dropout(0.5), nnx.Linear(3, 4, rngs=nnx.Rngs(0)))
    >>> prediction = training.nnx_mc_dropout_predict(model, jnp.ones((2, 3)),
    ...                                              jax.random.key(0), num_samples=8)
    >>> prediction.probs.shape
    (8, 2, 4)
  """
  view = nnx.view(_view(model, eval_view), only=DROPOUT_TYPES, deterministic=False,
                  raise_if_not_found=False)
  graphdef, state = nnx.split(view)
  return _mc_predict(state, x, key, graphdef=graphdef,
                     paths=tuple(_paths(view, DROPOUT_TYPES)), num_samples=num_samples)


@functools.partial(jax.jit, static_argnames=("graphdef", "paths", "num_samples"))
def _mc_predict(state, x, key, *, graphdef, paths, num_samples) -> MCPrediction:
  """The vmapped passes: dropout layer ``i`` of pass ``k`` draws from ``fold_in(k, i)``."""

  def logits_fn(sample_key):
    current = nnx.merge(graphdef, state)
    for index, path in enumerate(paths):
      layer = _get(current, path)
      layer.rngs = rnglib.RngStream(jax.random.fold_in(sample_key, index),
                                    tag=layer.rng_collection)
    return current(x)

  return monte_carlo_predict(logits_fn, key, num_samples)
