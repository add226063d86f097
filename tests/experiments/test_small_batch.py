"""small-batch: the quick run's outputs, the models and schedules, and the verdicts."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from experiments import results as results_lib
from experiments import small_batch
from experiments.spec import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, RunContext

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("small_batch"))
  ctx = RunContext(out_dir=out, quick=True, seeds=2)
  outcome = small_batch.run(ctx)
  payload = results_lib.write_outcome(small_batch.SPEC, ctx, outcome, wall_seconds=1.0)
  return out, outcome, payload


def test_quick_run_writes_results_table_and_figures(quick_run):
  out, outcome, payload = quick_run
  with open(os.path.join(out, "results.json"), encoding="utf-8") as handle:
    assert json.load(handle) == payload
  assert len(payload["verdicts"]) == 4
  assert all(v["verdict"] in (HOLDS, DOES_NOT_HOLD, INCONCLUSIVE) for v in payload["verdicts"])
  for figure in outcome.figures:
    with open(os.path.join(out, figure), "rb") as handle:
      assert handle.read(8) == PNG_MAGIC
  # header, rule, one row per condition of the quick run
  assert outcome.table.count("\n") == len(small_batch.QUICK_CONDITIONS) + 1


def test_quick_run_errors_per_condition_batch_and_seed(quick_run):
  _, outcome, payload = quick_run
  errors = outcome.per_seed["test_error_percent"]
  assert list(errors) == list(small_batch.QUICK_CONDITIONS)
  for condition, runs in errors.items():
    assert list(runs) == [str(b) for b in small_batch.QUICK_BATCHES], condition
    for values in runs.values():
      assert len(values) == 2 and all(0.0 <= v <= 100.0 for v in values)
  # precise-BN evaluates the BN runs' own weights: only the statistics differ, so the
  # two are different numbers from the same networks (and the same seeds).
  assert payload["summary"]["BN"]["2"]["n"] == payload["summary"]["BN, precise-BN eval"][
      "2"]["n"] == 2


# --------------------------------------------------------------------------- models


def test_models_per_condition_and_ghost_statistics_use_the_small_batch():
  x = np.random.default_rng(0).normal(size=(8, 40)).astype(np.float32)
  names = {"BN": "BatchNorm_0", "GN": "GroupNorm_0", "LN": "LayerNorm_0",
           "batch renorm": "BatchRenorm_0", "ghost BN": "GhostBatchNorm_0"}
  for condition, layer in names.items():
    variables = small_batch.make_model(condition, 4, 100).init(jax.random.key(0), x,
                                                               train=False)
    assert layer in variables["params"], condition
    assert variables["params"][layer]["scale"].shape == (25,), condition
  assert small_batch.make_model("ghost BN", 4, 100).norm_options == (
      ("virtual_batch_size", 4),)
  assert small_batch.optimization_batch("ghost BN", 4) == 32
  assert small_batch.optimization_batch("BN", 4) == 4
  with pytest.raises(ValueError, match="condition must be one of"):
    small_batch.make_model("instance", 4, 100)


def test_renorm_schedule_starts_as_batch_norm_and_reaches_its_limits():
  r_max, d_max = small_batch.renorm_limits(2000)
  warm = int(small_batch.RENORM_WARMUP * 2000)
  end = int(small_batch.RENORM_RAMP_END * 2000)
  assert float(r_max(0)) == float(r_max(warm)) == 1.0
  assert float(d_max(warm)) == 0.0
  assert 1.0 < float(r_max((warm + end) // 2)) < small_batch.R_MAX
  assert float(r_max(end)) == small_batch.R_MAX and float(d_max(2000)) == small_batch.D_MAX


def test_plan_trains_each_condition_at_each_batch_once():
  runs = small_batch.plan(quick=False)
  assert len(runs) == len(set(runs))
  conditions = {r.condition for r in runs}
  assert "BN, precise-BN eval" not in conditions  # evaluated from the BN runs
  assert small_batch.Run("ghost BN", 32) not in runs  # that is BN at 32
  assert len(runs) == 5 * len(small_batch.BATCHES) - 1


# --------------------------------------------------------------------------- verdicts


def _errors(bn2=40.0, gn2=30.0, ln2=32.0, brn4=28.0, brn2=33.0, jitter=0.5):
  """Synthetic per-seed errors (%): 5 seeds spread by ``jitter`` around each mean."""
  offsets = np.array([-2, -1, 0, 1, 2]) * jitter
  runs = lambda mean: list(mean + offsets)  # noqa: E731
  return {"BN": {32: runs(25.0), 4: runs(30.0), 2: runs(bn2)},
          "GN": {32: runs(30.0), 2: runs(gn2)},
          "LN": {32: runs(31.0), 2: runs(ln2)},
          "batch renorm": {32: runs(25.0), 4: runs(brn4), 2: runs(brn2)}}


def test_decide_holds_on_the_papers_pattern():
  verdicts = small_batch.decide(_errors())
  assert [v.verdict for v in verdicts] == [HOLDS] * 4
  assert "rise +15.0 points" in verdicts[0].reason


def test_decide_does_not_hold_when_bn_is_flat_and_gn_degrades():
  verdicts = small_batch.decide(_errors(bn2=25.3, gn2=36.0, ln2=31.5, brn4=31.0,
                                        brn2=42.0))
  assert [v.verdict for v in verdicts] == [DOES_NOT_HOLD, DOES_NOT_HOLD, HOLDS,
                                           DOES_NOT_HOLD]


def test_decide_inconclusive_cases():
  # BN's rise between one and two spreads (spread = std of 5 evenly spread seeds).
  spread = float(np.std(np.array([-2, -1, 0, 1, 2]) * 2.0, ddof=1))
  verdicts = small_batch.decide(_errors(bn2=25.0 + 1.5 * spread, jitter=2.0))
  assert verdicts[0].verdict == INCONCLUSIVE
  # Batch renorm better at 4, worse (not significantly) at 2.
  errors = _errors(brn4=29.0)
  errors["batch renorm"][2] = [39.0, 42.0, 40.5, 41.0, 39.5]
  assert small_batch.decide(errors)[3].verdict == INCONCLUSIVE
  # Missing batch sizes (a quick run) never give a verdict.
  partial = {"BN": {2: [80.0, 82.0]}, "batch renorm": {2: [79.0, 81.0]}}
  assert small_batch.decide(partial)[0].verdict == INCONCLUSIVE
  assert small_batch.decide(partial)[1].verdict == INCONCLUSIVE
