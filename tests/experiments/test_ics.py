"""ics: the quick run's outputs, the noisy-BN model, the probe and the verdict rules."""

from __future__ import annotations

import doctest
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import ics
from experiments import results as results_lib
from experiments.spec import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, VERDICTS, RunContext

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SEEDS = 2


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("ics")
  ctx = RunContext(out_dir=str(out), quick=True, seeds=SEEDS)
  outcome = ics.run(ctx)
  payload = results_lib.write_outcome(ics.SPEC, ctx, outcome, wall_seconds=1.0)
  return out, outcome, payload


def test_quick_run_writes_results_table_and_figures(quick_run):
  out, outcome, payload = quick_run
  assert json.loads((out / results_lib.RESULTS_FILE).read_text(encoding="utf-8")) == payload
  assert payload["claim"] == ics.SPEC.claim and payload["criterion"] == ics.SPEC.criterion
  assert payload["verdict"] in VERDICTS and payload["quick"] is True
  assert len(outcome.verdicts) == 2
  assert all(v.verdict in VERDICTS for v in outcome.verdicts)
  assert outcome.figures == ["accuracy.png", "shift.png"]
  for figure in outcome.figures:
    assert (out / figure).read_bytes()[:8] == PNG_MAGIC
  table = (out / results_lib.TABLE_FILE).read_text(encoding="utf-8")
  assert table.count("\n| ") == 1 + len(ics.VARIANTS)


def test_quick_run_numbers_are_consistent(quick_run):
  _, outcome, _ = quick_run
  assert list(outcome.per_seed) == list(ics.VARIANTS)
  for label, row in outcome.per_seed.items():
    accuracy = np.asarray(row["final_accuracy"])
    assert accuracy.shape == (SEEDS,) and np.all((accuracy >= 0) & (accuracy <= 1)), label
    assert np.asarray(row["shift_per_layer"]).shape == (SEEDS, len(ics.QUICK_HIDDEN))
    assert np.all(np.asarray(row["shift"]) >= 0)
    cosine, relative = np.asarray(row["cos"]), np.asarray(row["rel"])
    assert np.all((cosine >= -1 - 1e-6) & (cosine <= 1 + 1e-6))
    assert np.all(relative >= 0) and np.all(np.asarray(row["l2"]) >= 0)
  # The noise makes the pre-activations move far more than plain BN's.
  assert np.all(np.asarray(outcome.per_seed["noisy BN"]["shift"]) >
                np.asarray(outcome.per_seed["BN"]["shift"]))


# --------------------------------------------------------------------------- model


def _variables(model, x):
  return model.init(jax.random.key(0), x, train=False)


def test_zero_noise_is_plain_batch_norm_and_noise_changes_the_output():
  model = ics.NoisyBNMLP(hidden=(16, 16))
  x = np.random.default_rng(0).normal(size=(32, 7)).astype(np.float32)
  variables = _variables(model, x)
  apply = jax.jit(lambda noise, key: model.apply(
      variables, x, train=True, noise=noise, mutable=["batch_stats"],
      rngs={"noise": key})[0])
  plain = np.asarray(apply(0.0, jax.random.key(1)))
  np.testing.assert_array_equal(plain, np.asarray(apply(0.0, jax.random.key(2))))
  noisy_a, noisy_b = np.asarray(apply(1.0, jax.random.key(1))), np.asarray(
      apply(1.0, jax.random.key(2)))
  assert not np.allclose(noisy_a, plain) and not np.allclose(noisy_a, noisy_b)
  # Evaluation has no noise whatever the level.
  evaluate = lambda noise: np.asarray(model.apply(variables, x, train=False, noise=noise))
  np.testing.assert_array_equal(evaluate(0.0), evaluate(1.0))


def test_noise_moments_follow_the_recipe():
  eps = np.asarray(ics.covariate_noise(jax.random.key(3), (4, 20000, 64)))
  mean, std = eps.mean(1), eps.std(1)              # one (mu, sigma) per layer and unit
  assert np.all(np.abs(mean) <= ics.NOISE_MEAN + 0.03)
  assert np.all(std <= ics.NOISE_STD + 0.03)
  # Spread over units like U(-0.5, 0.5) and U(0, 1): variances 1/12 * range^2.
  np.testing.assert_allclose(mean.std(), 2 * ics.NOISE_MEAN / np.sqrt(12), rtol=0.15)
  np.testing.assert_allclose(std.std(), ics.NOISE_STD / np.sqrt(12), rtol=0.15)
  with pytest.raises(ValueError, match="covariate_noise: shape"):
    ics.covariate_noise(jax.random.key(0), (5,))


def test_probe_sees_the_layers_pre_activations_and_the_gradient_shift():
  model = ics.NoisyBNMLP(hidden=(8, 8, 8))
  rng = np.random.default_rng(1)
  x = rng.normal(size=(64, 5)).astype(np.float32)
  y = rng.integers(0, 10, size=64).astype(np.int32)
  variables = _variables(model, x)
  import optax  # pylint: disable=import-outside-toplevel
  from jaxnorm import training  # pylint: disable=import-outside-toplevel
  state = training.TrainState.create(apply_fn=model.apply, params=variables["params"],
                                     tx=optax.sgd(0.1), rng=0)
  out = jax.jit(ics.make_probe(model, jnp.asarray(x), jnp.asarray(x[:16]),
                               jnp.asarray(y[:16])))(
                                   state, {"batch_norm": 0.0, "noise": 1.0})
  assert out["moments"].shape == (3, 2, 8)
  # Without BN the first pre-activation is x @ W + b: its moments in float64.
  p = variables["params"]["Dense_0"]
  h = x.astype(np.float64) @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"])
  np.testing.assert_allclose(np.asarray(out["moments"][0]), [h.mean(0), h.std(0)],
                             rtol=1e-4, atol=1e-5)
  assert out["cosine"].shape == (4,)
  np.testing.assert_allclose(float(out["l2"][0]), 0.0)     # no earlier layer
  assert np.all(np.asarray(out["l2"][1:]) > 0)


def test_layer_groups():
  assert ics.layer_groups(ics.NoisyBNMLP(hidden=(4, 4))) == [
      ["Dense_0", "BatchNorm_0"], ["Dense_1", "BatchNorm_1"], ["Dense_2"]]


@pytest.mark.parametrize("train", [True, False])
def test_without_bn_the_model_is_a_plain_relu_mlp(train):
  model = ics.NoisyBNMLP(hidden=(16, 8))
  x = np.random.default_rng(2).normal(size=(12, 7)).astype(np.float32)
  variables = _variables(model, x)
  got = model.apply(variables, x, train=train, batch_norm=0.0, noise=1.0,
                    mutable=["batch_stats"], rngs={"noise": jax.random.key(0)})[0]
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
  h = x.astype(np.float64)
  for i in range(2):
    h = np.maximum(h @ p[f"Dense_{i}"]["kernel"] + p[f"Dense_{i}"]["bias"], 0.0)
  want = h @ p["Dense_2"]["kernel"] + p["Dense_2"]["bias"]
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- decide


def _numbers(**overrides):
  numbers = dict(acc_none=[0.50, 0.52, 0.51, 0.49, 0.50],
                 acc_batch=[0.70, 0.71, 0.69, 0.70, 0.72],
                 acc_noisy=[0.67, 0.69, 0.66, 0.68, 0.69],
                 shift_none=[0.10, 0.12, 0.11, 0.10, 0.13],
                 shift_noisy=[0.50, 0.60, 0.55, 0.52, 0.58],
                 cos_none=[0.90, 0.91, 0.90, 0.92, 0.91],
                 cos_batch=[0.80, 0.82, 0.81, 0.80, 0.79],
                 rel_none=[0.20, 0.21, 0.20, 0.22, 0.19],
                 rel_batch=[0.40, 0.42, 0.41, 0.40, 0.43])
  numbers.update(overrides)
  return numbers


def test_decide_santurkar_finding_does_not_hold():
  explanation, gradient = ics.decide(_numbers())
  assert (explanation.verdict, gradient.verdict) == (DOES_NOT_HOLD, DOES_NOT_HOLD)
  assert [c.passed for c in explanation.checks] == [True, True, True]
  assert "%" in explanation.ours and "x" in explanation.ours


def test_decide_noise_removes_the_advantage_holds():
  explanation, gradient = ics.decide(_numbers(
      acc_noisy=[0.52, 0.53, 0.50, 0.51, 0.52], cos_batch=[0.97, 0.98, 0.97, 0.98, 0.97],
      rel_batch=[0.05, 0.06, 0.05, 0.04, 0.05]))
  assert (explanation.verdict, gradient.verdict) == (HOLDS, HOLDS)
  assert explanation.checks[-1].passed is False


def test_decide_inconclusive_cases():
  halfway = ics.decide(_numbers(acc_noisy=[0.55, 0.68, 0.58, 0.66, 0.60]))[0]
  assert halfway.verdict == INCONCLUSIVE and "seed spread" in halfway.reason
  no_gain = ics.decide(_numbers(acc_batch=[0.51, 0.51, 0.52, 0.49, 0.50]))[0]
  assert no_gain.verdict == INCONCLUSIVE and "no clear advantage" in no_gain.reason
  no_shift = ics.decide(_numbers(shift_noisy=[0.09, 0.13, 0.10, 0.11, 0.12]))[0]
  assert no_shift.verdict == INCONCLUSIVE and "no power" in no_shift.reason
  diverged = ics.decide(_numbers(acc_noisy=[np.nan, 0.69, 0.66, 0.68, 0.69]))[0]
  assert diverged.verdict == INCONCLUSIVE
  mixed = ics.decide(_numbers(cos_batch=[0.85, 0.95, 0.88, 0.96, 0.90],
                              rel_batch=[0.15, 0.25, 0.18, 0.26, 0.20]))[1]
  assert mixed.verdict == INCONCLUSIVE


def test_spec_states_the_thresholds():
  assert f"{ics.RECOVERY:.0%}" in ics.SPEC.criterion
  assert f"{ics.MIN_ADVANTAGE:.0%}" in ics.SPEC.criterion


def test_docstring_examples_run():
  assert doctest.testmod(ics).failed == 0
