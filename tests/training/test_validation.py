"""What the toolkit checks before jit: labels, lengths, donated (deleted) states."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnorm import training

STEP = training.make_train_step()
JITTED_STEP = jax.jit(STEP)
EVAL_STEP = jax.jit(training.make_eval_step())
RUN_EPOCH = training.make_scan_epoch(STEP, batch_size=16)
RUN_EPOCH_KEEP = training.make_scan_epoch(STEP, batch_size=16, donate=False)
KEY = jax.random.key(5)
NUM_CLASSES = 3  # SmallNet's outputs


def _runners():
  """Every runner that takes (state, x, y), called the way users call it."""
  return {
      "scan": lambda state, x, y: RUN_EPOCH_KEEP(state, x, y, KEY),
      "per-step": lambda state, x, y: training.run_epoch_per_step(
          JITTED_STEP, state, x, y, KEY, batch_size=16),
      "evaluate": lambda state, x, y: training.evaluate(EVAL_STEP, state, x, y,
                                                        batch_size=40),
  }


RUNNERS = sorted(_runners())


# ----------------------------------------------------------------- labels


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("label,position", [(-1, 5), (NUM_CLASSES, 70), (2**31 - 1, 0)])
def test_label_out_of_range_is_named_with_its_position(state_factory, toy_data, runner,
                                                       label, position):
  x, y = toy_data
  y = y.copy()
  y[position] = label
  state = state_factory()
  with pytest.raises(ValueError) as excinfo:
    _runners()[runner](state, x, y)
  message = str(excinfo.value)
  assert f"y[{position}] = {label}" in message
  assert f"[0, {NUM_CLASSES})" in message and "1 label(s)" in message
  assert not training._validate.deleted_leaves(state)  # checked before anything ran


def test_every_bad_label_is_counted_and_the_first_ones_shown(state_factory, toy_data):
  x, y = toy_data
  y = y.copy()
  y[[3, 10, 11, 50, 60, 61, 90]] = [-1, 3, 7, -5, 4, 9, -2]
  with pytest.raises(ValueError) as excinfo:
    RUN_EPOCH_KEEP(state_factory(), x, jnp.asarray(y), KEY)  # a device array too
  message = str(excinfo.value)
  assert "7 label(s)" in message
  assert "y[3] = -1, y[10] = 3, y[11] = 7, y[50] = -5, y[60] = 4, ..." in message
  assert "y[61]" not in message


@pytest.mark.parametrize("runner", RUNNERS)
def test_float_labels_are_a_type_error(state_factory, toy_data, runner):
  x, y = toy_data
  with pytest.raises(TypeError, match=r"integer class labels.*float32"):
    _runners()[runner](state_factory(), x, y.astype(np.float32))


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("y_length", [95, 97, 48])
def test_x_and_y_of_different_lengths(state_factory, toy_data, runner, y_length):
  x, y = toy_data
  y = np.resize(y, y_length)
  with pytest.raises(ValueError) as excinfo:
    _runners()[runner](state_factory(), x, y)
  message = str(excinfo.value)
  assert "same number of examples" in message
  assert f"x.shape=(96, 6) (96 examples)" in message
  assert f"y.shape=({y_length},) ({y_length} labels)" in message


def test_iterate_epoch_checks_lengths(toy_data):
  x, y = toy_data
  with pytest.raises(ValueError, match="same number of examples"):
    next(training.iterate_epoch(x, y[:-1], KEY, 16))


def test_valid_labels_pass_and_custom_losses_are_not_label_checked(state_factory, toy_data):
  x, y = toy_data
  state, metrics = RUN_EPOCH_KEEP(state_factory(), x, y, KEY)
  assert bool(np.all(metrics["finite"]))

  def squared_error(outputs, targets):  # regression targets: any real value
    return jnp.mean((outputs[:, 0] - targets) ** 2), {}

  regression_epoch = training.make_scan_epoch(training.make_train_step(squared_error), 32,
                                              donate=False)
  targets = np.linspace(-5.0, 5.0, len(x)).astype(np.float32)
  state, _ = regression_epoch(state_factory(), x, targets, KEY)
  assert int(state.step) == 3
  with pytest.raises(ValueError, match="same number of examples"):
    regression_epoch(state_factory(), x, targets[:-1], KEY)


def test_traced_labels_cannot_be_checked_and_make_the_step_skip(state_factory, toy_data,
                                                                trees_equal):
  """Documented behaviour under jit: the loss is NaN, the guard keeps the state."""
  x, y = toy_data
  state = state_factory()
  for label in (-1, NUM_CLASSES):
    bad = y[:32].copy()
    bad[4] = label
    after, metrics = JITTED_STEP(state, (x[:32], bad))
    assert np.isnan(float(metrics["loss"])) and not bool(metrics["finite"])
    assert int(after.skipped_steps) == 1
    trees_equal(after.params, state.params)
    trees_equal(after.batch_stats, state.batch_stats)


def test_classification_loss_never_uses_a_wrapped_or_clamped_class():
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(4, 5)), jnp.float32)
  for labels in ([0, 1, 2, -1], [0, 1, 2, 5], [0, 1, 2, -6]):
    loss, metrics = training.classification_loss(logits, jnp.asarray(labels))
    assert np.isnan(float(loss))
  loss, metrics = training.classification_loss(logits, jnp.asarray([0, 1, 2, 4]))
  log_p = np.asarray(logits, np.float64) - np.log(np.exp(np.asarray(logits, np.float64)).sum(
      1, keepdims=True))
  np.testing.assert_allclose(float(loss), -log_p[np.arange(4), [0, 1, 2, 4]].mean(),
                             rtol=1e-6)
  with pytest.raises(TypeError, match="integer class indices.*float32"):
    training.classification_loss(logits, jnp.zeros(4))
  expected = "logits.shape[:-1] = (4,); got labels.shape=(4, 1)"
  with pytest.raises(ValueError, match=re.escape(expected)):
    training.classification_loss(logits, jnp.zeros((4, 1), jnp.int32))


@pytest.mark.parametrize("batch_size,error", [(0, ValueError), (2.0, TypeError),
                                              (True, TypeError)])
def test_bad_batch_size(batch_size, error):
  with pytest.raises(error, match="batch_size"):
    training.make_scan_epoch(STEP, batch_size)


def test_evaluate_rejects_an_empty_set(state_factory):
  with pytest.raises(ValueError, match="no examples"):
    training.evaluate(EVAL_STEP, state_factory(), np.zeros((0, 6), np.float32),
                      np.zeros(0, np.int32))


# ----------------------------------------------------------------- donation


def _fresh(state_factory):
  """A state and the variables it was built from (sharing its arrays, as after init)."""
  state = state_factory()
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  return state.apply_fn, variables, state


def test_donated_state_gives_clear_errors_everywhere(tmp_path, toy_data, state_factory):
  x, y = toy_data
  apply_fn, variables, state = _fresh(state_factory)
  new_state, _ = RUN_EPOCH(state, x, y, KEY)
  assert training._validate.deleted_leaves(state)  # donated: the buffers were reused
  assert training._validate.deleted_leaves(variables)  # shared with the state

  calls = {
      "make_scan_epoch": lambda: RUN_EPOCH(state, x, y, KEY),
      "run_epoch_per_step": lambda: training.run_epoch_per_step(JITTED_STEP, state, x, y,
                                                                KEY, 16),
      "evaluate": lambda: training.evaluate(EVAL_STEP, state, x, y),
      "save_checkpoint": lambda: training.save_checkpoint(str(tmp_path), state, 1),
      "precise_batch_stats": lambda: training.precise_batch_stats(apply_fn, variables,
                                                                  [x]),
      "mc_dropout_predict": lambda: training.mc_dropout_predict(apply_fn, variables, x,
                                                                KEY, num_samples=2),
      "fold_batch_norm": lambda: training.fold_batch_norm(variables, []),
      "TrainState.create": lambda: training.TrainState.create(
          apply_fn=apply_fn, params=variables["params"], tx=optax.sgd(0.1),
          batch_stats=variables["batch_stats"], rng=KEY),
  }
  for name, call in calls.items():
    with pytest.raises(ValueError) as excinfo:
      call()
    message = str(excinfo.value)
    assert name in message, message
    assert "deleted" in message and "donate=False" in message, message
    assert "['BatchNorm_0']['" in message, message  # names the deleted leaves
  assert not (tmp_path / "1").exists()
  # The returned state is alive and keeps training.
  new_state, metrics = RUN_EPOCH(new_state, x, y, KEY)
  assert bool(np.all(metrics["finite"]))


def test_non_donating_epoch_keeps_the_input_and_gives_the_same_result(
    state_factory, toy_data, trees_equal):
  x, y = toy_data
  _, variables, state = _fresh(state_factory)
  kept, _ = RUN_EPOCH_KEEP(state, x, y, KEY)
  assert not training._validate.deleted_leaves((state, variables))
  again, _ = RUN_EPOCH_KEEP(state, x, y, KEY)  # the input is still usable
  trees_equal(kept, again)
  donated, _ = RUN_EPOCH(state, x, y, KEY)
  trees_equal(donated, kept)
