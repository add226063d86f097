"""The GRU with normalization inside the cell, against a float64 NumPy GRU."""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import recurrent
from experiments.recurrent import GRU, GRUClassifier, recurrent_moments, variable_length

H = 3  # hidden units in these tests


def _sigmoid(v):
  return 1.0 / (1.0 + np.exp(-v))


def numpy_gru(x, valid, params, norm="none", stats=None, train=True, momentum=0.99,
              reverse=False):
  """PyTorch's GRU equations in float64, with the recurrent pre-activation normalized.

  Returns (outputs (N, T, H), updated running stats or None).
  """
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  u = x @ p["input"]["kernel"] + p["input"]["bias"]
  wh = p["cell"]["recurrent"]["kernel"]
  bh = p["cell"]["recurrent"].get("bias", 0.0)
  stats = None if stats is None else {k: np.asarray(v, np.float64) for k, v in stats.items()}
  n, steps, _ = x.shape
  h = np.zeros((n, H))
  out = np.zeros((n, steps, H))
  order = range(steps - 1, -1, -1) if reverse else range(steps)
  for t in order:
    a = h @ wh + bh
    if norm == "layer":
      a = (a - a.mean(-1, keepdims=True)) / np.sqrt(a.var(-1, keepdims=True) + 1e-6)
      a = a * p["cell"]["norm"]["scale"] + p["cell"]["norm"]["bias"]
    elif norm == "batch":
      rows = a[valid[:, t]]
      if train and len(rows):
        mean, var = rows.mean(0), rows.var(0)
        stats = {"mean": momentum * stats["mean"] + (1 - momentum) * mean,
                 "var": momentum * stats["var"] + (1 - momentum) * var}
      elif train:
        mean, var = np.zeros(3 * H), np.ones(3 * H)  # no valid row: output unused
      else:
        mean, var = stats["mean"], stats["var"]
      a = (a - mean) / np.sqrt(var + 1e-5) * p["cell"]["norm"]["scale"] + p["cell"]["norm"]["bias"]
    u_r, u_z, u_n = np.split(u[:, t], 3, -1)
    a_r, a_z, a_n = np.split(a, 3, -1)
    r, z = _sigmoid(u_r + a_r), _sigmoid(u_z + a_z)
    cand = (1 - z) * np.tanh(u_n + r * a_n) + z * h
    keep = valid[:, t][:, None]
    h = np.where(keep, cand, h)
    out[:, t] = np.where(keep, h, 0.0)
  return out, stats


def _variables(module, *args, seed=0, **kwargs):
  """Variables of ``module`` with random values drawn by NumPy (scale and bias not 1/0;
  running statistics not 0/1), shaped by ``init`` without running it."""
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *args, **kwargs))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    if any(getattr(entry, "key", None) == "var" for entry in path):
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    return (0.5 * rng.normal(size=leaf.shape)).astype(np.float32)
  return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope="module")
def batch():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(6, 7, 1)).astype(np.float32)
  valid = np.ones((6, 7), bool)
  valid[1, 5:] = False
  valid[3, 2:] = False
  valid[:, 6] = False  # a step where no sequence is running
  return x, valid


@pytest.mark.parametrize("norm, reverse", [("none", False), ("layer", False),
                                           ("batch", False), ("batch", True)])
def test_gru_matches_numpy_in_training_mode(batch, norm, reverse):
  x, valid = batch
  layer = GRU(hidden=H, norm=norm, train=True, reverse=reverse)
  variables = _variables(layer, x, valid, seed=1)
  out, updates = layer.apply(variables, x, valid, mutable=["batch_stats"])
  stats = variables.get("batch_stats", {}).get("cell", {}).get("norm")
  expected, new_stats = numpy_gru(x, valid, variables["params"], norm, stats,
                                  reverse=reverse)
  np.testing.assert_allclose(out, expected, rtol=2e-5, atol=2e-5)
  if norm == "batch":
    got = updates["batch_stats"]["cell"]["norm"]
    np.testing.assert_allclose(got["mean"], new_stats["mean"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["var"], new_stats["var"], rtol=1e-5, atol=1e-6)


def test_batch_norm_evaluation_uses_the_shared_running_statistics(batch):
  x, valid = batch
  train_layer = GRU(hidden=H, norm="batch", train=True)
  variables = _variables(train_layer, x, valid, seed=2)
  _, updates = train_layer.apply(variables, x, valid, mutable=["batch_stats"])
  variables = {**variables, "batch_stats": updates["batch_stats"]}
  out = GRU(hidden=H, norm="batch", train=False).apply(variables, x, valid)
  expected, _ = numpy_gru(x, valid, variables["params"], "batch",
                          variables["batch_stats"]["cell"]["norm"], train=False)
  np.testing.assert_allclose(out, expected, rtol=2e-5, atol=2e-5)


def test_padding_is_skipped_in_both_directions():
  """A padded sequence gives, at its valid steps, what the unpadded sequence gives."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(1, 9, 1)).astype(np.float32)
  length = 6
  padded = x.copy()
  padded[:, length:] = 5.0  # garbage after the end must not matter
  valid = np.arange(9)[None] < length
  for reverse in (False, True):
    layer = GRU(hidden=H, norm="layer", reverse=reverse)
    variables = _variables(layer, x, valid)
    out = layer.apply(variables, padded, valid)
    short = layer.apply(variables, x[:, :length], np.ones((1, length), bool))
    np.testing.assert_allclose(out[:, :length], short, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out[:, length:], 0.0)


def test_classifier_parameter_count_matches_the_reference():
  # torch.nn.GRU(1, 6, bidirectional=True): 2 * (18 + 108 + 18 + 18) = 324 parameters,
  # plus Linear(480, 10): 4810 -> GRUBase has 5134.
  shapes = jax.eval_shape(lambda: GRUClassifier().init(jax.random.key(0), jnp.ones((2, 40)),
                                                       train=False))
  assert sum(a.size for a in jax.tree.leaves(shapes["params"])) == 5134


def test_classifier_flattens_both_directions_into_the_readout(batch):
  x, valid = batch
  model = GRUClassifier(hidden=H, norm="none", masked_input=True)
  inputs = np.concatenate([x, valid[..., None].astype(np.float32)], -1)
  variables = _variables(model, inputs, train=False)
  logits = model.apply(variables, inputs, train=False)
  p = variables["params"]
  forward, _ = numpy_gru(x, valid, p["forward"])
  backward, _ = numpy_gru(x, valid, p["backward"], reverse=True)
  features = np.concatenate([forward, backward], -1).reshape(len(x), -1)
  expected = features @ np.asarray(p["readout"]["kernel"]) + np.asarray(p["readout"]["bias"])
  np.testing.assert_allclose(logits, expected, rtol=2e-5, atol=2e-5)


def test_classifier_gradients_are_finite_with_fully_padded_steps(batch):
  x, valid = batch
  inputs = jnp.asarray(np.concatenate([x, valid[..., None].astype(np.float32)], -1))
  model = GRUClassifier(hidden=H, norm="batch", masked_input=True)
  variables = _variables(model, inputs, train=False)

  def loss(params):
    logits, _ = model.apply({**variables, "params": params}, inputs, train=True,
                            mutable=["batch_stats"])
    return jnp.sum(logits ** 2)
  grads = jax.grad(loss)(variables["params"])
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def test_classifier_rejects_bad_shapes():
  def init(model, x):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  with pytest.raises(ValueError, match=r"GRUClassifier: x must have shape \(N, T\)"):
    init(GRUClassifier(), jnp.ones((2, 40, 2)))
  with pytest.raises(ValueError, match=r"masked_input=True, x must have shape \(N, T, 2\)"):
    init(GRUClassifier(masked_input=True), jnp.ones((2, 40)))
  with pytest.raises(ValueError, match="norm must be one of"):
    init(GRUClassifier(norm="group"), jnp.ones((2, 40)))


def test_variable_length_resamples_the_whole_signal():
  x = np.array([np.linspace(0.0, 1.0, 40), np.sin(np.arange(40.0))])
  out = variable_length(x, np.array([40, 21]))
  assert out.shape == (2, 40, 2) and out.dtype == np.float32
  np.testing.assert_allclose(out[0, :, 0], x[0], atol=1e-6)  # full length: unchanged
  np.testing.assert_allclose(out[1, :21, 0], np.interp(np.linspace(0, 39, 21),
                                                       np.arange(40), x[1]), atol=1e-6)
  assert out[1, 0, 0] == pytest.approx(x[1, 0]) and out[1, 20, 0] == pytest.approx(x[1, 39])
  np.testing.assert_array_equal(out[..., 1].sum(1), [40, 21])
  np.testing.assert_array_equal(out[1, 21:], 0.0)


def test_variable_length_rejects_bad_lengths():
  x = np.zeros((2, 10))
  with pytest.raises(ValueError, match=r"lengths must lie in \[2, 10\]"):
    variable_length(x, np.array([1, 5]))
  with pytest.raises(ValueError, match="lengths must be 2 integers"):
    variable_length(x, np.array([5.0, 5.0]))
  with pytest.raises(ValueError, match=r"x must have shape \(N, T\)"):
    variable_length(np.zeros(10), np.array([5]))


def test_recurrent_moments_match_numpy(batch):
  x, valid = batch
  model = GRUClassifier(hidden=H, norm="batch", masked_input=True)
  inputs = np.concatenate([x, valid[..., None].astype(np.float32)], -1)
  variables = _variables(model, inputs, train=False)
  _, updates = model.apply(variables, inputs, train=True,
                           mutable=["batch_stats", "intermediates"])
  moments = recurrent_moments(variables, updates["intermediates"], valid)
  wh = np.asarray(variables["params"]["forward"]["cell"]["recurrent"]["kernel"], np.float64)
  forward, _ = numpy_gru(x, valid, variables["params"]["forward"], "batch",
                         variables["batch_stats"]["forward"]["cell"]["norm"])
  previous = np.concatenate([np.zeros((len(x), 1, H)), forward[:, :-1]], 1)
  for t in range(x.shape[1] - 1):  # the last step has no valid sequence
    rows = (previous[:, t] @ wh)[valid[:, t]]
    np.testing.assert_allclose(moments["forward"]["mean"][t], rows.mean(0), atol=1e-5)
    np.testing.assert_allclose(moments["forward"]["var"][t], rows.var(0), atol=1e-5)
  np.testing.assert_array_equal(moments["forward"]["running_var"],
                                variables["batch_stats"]["forward"]["cell"]["norm"]["var"])


def test_docstring_examples():
  with jax.threefry_partitionable(False):  # same examples, faster to compile
    assert doctest.testmod(recurrent).failed == 0
