"""variance-shift: the quick run's outputs and invariants, and the verdicts on synthetic numbers."""

from __future__ import annotations

import copy
import doctest
import json
import os

import numpy as np
import pytest

from experiments import results as results_lib
from experiments import variance_shift as vs
from experiments.measures.variance_shift import shift_ratio
from experiments.spec import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, RunContext

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SEEDS = np.array([0.0, 0.01, -0.01])


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("variance_shift"))
  ctx = RunContext(out_dir=out, quick=True, seeds=2)
  outcome = vs.run(ctx)
  payload = results_lib.write_outcome(vs.SPEC, ctx, outcome, wall_seconds=1.0)
  return out, outcome, payload


def test_quick_run_writes_results_table_and_figures(quick_run):
  out, outcome, payload = quick_run
  with open(os.path.join(out, "results.json"), encoding="utf-8") as handle:
    assert json.load(handle) == payload
  assert [v["verdict"] in (HOLDS, DOES_NOT_HOLD, INCONCLUSIVE)
          for v in payload["verdicts"]] == [True] * 4
  assert len(outcome.figures) == 2
  for figure in outcome.figures:
    with open(os.path.join(out, figure), "rb") as handle:
      assert handle.read(8) == PNG_MAGIC
  # Synthetic table: header, rule, one row per distribution; trained table: + no dropout.
  assert outcome.table.count("| N(") == 3
  assert outcome.table.count("\n| 0.") == len(vs.QUICK_RATES)


def test_quick_run_per_seed_numbers_are_complete_and_in_range(quick_run):
  _, outcome, _ = quick_run
  accuracy = outcome.per_seed["test_accuracy"]
  assert len(accuracy["no dropout"]) == 2
  for placement in vs.PLACEMENTS:
    assert set(accuracy[placement]) == {f"{r:g}" for r in vs.QUICK_RATES}
    for runs in accuracy[placement].values():
      assert len(runs) == 2 and all(0.0 <= a <= 1.0 for a in runs)
  synthetic = outcome.per_seed["synthetic_ratio"]
  for name, by_rate in synthetic.items():
    mean, var = vs.DISTRIBUTIONS[name]
    for rate, runs in by_rate.items():
      # 2^18 samples: far inside 5% of the closed form (an independent float64 formula).
      assert np.allclose(runs, shift_ratio(1 - float(rate), mean, var), rtol=0.05)
  ratios = outcome.per_seed["eval_over_running_variance"]
  for by_layer in ratios.values():
    for by_rate in by_layer.values():
      assert all(np.all(np.asarray(v) > 0) for v in by_rate.values())


def test_settings_route_each_rate_to_its_sites_only():
  names, grid = vs.settings([0.2])
  assert names == [("none", 0.0), ("before BN", 0.2), ("after BN", 0.2),
                   ("classifier only", 0.2)]
  np.testing.assert_allclose(grid["before_bn"], [0, 0.2, 0, 0])
  np.testing.assert_allclose(grid["after_relu"], [0, 0, 0.2, 0])
  np.testing.assert_allclose(grid["classifier"], [0, 0, 0, 0.2])


# --------------------------------------------------------------------------- decide


def _numbers():
  rates = [0.1, 0.5]
  exact = {n: np.repeat(shift_ratio(1 - np.array(rates), *vs.DISTRIBUTIONS[n])[:, None], 3, 1)
           for n in vs.DISTRIBUTIONS}
  return {"rates": rates, "synthetic": exact,
          "increase": np.full((2, 2, 3), 0.7) + SEEDS,
          "relative": np.full((2, 3), 1.0) + SEEDS,
          "accuracy": {"before BN": np.full((2, 3), 0.5) + SEEDS,
                       "after BN": np.full((2, 3), 0.6) + SEEDS,
                       "classifier only": np.full((2, 3), 0.6) + SEEDS},
          "baseline": np.full(3, 0.6)}


def _verdicts(numbers):
  return [v.verdict for v in vs.decide(numbers)]


def test_decide_all_hold():
  assert _verdicts(_numbers()) == [HOLDS] * 4


def test_decide_synthetic_off_by_five_percent_does_not_hold():
  numbers = _numbers()
  numbers["synthetic"]["N(1, 1)"] = numbers["synthetic"]["N(1, 1)"] * 1.05
  assert _verdicts(numbers)[0] == DOES_NOT_HOLD


def test_decide_synthetic_one_seed_off_but_mean_within_is_inconclusive():
  numbers = _numbers()
  numbers["synthetic"]["N(0, 1)"] = numbers["synthetic"]["N(0, 1)"] * np.array(
      [1.03, 0.99, 0.99])
  assert _verdicts(numbers)[0] == INCONCLUSIVE


def test_decide_no_increase_in_training_variance():
  numbers = _numbers()
  numbers["increase"] = np.full((2, 2, 3), 1.1) + SEEDS
  assert _verdicts(numbers)[1] == DOES_NOT_HOLD
  numbers["increase"] = np.full((2, 2, 3), 0.99) + np.array([0.0, 0.1, -0.1])
  assert _verdicts(numbers)[1] == INCONCLUSIVE


def test_decide_prediction_outside_or_straddling_the_tolerance():
  numbers = _numbers()
  numbers["relative"] = np.full((2, 3), 1.3) + SEEDS
  assert _verdicts(numbers)[2] == DOES_NOT_HOLD
  numbers["relative"] = np.full((2, 3), 1.08) + np.array([0.0, 0.05, -0.05])
  assert _verdicts(numbers)[2] == INCONCLUSIVE


def test_decide_placement_absent_or_undecided():
  numbers = _numbers()
  numbers["accuracy"]["after BN"] = np.full((2, 3), 0.501) + SEEDS
  assert _verdicts(numbers)[3] == DOES_NOT_HOLD
  numbers = copy.deepcopy(_numbers())
  numbers["accuracy"]["after BN"] = np.full((2, 3), 0.52) + np.array([0.0, 0.1, -0.1])
  assert _verdicts(numbers)[3] == INCONCLUSIVE


def test_verdict_reasons_carry_the_numbers():
  verdicts = vs.decide(_numbers())
  assert "0.70" in verdicts[1].reason or "0.700" in verdicts[1].reason
  assert "+10.00 points" in verdicts[3].reason
  assert all(v.checks for v in verdicts)


def test_docstring_examples_run():
  result = doctest.testmod(vs, optionflags=doctest.NORMALIZE_WHITESPACE)
  assert result.attempted > 0 and result.failed == 0
