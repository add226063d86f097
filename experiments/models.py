"""Networks used by the experiments, built from jaxnorm's Flax modules."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jaxnorm
import jaxnorm.nnx as jnnx

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu, "sigmoid": nn.sigmoid, "tanh": jnp.tanh, "linear": lambda x: x}
NORMS = ("none", "batch", "layer", "group", "batch_renorm", "ghost_batch")


def norm_layer(kind: str, train: bool, *, name: str | None = None,
               **options: Any) -> Callable[[jax.Array], jax.Array]:
  """A normalization module of jaxnorm by name, in training or evaluation mode.

  ``"none"`` (identity), ``"batch"``, ``"layer"``, ``"group"``, ``"batch_renorm"``,
  ``"ghost_batch"``; ``options`` go to the module's constructor (for example
  ``momentum=0.9`` or ``num_groups=5``).
  """
  if kind == "none":
    return lambda x: x
  if kind == "batch":
    return jaxnorm.BatchNorm(use_running_average=not train, name=name, **options)
  if kind == "layer":
    return jaxnorm.LayerNorm(name=name, **options)
  if kind == "group":
    return jaxnorm.GroupNorm(name=name, **options)
  if kind == "batch_renorm":
    return jaxnorm.BatchRenorm(use_running_average=not train, name=name, **options)
  if kind == "ghost_batch":
    return jaxnorm.GhostBatchNorm(use_running_average=not train, name=name, **options)
  raise ValueError(f"norm_layer: kind must be one of {NORMS}; got {kind!r}.")


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


class MLP(nn.Module):
  """A configurable multi-layer perceptron for the experiments.

  Each hidden layer is ``Dense -> [norm] -> activation -> [dropout]`` (``placement=
  "before"``, as Ioffe & Szegedy place BN) or ``Dense -> activation -> [norm] ->
  [dropout]`` (``placement="after"``), then a Dense classifier. The drop rate may be
  given at call time (traced, e.g. one rate per member of a population).

  Attributes:
    hidden: widths of the hidden layers.
    num_classes: outputs of the classifier.
    activation: a key of :data:`ACTIVATIONS`.
    norm: a kind accepted by :func:`norm_layer` ("none" for no normalization).
    placement: ``"before"`` or ``"after"`` the activation.
    dropout_rate: drop probability after each hidden layer (0 disables dropout).
    kernel_init: initializer of every Dense kernel.
    norm_options: constructor options of the normalization layers.
  """

  hidden: Sequence[int] = (128, 64)
  num_classes: int = 10
  activation: str = "relu"
  norm: str = "none"
  placement: str = "before"
  dropout_rate: float = 0.0
  kernel_init: Callable = nn.initializers.lecun_normal()
  norm_options: tuple[tuple[str, Any], ...] = ()

  @nn.compact
  def __call__(self, x, train: bool, dropout_rate=None):
    if self.placement not in ("before", "after"):
      raise ValueError(f"MLP: placement must be 'before' or 'after'; got {self.placement!r}.")
    rate = self.dropout_rate if dropout_rate is None else dropout_rate
    act = ACTIVATIONS[self.activation]
    x = x.reshape((x.shape[0], -1))
    for width in self.hidden:
      x = nn.Dense(width, kernel_init=self.kernel_init)(x)
      norm = norm_layer(self.norm, train, **dict(self.norm_options))
      x = act(norm(x)) if self.placement == "before" else norm(act(x))
      if dropout_rate is not None or self.dropout_rate:
        x = jaxnorm.Dropout(rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, kernel_init=self.kernel_init)(x)


class MNIST1DCNN(nn.Module):
  """The MNIST-1D benchmark's small CNN, with an optional normalization after each conv.

  Three 1-D convolutions (25 channels; kernel 5 stride 2, then kernel 3 stride 2 twice;
  padding 1) with ReLU, flattened into a Dense classifier: a length-40 signal becomes
  5 positions x 25 channels (Greydanus 2020's ``ConvBase``). Inputs ``(N, 40)`` or
  ``(N, 40, 1)``.

  Attributes:
    channels: convolution channels.
    num_classes: outputs of the classifier.
    norm: a kind accepted by :func:`norm_layer`, applied between conv and activation
      (``placement="before"``) or after the activation (``"after"``).
    dropout_rate: drop probability after each activation (and normalization).
    norm_options: constructor options of the normalization layers.
    activation: a key of :data:`ACTIVATIONS` (the benchmark's is ReLU).
    placement: the normalization ``"before"`` or ``"after"`` the activation.
  """

  channels: int = 25
  num_classes: int = 10
  norm: str = "none"
  dropout_rate: float = 0.0
  norm_options: tuple[tuple[str, Any], ...] = ()
  activation: str = "relu"
  placement: str = "before"

  @nn.compact
  def __call__(self, x, train: bool):
    if self.placement not in ("before", "after"):
      raise ValueError(f"MNIST1DCNN: placement must be 'before' or 'after'; got "
                       f"{self.placement!r}.")
    act = ACTIVATIONS[self.activation]
    if x.ndim == 2:
      x = x[..., None]
    for kernel in (5, 3, 3):
      x = nn.Conv(self.channels, (kernel,), strides=(2,), padding=((1, 1),))(x)
      norm = norm_layer(self.norm, train, **dict(self.norm_options))
      x = act(norm(x)) if self.placement == "before" else norm(act(x))
      if self.dropout_rate:
        x = jaxnorm.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes)(x.reshape((x.shape[0], -1)))


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
