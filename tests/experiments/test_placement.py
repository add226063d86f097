"""placement: the quick run's outputs, the models' placements, and the verdicts."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import placement
from experiments import results as results_lib
from experiments.models import MNIST1DCNN
from experiments.spec import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, RunContext

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("placement"))
  ctx = RunContext(out_dir=out, quick=True, seeds=2)
  outcome = placement.run(ctx)
  payload = results_lib.write_outcome(placement.SPEC, ctx, outcome, wall_seconds=1.0)
  return out, outcome, payload


def test_quick_run_writes_results_table_and_figures(quick_run):
  out, outcome, payload = quick_run
  with open(os.path.join(out, "results.json"), encoding="utf-8") as handle:
    assert json.load(handle) == payload
  assert payload["verdict"] in (HOLDS, DOES_NOT_HOLD, INCONCLUSIVE)
  cells = len(placement.QUICK_CELLS)
  assert len(payload["verdicts"]) == cells + 1
  assert payload["verdicts"][-1]["claim"].startswith("Overall")
  for figure in outcome.figures:
    with open(os.path.join(out, figure), "rb") as handle:
      assert handle.read(8) == PNG_MAGIC
  assert outcome.table.count("\n") == cells + 1  # header, rule, one row per cell


def test_quick_run_pairs_every_cell_by_seed(quick_run):
  _, outcome, payload = quick_run
  accuracy = outcome.per_seed["test_accuracy"]
  trained = {(n, a) for n, by_activation in accuracy.items() for a in by_activation}
  assert trained == set(placement.QUICK_CELLS)
  for by_activation in accuracy.values():
    for runs in by_activation.values():
      assert len(runs["before"]) == len(runs["after"]) == 2
      assert all(0.0 <= a <= 1.0 for a in runs["before"] + runs["after"])
  for cell, summary in payload["summary"].items():
    diff = summary["after_minus_before"]
    assert diff["mean"] == pytest.approx(summary["after"]["mean"] - summary["before"]["mean"],
                                         abs=1e-9), cell


# --------------------------------------------------------------------------- models


def _probe_cnn(placement_name):
  model = MNIST1DCNN(norm="batch", activation="sigmoid", placement=placement_name)
  x = np.random.default_rng(0).normal(size=(16, 40)).astype(np.float32)
  variables = model.init(jax.random.key(0), x, train=False)
  _, state = model.apply(variables, x, train=True, mutable=["batch_stats", "intermediates"],
                         capture_intermediates=True)
  return state


def test_cnn_placement_changes_what_batch_norm_sees():
  """BN before the sigmoid normalizes conv outputs (any sign); after, sigmoid outputs
  in (0, 1): the first BN's batch mean tells them apart."""
  before = _probe_cnn("before")["intermediates"]
  after = _probe_cnn("after")["intermediates"]
  conv = np.asarray(before["Conv_0"]["__call__"][0])
  bn_input_before = conv
  bn_input_after = 1 / (1 + np.exp(-np.asarray(after["Conv_0"]["__call__"][0])))
  for inputs, state in ((bn_input_before, before), (bn_input_after, after)):
    out = np.asarray(state["BatchNorm_0"]["__call__"][0])
    mean, var = inputs.mean((0, 1)), inputs.var((0, 1))
    np.testing.assert_allclose(out, (inputs - mean) / np.sqrt(var + 1e-5), atol=2e-4)
  assert np.all(bn_input_after > 0)


def test_cnn_default_is_unchanged_and_bad_placement_is_rejected():
  model = MNIST1DCNN(norm="batch")
  assert (model.activation, model.placement) == ("relu", "before")
  with pytest.raises(ValueError, match="MNIST1DCNN: placement must be 'before' or 'after'"):
    MNIST1DCNN(placement="middle").init(jax.random.key(0), jnp.ones((2, 40)), train=False)


def test_full_run_trains_every_cell_and_quick_a_subset():
  every = placement.cells(quick=False)
  assert len(every) == len(placement.NETWORKS) * len(placement.ACTIVATIONS)
  quick = [(n.label, a) for n, a in placement.cells(quick=True)]
  assert quick == list(placement.QUICK_CELLS)


def test_make_model_builds_both_networks():
  for network in placement.NETWORKS:
    for place in placement.PLACEMENTS:
      model = placement.make_model(network, "relu", place)
      assert model.placement == place and model.norm == "batch"


# --------------------------------------------------------------------------- verdicts


def _accuracy(cells):
  """``{network: {activation: {before, after}}}`` from ``{(n, a): (before, after)}``."""
  out = {}
  for (network, activation), (before, after) in cells.items():
    out.setdefault(network, {})[activation] = {"before": list(before), "after": list(after)}
  return out


BASE = np.array([0.90, 0.92, 0.91, 0.93, 0.89])
NOISE = np.array([0.004, -0.003, 0.002, -0.004, 0.001])


def _cells(shifts):
  return _accuracy({key: (BASE, BASE + shift + NOISE) for key, shift in shifts.items()})


KEYS = [("seed MLP", "relu"), ("seed MLP", "sigmoid"), ("CNN", "relu"), ("CNN", "sigmoid")]


def test_before_better_everywhere_holds():
  verdicts = placement.decide(_cells({k: -0.03 for k in KEYS}))
  assert [v.verdict for v in verdicts] == [HOLDS] * 5
  assert "after - before = -3.00 points" in verdicts[0].reason


def test_after_better_in_one_cell_does_not_hold():
  shifts = {k: -0.03 for k in KEYS}
  shifts[KEYS[2]] = +0.03
  verdicts = placement.decide(_cells(shifts))
  assert verdicts[2].verdict == DOES_NOT_HOLD and "after better" in verdicts[2].reason
  assert verdicts[-1].verdict == DOES_NOT_HOLD


def test_no_practical_difference_everywhere_does_not_hold():
  verdicts = placement.decide(_cells({k: 0.0 for k in KEYS}))
  assert all("no practical difference" in v.reason for v in verdicts[:-1])
  assert [v.verdict for v in verdicts] == [DOES_NOT_HOLD] * 5


def test_noisy_differences_are_inconclusive():
  wide = np.array([0.03, -0.02, 0.025, -0.03, 0.0])
  cells = _accuracy({key: (BASE, BASE + wide) for key in KEYS})
  verdicts = placement.decide(cells)
  assert [v.verdict for v in verdicts] == [INCONCLUSIVE] * 5


def test_before_better_in_half_the_cells_holds_overall():
  shifts = {KEYS[0]: -0.03, KEYS[1]: -0.03, KEYS[2]: 0.0, KEYS[3]: 0.0}
  verdicts = placement.decide(_cells(shifts))
  assert [v.verdict for v in verdicts[:-1]] == [HOLDS, HOLDS, DOES_NOT_HOLD, DOES_NOT_HOLD]
  assert verdicts[-1].verdict == HOLDS


def test_one_seed_is_inconclusive():
  cells = _accuracy({key: ([0.9], [0.8]) for key in KEYS})
  verdicts = placement.decide(cells)
  assert {v.verdict for v in verdicts} == {INCONCLUSIVE}
