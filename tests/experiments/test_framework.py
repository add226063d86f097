"""The experiments' shared machinery: statistics, results files, the report, populations."""

from __future__ import annotations

import json
import math
import os

import jax
import numpy as np
import optax
import pytest

from experiments import report as report_lib
from experiments import results as results_lib
from experiments.data import Dataset
from experiments.measures import stats
from experiments.models import SeedMLP
from experiments.population import Recipe, grid_product, train_population
from experiments.spec import (
    DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, Anchor, Check, Outcome, RunContext, Spec, Verdict,
    verdict_from_checks)
from jaxnorm import training

# --------------------------------------------------------------------------- statistics


def test_summarize_matches_hand_computed_t_interval():
  values = [0.91, 0.93, 0.95, 0.90, 0.96]
  s = stats.summarize(values)
  mean = sum(values) / 5
  std = math.sqrt(sum((v - mean) ** 2 for v in values) / 4)
  t_975_4 = 2.7764451051977987  # Student t, 4 degrees of freedom, 97.5th percentile
  assert s.n == 5
  assert s.mean == pytest.approx(mean, abs=1e-12)
  assert s.std == pytest.approx(std, abs=1e-12)
  half = t_975_4 * std / math.sqrt(5)
  assert (s.ci_low, s.ci_high) == pytest.approx((mean - half, mean + half), abs=1e-9)
  assert s.as_dict()["ci95"] == [s.ci_low, s.ci_high]


def test_summarize_one_value_has_no_spread():
  s = stats.summarize([0.5])
  assert (s.mean, s.std, s.n) == (0.5, 0.0, 1)
  assert math.isnan(s.ci_low) and math.isnan(s.ci_high)
  assert s.format(2) == "0.50"
  assert stats.summarize([1.0, 3.0]).format(1) == "2.0 ± 1.4"


def test_summarize_rejects_empty_and_bad_level():
  with pytest.raises(ValueError, match="values is empty"):
    stats.summarize([])
  with pytest.raises(ValueError, match="level must be in"):
    stats.summarize([1.0, 2.0], level=1.5)


def test_paired_difference_and_excludes_zero():
  a = [0.90, 0.92, 0.91, 0.93, 0.90]
  b = [0.80, 0.83, 0.80, 0.82, 0.81]
  d = stats.paired_difference(a, b)
  assert d.mean == pytest.approx(0.1, abs=1e-9)
  assert stats.excludes_zero(d)
  assert not stats.excludes_zero(stats.paired_difference([1.0, -1.0, 0.5], [0.0, 0.0, 0.0]))
  with pytest.raises(ValueError, match="pair up"):
    stats.paired_difference([1.0, 2.0], [1.0])


# --------------------------------------------------------------------------- verdicts


def test_verdict_from_checks():
  ok, bad, unknown = (Check("a", 1, "> 0", True), Check("b", 0, "> 1", False),
                      Check("c", None, "> 0", None))
  assert verdict_from_checks([ok, ok]) == HOLDS
  assert verdict_from_checks([ok, bad, unknown]) == DOES_NOT_HOLD
  assert verdict_from_checks([ok, unknown]) == INCONCLUSIVE
  with pytest.raises(ValueError):
    verdict_from_checks([])
  with pytest.raises(ValueError, match="must be one of"):
    Verdict("claim", "maybe", "reason", "ours")


def test_overall_verdict():
  def v(verdict):
    return Verdict("c", verdict, "r", "o")
  assert results_lib.overall_verdict([v(HOLDS), v(HOLDS)]) == HOLDS
  assert results_lib.overall_verdict([v(HOLDS), v(DOES_NOT_HOLD)]) == DOES_NOT_HOLD
  assert results_lib.overall_verdict([v(HOLDS), v(INCONCLUSIVE)]) == INCONCLUSIVE


# --------------------------------------------------------------------------- results files


def test_to_json_converts_numpy_and_non_finite():
  payload = results_lib.to_json({"a": np.float32(1.5), "b": np.array([1, 2]),
                                 "c": float("nan"), "d": (np.bool_(True), np.int64(3)),
                                 "e": stats.summarize([1.0, 2.0])})
  assert payload["a"] == 1.5 and payload["b"] == [1, 2] and payload["c"] is None
  assert payload["d"] == [True, 3]
  assert payload["e"]["mean"] == 1.5 and len(payload["e"]["ci95"]) == 2
  json.dumps(payload, allow_nan=False)


def test_publish_replaces_the_old_run_as_a_whole(tmp_path):
  root = results_lib.check_output_root(str(tmp_path / "runs"))
  first = results_lib.staging_dir(root, "demo")
  open(os.path.join(first, "old-only.txt"), "w").close()
  results_lib.publish(first, root, "demo")
  second = results_lib.staging_dir(root, "demo")
  open(os.path.join(second, "new.txt"), "w").close()
  final = results_lib.publish(second, root, "demo")
  assert sorted(os.listdir(final)) == ["new.txt"]
  assert sorted(os.listdir(root)) == ["demo"]  # no staging or backup left behind


def test_check_output_root_rejects_a_file(tmp_path):
  path = tmp_path / "file"
  path.write_text("x")
  with pytest.raises(results_lib.OutputError, match="not a directory"):
    results_lib.check_output_root(str(path))


SPEC = Spec(name="demo", title="A demo", description="demo", claim="X helps.",
            anchor=Anchor("paper: 1.0", "Someone 2020"), criterion="X > 0 on 2 seeds.",
            data="none", setup="none", limits="tiny")


def _write_demo_run(tmp_path, *, quick=False):
  root = results_lib.check_output_root(str(tmp_path / "runs"))
  out = results_lib.staging_dir(root, "demo")
  ctx = RunContext(out_dir=out, quick=quick, seeds=2)
  from experiments import plots  # pylint: disable=import-outside-toplevel
  with plots.figure(os.path.join(out, "fig.png"), "demo") as axes:
    plots.band(axes[0], [0, 1, 2], [[0, 1, 2], [0, 2, 3]], label="x")
    plots.label(axes[0], x="step", y="value (units)")
  verdicts = [Verdict("X helps", HOLDS, "X = 0.5 > 0", "0.5 ± 0.1", checks=(
      Check("X", 0.5, "> 0", True),))]
  outcome = Outcome(config={"lr": 0.1}, per_seed={"x": [0.4, 0.6]},
                    summary={"x": stats.summarize([0.4, 0.6])}, verdicts=verdicts,
                    table="| a |\n|---|\n| 1 |", figures=["fig.png"])
  payload = results_lib.write_outcome(SPEC, ctx, outcome, wall_seconds=1.0)
  results_lib.publish(out, root, "demo")
  return root, payload


def test_write_outcome_fields(tmp_path):
  root, payload = _write_demo_run(tmp_path)
  on_disk = results_lib.read_results(os.path.join(root, "demo"))
  assert on_disk == payload
  for field in ("claim", "criterion", "verdict", "verdicts", "config", "per_seed",
                "summary", "anchor", "figures"):
    assert field in on_disk
  assert on_disk["verdict"] == HOLDS
  assert on_disk["summary"]["x"]["n"] == 2


def test_report_has_summary_and_sections(tmp_path):
  root, _ = _write_demo_run(tmp_path, quick=True)
  output = tmp_path / "REPORT.md"
  path, missing = report_lib.build_report(root, ["demo", "absent"], str(output))
  text = output.read_text(encoding="utf-8")
  assert missing == ["absent"]
  assert "| [demo](#demo) | X helps | paper: 1.0 | 0.5 ± 0.1 | **holds** |" in text
  assert "## demo: A demo" in text and "Someone 2020" in text
  assert "Quick run" in text and "Not run yet: absent" in text
  assert (tmp_path / "report" / "demo" / "fig.png").read_bytes()[:4] == b"\x89PNG"
  assert "(report/demo/fig.png)" in text
  assert path == str(output)


# --------------------------------------------------------------------------- populations


@pytest.fixture(scope="module")
def tiny_data():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(80, 12)).astype(np.float32)
  y = (x[:, 0] > 0).astype(np.int32) + 2 * (x[:, 1] > 0).astype(np.int32)
  return Dataset("tiny", x[:64], y[:64], x[64:], y[64:], 4)


def test_population_member_equals_a_single_scan_fused_run(tiny_data):
  """Each member is exactly the run make_scan_epoch makes for its seed (same batches,
  same dropout keys), up to float reassociation of the batched matmuls."""
  model = SeedMLP(use_batch_norm=True, dropout_rate=0.3, hidden=(16, 8), num_classes=4)
  tx, batch, epochs, seed = optax.sgd(0.1), 16, 3, 7
  pop = train_population(Recipe(model, tx, batch), tiny_data, seeds=[5, seed],
                         steps=epochs * 4, eval_every=4, keep_states=True)

  init_key, state_key, shuffle_key = jax.random.split(jax.random.key(seed), 3)
  variables = model.init(init_key, tiny_data.x_train[:2], train=False)
  state = training.TrainState.create(apply_fn=model.apply, params=variables["params"],
                                     batch_stats=variables["batch_stats"], tx=tx,
                                     rng=state_key)
  run_epoch = training.make_scan_epoch(training.make_train_step(), batch)
  losses = []
  for epoch in range(1, epochs + 1):
    state, metrics = run_epoch(state, tiny_data.x_train, tiny_data.y_train,
                               jax.random.fold_in(shuffle_key, epoch))
    losses.append(float(np.mean(metrics["loss"])))
  np.testing.assert_allclose(pop.curves["train_loss"][0, 1, 1:], losses, rtol=1e-5)
  member = pop.state(0, 1)
  for a, b in zip(jax.tree.leaves(member.params), jax.tree.leaves(state.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert pop.curves["test_accuracy"].shape == (1, 2, epochs + 1)
  assert np.isnan(pop.curves["train_loss"][0, 0, 0])
  assert pop.steps.tolist() == [0, 4, 8, 12]


def test_population_grid_sets_optimizer_and_model_hyperparameters(tiny_data):
  model = SeedMLP(use_batch_norm=False, dropout_rate=0.0, hidden=(16,), num_classes=4)
  tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
  grid = grid_product(learning_rate=[0.0, 0.5])
  seen = []

  def probe(state, hyper):
    seen.append(True)
    return {"lr": state.opt_state.hyperparams["learning_rate"],
            "kernel_norm": jax.numpy.linalg.norm(state.params["Dense_0"]["kernel"])}

  pop = train_population(Recipe(model, tx, 16), tiny_data, seeds=[0, 1], steps=8,
                         eval_every=4, grid=grid, probe=probe)
  assert seen
  np.testing.assert_array_equal(pop.probes["lr"][:, :, -1], [[0.0, 0.0], [0.5, 0.5]])
  # Learning rate 0 leaves the weights where they started; 0.5 moves them.
  kernel = pop.probes["kernel_norm"]
  np.testing.assert_array_equal(kernel[0, :, 0], kernel[0, :, -1])
  assert np.all(np.abs(kernel[1, :, -1] - kernel[1, :, 0]) > 1e-3)


def test_population_rejects_bad_lengths(tiny_data):
  model = SeedMLP(use_batch_norm=False, dropout_rate=0.0, hidden=(4,), num_classes=4)
  recipe = Recipe(model, optax.sgd(0.1), 16)
  with pytest.raises(ValueError, match="multiple of eval_every"):
    train_population(recipe, tiny_data, seeds=[0], steps=6, eval_every=4)
  with pytest.raises(ValueError, match="batch_size must be in"):
    train_population(Recipe(model, optax.sgd(0.1), 65), tiny_data, seeds=[0], steps=4,
                     eval_every=4)
  with pytest.raises(ValueError, match="same length"):
    train_population(recipe, tiny_data, seeds=[0], steps=4, eval_every=4,
                     grid={"a": [1.0], "b": [1.0, 2.0]})
