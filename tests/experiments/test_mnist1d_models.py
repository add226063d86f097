"""The MNIST-1D reference models: sizes, convolution and MLP against independent code."""

import doctest

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import mnist1d_models
from experiments.mnist1d_models import (BASELINE_NORMS, Conv1D, ConvNet, Logistic,
                                        ResidualMLP, TorchDense)


def _numpy_params(model, x, seed=0, **kwargs):
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, **kwargs))["params"]
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (0.3 * rng.normal(size=s.shape)).astype(np.float32), shapes)


def _param_count(model, x):
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  return sum(a.size for a in jax.tree.leaves(shapes["params"]))


@pytest.mark.parametrize("model, count", [
    (Logistic(), 40 * 10 + 10),                                        # LinearBase
    (ResidualMLP(), 40 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10),  # MLPBase(256)
    (ConvNet(), 5 * 25 + 25 + 2 * (3 * 25 * 25 + 25) + 125 * 10 + 10),  # ConvBase
])
def test_parameter_counts_match_the_reference_models(model, count):
  assert _param_count(model, jnp.ones((2, 40))) == count


@pytest.mark.parametrize("length, channels, kernel, stride, padding",
                         [(40, 1, 5, 2, 1), (19, 3, 3, 2, 1), (11, 2, 4, 3, 2)])
def test_conv1d_matches_flax_conv_and_numpy(length, channels, kernel, stride, padding):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, length, channels)).astype(np.float32)
  conv = Conv1D(4, kernel, stride=stride, padding=padding)
  variables = {"params": _numpy_params(conv, x)}
  out = conv.apply(variables, x)
  flax_out = nn.Conv(4, (kernel,), strides=(stride,),
                     padding=((padding, padding),)).apply(variables, x)
  np.testing.assert_allclose(out, flax_out, rtol=1e-5, atol=1e-5)
  k = np.asarray(variables["params"]["kernel"], np.float64)
  padded = np.pad(x.astype(np.float64), ((0, 0), (padding, padding), (0, 0)))
  positions = (padded.shape[1] - kernel) // stride + 1
  expected = np.stack([np.einsum("njc,jco->no", padded[:, i * stride:i * stride + kernel], k)
                       for i in range(positions)], 1) + np.asarray(variables["params"]["bias"])
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_conv1d_rejects_inputs_shorter_than_the_kernel():
  with pytest.raises(ValueError, match="fewer than kernel_size=5"):
    Conv1D(2, 5).init(jax.random.key(0), jnp.ones((1, 3, 1)))


def test_torch_initialization_bounds():
  params = TorchDense(300).init(jax.random.key(0), jnp.ones((1, 64)))["params"]
  for leaf in (params["kernel"], params["bias"]):
    assert float(jnp.abs(leaf).max()) <= 1 / 8 + 1e-7   # U(+-1/sqrt(64))
    assert float(jnp.abs(leaf).max()) > 0.9 / 8


def test_residual_mlp_matches_numpy():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(5, 40)).astype(np.float32)
  model = ResidualMLP(hidden=16)
  params = _numpy_params(model, x, train=False)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)

  def dense(name, v):
    return v @ p[name]["kernel"] + p[name]["bias"]
  h = np.maximum(dense("linear1", x), 0)
  h = h + np.maximum(dense("linear2", h), 0)
  np.testing.assert_allclose(model.apply({"params": params}, x, train=False),
                             dense("linear3", h), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", [Logistic, ResidualMLP, ConvNet])
@pytest.mark.parametrize("norm", BASELINE_NORMS)
def test_every_norm_runs_in_training_mode_with_a_traced_drop_rate(cls, norm):
  x = jnp.asarray(np.random.default_rng(2).normal(size=(8, 40)), jnp.float32)
  model = cls(norm=norm)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  variables = jax.tree.map(lambda s: jnp.full(s.shape, 0.1, s.dtype), shapes)

  @jax.jit
  def forward(rate):
    return model.apply(variables, x, train=True, dropout_rate=rate, mutable=["batch_stats"],
                       rngs={"dropout": jax.random.key(1)})
  with jax.threefry_partitionable(False):
    logits, updates = forward(jnp.float32(0.5))
  assert logits.shape == (8, 10) and bool(jnp.all(jnp.isfinite(logits)))
  assert ("batch_stats" in updates) == (norm == "batch")


def test_layer_norm_of_the_cnn_spans_positions_and_channels():
  x = 5.0 * np.random.default_rng(3).normal(size=(2, 10, 3)) + 2.0
  layer = mnist1d_models._norm("layer", True, name=None, spatial=True)  # pylint: disable=protected-access
  y = np.asarray(layer.apply(layer.init(jax.random.key(0), x), x), np.float64)
  np.testing.assert_allclose(y.mean(axis=(1, 2)), 0.0, atol=1e-5)
  np.testing.assert_allclose(y.std(axis=(1, 2)), 1.0, atol=1e-4)
  assert not np.allclose(y.mean(axis=2), 0.0, atol=1e-3)  # not per position


def test_bad_norm_is_rejected():
  with pytest.raises(ValueError, match="norm must be one of"):
    jax.eval_shape(lambda: Logistic(norm="group").init(jax.random.key(0), jnp.ones((2, 40)),
                                                       train=False))


def test_docstring_examples():
  with jax.threefry_partitionable(False):  # same examples, faster to compile
    assert doctest.testmod(mnist1d_models).failed == 0
