"""Tests for jaxnorm.training.mc_tta_predict (test-time MC ensembling).

References: the model's own ``apply`` run sample by sample with the documented key
rule (``k_t = split(key, T)[t]``, ``(augment_key, dropout_key) = split(k_t)``), and
float64 NumPy formulas for the summaries.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnorm
from jaxnorm import training
from jaxnorm.training import MCPrediction, mc_tta_predict

T = 8


class DropoutNet(nn.Module):
  """No BN, so ``train=True`` only switches the dropout layers on."""

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.relu(nn.Dense(16)(x))
    x = jaxnorm.Dropout(0.3, deterministic=not train)(x)
    x = nn.relu(nn.Dense(16)(x))
    x = nn.Dropout(0.3, deterministic=not train)(x)
    return nn.Dense(4)(x)


class BNNet(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool):
    x = jaxnorm.BatchNorm(use_running_average=not train)(nn.Dense(8)(x))
    return nn.Dense(4)(jaxnorm.Dropout(0.3, deterministic=not train)(x))


def jitter(key, x):
  return x + 0.3 * jax.random.normal(key, x.shape)


def _softmax64(logits):
  z = np.asarray(logits, np.float64)
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _entropy64(p):
  return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)


@pytest.fixture(scope="module")
def setup():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 5)), jnp.float32)
  model = DropoutNet()
  variables = model.init(jax.random.key(0), x, train=False)
  predict = jax.jit(lambda v, x, k: mc_tta_predict(model.apply, v, x, k, augment=jitter,
                                                   num_samples=T))
  return model, variables, x, predict


def test_samples_follow_the_key_rule_and_summaries_match_numpy(setup):
  model, variables, x, predict = setup
  key = jax.random.key(1)
  pred = predict(variables, x, key)
  assert isinstance(pred, MCPrediction) and pred.probs.shape == (T, 6, 4)
  manual = []
  for k in jax.random.split(key, T):
    augment_key, dropout_key = jax.random.split(k)
    logits = model.apply(variables, jitter(augment_key, x), train=True,
                         rngs={"dropout": dropout_key})
    manual.append(_softmax64(logits))
  manual = np.stack(manual)
  np.testing.assert_allclose(np.asarray(pred.probs, np.float64), manual, atol=2e-6)
  probs = np.asarray(pred.probs, np.float64)
  mean = probs.mean(0)
  np.testing.assert_allclose(np.asarray(pred.mean), mean, atol=1e-6)
  np.testing.assert_allclose(np.asarray(pred.std), probs.std(0), atol=1e-6)
  np.testing.assert_allclose(np.asarray(pred.entropy), _entropy64(mean), atol=2e-6)
  mutual_information = _entropy64(mean) - _entropy64(probs).mean(0)
  np.testing.assert_allclose(np.asarray(pred.mutual_information), mutual_information,
                             atol=2e-6)
  assert np.all(mutual_information > 0)
  again = predict(variables, x, key)
  for a, b in zip(pred, again):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_without_dropout_only_the_augmentations_vary(setup):
  model, variables, x, _ = setup
  key = jax.random.key(2)
  pred = mc_tta_predict(model.apply, variables, x, key, augment=jitter, num_samples=4,
                        mc_dropout=False)
  for t, k in enumerate(jax.random.split(key, 4)):
    augment_key, _ = jax.random.split(k)
    expected = _softmax64(model.apply(variables, jitter(augment_key, x), train=False))
    np.testing.assert_allclose(np.asarray(pred.probs[t], np.float64), expected, atol=2e-6)
  assert np.all(np.asarray(pred.std).max(-1) > 1e-4)


def test_identity_augmentation_without_dropout_has_no_spread_and_bn_stays_in_eval():
  x = jnp.asarray(np.random.default_rng(3).normal(2.0, 1.0, size=(6, 5)), jnp.float32)
  model = BNNet()
  variables = model.init(jax.random.key(0), x, train=False)
  pred = mc_tta_predict(model.apply, variables, x, jax.random.key(4),
                        augment=lambda key, x: x, num_samples=3, mc_dropout=False)
  expected = _softmax64(model.apply(variables, x, train=False))  # running BN statistics
  for t in range(3):
    np.testing.assert_allclose(np.asarray(pred.probs[t], np.float64), expected, atol=2e-6)
  np.testing.assert_allclose(np.asarray(pred.mutual_information), 0.0, atol=1e-6)


def test_errors():
  with pytest.raises(TypeError, match="mc_tta_predict: augment must be a function"):
    mc_tta_predict(None, {}, jnp.ones(3), jax.random.key(0), augment="flip")
  with pytest.raises(ValueError, match="mc_tta_predict: num_samples must be >= 1"):
    mc_tta_predict(None, {}, jnp.ones(3), jax.random.key(0), augment=jitter,
                   num_samples=0)
  assert training.mc_tta_predict is mc_tta_predict
