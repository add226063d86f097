"""depth-gradients: the quick run's outputs, the measured network, and the verdicts."""

from __future__ import annotations

import doctest
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import depth_gradients as dg
from experiments import results as results_lib
from experiments.spec import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, RunContext

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# --------------------------------------------------------------------------- quick run


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("depth-gradients"))
  ctx = RunContext(out_dir=out, quick=True, seeds=2)
  outcome = dg.run(ctx)
  payload = results_lib.write_outcome(dg.SPEC, ctx, outcome, wall_seconds=1.0)
  return out, outcome, payload


def test_quick_run_writes_results_table_and_figures(quick_run):
  out, outcome, payload = quick_run
  with open(os.path.join(out, "results.json"), encoding="utf-8") as handle:
    on_disk = json.load(handle)
  assert on_disk == payload
  for field in ("claim", "criterion", "verdict", "verdicts", "per_seed", "summary"):
    assert on_disk[field]
  assert on_disk["verdict"] in (HOLDS, DOES_NOT_HOLD, INCONCLUSIVE)
  assert len(on_disk["verdicts"]) == 5
  for figure in outcome.figures:
    with open(os.path.join(out, figure), "rb") as handle:
      assert handle.read(8) == PNG_MAGIC
  assert "(B-2)/(B-3)" in outcome.table and "trains" in outcome.table
  with open(os.path.join(out, "table.md"), encoding="utf-8") as handle:
    assert outcome.table in handle.read()


def test_quick_run_measures_every_configuration_per_seed(quick_run):
  _, outcome, _ = quick_run
  setup = dg.QUICK
  expected = {dg.config_key(*c) for c in dg.configurations(setup)}
  factors = outcome.per_seed["factors"]
  assert set(factors) == expected
  for key, values in outcome.per_seed["log_squared_norms"].items():
    assert np.asarray(values).shape == (2, setup.depth), key
    assert len(factors[key]) == 2
  # Every network at initialization has a finite, positive per-layer factor.
  assert all(np.isfinite(v) and v > 0 for values in factors.values() for v in values)
  accuracies = outcome.per_seed["training_accuracy"]
  assert len(accuracies) == len(setup.train_depths) * 2 * len(setup.learning_rates)
  assert all(0.0 <= a <= 1.0 for values in accuracies.values() for a in values)


def test_quick_run_sees_the_textbook_contrast(quick_run):
  """Not the verdicts, but invariants any correct measurement shows even at the quick
  run's size: sigmoid without BN shrinks, ReLU with BN grows."""
  _, outcome, _ = quick_run
  factors = outcome.per_seed["factors"]
  ref = dg.QUICK.reference_batch
  assert max(factors[dg.config_key("sigmoid", False, ref)]) < 0.3
  assert min(factors[dg.config_key("relu", True, ref)]) > 1.1


# --------------------------------------------------------------------------- the network


def _reference_log_norms(kernels, readout, x, labels, activation, batch_norm):
  """Independent reference: plain jnp batch norm (no jaxnorm), jax.grad, float64 norms."""
  act = {"relu": jax.nn.relu, "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid,
         "linear": lambda z: z}[activation]

  def loss(kernels):
    h = x
    for kernel in kernels:
      z = h @ kernel
      if batch_norm:
        z = (z - z.mean(0)) / jnp.sqrt(z.var(0) + 1e-5)
      h = act(z)
    return optax.softmax_cross_entropy_with_integer_labels(h @ readout, labels).mean()

  grads = np.asarray(jax.grad(loss)(kernels), np.float64)
  return np.log(np.sum(grads ** 2, axis=(1, 2)))


@pytest.mark.parametrize("activation", dg.ACTIVATION_ORDER)
@pytest.mark.parametrize("batch_norm", [False, True])
def test_layer_gradient_norms_match_an_independent_reference(activation, batch_norm):
  rng = np.random.default_rng(0)
  depth, width, batch = 6, 16, 8
  unit = (rng.standard_normal((depth, width, width)) / np.sqrt(width)).astype(np.float32)
  readout = (rng.standard_normal((width, 10)) / np.sqrt(width)).astype(np.float32)
  x = rng.standard_normal((batch, width)).astype(np.float32)
  labels = rng.integers(0, 10, batch).astype(np.int32)
  got = np.asarray(jax.jit(dg.layer_gradient_log_norms)(
      unit, readout, x, labels, dg.ACTIVATION_ORDER.index(activation), batch_norm))
  kernels = np.sqrt(dg.INIT_GAIN[activation]).astype(np.float32) * unit
  expected = _reference_log_norms(jnp.asarray(kernels), readout, x, labels, activation,
                                  batch_norm)
  np.testing.assert_allclose(got, expected, atol=2e-3)


def test_deep_mlp_module_has_the_measured_networks_gradients():
  """The trained Flax module and the measured function are the same network at init."""
  depth, width, batch = 5, 16, 8
  model = dg.DeepMLP(depth=depth, width=width, batch_norm=True)
  x = np.random.default_rng(1).standard_normal((batch, width)).astype(np.float32)
  labels = np.arange(batch, dtype=np.int32) % 10
  variables = jax.jit(model.init, static_argnames="train")(jax.random.key(0), x, train=False)

  def loss(params):
    logits, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                            train=True, mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  grads = jax.jit(jax.grad(loss))(variables["params"])
  module_norms = [np.log(np.sum(np.square(np.asarray(g, np.float64)))) for g in
                  [grads["layer_1"]["Dense_0"]["kernel"],
                   *grads["layers"]["Dense_0"]["kernel"]]]
  params = variables["params"]
  kernels = jnp.concatenate([params["layer_1"]["Dense_0"]["kernel"][None],
                             params["layers"]["Dense_0"]["kernel"]])
  unit = kernels / np.sqrt(dg.INIT_GAIN["relu"])
  measured = jax.jit(dg.layer_gradient_log_norms)(
      unit, params["Dense_0"]["kernel"], x, labels, dg.ACTIVATION_ORDER.index("relu"), True)
  np.testing.assert_allclose(measured, module_norms, atol=2e-3)


def test_deep_mlp_rejects_zero_depth():
  with pytest.raises(ValueError, match="DeepMLP: depth must be >= 1; got 0"):
    dg.DeepMLP(depth=0).init(jax.random.key(0), jnp.ones((2, 3)), train=False)


def test_docstring_examples_run():
  result = doctest.testmod(dg, optionflags=doctest.NORMALIZE_WHITESPACE)
  assert result.attempted > 0 and result.failed == 0


# --------------------------------------------------------------------------- verdicts


def _factors(relu_anchor, linear, sigmoid_plain, bn_reference, *, spread=0.002, seeds=5):
  """Synthetic per-seed factors around the given centres (FULL setup's keys)."""
  offsets = np.linspace(-spread, spread, seeds)
  setup = dg.FULL
  factors = {dg.config_key("relu", True, setup.anchor_batch): relu_anchor + offsets}
  for batch, value in zip(setup.linear_batches, linear):
    factors[dg.config_key("linear", True, batch)] = value + offsets
  for name in dg.ACTIVATION_ORDER:
    factors[dg.config_key(name, True, setup.reference_batch)] = bn_reference[name] + offsets
    plain = sigmoid_plain if name == "sigmoid" else 1.0
    factors[dg.config_key(name, False, setup.reference_batch)] = plain + offsets
  return {key: list(values) for key, values in factors.items()}


GENTLE_BN = {"relu": 1.01, "tanh": 1.02, "sigmoid": 1.0, "linear": 1.0}


def test_decide_all_hold():
  factors = _factors(math.pi / (math.pi - 1), [1.2, 14 / 13], 0.06, GENTLE_BN)
  verdicts = dg.decide(factors)
  assert [v.verdict for v in verdicts] == [HOLDS] * 5
  assert "1.4669" in verdicts[0].reason


def test_decide_none_hold():
  factors = _factors(1.30, [1.10, 1.20], 1.3,
                     {"relu": 1.49, "tanh": 1.2, "sigmoid": 0.5, "linear": 1.02})
  verdicts = dg.decide(factors)
  assert [v.verdict for v in verdicts] == [DOES_NOT_HOLD] * 5
  explode = verdicts[4]
  assert explode.claim.startswith("BN prevents exploding")
  assert [c.passed for c in explode.checks] == [False, False, True, True]
  assert "relu+BN: 1.490" in explode.ours


def test_decide_inconclusive_when_intervals_straddle_the_edges():
  g = dg.decade_factor(dg.FULL.depth)
  relu_edge = math.pi / (math.pi - 1) * 1.05
  factors = _factors(relu_edge, [1.2 * 1.0 + 0.1 * 0.2, 14 / 13], 1.0,
                     {"relu": g, "tanh": 1.0, "sigmoid": 1 / g, "linear": 1.0}, spread=0.01)
  # Linear at B=8: excess (factor - 1) * 5 around 1.1 -> straddles the +10% edge.
  factors[dg.config_key("linear", True, 8)] = list(1.22 + np.linspace(-0.01, 0.01, 5))
  verdicts = dg.decide(factors)
  assert [v.verdict for v in verdicts] == [INCONCLUSIVE] * 5


def test_decide_a_failed_part_outweighs_an_unknown_one():
  factors = _factors(math.pi / (math.pi - 1), [1.10, 14 / 13], 0.06, GENTLE_BN)
  factors[dg.config_key("linear", True, 16)] = [1.0769, float("nan"), 1.0769, 1.0769, 1.0769]
  linear = dg.decide(factors)[1]
  assert linear.verdict == DOES_NOT_HOLD
  assert [c.passed for c in linear.checks] == [False, None]


def test_decide_with_one_seed_is_inconclusive():
  factors = _factors(math.pi / (math.pi - 1), [1.2, 14 / 13], 0.06, GENTLE_BN, seeds=1)
  assert {v.verdict for v in dg.decide(factors)} == {INCONCLUSIVE}


def test_trains_threshold():
  ok, best, index = dg.trains(np.array([[0.5, 0.6], [0.85, 0.83]]))
  assert ok and index == 1 and best == pytest.approx(0.84)
  assert not dg.trains(np.array([[0.1, 0.12], [0.7, 0.78]]))[0]
  assert dg.trains(np.full((2, 3), np.nan)) == (False, pytest.approx(float("nan"),
                                                                      nan_ok=True), -1)
