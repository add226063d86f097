"""bn-fig1: the quick path end to end, the sigmoid-input probe, and the verdict rules."""

from __future__ import annotations

import doctest
import json
import math
import os

import jax
import numpy as np
import pytest

from experiments import bn_fig1, results
from experiments.spec import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, VERDICTS, RunContext

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SEEDS = 2


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("bn-fig1")
  ctx = RunContext(out_dir=str(out), quick=True, seeds=SEEDS)
  outcome = bn_fig1.run(ctx)
  payload = results.write_outcome(bn_fig1.SPEC, ctx, outcome, wall_seconds=1.0)
  return out, outcome, payload


def test_quick_run_writes_results_table_and_figures(quick_run):
  out, outcome, payload = quick_run
  on_disk = json.loads((out / results.RESULTS_FILE).read_text(encoding="utf-8"))
  assert on_disk == payload
  assert payload["claim"] == bn_fig1.SPEC.claim
  assert payload["criterion"] == bn_fig1.SPEC.criterion
  assert payload["verdict"] in VERDICTS and payload["quick"] is True
  assert [v.verdict in VERDICTS for v in outcome.verdicts] == [True, True]
  assert outcome.figures == ["accuracy.png", "percentiles.png"]
  for figure in outcome.figures:
    assert (out / figure).read_bytes()[:8] == PNG_MAGIC
  table = (out / results.TABLE_FILE).read_text(encoding="utf-8")
  assert table.count("\n| ") == len(bn_fig1.LEARNING_RATES) + 1  # header + one row per lr
  assert "(verdict)" in table


def test_quick_run_numbers_are_consistent(quick_run):
  _, outcome, _ = quick_run
  per_lr = outcome.per_seed["per_lr"]
  assert list(per_lr) == [f"{lr:g}" for lr in bn_fig1.LEARNING_RATES]
  lr = f"{outcome.summary['verdict_learning_rate']:g}"
  verdict_numbers = outcome.per_seed["verdict_lr"]
  for key in ("target", "steps_no_bn", "steps_bn", "drift_no_bn", "drift_bn"):
    assert len(verdict_numbers[key]) == SEEDS
  np.testing.assert_array_equal(verdict_numbers["target"], per_lr[lr]["target"])
  for label in ("no BN", "BN"):
    row = per_lr[lr][label]
    accuracy = np.asarray(row["final_test_accuracy"])
    assert np.all((accuracy >= 0) & (accuracy <= 1))
    assert np.all(np.asarray(row["drift_median_unit"]) >= 0)
    steps = np.asarray(row["steps_to_target"])
    assert np.all((steps >= 0) & ((steps <= bn_fig1.QUICK_STEPS) | np.isinf(steps)))
  # The no-BN net reaches its own final accuracy (the mean of its last evaluations can
  # not exceed all of them).
  assert np.all(np.isfinite(per_lr[lr]["no BN"]["steps_to_target"]))
  # The verdict's learning rate is where the no-BN net ends most accurate.
  means = [np.mean(per_lr[f"{lr:g}"]["no BN"]["final_test_accuracy"])
           for lr in bn_fig1.LEARNING_RATES]
  assert outcome.summary["verdict_learning_rate"] == bn_fig1.LEARNING_RATES[
      int(np.argmax(means))]


def _sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


def _variables(norm, rng):
  """Random weights (large enough that BN's epsilon hardly matters) and BN parameters."""
  params, stats = {}, {}
  for i, (fan_in, fan_out) in enumerate([(64, 100), (100, 100), (100, 100), (100, 10)]):
    params[f"Dense_{i}"] = {"kernel": rng.normal(0, 0.3, (fan_in, fan_out)),
                            "bias": rng.normal(0, 0.1, fan_out)}
    if norm == "batch" and i < 3:
      params[f"BatchNorm_{i}"] = {"scale": rng.uniform(0.5, 2.0, fan_out),
                                  "bias": rng.normal(0, 0.5, fan_out)}
      stats[f"BatchNorm_{i}"] = {"mean": np.zeros(fan_out), "var": np.ones(fan_out)}
  variables = {"params": params} | ({"batch_stats": stats} if stats else {})
  return jax.tree.map(lambda a: np.asarray(a, np.float32), variables)


def _reference_sigmoid_input(variables, x, norm, epsilon=1e-5):
  """The last hidden layer's sigmoid input in float64 NumPy (training-mode BN)."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
  h = x.astype(np.float64)
  for i in range(3):
    z = h @ p[f"Dense_{i}"]["kernel"] + p[f"Dense_{i}"]["bias"]
    if norm == "batch":
      bn = p[f"BatchNorm_{i}"]
      z = (z - z.mean(0)) / np.sqrt(z.var(0) + epsilon) * bn["scale"] + bn["bias"]
    if i == 2:
      return z
    h = _sigmoid(z)


@pytest.mark.parametrize("norm", ["none", "batch"])
def test_probe_captures_the_last_sigmoid_input(norm):
  model = bn_fig1.make_model(norm)
  rng = np.random.default_rng(0)
  x = rng.random((32, 64)).astype(np.float32)
  variables = _variables(norm, rng)
  got = np.asarray(jax.jit(lambda v, x: bn_fig1.sigmoid_input(model, v, x))(variables, x))
  np.testing.assert_allclose(got, _reference_sigmoid_input(variables, x, norm), rtol=1e-4,
                             atol=1e-4)
  # Through the sigmoid and the classifier, the captured values give the logits.
  logits, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
  head = variables["params"]["Dense_3"]
  np.testing.assert_allclose(_sigmoid(got) @ head["kernel"] + head["bias"],
                             np.asarray(logits), atol=1e-4)


# --------------------------------------------------------------------------- decide


def _numbers(**overrides):
  numbers = dict(target=[0.95, 0.96, 0.95, 0.94, 0.96],
                 steps_no_bn=[4000, 4500, 5000, 4200, 3900],
                 steps_bn=[400, 500, 450, 600, 350],
                 drift_no_bn=[3.0, 2.5, 4.0, 3.2, 2.8],
                 drift_bn=[0.3, 0.4, 0.35, 0.5, 0.3])
  numbers.update(overrides)
  return numbers


def test_decide_holds():
  speed, drift = bn_fig1.decide(_numbers())
  assert (speed.verdict, drift.verdict) == (HOLDS, HOLDS)
  assert "fewer steps" in speed.ours and "x" in drift.ours
  assert speed.checks[-1].passed is True


def test_decide_does_not_hold():
  speed, drift = bn_fig1.decide(_numbers(steps_bn=[3000, 3500, 4000, 3100, 3000],
                                         drift_bn=[2.9, 2.4, 4.2, 3.0, 2.7]))
  assert (speed.verdict, drift.verdict) == (DOES_NOT_HOLD, DOES_NOT_HOLD)
  assert speed.checks[-1].passed is False and drift.checks[-1].passed is False


def test_decide_inconclusive_when_the_interval_straddles_the_threshold():
  speed, drift = bn_fig1.decide(_numbers(steps_bn=[800, 4000, 1000, 5000, 1300],
                                         drift_bn=[0.3, 2.5, 1.0, 3.0, 0.8]))
  assert (speed.verdict, drift.verdict) == (INCONCLUSIVE, INCONCLUSIVE)
  assert speed.checks[-1].passed is None


def test_decide_bn_never_reaching_the_target():
  most = bn_fig1.decide(_numbers(steps_bn=[math.inf, math.inf, math.inf, 400, 500]))[0]
  assert most.verdict == DOES_NOT_HOLD and "3 of 5" in most.reason
  one = bn_fig1.decide(_numbers(steps_bn=[math.inf, 400, 450, 400, 500]))[0]
  assert one.verdict == INCONCLUSIVE


def test_decide_no_bn_that_did_not_learn_is_inconclusive():
  speed = bn_fig1.decide(_numbers(target=[0.11, 0.12, 0.1, 0.13, 0.1]))[0]
  assert speed.verdict == INCONCLUSIVE and "chance" in speed.reason


def test_decide_zero_drift_is_inconclusive():
  assert bn_fig1.decide(_numbers(drift_bn=[0.0, 0.4, 0.35, 0.5, 0.3]))[1].verdict == (
      INCONCLUSIVE)


def test_spec_states_the_thresholds():
  assert f"{bn_fig1.SPEEDUP_THRESHOLD:g}x" in bn_fig1.SPEC.criterion
  assert os.path.basename(bn_fig1.__file__) == "bn_fig1.py"


def test_docstring_examples_run():
  assert doctest.testmod(bn_fig1).failed == 0
