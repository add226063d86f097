"""The MNIST-1D benchmark's baselines (Greydanus 2020), with switchable normalization.

The benchmark's reference code (PyTorch) defines a linear classifier (``LinearBase``),
an MLP with a residual second layer (``MLPBase``), a three-layer 1-D CNN (``ConvBase``)
and a bidirectional GRU (``GRUBase``, in :mod:`experiments.recurrent`). These are the
same networks built from Flax and jaxnorm's modules, initialized as PyTorch initializes
them, each with an optional normalization (``"none"``, ``"batch"``, ``"layer"``) and a
drop rate that may be given at call time (traced: runs with and without dropout share
one compiled program).

The CNN computes its convolutions as patches times a kernel (:class:`Conv1D`): the same
numbers as ``flax.linen.Conv`` with the same parameters, about five times faster to
train on a CPU (XLA's CPU convolution is slow at these sizes, more so under ``vmap``).
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jaxnorm

BASELINE_NORMS = ("none", "batch", "layer")


def torch_uniform(fan_in: int) -> Callable:
  r"""PyTorch's default initializer of biases and of RNN weights.

  .. math::
    w \sim \mathcal{U}\!\left(-\tfrac{1}{\sqrt{n}},\ \tfrac{1}{\sqrt{n}}\right)

  with :math:`n` = ``fan_in`` (the input size of ``torch.nn.Linear`` / ``Conv1d``, the
  hidden size of ``torch.nn.GRU``).

  Example:
    >>> w = torch_uniform(4)(jax.random.key(0), (1000,))
    >>> bool(jnp.all(jnp.abs(w) <= 0.5)), bool(jnp.abs(w).max() > 0.45)
    (True, True)
  """
  bound = 1.0 / np.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


#: PyTorch's default ``Linear``/``Conv1d`` weight initializer (Kaiming uniform with
#: ``a = sqrt(5)``), which is :math:`\mathcal{U}(\pm 1/\sqrt{\text{fan\_in}})`.
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class TorchDense(nn.Module):
  """``flax.linen.Dense`` initialized as ``torch.nn.Linear`` (weights and bias uniform).

  Example:
    >>> params = TorchDense(3).init(jax.random.key(0), jnp.ones((2, 4)))["params"]
    >>> params["kernel"].shape, params["bias"].shape
    ((4, 3), (3,))
  """

  features: int
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", torch_kernel_init, (x.shape[-1], self.features))
    y = x @ kernel
    if self.use_bias:
      y = y + self.param("bias", torch_uniform(x.shape[-1]), (self.features,))
    return y


class Conv1D(nn.Module):
  r"""A 1-D convolution (cross-correlation) over ``(N, L, C)`` computed from patches.

  .. math::
    y_{n,i,o} = b_o + \sum_{j<k}\sum_c \tilde x_{n,\,s i + j,\,c}\; K_{j,c,o}

  where :math:`\tilde x` is :math:`x` zero-padded by ``padding`` on both sides and
  :math:`s` = ``stride``. The parameters (``kernel`` of shape ``(k, C, O)``, ``bias``)
  are laid out as ``flax.linen.Conv``'s and give the same outputs; initialized as
  ``torch.nn.Conv1d``.

  Example:
    >>> conv = Conv1D(4, kernel_size=3, stride=2, padding=1)
    >>> variables = conv.init(jax.random.key(0), jnp.ones((2, 10, 1)))
    >>> conv.apply(variables, jnp.ones((2, 10, 1))).shape
    (2, 5, 4)
  """

  features: int
  kernel_size: int
  stride: int = 1
  padding: int = 0

  @nn.compact
  def __call__(self, x):
    k, channels = self.kernel_size, x.shape[-1]
    fan_in = k * channels
    kernel = self.param("kernel", torch_kernel_init, (k, channels, self.features))
    bias = self.param("bias", torch_uniform(fan_in), (self.features,))
    x = jnp.pad(x, ((0, 0), (self.padding, self.padding), (0, 0)))
    length = (x.shape[1] - k) // self.stride + 1
    if length < 1:
      raise ValueError(f"Conv1D: the padded input has {x.shape[1]} steps, fewer than "
                       f"kernel_size={k}; give longer inputs or more padding.")
    # Patch j holds x[s*i + j] for every output position i: k strided slices (cheaper
    # to differentiate on a CPU than a gather, whose gradient is a scatter-add).
    end = self.stride * (length - 1) + 1
    patches = jnp.concatenate([x[:, j:j + end:self.stride, :] for j in range(k)], axis=-1)
    return patches @ kernel.reshape(fan_in, self.features) + bias


def _norm(kind: str, train: bool, *, name: str, spatial: bool = False):
  """BatchNorm over all but the feature axis; LayerNorm over each example's features
  (with ``spatial``, over its positions and channels, as Ba et al. for conv nets)."""
  if kind == "none":
    return lambda x: x
  if kind == "batch":
    return jaxnorm.BatchNorm(use_running_average=not train, name=name)
  if kind == "layer":
    return jaxnorm.LayerNorm(reduction_axes=(-2, -1) if spatial else -1, feature_axes=-1,
                             name=name)
  raise ValueError(f"MNIST-1D baselines: norm must be one of {BASELINE_NORMS}; got "
                   f"{kind!r}.")


def _dropout(h, rate, train: bool, name: str):
  return jaxnorm.Dropout(rate, deterministic=not train, name=name)(h)


class Logistic(nn.Module):
  """``LinearBase``: one Dense layer on the 40 inputs, normalized or dropped first.

  Attributes:
    norm: normalization of the inputs (``"batch"``: per input position over the batch;
      ``"layer"``: per example over its 40 values).
    num_classes: outputs.
  """

  norm: str = "none"
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool, dropout_rate=0.0):
    x = _norm(self.norm, train, name="norm")(x)
    x = _dropout(x, dropout_rate, train, "dropout")
    return TorchDense(self.num_classes, name="linear")(x)


class ResidualMLP(nn.Module):
  r"""``MLPBase``: :math:`h_1 = \mathrm{relu}(W_1 x)`, :math:`h_2 = h_1 +
  \mathrm{relu}(W_2 h_1)`, :math:`y = W_3 h_2`, with the normalization between each
  hidden Dense and its ReLU and dropout after each hidden block.

  Attributes:
    hidden: hidden width (the reference trains 256).
    norm: one of :data:`BASELINE_NORMS`.
    num_classes: outputs.
  """

  hidden: int = 256
  norm: str = "none"
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool, dropout_rate=0.0):
    h = nn.relu(_norm(self.norm, train, name="norm1")(TorchDense(self.hidden,
                                                                  name="linear1")(x)))
    h = _dropout(h, dropout_rate, train, "dropout1")
    h = h + nn.relu(_norm(self.norm, train, name="norm2")(TorchDense(self.hidden,
                                                                      name="linear2")(h)))
    h = _dropout(h, dropout_rate, train, "dropout2")
    return TorchDense(self.num_classes, name="linear3")(h)


class ConvNet(nn.Module):
  """``ConvBase``: three 1-D convolutions with ReLU, flattened into one Dense layer.

  25 channels; kernel 5 stride 2, then kernel 3 stride 2 twice, padding 1: a length-40
  signal becomes 5 positions x 25 channels. The normalization sits between each
  convolution and its ReLU, dropout after each ReLU.

  Attributes:
    channels: convolution channels.
    norm: one of :data:`BASELINE_NORMS` (layer norm over positions and channels).
    num_classes: outputs.

  Example:
    >>> model = ConvNet(norm="batch")
    >>> variables = model.init(jax.random.key(0), jnp.ones((2, 40)), train=False)
    >>> model.apply(variables, jnp.ones((2, 40)), train=False).shape
    (2, 10)
  """

  channels: int = 25
  norm: str = "none"
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool, dropout_rate=0.0):
    if x.ndim == 2:
      x = x[..., None]
    for i, kernel in enumerate((5, 3, 3)):
      x = Conv1D(self.channels, kernel, stride=2, padding=1, name=f"conv{i + 1}")(x)
      x = nn.relu(_norm(self.norm, train, name=f"norm{i + 1}", spatial=True)(x))
      x = _dropout(x, dropout_rate, train, f"dropout{i + 1}")
    return TorchDense(self.num_classes, name="linear")(x.reshape((x.shape[0], -1)))
