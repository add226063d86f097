"""freeze-bn: the quick run's outputs, the data split, the frozen model, the verdicts."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from experiments import freeze_bn
from experiments import results as results_lib
from experiments.data import Dataset
from experiments.spec import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, RunContext

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("freeze_bn"))
  ctx = RunContext(out_dir=out, quick=True, seeds=2)
  outcome = freeze_bn.run(ctx)
  payload = results_lib.write_outcome(freeze_bn.SPEC, ctx, outcome, wall_seconds=1.0)
  return out, outcome, payload


def test_quick_run_writes_results_table_and_figures(quick_run):
  out, outcome, payload = quick_run
  with open(os.path.join(out, "results.json"), encoding="utf-8") as handle:
    assert json.load(handle) == payload
  assert [v["verdict"] in (HOLDS, DOES_NOT_HOLD, INCONCLUSIVE)
          for v in payload["verdicts"]] == [True, True]
  for figure in outcome.figures:
    with open(os.path.join(out, figure), "rb") as handle:
      assert handle.read(8) == PNG_MAGIC
  rows = len(freeze_bn.DOMAINS) * len(freeze_bn.MODES)
  assert outcome.table.count("\n") == rows + 1


def test_quick_run_numbers_per_domain_mode_and_seed(quick_run):
  _, outcome, payload = quick_run
  accuracy = outcome.per_seed["test_accuracy_percent"]
  assert list(accuracy) == list(freeze_bn.DOMAINS)
  for by_mode in accuracy.values():
    assert list(by_mode) == ["BN updating", "BN frozen", "frozen + precise-BN"]
    for values in by_mode.values():
      assert len(values) == 2 and all(0.0 <= v <= 100.0 for v in values)
  for by_mode in outcome.per_seed["fluctuation_points"].values():
    assert all(v >= 0.0 for values in by_mode.values() for v in values)
  assert len(outcome.per_seed["pretrain_accuracy_classes_0_4"]) == 2
  same = payload["summary"]["same domain"]
  assert same["frozen_minus_updating"]["mean"] == pytest.approx(
      same["BN frozen"]["mean"] - same["BN updating"]["mean"], abs=1e-9)


# --------------------------------------------------------------------------- pieces


def test_subsets_split_classes_and_keep_a_small_target_set():
  rng = np.random.default_rng(0)
  y_train, y_test = np.tile(np.arange(10), 30), np.tile(np.arange(10), 5)
  data = Dataset("toy", rng.normal(size=(300, 40)).astype(np.float32), y_train,
                 rng.normal(size=(50, 40)).astype(np.float32), y_test, 10)
  source, target = freeze_bn.subsets(data)
  assert set(source.y_train) == set(source.y_test) == set(freeze_bn.SOURCE_CLASSES)
  assert set(target.y_train) == set(target.y_test) == set(freeze_bn.TARGET_CLASSES)
  assert len(target.x_train) == freeze_bn.PER_CLASS * 5 and len(target.x_test) == 25
  assert len(source.x_train) == 150


def test_frozen_model_normalizes_with_running_statistics_in_training():
  """Frozen: the training-mode output equals the evaluation-mode output and no running
  statistic moves; updating: the batch statistics normalize and the running ones move."""
  x = np.random.default_rng(1).normal(size=(4, 40)).astype(np.float32) * 3 + 2
  variables = freeze_bn.DomainCNN().init(jax.random.key(0), x, train=False)
  for freeze in (True, False):
    model = freeze_bn.DomainCNN(freeze=freeze)
    train_out, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    eval_out = model.apply(variables, x, train=False)
    moved = any(not np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(updates["batch_stats"]), jax.tree.leaves(variables["batch_stats"])))
    assert np.allclose(train_out, eval_out, atol=1e-5) == freeze
    assert moved != freeze
  shifted = freeze_bn.DomainCNN().apply(variables, x, train=False, input_scale=2.0,
                                        input_offset=1.0)
  np.testing.assert_allclose(shifted, freeze_bn.DomainCNN().apply(
      variables, 2.0 * x + 1.0, train=False), rtol=1e-5, atol=1e-5)


def test_fluctuation_is_the_residual_std_around_a_line_over_the_second_half():
  rng = np.random.default_rng(3)
  curves = rng.normal(size=(2, 3, 21)) * 4 + np.linspace(0, 60, 21)
  got = freeze_bn.fluctuation_of(curves)
  assert got.shape == (2, 3)
  for i in range(2):
    for j in range(3):
      tail = curves[i, j, -10:]                      # 20 evaluations after step 0
      t = np.arange(10)
      residual = tail - np.polyval(np.polyfit(t, tail, 1), t)
      np.testing.assert_allclose(got[i, j], np.sqrt(np.sum(residual ** 2) / 8), rtol=1e-9)
  # A steady rise (however steep) is no fluctuation.
  np.testing.assert_allclose(freeze_bn.fluctuation_of(np.linspace(0, 90, 21)[None]), [0.0],
                             atol=1e-9)


# --------------------------------------------------------------------------- verdicts

SEEDS5 = np.array([-2, -1, 0, 1, 2], np.float64)


def _numbers(same_frozen, same_update, shifted_frozen, shifted_update, fl_frozen,
             fl_update, jitter=0.5):
  runs = lambda mean: list(mean + SEEDS5 * jitter)  # noqa: E731
  accuracy = {"same domain": {"BN updating": runs(same_update),
                              "BN frozen": runs(same_frozen)},
              "shifted domain": {"BN updating": runs(shifted_update),
                                 "BN frozen": runs(shifted_frozen)}}
  fluctuation = {d: {"BN updating": [fl_update] * 5, "BN frozen": [fl_frozen] * 5}
                 for d in freeze_bn.DOMAINS}
  return accuracy, fluctuation


def test_decide_holds_when_frozen_is_steadier_in_domain_and_worse_when_shifted():
  verdicts = freeze_bn.decide(*_numbers(80.0, 79.5, 60.0, 75.0, 1.0, 3.0))
  assert [v.verdict for v in verdicts] == [HOLDS, HOLDS]
  assert "ratio 0.33" in verdicts[0].reason


def test_decide_does_not_hold_when_frozen_is_worse_in_domain_and_fine_shifted():
  accuracy, fluctuation = _numbers(70.0, 80.0, 75.2, 75.0, 1.0, 3.0)
  accuracy["same domain"]["BN frozen"] = [69.0, 71.0, 70.5, 69.5, 70.0]
  verdicts = freeze_bn.decide(accuracy, fluctuation)
  assert [v.verdict for v in verdicts] == [DOES_NOT_HOLD, DOES_NOT_HOLD]
  # Not steadier (ratio >= 1) also fails part 1, even without an accuracy loss.
  assert freeze_bn.decide(*_numbers(80.0, 80.0, 60.0, 75.0, 3.0, 3.0))[0].verdict == (
      DOES_NOT_HOLD)


def test_decide_inconclusive_cases():
  # Ratio between 0.8 and 1; the shifted difference not significant.
  accuracy, fluctuation = _numbers(80.0, 80.0, 73.0, 75.0, 2.7, 3.0, jitter=0.5)
  accuracy["shifted domain"]["BN frozen"] = [68.0, 80.0, 70.0, 78.0, 69.0]
  verdicts = freeze_bn.decide(accuracy, fluctuation)
  assert [v.verdict for v in verdicts] == [INCONCLUSIVE, INCONCLUSIVE]
  # Every fine-tuning run at 0 fluctuation (e.g. stuck): the ratio is undefined.
  assert freeze_bn.decide(*_numbers(80.0, 80.0, 60.0, 75.0, 0.0, 0.0))[0].verdict == (
      INCONCLUSIVE)
