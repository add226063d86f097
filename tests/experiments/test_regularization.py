"""regularization: the quick run's outputs and invariants, and the verdicts on synthetic numbers."""

from __future__ import annotations

import doctest
import json
import os

import numpy as np
import pytest

from experiments import regularization as reg
from experiments import results as results_lib
from experiments.spec import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, RunContext

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SEEDS = np.array([0.0, 0.01, -0.01])
NOISE = np.array([0.0, 0.1, -0.1])


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("regularization"))
  ctx = RunContext(out_dir=out, quick=True, seeds=2)
  outcome = reg.run(ctx)
  payload = results_lib.write_outcome(reg.SPEC, ctx, outcome, wall_seconds=1.0)
  return out, outcome, payload


def test_quick_run_writes_results_table_and_figures(quick_run):
  out, outcome, payload = quick_run
  with open(os.path.join(out, "results.json"), encoding="utf-8") as handle:
    assert json.load(handle) == payload
  assert len(payload["verdicts"]) == 5
  assert all(v["verdict"] in (HOLDS, DOES_NOT_HOLD, INCONCLUSIVE) for v in payload["verdicts"])
  for figure in outcome.figures:
    with open(os.path.join(out, figure), "rb") as handle:
      assert handle.read(8) == PNG_MAGIC
  rows = len(reg.NORMS) * len(reg.QUICK_RATES)
  assert outcome.table.count("\n|") == rows + 2   # header, rule, one row per setting
  assert payload["config"]["train_subset"] == reg.TRAIN_SUBSET


def test_quick_run_covers_the_grid_with_accuracies_in_range(quick_run):
  _, outcome, payload = quick_run
  for kind in ("test_accuracy", "train_accuracy"):
    for norm in ("no BN", "BN"):
      grid = outcome.per_seed[kind][norm]
      assert set(grid) == {f"rate {r:g}" for r in reg.QUICK_RATES}
      for by_l2 in grid.values():
        assert set(by_l2) == {f"L2 {w:g}" for w in reg.QUICK_L2S}
        for runs in by_l2.values():
          assert len(runs) == 2 and all(0.0 <= a <= 1.0 for a in runs)
  # The gap summary is the difference of the per-seed accuracies.
  train = np.asarray(outcome.per_seed["train_accuracy"]["BN"]["rate 0"]["L2 0"])
  test = np.asarray(outcome.per_seed["test_accuracy"]["BN"]["rate 0"]["L2 0"])
  assert payload["summary"]["gap"]["BN"]["rate 0"]["L2 0"]["mean"] == pytest.approx(
      float(np.mean(train - test)))


def test_l2_reaches_the_kernels_but_spares_biases_and_norm_parameters():
  tx = reg._sgd_with_l2(learning_rate=1.0, weight_decay=0.5)  # pylint: disable=protected-access
  params = {"Dense_0": {"kernel": np.ones((2, 2), np.float32), "bias": np.ones(2, np.float32)},
            "BatchNorm_0": {"scale": np.ones(2, np.float32), "bias": np.ones(2, np.float32)}}
  zeros = {k: {n: np.zeros_like(v) for n, v in layer.items()} for k, layer in params.items()}
  updates, _ = tx.update(zeros, tx.init(params), params)
  np.testing.assert_allclose(updates["Dense_0"]["kernel"], -0.5)
  for leaf in (updates["Dense_0"]["bias"], updates["BatchNorm_0"]["scale"],
               updates["BatchNorm_0"]["bias"]):
    np.testing.assert_allclose(leaf, 0.0)


# --------------------------------------------------------------------------- decide
# Grids (rates 0, 0.5, 0.9) x (L2 0, 0.01) x 3 seeds.


def _numbers():
  train = np.array([[1.0, 0.8], [0.9, 0.75], [0.5, 0.5]])[..., None] + SEEDS
  test = np.array([[0.4, 0.45], [0.5, 0.45], [0.35, 0.3]])[..., None] + SEEDS
  bn_test = np.array([[0.5, 0.5], [0.49, 0.48], [0.3, 0.3]])[..., None] + SEEDS
  return {"rates": [0.0, 0.5, 0.9], "l2": [0.0, 1e-2],
          "train": {"none": train, "batch": train.copy()},
          "test": {"none": test, "batch": bn_test}}


def _verdicts(numbers):
  return [v.verdict for v in reg.decide(numbers)]


def test_decide_all_hold():
  assert _verdicts(_numbers()) == [HOLDS] * 5


def test_decide_dropout_and_l2_leave_the_gap():
  numbers = _numbers()
  test = numbers["test"]["none"]
  numbers["train"]["none"] = test + 0.3          # the same gap everywhere
  verdicts = _verdicts(numbers)
  assert verdicts[0] == DOES_NOT_HOLD and verdicts[1] == DOES_NOT_HOLD
  noisy = _numbers()   # gap 0.6 without dropout, 0.55 +- 0.03 with it: interval spans 0
  noisy["train"]["none"][1, 0] = noisy["test"]["none"][1, 0] + 0.55 + 0.3 * NOISE
  assert _verdicts(noisy)[0] == INCONCLUSIVE


def test_decide_high_rate_that_still_fits_does_not_underfit():
  numbers = _numbers()
  numbers["train"]["none"][2] = numbers["train"]["none"][1]
  assert _verdicts(numbers)[2] == DOES_NOT_HOLD


def test_decide_best_rate_zero_without_bn_cannot_be_lowered():
  numbers = _numbers()
  numbers["test"]["none"][0] += 0.2
  assert _verdicts(numbers)[3] == DOES_NOT_HOLD


def test_decide_bn_preferring_a_higher_rate_does_not_hold():
  numbers = _numbers()
  numbers["test"]["batch"][1] += 0.1              # BN best at 0.5 = no-BN best, beats 0
  assert _verdicts(numbers)[3] == DOES_NOT_HOLD


def test_decide_bn_lower_rate_within_noise_is_inconclusive():
  numbers = _numbers()
  numbers["test"]["batch"][0, 0] = numbers["test"]["batch"][1, 0] + 0.01 + NOISE
  assert _verdicts(numbers)[3] == INCONCLUSIVE


def test_decide_dropout_adding_the_same_with_bn_does_not_hold():
  numbers = _numbers()
  numbers["test"]["batch"] = numbers["test"]["none"].copy()
  numbers["train"]["batch"] = numbers["train"]["none"].copy()
  assert _verdicts(numbers)[4] == DOES_NOT_HOLD


def test_decide_needs_the_rates_of_the_criterion():
  numbers = _numbers()
  numbers["rates"] = [0.0, 0.4, 0.9]
  with pytest.raises(ValueError, match="lacks 0.5"):
    reg.decide(numbers)


def test_docstring_examples_run():
  result = doctest.testmod(reg, optionflags=doctest.NORMALIZE_WHITESPACE)
  assert result.attempted > 0 and result.failed == 0
