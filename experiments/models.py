"""Networks used by the experiments, built from jaxnorm's Flax modules."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import numpy as np
from flax import nnx

import jaxnorm
import jaxnorm.nnx as jnnx


class SeedMLP(nn.Module):
  """The Fashion-MNIST notebook's network, with BN and dropout switchable.

  Dense 128 -> [BatchNorm] -> ReLU -> [Dropout] -> Dense 64 -> [BatchNorm] -> ReLU ->
  [Dropout] -> Dense ``num_classes``.
  """

  use_batch_norm: bool = True
  dropout_rate: float = 0.3
  hidden: Sequence[int] = (128, 64)
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool):
    x = x.reshape((x.shape[0], -1))
    for width in self.hidden:
      x = nn.Dense(width)(x)
      if self.use_batch_norm:
        x = jaxnorm.BatchNorm(use_running_average=not train)(x)
      x = nn.relu(x)
      if self.dropout_rate:
        x = jaxnorm.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes)(x)


class SeedMLPNNX(nnx.Module):
  """:class:`SeedMLP` written with flax.nnx and ``jaxnorm.nnx`` layers (same parameters)."""

  def __init__(self, input_dim: int, *, use_batch_norm: bool = True,
               dropout_rate: float = 0.3, hidden: Sequence[int] = (128, 64),
               num_classes: int = 10, rngs: nnx.Rngs):
    widths = (input_dim, *hidden)
    self.linears = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths, hidden)])
    self.norms = nnx.List([jnnx.BatchNorm(w, rngs=rngs) for w in hidden]
                          if use_batch_norm else [])
    self.drops = nnx.List([jnnx.Dropout(dropout_rate, rngs=rngs) for _ in hidden]
                          if dropout_rate else [])
    self.head = nnx.Linear(widths[-1], num_classes, rngs=rngs)

  def __call__(self, x):
    x = x.reshape((x.shape[0], -1))
    for i, linear in enumerate(self.linears):
      x = linear(x)
      if self.norms:
        x = self.norms[i](x)
      x = nnx.relu(x)
      if self.drops:
        x = self.drops[i](x)
    return self.head(x)


def parameter_rows(params) -> list[tuple[str, tuple[int, ...], int]]:
  """``(path, shape, size)`` of every parameter, in tree order."""
  rows = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    name = "/".join(str(getattr(entry, "key", entry)) for entry in path)
    rows.append((name, tuple(leaf.shape), int(np.prod(leaf.shape))))
  return rows


def parameter_count(model: nn.Module, input_shape: Sequence[int]) -> int:
  """Number of trainable parameters for inputs of ``input_shape`` (no computation)."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros(input_shape,
                                                                         np.float32),
                                             train=False))
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes["params"]))
