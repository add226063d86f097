"""whitening: the quick path end to end, the model's layers, and the verdict rules."""

from __future__ import annotations

import doctest
import functools
import json
import math

import jax
import numpy as np
import pytest

from experiments import EXPERIMENTS, whitening, results
from experiments.spec import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, VERDICTS, RunContext

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SEEDS = 2


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("whitening")
  ctx = RunContext(out_dir=str(out), quick=True, seeds=SEEDS)
  outcome = whitening.run(ctx)
  payload = results.write_outcome(whitening.SPEC, ctx, outcome, wall_seconds=1.0)
  return out, outcome, payload


def test_registered_last():
  assert list(EXPERIMENTS)[-1] == whitening.NAME


def test_quick_run_writes_results_table_and_figures(quick_run):
  out, outcome, payload = quick_run
  on_disk = json.loads((out / results.RESULTS_FILE).read_text(encoding="utf-8"))
  assert on_disk == payload
  assert payload["claim"] == whitening.SPEC.claim
  assert payload["criterion"] == whitening.SPEC.criterion
  assert payload["verdict"] in VERDICTS and payload["quick"] is True
  assert len(outcome.verdicts) == 4
  assert all(v.verdict in VERDICTS for v in outcome.verdicts)
  assert outcome.figures == ["curves.png", "summary.png"]
  for figure in outcome.figures:
    assert (out / figure).read_bytes()[:8] == PNG_MAGIC
  table = (out / results.TABLE_FILE).read_text(encoding="utf-8")
  rows = len(whitening.QUICK_LEARNING_RATES) * len(whitening.VARIANTS)
  assert table.count("\n| ") == rows + 1 and "(verdict)" in table


def test_quick_run_numbers_are_consistent(quick_run):
  _, outcome, _ = quick_run
  per_seed = outcome.per_seed["verdict_lr"]
  lr = f"{outcome.summary['verdict_learning_rate']:g}"
  per_lr = outcome.per_seed["per_lr"][lr]
  for label in whitening.VARIANTS:
    accuracy = np.asarray(per_seed[label]["final"])
    assert accuracy.shape == (SEEDS,) and np.all((accuracy >= 0) & (accuracy <= 1))
    steps = np.asarray(per_seed[label]["steps"])
    assert np.all((steps > 0) & ((steps <= whitening.QUICK_STEPS) | np.isinf(steps)))
    for key in ("corr_within_groups", "corr_all_pairs"):
      corr = np.asarray(per_lr[label][key])
      assert np.all((corr >= 0) & (corr <= 1))
  # BN reaches its own final training loss: the mean of its last evaluations cannot lie
  # below all of them.
  assert np.all(np.isfinite(per_seed["BN"]["steps"]))


@functools.partial(jax.jit, static_argnums=0)
def _settle(model, params, stats, x):
  """500 training-mode passes on one batch: with momentum 0.99 the running statistics
  become (to 0.7%) those of the batch."""
  def body(_, stats):
    _, updates = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                             mutable=["batch_stats"])
    return updates["batch_stats"]
  return jax.lax.fori_loop(0, 500, body, stats)


def test_whitening_layers_decorrelate_within_groups():
  """After one training-mode pass, DBN's running whitening matrix whitens in groups."""
  rng = np.random.default_rng(0)
  x = (rng.normal(size=(512, 40)) @ rng.normal(size=(40, 40))).astype(np.float32)
  for norm in ("batch", "dbn"):
    model = whitening.WhitenedMLP(norm, hidden=(32, 16))
    variables = model.init(jax.random.key(0), x, train=False)

    stats = _settle(model, variables["params"], variables["batch_stats"], x)
    h = np.asarray(whitening.normalized_features(
        model, {"params": variables["params"], "batch_stats": stats}, x), np.float64)
    corr = np.corrcoef(h, rowvar=False)
    within = [abs(corr[j, k]) for j in range(32) for k in range(j + 1, 32)
              if j // 16 == k // 16]
    if norm == "dbn":
      assert np.mean(within) < 0.02
    else:
      assert np.mean(within) > 0.1  # BN leaves the correlations of the Dense outputs


# --------------------------------------------------------------------------- decide


def _row(steps, final, skipped=(0, 0, 0, 0, 0)):
  return {"steps": list(steps), "final": list(final), "skipped": list(skipped)}


BN = _row([1000, 1100, 950, 1200, 1050], [0.640, 0.650, 0.645, 0.655, 0.648])


def _numbers(dbn, iternorm=None):
  return {"BN": BN, "DBN": dbn, "IterNorm": iternorm or dbn}


def test_decide_holds():
  faster = _row([500, 550, 450, 600, 520], [0.660, 0.670, 0.662, 0.672, 0.668])
  verdicts = whitening.decide(_numbers(faster))
  assert [v.verdict for v in verdicts] == [HOLDS] * 4
  assert "BN's speed" in verdicts[0].ours and "points" in verdicts[1].ours


def test_decide_does_not_hold():
  slower = _row([1500, 1600, 1400, 1700, 1550], [0.620, 0.630, 0.628, 0.633, 0.625])
  verdicts = whitening.decide(_numbers(slower))
  assert [v.verdict for v in verdicts] == [DOES_NOT_HOLD] * 4
  assert verdicts[0].checks[-1].passed is False and verdicts[1].checks[-1].passed is False


def test_decide_equal_within_the_margin_does_not_hold():
  same = _row([1010, 1090, 960, 1190, 1040], [0.641, 0.649, 0.646, 0.654, 0.647])
  speed, error = whitening.decide(_numbers(same))[:2]
  assert (speed.verdict, error.verdict) == (DOES_NOT_HOLD, DOES_NOT_HOLD)


def test_decide_inconclusive_when_intervals_straddle():
  noisy = _row([400, 2000, 600, 1900, 1000], [0.70, 0.60, 0.69, 0.61, 0.66])
  speed, error = whitening.decide(_numbers(noisy))[:2]
  assert (speed.verdict, error.verdict) == (INCONCLUSIVE, INCONCLUSIVE)
  assert speed.checks[-1].passed is None and error.checks[-1].passed is None


def test_decide_missing_the_target():
  most = _row([math.inf, math.inf, math.inf, 500, 500], BN["final"])
  assert whitening.decide(_numbers(most))[0].verdict == DOES_NOT_HOLD
  one = _row([math.inf, 500, 500, 500, 500], BN["final"])
  speed = whitening.decide(_numbers(one))[0]
  assert speed.verdict == INCONCLUSIVE and "1 of 5" in speed.reason


def test_decide_unstable_runs_are_inconclusive():
  unstable = _row([500] * 5, [0.7] * 5, skipped=(0, 3, 0, 0, 0))
  good = _row([500, 550, 450, 600, 520], [0.660, 0.670, 0.662, 0.672, 0.668])
  verdicts = whitening.decide(_numbers(unstable, good))
  assert [v.verdict for v in verdicts] == [INCONCLUSIVE, INCONCLUSIVE, HOLDS, HOLDS]


def test_spec_states_the_thresholds():
  criterion = whitening.SPEC.criterion
  assert f"above {whitening.SPEEDUP_THRESHOLD:g}" in criterion
  assert f"below {whitening.SPEEDUP_MARGIN:g}" in criterion
  assert f"{whitening.ACCURACY_MARGIN * 100:g} points" in criterion


def test_bad_norm_is_named():
  with pytest.raises(ValueError, match="WhitenedMLP: norm must be one of"):
    whitening.WhitenedMLP("layer").init(jax.random.key(0), np.ones((4, 40), np.float32),
                                        train=False)


def test_docstring_examples_run():
  assert doctest.testmod(whitening).failed == 0
