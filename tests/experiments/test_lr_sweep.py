"""lr-sweep: the quick path end to end and the verdict rules on synthetic accuracies."""

from __future__ import annotations

import doctest
import json

import numpy as np
import pytest

from experiments import lr_sweep, results
from experiments.spec import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, VERDICTS, RunContext

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SEEDS = 2
LRS = np.asarray(lr_sweep.LEARNING_RATES)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("lr-sweep")
  ctx = RunContext(out_dir=str(out), quick=True, seeds=SEEDS)
  outcome = lr_sweep.run(ctx)
  payload = results.write_outcome(lr_sweep.SPEC, ctx, outcome, wall_seconds=1.0)
  return out, outcome, payload


def test_quick_run_writes_results_table_and_figure(quick_run):
  out, outcome, payload = quick_run
  on_disk = json.loads((out / results.RESULTS_FILE).read_text(encoding="utf-8"))
  assert on_disk == payload
  assert payload["verdict"] in VERDICTS and payload["quick"] is True
  assert [v.claim.split(":")[0] for v in outcome.verdicts] == list(lr_sweep.QUICK_MODELS)
  assert all(v.verdict in VERDICTS for v in outcome.verdicts)
  assert (out / "accuracy_vs_lr.png").read_bytes()[:8] == PNG_MAGIC
  table = (out / results.TABLE_FILE).read_text(encoding="utf-8")
  assert table.count("\n| ") == len(LRS) + 2  # header, one row per lr, eta_max


def test_quick_run_numbers_are_consistent(quick_run):
  _, outcome, _ = quick_run
  for model in lr_sweep.QUICK_MODELS:
    for label in lr_sweep.VARIANTS:
      run = outcome.per_seed[model][label]
      accuracy = np.asarray(run["accuracy"])
      assert accuracy.shape == (len(LRS), SEEDS)
      assert np.all((accuracy >= 0) & (accuracy <= 1))
      # The divergence flags follow from the recorded losses and skipped steps.
      skipped = np.asarray(run["skipped_steps"])
      initial = np.asarray(run["initial_loss"], np.float64)
      final = np.asarray([[np.inf if v is None else v for v in row]
                          for row in np.asarray(run["final_loss"], object).tolist()])
      expected = (skipped > 0) | ~np.isfinite(final) | (final > initial)
      np.testing.assert_array_equal(np.asarray(run["diverged"]), expected)
      np.testing.assert_array_equal(np.asarray(run["at_chance"]),
                                    accuracy < 0.1 + lr_sweep.CHANCE_MARGIN)
      # Before training every net is near chance: loss close to log(10).
      assert np.all(np.abs(initial - np.log(10)) < 1.0)
      eta = outcome.summary[model][label]["eta_max"]
      assert eta["low"] <= eta["point"] <= eta["high"]
      assert eta["point"] in LRS


# --------------------------------------------------------------------------- decide


def _curve(last_good_index, best=0.8, seeds=5, spread=0.002, drop=0.3):
  """Accuracy that is ``best`` up to ``last_good_index`` and ``best - drop`` after."""
  rng = np.random.default_rng(last_good_index)
  means = np.where(np.arange(len(LRS)) <= last_good_index, best, best - drop)
  return means[:, None] + spread * rng.standard_normal((len(LRS), seeds))


def _decide(no_bn, bn):
  return lr_sweep.decide({"net": {"learning_rates": LRS, "no BN": no_bn, "BN": bn}})[0]


def test_decide_holds_when_bn_tolerates_two_more_grid_points():
  verdict = _decide(_curve(6), _curve(8))   # 0.1 vs 0.464: 4.64x
  assert verdict.verdict == HOLDS
  assert verdict.checks[0].value == pytest.approx(LRS[8] / LRS[6], rel=1e-3)


def test_decide_does_not_hold_for_the_same_range():
  assert _decide(_curve(6), _curve(6)).verdict == DOES_NOT_HOLD
  assert _decide(_curve(6), _curve(7)).verdict == DOES_NOT_HOLD   # 2.15x


def test_decide_inconclusive_when_bn_reaches_the_top_of_the_grid():
  verdict = _decide(_curve(11), _curve(12))   # 4.64 vs 10: the grid ends
  assert verdict.verdict == INCONCLUSIVE and "top of the grid" in verdict.reason


def test_decide_inconclusive_when_seeds_disagree():
  no_bn, bn = _curve(4), _curve(6)          # means: 0.0215 vs 0.1, 4.64x
  assert _decide(no_bn, bn).verdict == HOLDS
  no_bn[5] = [0.80, 0.80, 0.40, 0.80, 0.80]  # mean 0.72 (out), upper 95% end in
  verdict = _decide(no_bn, bn)
  assert verdict.checks[0].value == pytest.approx(LRS[6] / LRS[4], rel=1e-3)
  assert verdict.checks[1].value == pytest.approx(LRS[6] / LRS[5], rel=1e-3)  # 2.15x
  assert verdict.verdict == INCONCLUSIVE


def test_lr_range_uses_interval_ends():
  acc = _curve(6)
  acc[7] = [0.80, 0.80, 0.50, 0.80, 0.80]
  r = lr_sweep.lr_range(LRS, acc)
  assert r["point"] == pytest.approx(LRS[6])
  assert r["high"] == pytest.approx(LRS[7])
  assert r["low"] <= r["point"]
  assert r["best"] == pytest.approx(0.8, abs=0.01)


def test_docstring_examples_run():
  assert doctest.testmod(lr_sweep).failed == 0
