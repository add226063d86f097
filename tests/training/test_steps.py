"""Train/eval steps: state threading, per-step dropout keys, the non-finite guard."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnorm import training


def test_train_step_threads_batch_stats_params_and_step(state_factory, toy_data):
  x, y = toy_data
  state = state_factory()
  step = jax.jit(training.make_train_step())
  new, metrics = step(state, (x[:32], y[:32]))
  assert int(new.step) == 1 and int(new.skipped_steps) == 0
  assert bool(metrics["finite"])
  # EMA with momentum 0.9 from (0, 1): new = 0.9 * old + 0.1 * batch statistic of the
  # BN input h = x W + b, recomputed here in float64 NumPy.
  dense = state.params["Dense_0"]
  h = x[:32].astype(np.float64) @ np.asarray(dense["kernel"], np.float64) + np.asarray(
      dense["bias"], np.float64)
  bn = new.batch_stats["BatchNorm_0"]
  np.testing.assert_allclose(np.asarray(bn["mean"]), 0.1 * h.mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(bn["var"]), 0.9 + 0.1 * h.var(0), rtol=1e-5)
  # Params moved by the optimizer; the loss is the cross-entropy of the train-mode output.
  assert not np.allclose(np.asarray(new.params["Dense_1"]["kernel"]),
                         np.asarray(state.params["Dense_1"]["kernel"]))
  logits, _ = state.apply_fn(state.variables, x[:32], train=True, mutable=["batch_stats"],
                             rngs={"dropout": jax.random.fold_in(state.step_key(), 0)})
  expected = optax.softmax_cross_entropy_with_integer_labels(logits, y[:32]).mean()
  np.testing.assert_allclose(float(metrics["loss"]), float(expected), rtol=1e-6)


def test_same_seed_gives_bitwise_identical_runs(state_factory, toy_data, trees_equal):
  x, y = toy_data
  step = jax.jit(training.make_train_step())

  def run(seed):
    state = state_factory(seed)
    for i in range(4):
      state, _ = step(state, (x[i * 24:(i + 1) * 24], y[i * 24:(i + 1) * 24]))
    return state

  trees_equal(run(0), run(0))
  other = run(1)
  assert not np.array_equal(np.asarray(other.params["Dense_0"]["kernel"]),
                            np.asarray(run(0).params["Dense_0"]["kernel"]))


def test_each_step_draws_a_new_dropout_key(state_factory):
  state = state_factory()
  keys = {tuple(np.asarray(jax.random.key_data(state.replace(step=jnp.asarray(t)).step_key())))
          for t in range(5)}
  assert len(keys) == 5


def test_nonfinite_batch_is_rejected_atomically(state_factory, toy_data, trees_equal):
  x, y = toy_data
  state = state_factory()
  step = jax.jit(training.make_train_step())
  state, _ = step(state, (x[:32], y[:32]))
  poisoned = x[32:64].copy()
  poisoned[3, 2] = np.nan
  after, metrics = step(state, (poisoned, y[32:64]))
  assert not bool(metrics["finite"])
  assert int(after.skipped_steps) == 1
  assert int(after.step) == int(state.step) + 1
  trees_equal(after.params, state.params)
  trees_equal(after.opt_state, state.opt_state)
  trees_equal(after.batch_stats, state.batch_stats)  # running stats not poisoned
  # Training continues normally afterwards.
  resumed, metrics = step(after, (x[64:96], y[64:96]))
  assert bool(metrics["finite"]) and int(resumed.skipped_steps) == 1
  assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree.leaves(
      (resumed.params, resumed.opt_state, resumed.batch_stats, resumed.step)))


def test_overflowing_gradient_is_rejected(state_factory, toy_data, trees_equal):
  """Finite inputs whose gradient overflows are rejected too."""
  x, y = toy_data
  state = state_factory()
  huge = state.params.copy()
  huge["Dense_1"] = {"kernel": state.params["Dense_1"]["kernel"] * 3e38,
                     "bias": state.params["Dense_1"]["bias"]}
  state = state.replace(params=huge)
  after, metrics = jax.jit(training.make_train_step())(state, (x[:32], y[:32]))
  assert not bool(metrics["finite"])
  trees_equal(after.params, state.params)


def test_unguarded_step_lets_nan_through(state_factory, toy_data):
  """The guard is what protects the state: without it the NaN reaches the params."""
  x, y = toy_data
  poisoned = x[:32].copy()
  poisoned[0, 0] = np.nan
  after, _ = jax.jit(training.make_train_step(guard_nonfinite=False))(
      state_factory(), (poisoned, y[:32]))
  assert not np.all(np.isfinite(np.asarray(after.params["Dense_0"]["kernel"])))


def test_eval_step_uses_running_stats_and_no_dropout(state_factory, toy_data):
  x, y = toy_data
  state = state_factory()
  state, _ = jax.jit(training.make_train_step())(state, (x[:32], y[:32]))
  eval_step = jax.jit(training.make_eval_step())
  first, second = eval_step(state, (x, y)), eval_step(state, (x, y))
  assert float(first["loss"]) == float(second["loss"])  # deterministic
  assert float(first["count"]) == len(x)
  logits = state.apply_fn(state.variables, x, train=False)
  np.testing.assert_allclose(
      float(first["accuracy"]), float(np.mean(np.argmax(logits, -1) == y)), rtol=1e-6)


def test_classification_loss_against_numpy():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(7, 4))
  labels = rng.integers(0, 4, 7)
  loss, metrics = training.classification_loss(jnp.asarray(logits, jnp.float32),
                                               jnp.asarray(labels))
  log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  np.testing.assert_allclose(float(loss), -log_softmax[np.arange(7), labels].mean(),
                             rtol=1e-5)
  np.testing.assert_allclose(float(metrics["accuracy"]), np.mean(logits.argmax(1) == labels),
                             rtol=1e-6)

