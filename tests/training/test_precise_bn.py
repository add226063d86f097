"""Precise-BN: exact population statistics, checked against float64 NumPy."""

import flax.linen as nn
import jax
import numpy as np
import pytest

import jaxnorm
from jaxnorm import training


class TwoBN(nn.Module):
  """jaxnorm BN -> Dense -> flax BN -> Dropout (both BN implementations are handled)."""

  @nn.compact
  def __call__(self, x, train: bool, mask=None):
    x = jaxnorm.BatchNorm(use_running_average=not train)(x, mask=mask)
    x = nn.Dense(4)(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    return jaxnorm.Dropout(0.5, deterministic=not train)(x)


@pytest.fixture
def setup():
  rng = np.random.default_rng(0)
  x = (rng.normal(size=(120, 3)) * [1.0, 3.0, 0.5] + [7.0, -2.0, 1e3]).astype(np.float32)
  model = TwoBN()
  variables = model.init(jax.random.key(1), x[:2], train=False)
  batches = [x[i:i + 40] for i in range(0, 120, 40)]
  return model, variables, x, batches


def test_first_layer_gets_the_numpy_population_statistics(setup):
  model, variables, x, batches = setup
  stats = training.precise_batch_stats(model.apply, variables, batches)
  x64 = x.astype(np.float64)
  np.testing.assert_allclose(np.asarray(stats["BatchNorm_0"]["mean"]), x64.mean(0),
                             rtol=1e-6)
  np.testing.assert_allclose(np.asarray(stats["BatchNorm_0"]["var"]), x64.var(0),
                             rtol=1e-4)
  assert stats["BatchNorm_0"]["mean"].dtype == np.float32


def test_sequential_layers_match_the_evaluation_network(setup):
  model, variables, x, batches = setup
  stats = training.precise_batch_stats(model.apply, variables, batches)
  # The input of the second BN in the evaluation network with the new first-layer stats.
  first = variables["params"]["BatchNorm_0"]
  x64 = x.astype(np.float64)
  mean0 = np.asarray(stats["BatchNorm_0"]["mean"], np.float64)
  var0 = np.asarray(stats["BatchNorm_0"]["var"], np.float64)
  h = (x64 - mean0) / np.sqrt(var0 + 1e-5) * np.asarray(first["scale"]) + np.asarray(
      first["bias"])
  dense = variables["params"]["Dense_0"]
  h = h @ np.asarray(dense["kernel"], np.float64) + np.asarray(dense["bias"])
  np.testing.assert_allclose(np.asarray(stats["BatchNorm_1"]["mean"]), h.mean(0),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(stats["BatchNorm_1"]["var"]), h.var(0), rtol=1e-4)


def test_one_sweep_uses_the_old_upstream_statistics(setup):
  model, variables, x, batches = setup
  stats = training.precise_batch_stats(model.apply, variables, batches, sequential=False)
  # Initial running stats are (0, 1): the first BN passes x through (up to eps).
  first = variables["params"]["BatchNorm_0"]
  h = x.astype(np.float64) / np.sqrt(1 + 1e-5) * np.asarray(first["scale"]) + np.asarray(
      first["bias"])
  dense = variables["params"]["Dense_0"]
  h = h @ np.asarray(dense["kernel"], np.float64) + np.asarray(dense["bias"])
  np.testing.assert_allclose(np.asarray(stats["BatchNorm_1"]["var"]), h.var(0), rtol=1e-4)


def test_masked_inputs_are_excluded(setup):
  model, variables, x, batches = setup
  masks = [np.arange(40)[:, None] < 30] * 3

  def apply_with_mask(variables, x, **kwargs):
    return model.apply(variables, x, mask=masks[0], **kwargs)

  stats = training.precise_batch_stats(apply_with_mask, variables, batches)
  valid = np.concatenate([b[:30] for b in batches]).astype(np.float64)
  np.testing.assert_allclose(np.asarray(stats["BatchNorm_0"]["mean"]), valid.mean(0),
                             rtol=1e-6)
  np.testing.assert_allclose(np.asarray(stats["BatchNorm_0"]["var"]), valid.var(0),
                             rtol=1e-4)


def test_precise_stats_beat_the_ema_after_short_training(setup):
  """After few EMA updates (momentum 0.99) the running mean is far from the data's."""
  model, variables, x, batches = setup
  _, updated = model.apply(variables, x[:40], train=True, mutable=["batch_stats"],
                           rngs={"dropout": jax.random.key(0)})
  ema_mean = np.asarray(updated["batch_stats"]["BatchNorm_0"]["mean"])
  precise = training.precise_batch_stats(model.apply, variables, batches)
  true_mean = x.astype(np.float64).mean(0)
  assert np.abs(ema_mean - true_mean).max() > 100 * np.abs(
      np.asarray(precise["BatchNorm_0"]["mean"]) - true_mean).max()


def test_errors(setup):
  model, variables, _, _ = setup
  with pytest.raises(ValueError, match="batches is empty"):
    training.precise_batch_stats(model.apply, variables, [])
  dense = nn.Dense(2)
  dense_vars = dense.init(jax.random.key(0), np.zeros((2, 3), np.float32))

  def apply(variables, x, train, **kwargs):
    return dense.apply(variables, x, **kwargs)

  with pytest.raises(ValueError, match="no BatchNorm layer"):
    training.precise_batch_stats(apply, {**dense_vars, "batch_stats": {}},
                                 [np.zeros((4, 3), np.float32)])


def test_non_finite_inputs_name_the_layer_and_batch():
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train):
      return jaxnorm.BatchNorm(use_running_average=not train)(nn.Dense(4)(x))

  x = np.ones((8, 3), np.float32)
  variables = Net().init(jax.random.key(0), x, train=False)
  bad = x.copy()
  bad[2, 1] = np.inf
  with pytest.raises(ValueError, match="inputs of BatchNorm_0 are not finite in batch 1"):
    training.precise_batch_stats(Net().apply, variables, [x, bad, x])
