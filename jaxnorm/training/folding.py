"""Fold evaluation-mode BatchNorm layers into the Dense/Conv layer before them.

For ``z = x W + b`` followed by BN with running ``mean``, ``var``, ``scale``, ``bias``:

.. math::
  a = \\gamma / \\sqrt{\\sigma^2 + \\epsilon}, \\qquad W' = W a, \\qquad
  b' = (b - \\mu) a + \\beta

so ``x W' + b'`` equals the BN output. The folded network needs one matrix multiply and
no normalization at inference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import unfreeze

from jaxnorm.training import _validate
from jaxnorm.training.precise_bn import BATCH_NORM_TYPES

LINEAR_TYPES = (nn.Dense, nn.Conv, nn.DenseGeneral)


class FoldPair(NamedTuple):
  """A BatchNorm layer that directly follows a Dense/Conv layer."""

  linear: tuple[str, ...]
  batch_norm: tuple[str, ...]
  epsilon: float


def find_foldable_pairs(apply_fn, variables: Mapping[str, Any], *args, **kwargs
                        ) -> list[FoldPair]:
  """BN layers (feature axis -1) whose input is exactly a Dense/Conv output.

  Traces ``apply_fn(variables, *args, **kwargs)`` abstractly (no computation) with an
  interceptor; pass the evaluation-mode arguments (e.g. ``train=False``).
  """
  linear_outputs: dict[int, tuple[str, ...]] = {}
  pairs: list[FoldPair] = []

  def interceptor(next_fun, call_args, call_kwargs, context):
    out = next_fun(*call_args, **call_kwargs)
    module = context.module
    if context.method_name != "__call__":
      return out
    if isinstance(module, LINEAR_TYPES):
      linear_outputs[id(out)] = tuple(module.path)
    elif isinstance(module, BATCH_NORM_TYPES) and id(call_args[0]) in linear_outputs:
      if module.axis in (-1, call_args[0].ndim - 1, (-1,)):
        pairs.append(FoldPair(linear_outputs[id(call_args[0])], tuple(module.path),
                              float(module.epsilon)))
    return out

  def trace():
    with nn.intercept_methods(interceptor):
      return apply_fn(variables, *args, **kwargs)

  jax.eval_shape(trace)
  return pairs


def _subtree(tree, path):
  for name in path:
    tree = tree[name]
  return tree


def fold_batch_norm(variables: Mapping[str, Any], pairs: Sequence[FoldPair]) -> dict:
  """Returns ``params`` of the network with each BN of ``pairs`` folded into its linear layer.

  The BN entries are removed from the params; each linear layer gets the folded
  ``kernel`` and a ``bias`` (created if it had none). Use them with the same network
  built without those BN layers and with ``use_bias=True`` on the linear layers.
  """
  _validate.check_live(variables, name="variables", fn="jaxnorm.training.fold_batch_norm")
  params = unfreeze(variables["params"])
  stats = variables["batch_stats"]
  for pair in pairs:
    linear = _subtree(params, pair.linear)
    bn_params = _subtree(params, pair.batch_norm)
    bn_stats = _subtree(stats, pair.batch_norm)
    kernel = linear["kernel"]
    features = kernel.shape[-1]
    if bn_stats["mean"].shape != (features,):
      raise ValueError(
          f"jaxnorm.training.fold_batch_norm: {'/'.join(pair.batch_norm)} has statistics "
          f"of shape {bn_stats['mean'].shape} but {'/'.join(pair.linear)} has {features} "
          "output features; only a BN over the linear layer's output features folds.")
    factor = jax.lax.rsqrt(bn_stats["var"] + pair.epsilon) * bn_params.get(
        "scale", jnp.ones(features))
    bias = linear.get("bias", jnp.zeros(features))
    linear["kernel"] = (kernel * factor).astype(kernel.dtype)
    linear["bias"] = ((bias - bn_stats["mean"]) * factor + bn_params.get(
        "bias", jnp.zeros(features))).astype(kernel.dtype)
    if not all(_validate.concrete_all_finite(linear[name]) for name in ("kernel", "bias")):
      raise ValueError(
          f"jaxnorm.training.fold_batch_norm: folding {'/'.join(pair.batch_norm)} into "
          f"{'/'.join(pair.linear)} gives non-finite weights (its running statistics or "
          "parameters are not finite, or var + epsilon underflows); the folded network "
          "would be dead. Fix the statistics (e.g. with precise_batch_stats) first.")
    parent = _subtree(params, pair.batch_norm[:-1])
    del parent[pair.batch_norm[-1]]
  return params
