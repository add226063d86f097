"""Precise-BN: replace EMA running statistics with exact population statistics.

The EMA of batch statistics lags behind the weights and weights recent batches more;
recomputing each BN layer's mean and variance over ``N`` batches with the final weights
gives the statistics the evaluation network should use (Wu & Johnson, "Rethinking
'Batch' in BatchNorm", 2021; fvcore's ``update_bn_stats``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax.core import unfreeze

from jaxnorm import _checks
from jaxnorm.functional import masked_moments
from jaxnorm.linen import BatchNorm
from jaxnorm.training import _validate

BATCH_NORM_TYPES = (BatchNorm, nn.BatchNorm)
_COLLECTION = "precise_bn"


def batch_norm_input_moments(x, axis, mask, *, fn: str):
  """(count, mean, M2) of a BN layer's input ``x`` per feature of ``axis``, feature-shaped."""
  feature_axes = _checks.canonical_axes(axis, x.shape, name="axis", fn=fn)
  reduce_axes = tuple(a for a in range(x.ndim) if a not in feature_axes)
  stats = masked_moments(x, reduce_axes, _checks.check_mask(mask, x.shape, fn=fn))
  feature_shape = tuple(x.shape[a] for a in feature_axes)
  return tuple(t.reshape(feature_shape)
               for t in (stats.count, stats.mean, stats.var * stats.count))


def _record_batch_norm_inputs(next_fun, args, kwargs, context):
  """Interceptor: sow (count, mean, M2) of every BN layer's input over its reduced axes."""
  module = context.module
  if context.method_name == "__call__" and isinstance(module, BATCH_NORM_TYPES):
    module.sow(_COLLECTION, "moments", batch_norm_input_moments(
        args[0], module.axis, kwargs.get("mask"), fn="jaxnorm.training.precise_batch_stats"))
  return next_fun(*args, **kwargs)


def _merge(moments: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]):
  """Exact float64 Chan merge of (count, mean, M2) triples -> (mean, biased var)."""
  total, mean, m2 = None, None, None
  for count, batch_mean, batch_m2 in moments:
    count, batch_mean, batch_m2 = (np.asarray(t, np.float64) for t in (count, batch_mean,
                                                                        batch_m2))
    if total is None:
      total, mean, m2 = count, batch_mean, batch_m2
      continue
    merged = total + count
    delta = batch_mean - mean
    safe = np.maximum(merged, 1)
    mean = mean + delta * count / safe
    m2 = m2 + batch_m2 + delta ** 2 * total * count / safe
    total = merged
  return mean, m2 / np.maximum(total, 1)


def _raise_not_finite(per_batch, path, fn: str):
  """``ValueError`` naming the layer and the first batch whose BN inputs are not finite."""
  first = next((index for index, sown in enumerate(per_batch)
                if not all(np.all(np.isfinite(np.asarray(t)))
                           for triple in _get(sown, path)["moments"] for t in triple)),
               None)
  where = f"batch {first}" if first is not None else "the pooled batches"
  raise ValueError(
      f"{fn}: the inputs of {'/'.join(path)} are not finite in {where}, so its population "
      "statistics would be NaN/inf and the evaluation network dead. Pass finite batches "
      "(check them with np.isfinite), or fix the weights that overflow.")


def _leaf_paths(tree: Mapping, prefix=()) -> list[tuple[str, ...]]:
  """Paths of the modules that sowed ``moments`` in a nested dict."""
  paths = []
  for name, value in tree.items():
    if name == "moments":
      paths.append(prefix)
    elif isinstance(value, Mapping):
      paths.extend(_leaf_paths(value, prefix + (name,)))
  return paths


def _get(tree, path):
  for name in path:
    tree = tree[name]
  return tree


def precise_batch_stats(
    apply_fn,
    variables: Mapping[str, Any],
    batches: Iterable[Any],
    *,
    eval_kwargs: Mapping[str, Any] | None = None,
    sequential: bool = True,
) -> dict:
  r"""Exact population statistics of every BatchNorm layer over ``batches``.

  For each BN layer, with the model in evaluation mode (running statistics, no
  dropout), its inputs over all batches are pooled exactly:

  .. math::
    \mu = \frac{1}{N}\sum_i x_i, \qquad \sigma^2 = \frac{1}{N}\sum_i (x_i - \mu)^2

  (per feature, over every example and every reduced position of every batch; a
  float64 merge of per-batch counts, means and centred second moments). With
  ``sequential`` the layers are recomputed one after another in call order (one pass
  over ``batches`` per layer), so each layer's statistics are those of the inputs it
  sees once the layers before it use their new statistics; otherwise one pass
  recomputes all layers from the current upstream statistics.

  Args:
    apply_fn: the model's ``apply`` (e.g. ``state.apply_fn``).
    variables: ``{'params': ..., 'batch_stats': ...}``.
    batches: a re-iterable collection of model inputs (the ``x`` of each batch).
    eval_kwargs: keyword arguments selecting evaluation mode (default
      ``{'train': False}``).
    sequential: recompute layer by layer (exact for the evaluation network).

  Returns:
    A new ``batch_stats`` tree with the same structure, float32.
  """
  fn = "jaxnorm.training.precise_batch_stats"
  _validate.check_live(variables, name="variables", fn=fn)
  eval_kwargs = {"train": False} if eval_kwargs is None else dict(eval_kwargs)
  batches = list(batches)
  if not batches:
    raise ValueError("jaxnorm.training.precise_batch_stats: batches is empty; give at "
                     "least one batch of inputs.")

  @jax.jit
  def batch_moments(variables, x):
    with nn.intercept_methods(_record_batch_norm_inputs):
      _, sown = apply_fn(variables, x, mutable=[_COLLECTION], **eval_kwargs)
    return sown.get(_COLLECTION, {})

  batch_stats = unfreeze(variables["batch_stats"])

  def sweep():
    current = {**variables, "batch_stats": batch_stats}
    return [jax.device_get(batch_moments(current, x)) for x in batches]

  per_batch = sweep()
  layer_paths = _leaf_paths(per_batch[0])
  if not layer_paths:
    raise ValueError("jaxnorm.training.precise_batch_stats: the model has no BatchNorm "
                     "layer (jaxnorm.linen.BatchNorm or flax.linen.BatchNorm).")
  groups = [[path] for path in layer_paths] if sequential else [layer_paths]
  for index, group in enumerate(groups):
    if index:
      per_batch = sweep()
    for path in group:
      mean, var = _merge(triple for sown in per_batch
                         for triple in _get(sown, path)["moments"])
      if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(var))):
        _raise_not_finite(per_batch, path, fn)
      stats = _get(batch_stats, path)
      stats["mean"] = jax.numpy.asarray(mean, jax.numpy.float32)
      stats["var"] = jax.numpy.asarray(var, jax.numpy.float32)
  return batch_stats
