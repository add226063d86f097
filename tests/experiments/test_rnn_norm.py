"""rnn-norm: the quick path end to end, the data, and the verdict rules on known numbers."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import results as results_lib
from experiments import rnn_norm as exp
from experiments.recurrent import GRUClassifier
from experiments.spec import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, VERDICTS, RunContext


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("rnn-norm"))
  ctx = RunContext(out_dir=out, quick=True, seeds=2)
  outcome = exp.run(ctx)
  payload = results_lib.write_outcome(exp.SPEC, ctx, outcome, wall_seconds=0.0)
  return out, outcome, payload


def test_quick_run_writes_results_table_and_figures(quick_run):
  out, outcome, payload = quick_run
  assert results_lib.read_results(out) == payload
  assert payload["experiment"] == exp.NAME and payload["quick"] is True
  assert len(payload["verdicts"]) == 3
  assert all(v["verdict"] in VERDICTS for v in payload["verdicts"])
  assert outcome.figures == ["accuracy_curves.png", "bn_statistics.png"]
  for figure in outcome.figures:
    with open(os.path.join(out, figure), "rb") as handle:
      assert handle.read(4) == b"\x89PNG"


def test_quick_run_numbers_are_consistent(quick_run):
  _, outcome, payload = quick_run
  for length in exp.LENGTHS:
    for norm in ("none", "layer", "batch"):
      runs = outcome.per_seed[f"{length}/{norm}"]
      assert runs["test_accuracy"].shape == (2,)
      np.testing.assert_array_equal(runs["test_accuracy"], runs["test_accuracy_curve"][:, -1])
    bn = outcome.per_seed[f"{length}/batch"]
    assert np.all((bn["batch_stats_accuracy"] >= 0) & (bn["batch_stats_accuracy"] <= 1))
    for direction in ("forward", "backward"):
      ratio = bn["step_statistics"][direction]["var_ratio"]
      assert ratio.shape == (2, 40)
      # The first step the forward cell reads is the zero initial state: batch variance 0.
      if direction == "forward":
        np.testing.assert_allclose(ratio[:, 0], 0.0, atol=1e-6)
      assert np.all(ratio[:, 1:30] > 0)
    assert payload["summary"][f"{length}/batch/batch_stats_minus_eval"]["n"] == 2
  assert payload["config"]["steps"] == exp.QUICK_STEPS


def test_both_lengths_keeps_the_fixed_signal_and_masks_the_variable_one():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(50, 40))
  both = exp.both_lengths(x, np.random.default_rng(1))
  assert both.shape == (50, 40, 4)
  np.testing.assert_allclose(both[..., 0], x, atol=1e-6)
  np.testing.assert_array_equal(both[..., 1], 1.0)
  lengths = both[..., 3].sum(1)
  assert lengths.min() >= exp.MIN_LENGTH and lengths.max() <= 40
  np.testing.assert_allclose(both[np.arange(50), 0, 2], x[:, 0], atol=1e-6)
  np.testing.assert_allclose(both[np.arange(50), lengths.astype(int) - 1, 2], x[:, -1],
                             atol=1e-6)


def test_either_length_on_fixed_data_is_the_plain_gru():
  x = np.random.default_rng(2).normal(size=(3, 40)).astype(np.float32)
  both = exp.both_lengths(x, np.random.default_rng(3))
  wrapper = exp.EitherLength(norm="layer")
  shapes = jax.eval_shape(lambda: wrapper.init(jax.random.key(0), both, train=False))
  rng = np.random.default_rng(4)
  variables = jax.tree.map(lambda s: (0.5 * rng.normal(size=s.shape)).astype(np.float32),
                           shapes)
  plain = GRUClassifier(hidden=exp.HIDDEN, norm="layer")
  expected = plain.apply({"params": variables["params"]["gru"]}, x, train=False)
  got = wrapper.apply(variables, both, train=False, variable=jnp.float32(0.0))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  variable = wrapper.apply(variables, both, train=False, variable=jnp.float32(1.0))
  assert not np.allclose(variable, expected)


def _numbers(*, ln=0.90, none=0.90, bn=0.90, batch_mode=0.90, var_ln=0.85, var_none=0.85,
             var_bn=0.85, var_batch_mode=0.85, spread=0.002):
  offsets = np.array([-2, -1, 0, 1, 2]) * spread
  noise = np.array([1, -1, 0.5, -0.5, 0]) * spread  # breaks the pairing a little
  eval_acc = {"fixed": {"none": none + offsets, "layer": ln + offsets + noise,
                        "batch": bn + offsets - noise},
              "variable": {"none": var_none + offsets, "layer": var_ln + offsets + noise,
                           "batch": var_bn + offsets - noise}}
  batch_acc = {"fixed": batch_mode + offsets, "variable": var_batch_mode + offsets}
  return eval_acc, batch_acc


def test_decide_ln_non_inferiority():
  verdicts = exp.decide(*_numbers(ln=0.905, var_ln=0.85))
  assert verdicts[0].verdict == HOLDS
  verdicts = exp.decide(*_numbers(ln=0.85, var_ln=0.86))  # 5 points worse at fixed length
  assert verdicts[0].verdict == DOES_NOT_HOLD
  assert verdicts[0].checks[0].passed is False and verdicts[0].checks[1].passed is True
  verdicts = exp.decide(*_numbers(ln=0.895, spread=0.02))  # wide interval around -0.5
  assert verdicts[0].verdict == INCONCLUSIVE


def test_decide_bn_gap():
  assert exp.decide(*_numbers(bn=0.85, batch_mode=0.90))[1].verdict == HOLDS
  assert exp.decide(*_numbers(bn=0.90, batch_mode=0.902))[1].verdict == DOES_NOT_HOLD
  assert exp.decide(*_numbers(bn=0.89, batch_mode=0.90, spread=0.02))[1].verdict == INCONCLUSIVE
  assert "variable length (reported)" in exp.decide(*_numbers())[1].reason


def test_decide_bn_behind_ln_on_variable_lengths():
  assert exp.decide(*_numbers(var_ln=0.88, var_bn=0.80))[2].verdict == HOLDS
  assert exp.decide(*_numbers(var_ln=0.85, var_bn=0.86))[2].verdict == DOES_NOT_HOLD
  verdict = exp.decide(*_numbers(var_ln=0.86, var_bn=0.85, spread=0.02))[2]
  assert verdict.verdict == INCONCLUSIVE


def test_decide_with_one_seed_is_inconclusive():
  eval_acc = {l: {n: np.array([0.9]) for n in ("none", "layer", "batch")}
              for l in exp.LENGTHS}
  batch_acc = {l: np.array([0.9]) for l in exp.LENGTHS}
  assert {v.verdict for v in exp.decide(eval_acc, batch_acc)} == {INCONCLUSIVE}
