"""mnist1d-baselines: the quick path end to end, and the verdict rule on known numbers."""

import os

import numpy as np
import pytest

from experiments import mnist1d_baselines as exp
from experiments import results as results_lib
from experiments.spec import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, VERDICTS, RunContext


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("mnist1d-baselines"))
  ctx = RunContext(out_dir=out, quick=True, seeds=2)
  outcome = exp.run(ctx)
  payload = results_lib.write_outcome(exp.SPEC, ctx, outcome, wall_seconds=0.0)
  return out, outcome, payload


def test_quick_run_writes_results_table_and_figures(quick_run):
  out, outcome, payload = quick_run
  on_disk = results_lib.read_results(out)
  assert on_disk == payload
  assert on_disk["experiment"] == exp.NAME and on_disk["quick"] is True
  assert on_disk["verdict"] in VERDICTS
  assert [v["claim"].split(" without")[0] for v in on_disk["verdicts"]] == [
      "logistic regression", "MLP", "CNN"]
  for figure in outcome.figures:
    with open(os.path.join(out, figure), "rb") as handle:
      assert handle.read(4) == b"\x89PNG"
  assert os.path.isfile(os.path.join(out, results_lib.TABLE_FILE))


def test_quick_run_numbers_are_consistent(quick_run):
  _, outcome, payload = quick_run
  # A quick run trains the plain and dropout variants of the quick models.
  for kind in exp.QUICK_MODELS:
    for variant in ("none", "dropout"):
      runs = outcome.per_seed[f"{kind}/{variant}"]
      assert len(runs["test_accuracy"]) == 2
      assert np.all((runs["test_accuracy"] >= 0) & (runs["test_accuracy"] <= 1))
      np.testing.assert_array_equal(runs["test_accuracy"],
                                    runs["test_accuracy_curve"][:, -1])
      assert payload["summary"][f"{kind}/{variant}/test_accuracy"]["n"] == 2
    assert f"{kind}/dropout/minus_plain" in payload["summary"]
    assert exp.MODEL_LABELS[kind] in outcome.table
  assert payload["config"]["steps"] == {k: exp.QUICK_STEPS for k in exp.QUICK_MODELS}
  assert set(payload["config"]["timing"]) == {f"{k}/none" for k in exp.QUICK_MODELS}


def _final(logistic, mlp, cnn):
  base = {"gru": {"none": [0.9, 0.9]}}
  return {"logistic": {"none": logistic}, "mlp": {"none": mlp}, "cnn": {"none": cnn}, **base}


def test_decide_holds_within_three_points():
  verdicts = exp.decide(_final([0.30, 0.31, 0.33], [0.70, 0.70, 0.71], [0.92, 0.93, 0.91]))
  assert [v.verdict for v in verdicts] == [HOLDS, HOLDS, HOLDS]
  assert "MLP: 70.3%" in verdicts[1].reason


def test_decide_fails_outside_three_points_either_way():
  verdicts = exp.decide(_final([0.36, 0.355, 0.36], [0.64, 0.645, 0.64], [0.94, 0.94, 0.94]))
  assert [v.verdict for v in verdicts] == [DOES_NOT_HOLD, DOES_NOT_HOLD, HOLDS]
  assert verdicts[0].checks[0].value == pytest.approx(3.83, abs=0.01)


def test_decide_is_inconclusive_when_a_seed_diverged():
  verdicts = exp.decide(_final([0.32, np.nan], [0.68, 0.68], [0.94, 0.94]))
  assert verdicts[0].verdict == INCONCLUSIVE and verdicts[0].checks[0].passed is None
  assert "1 of 2 seeds" in verdicts[0].reason


def test_programs_share_plain_and_dropout_runs():
  full = list(exp.programs(quick=False))
  assert len(full) == 12
  trained = [v for _, _, variants in full for v in variants]
  assert sorted(trained) == sorted(exp.VARIANTS * len(exp.MODELS))
  assert list(exp.programs(quick=True)) == [(k, "none", ("none", "dropout"))
                                             for k in exp.QUICK_MODELS]
