"""mc-dropout: the quick run's outputs and invariants, the MC passes, and the verdicts."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnorm import training

from experiments import mc_dropout
from experiments import results as results_lib
from experiments.data import Dataset
from experiments.spec import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, RunContext

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SEEDS = 2


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("mc_dropout"))
  ctx = RunContext(out_dir=out, quick=True, seeds=SEEDS)
  outcome = mc_dropout.run(ctx)
  payload = results_lib.write_outcome(mc_dropout.SPEC, ctx, outcome, wall_seconds=1.0)
  return out, outcome, payload


def test_quick_run_writes_results_table_and_figures(quick_run):
  out, outcome, payload = quick_run
  with open(os.path.join(out, "results.json"), encoding="utf-8") as handle:
    assert json.load(handle) == payload
  assert payload["verdict"] in (HOLDS, DOES_NOT_HOLD, INCONCLUSIVE)
  assert len(payload["verdicts"]) == 2 + len(mc_dropout.OOD_SCORES)
  assert len(outcome.figures) == 3
  for figure in outcome.figures:
    with open(os.path.join(out, figure), "rb") as handle:
      assert handle.read(8) == PNG_MAGIC
  assert outcome.table.count("\n") == 7  # header, rule, six rows
  with open(os.path.join(out, "table.md"), encoding="utf-8") as handle:
    assert outcome.table in handle.read()
  assert any(note.startswith("Mean top-class confidence minus accuracy")
             for note in outcome.notes)


def test_quick_run_numbers_are_per_seed_and_in_range(quick_run):
  _, outcome, payload = quick_run
  per_seed = outcome.per_seed
  for name in ("det_nll", "mc_nll", "det_ece", "mc_ece", "det_accuracy", "mc_accuracy",
               "auroc_det_entropy", "auroc_mc_entropy", "auroc_mc_mutual_information",
               "det_confidence_minus_accuracy", "mc_confidence_minus_accuracy"):
    values = np.asarray(per_seed[name])
    assert values.shape == (SEEDS,), name
    assert np.isfinite(values).all(), name
  for name in ("det_ece", "mc_ece", "det_accuracy", "mc_accuracy", "auroc_mc_entropy",
               "auroc_mc_mutual_information"):
    assert np.all((0 <= np.asarray(per_seed[name])) & (np.asarray(per_seed[name]) <= 1))
  assert np.all(np.asarray(per_seed["det_nll"]) > 0)
  diff = payload["summary"]["mc_minus_det_nll"]["mean"]
  assert diff == pytest.approx(np.mean(per_seed["mc_nll"]) - np.mean(per_seed["det_nll"]))
  bins = per_seed["reliability_bins"]["mc"]
  assert len(bins["count"]) == SEEDS and len(bins["edges"]) == mc_dropout.NUM_BINS + 1
  assert all(int(np.sum(c)) == payload["config"]["examples"]["test"] for c in bins["count"])
  examples = payload["config"]["examples"]
  assert examples["ood_test_in"] + examples["ood_test_out"] == examples["test"]


# --------------------------------------------------------------------------- MC passes


def _tiny_data(num_classes=3, n=40, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, 40)).astype(np.float32)
  y = rng.integers(0, num_classes, n).astype(np.int32)
  return Dataset("tiny", x, y, x[:10], y[:10], num_classes)


@pytest.fixture(scope="module")
def tiny_prediction():
  """Predictions of two freshly initialized nets (stacked as train_population does)."""
  data = _tiny_data()
  model, tx = mc_dropout.make_model(data.num_classes), optax.sgd(0.0)

  def state(seed):
    variables = model.init(jax.random.key(seed), data.x_train[:2], train=False)
    return training.TrainState.create(apply_fn=model.apply, params=variables["params"],
                                      batch_stats=None, tx=tx,
                                      rng=jax.random.key(seed))

  states = jax.tree.map(lambda *leaves: jnp.stack(leaves), state(0), state(1))
  return data, mc_dropout.predict(states, [0, 1], data.x_test)


def test_log_space_passes_are_the_mc_dropout_predict_passes(tiny_prediction):
  """The NLL's log-space mean is the mean of mc_dropout_predict's own passes."""
  _, pred = tiny_prediction
  np.testing.assert_allclose(np.exp(pred["mc_log_probs"]), pred["mc_probs"], atol=1e-5)
  # Dropout is really on: MC differs from the deterministic pass and MI is positive.
  assert np.abs(pred["mc_probs"] - pred["det_probs"]).max() > 1e-3
  assert np.all(pred["mc_mutual_information"] > 0)


def test_entropy_and_mutual_information_match_numpy(tiny_prediction):
  _, pred = tiny_prediction
  p = pred["mc_probs"].astype(np.float64)
  np.testing.assert_allclose(pred["mc_entropy"], -np.sum(p * np.log(p), -1), atol=1e-5)
  d = pred["det_probs"].astype(np.float64)
  np.testing.assert_allclose(pred["det_entropy"], -np.sum(d * np.log(d), -1), atol=1e-5)
  assert np.all(pred["mc_mutual_information"] <= pred["mc_entropy"] + 1e-6)


def test_subset_splits_seen_and_unseen_classes():
  data = _tiny_data(num_classes=10, n=200)
  inside, x_out, y_out = mc_dropout.subset(data, (0, 1, 2, 3, 4))
  assert inside.num_classes == 5 and set(np.unique(inside.y_train)) <= set(range(5))
  assert set(np.unique(y_out)) <= set(range(5, 10))
  assert len(inside.x_test) + len(x_out) == len(data.x_test)


# --------------------------------------------------------------------------- verdicts


def _numbers(nll_shift=-0.05, ece_shift=-0.02, auroc_entropy=0.70, auroc_mi=0.65,
             noise=(0.004, -0.003, 0.002, -0.004, 0.001)):
  noise = np.asarray(noise)
  det_nll = np.array([1.0, 1.1, 0.95, 1.05, 1.02])[:len(noise)]
  det_ece = np.array([0.08, 0.09, 0.07, 0.085, 0.075])[:len(noise)]
  return {"det_nll": list(det_nll), "mc_nll": list(det_nll + nll_shift + noise),
          "det_ece": list(det_ece), "mc_ece": list(det_ece + ece_shift + noise / 4),
          "auroc_mc_entropy": list(auroc_entropy + noise),
          "auroc_mc_mutual_information": list(auroc_mi + noise)}


def test_clear_improvements_hold():
  verdicts = mc_dropout.decide(_numbers())
  assert [v.verdict for v in verdicts] == [HOLDS] * 4
  assert "MC - det = -0.0500 nats" in verdicts[0].reason
  assert "MC - det = -2.0000 %" in verdicts[1].reason
  assert "= 0.700" in verdicts[2].reason


def test_mc_worse_does_not_hold():
  verdicts = mc_dropout.decide(_numbers(nll_shift=+0.05, ece_shift=+0.02))
  assert [v.verdict for v in verdicts[:2]] == [DOES_NOT_HOLD] * 2
  assert "MC higher" in verdicts[0].reason


def test_auroc_below_chance_does_not_hold_and_near_chance_is_inconclusive():
  verdicts = mc_dropout.decide(_numbers(auroc_entropy=0.40, auroc_mi=0.5))
  assert verdicts[2].verdict == DOES_NOT_HOLD and "below 0.5" in verdicts[2].reason
  assert verdicts[3].verdict == INCONCLUSIVE and "contains 0.5" in verdicts[3].reason


def test_noisy_differences_are_inconclusive():
  verdicts = mc_dropout.decide(_numbers(nll_shift=0.0, ece_shift=0.0,
                                        noise=(0.03, -0.02, 0.025, -0.03, 0.0)))
  assert [v.verdict for v in verdicts[:2]] == [INCONCLUSIVE] * 2


def test_one_seed_is_inconclusive():
  verdicts = mc_dropout.decide(_numbers(noise=(0.0,)))
  assert {v.verdict for v in verdicts} == {INCONCLUSIVE}
  assert all(c.passed is None for v in verdicts for c in v.checks)
