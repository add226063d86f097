"""Tests for jaxnorm.training.monte_carlo_predict and mc_dropout_predict.

References: the model's own deterministic ``apply`` (for BN running statistics) and
float64 NumPy formulas for the summaries, computed from the returned per-sample probs.

Runtime: each XLA compilation containing a PRNG costs about a second on CPU, so the
tests share one jitted predictor per model and take inputs from NumPy.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnorm
from jaxnorm import training
from jaxnorm.training import MCPrediction, mc_dropout_predict, monte_carlo_predict

NUM_SAMPLES = 16


class BNDropoutNet(nn.Module):
  """Dense -> BatchNorm -> ReLU -> jaxnorm.Dropout -> Dense -> flax Dropout -> Dense."""

  rate: float = 0.3
  dropout: str = "both"  # which dropout layers: "both", "jaxnorm", "flax" or "none"

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(16)(x)
    x = jaxnorm.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    x = nn.relu(x)
    if self.dropout in ("both", "jaxnorm"):
      x = jaxnorm.Dropout(self.rate, deterministic=not train)(x)
    x = nn.relu(nn.Dense(16)(x))
    if self.dropout in ("both", "flax"):
      x = nn.Dropout(self.rate, deterministic=not train)(x)
    return nn.Dense(4)(x)


def _variables(model, x):
  """Initialized variables with non-trivial running statistics (not mean 0 / var 1),
  so that using batch statistics instead of running ones changes the output."""
  variables = model.init(jax.random.key(0), x, train=False)
  feats = variables["batch_stats"]["BatchNorm_0"]["mean"].shape
  rng = np.random.default_rng(1)
  return {"params": variables["params"], "batch_stats": {"BatchNorm_0": {
      "mean": jnp.asarray(rng.normal(size=feats), jnp.float32),
      "var": jnp.asarray(rng.uniform(0.5, 3.0, size=feats), jnp.float32)}}}


def _predict(model, variables, x, key, num_samples=NUM_SAMPLES):
  return mc_dropout_predict(model.apply, variables, x, key, num_samples=num_samples)


@pytest.fixture(scope="module")
def setup():
  """The model, its variables, an input batch and a jitted predictor (NUM_SAMPLES)."""
  x = jnp.asarray(2.0 * np.random.default_rng(3).normal(size=(10, 6)), jnp.float32)
  model = BNDropoutNet()
  predict = jax.jit(lambda v, x, k: _predict(model, v, x, k))
  return model, _variables(model, x), x, predict


@pytest.fixture(scope="module")
def prediction(setup):
  _, variables, x, predict = setup
  return predict(variables, x, jax.random.key(4))


def _entropy64(p):
  p = np.asarray(p, np.float64)
  return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)


def test_returns_mcprediction_with_shapes(prediction):
  assert isinstance(prediction, MCPrediction)
  assert prediction.probs.shape == (NUM_SAMPLES, 10, 4)
  assert prediction.mean.shape == prediction.std.shape == (10, 4)
  assert prediction.entropy.shape == prediction.mutual_information.shape == (10,)


def test_fixed_key_is_deterministic_and_jit_matches_eager(setup, prediction):
  model, variables, x, predict = setup
  again = predict(variables, x, jax.random.key(4))
  for a, b in zip(prediction, again):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  eager = _predict(model, variables, x, jax.random.key(4))
  # jit vs eager: same masks, float32 rounding of probabilities in [0, 1]: 1e-6.
  for a, b in zip(prediction, eager):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)


def test_different_keys_differ(setup, prediction):
  _, variables, x, predict = setup
  other = predict(variables, x, jax.random.key(5))
  assert not np.allclose(np.asarray(other.probs), np.asarray(prediction.probs))
  # And within one call, each sample has its own masks.
  probs = np.asarray(prediction.probs)
  for i in range(1, NUM_SAMPLES):
    assert not np.array_equal(probs[0], probs[i])


def test_summaries_match_numpy(prediction):
  probs = np.asarray(prediction.probs, np.float64)
  mean = probs.mean(0)
  # float32 reductions over 16 samples of values in [0, 1] (entropies <= log 4): 1e-6
  # absolute for probabilities, 2e-6 for entropies.
  np.testing.assert_allclose(np.asarray(prediction.mean), mean, rtol=0, atol=1e-6)
  np.testing.assert_allclose(np.asarray(prediction.mean).sum(-1), 1.0, rtol=0, atol=1e-6)
  np.testing.assert_allclose(np.asarray(prediction.std), probs.std(0), rtol=0, atol=1e-6)
  assert np.all(np.asarray(prediction.std).max(-1) > 1e-3)  # dropout gives spread
  entropy = _entropy64(mean)
  mutual_information = entropy - _entropy64(probs).mean(0)
  np.testing.assert_allclose(np.asarray(prediction.entropy), entropy, rtol=0, atol=2e-6)
  np.testing.assert_allclose(np.asarray(prediction.mutual_information),
                             mutual_information, rtol=0, atol=2e-6)
  assert np.all(mutual_information > 0)  # Jensen: strictly, as the samples differ


def test_model_without_dropout_has_no_spread(setup):
  _, _, x, _ = setup
  model = BNDropoutNet(dropout="none")
  variables = _variables(model, x)
  pred = _predict(model, variables, x, jax.random.key(6))
  probs = np.asarray(pred.probs)
  # Every sample is the same deterministic pass, bit for bit.
  for i in range(1, NUM_SAMPLES):
    np.testing.assert_array_equal(probs[i], probs[0])
  # std and mutual information are 0 up to float32 rounding: the mean of 16 equal
  # float32 values is not always exactly that value (observed up to ~1e-7), so the
  # bound is a few ulps of values <= 1, i.e. 1e-6, rather than exact zero.
  assert np.max(np.asarray(pred.std)) < 1e-6
  assert np.max(np.abs(np.asarray(pred.mutual_information))) < 1e-6
  expected = jax.nn.softmax(model.apply(variables, x, train=False))
  np.testing.assert_allclose(probs[0], np.asarray(expected), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["jaxnorm", "flax"])
def test_each_dropout_type_is_sampled(setup, kind):
  # jaxnorm.Dropout and flax.linen.Dropout both sample masks in evaluation mode.
  _, _, x, _ = setup
  model = BNDropoutNet(dropout=kind)
  variables = _variables(model, x)
  pred = _predict(model, variables, x, jax.random.key(10), num_samples=4)
  assert np.all(np.asarray(pred.std).max(-1) > 1e-3), kind


def test_uses_running_batch_norm_statistics(setup):
  _, variables, x, _ = setup
  model = BNDropoutNet(rate=0.0)  # same variables: rate changes no parameter
  pred = _predict(model, variables, x, jax.random.key(7), num_samples=1)
  evaluation = np.asarray(jax.nn.softmax(model.apply(variables, x, train=False)))
  np.testing.assert_allclose(np.asarray(pred.probs[0]), evaluation, rtol=0, atol=1e-6)
  # It is not the training-mode (batch statistics) output.
  training_out, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert not np.allclose(np.asarray(pred.probs[0]),
                         np.asarray(jax.nn.softmax(training_out)), atol=1e-3)


def test_rows_independent_with_dropout_on(setup):
  # With dropout sampling, BN must still use running statistics: then an example's
  # prediction does not depend on the other rows of the batch. The masks depend only
  # on the key and the shape, so changing the other rows keeps row 0's masks; with
  # batch statistics row 0's output would change.
  _, variables, x, predict = setup
  key = jax.random.key(8)
  full = predict(variables, x, key)
  x_changed = x.at[1:].set(x[1:] * 3.0 + 1.0)
  changed = predict(variables, x_changed, key)
  np.testing.assert_allclose(np.asarray(changed.probs[:, 0]),
                             np.asarray(full.probs[:, 0]), rtol=0, atol=1e-6)
  assert not np.allclose(np.asarray(changed.probs[:, 1]), np.asarray(full.probs[:, 1]))


def test_monte_carlo_predict_per_sample_keys():
  logits = jnp.asarray([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0]])

  def logits_fn(k):
    return logits + jax.random.normal(k, logits.shape)

  key = jax.random.key(9)
  pred = jax.jit(lambda k: monte_carlo_predict(logits_fn, k, 8))(key)
  # One pass per key split from ``key`` (as documented).
  single = jax.jit(lambda k: jax.nn.softmax(logits_fn(k)))
  expected = np.stack([np.asarray(single(k)) for k in jax.random.split(key, 8)])
  np.testing.assert_allclose(np.asarray(pred.probs), expected, rtol=0, atol=1e-6)
  np.testing.assert_allclose(np.asarray(pred.mean).sum(-1), 1.0, atol=1e-6)


@pytest.mark.parametrize("num_samples", [0, -3])
def test_num_samples_below_one_raises(setup, num_samples):
  model, variables, x, _ = setup
  with pytest.raises(ValueError, match="num_samples") as info:
    monte_carlo_predict(lambda k: jnp.zeros((3,)), jax.random.key(0), num_samples)
  assert str(num_samples) in str(info.value)
  with pytest.raises(ValueError, match="num_samples"):
    mc_dropout_predict(model.apply, variables, x, jax.random.key(0),
                       num_samples=num_samples)


def test_exported_from_training():
  assert training.mc_dropout_predict is mc_dropout_predict
  assert training.monte_carlo_predict is monte_carlo_predict
