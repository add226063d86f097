"""orbax checkpoints: round trip, resume equals uninterrupted, clear errors."""

import os

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from jaxnorm import training


ADAM = optax.adam(1e-2)  # one transform object, so compiled epochs are reused
RUN_EPOCH = training.make_scan_epoch(training.make_train_step(), batch_size=16)


def _train(state, x, y, epochs, first_epoch=0):
  run_epoch = RUN_EPOCH
  for epoch in range(first_epoch, first_epoch + epochs):
    state, _ = run_epoch(state, x, y, jax.random.fold_in(jax.random.key(11), epoch))
  return state


def test_round_trip_keeps_every_field(tmp_path, toy_data, trees_equal, state_factory):
  make_state = state_factory
  x, y = toy_data
  state = _train(make_state(tx=ADAM), x, y, epochs=1)
  training.save_checkpoint(str(tmp_path), state, epoch=1)
  assert training.latest_epoch(str(tmp_path)) == 1
  restored, epoch = training.restore_checkpoint(str(tmp_path), like=make_state(
      tx=ADAM))
  assert epoch == 1
  trees_equal(restored, state)
  assert restored.apply_fn is not None and restored.tx is not None


def test_resume_after_epoch_k_equals_uninterrupted_run(tmp_path, toy_data, trees_equal,
                                                      state_factory):
  make_state = state_factory
  x, y = toy_data
  uninterrupted = _train(make_state(tx=ADAM), x, y, epochs=3)

  interrupted = _train(make_state(tx=ADAM), x, y, epochs=2)
  training.save_checkpoint(str(tmp_path), interrupted, epoch=2)
  del interrupted
  fresh = make_state(seed=5, tx=ADAM)  # different values, same structure
  resumed, epoch = training.restore_checkpoint(str(tmp_path), like=fresh)
  resumed = _train(resumed, x, y, epochs=1, first_epoch=epoch)
  trees_equal(resumed, uninterrupted)


def test_newest_checkpoint_is_restored_and_old_ones_pruned(tmp_path, toy_data, state_factory):
  make_state = state_factory
  x, y = toy_data
  state = make_state()
  for epoch in range(1, 6):
    state = _train(state, x, y, epochs=1, first_epoch=epoch)
    training.save_checkpoint(str(tmp_path), state, epoch=epoch, max_to_keep=2)
  restored, epoch = training.restore_checkpoint(str(tmp_path), like=make_state())
  assert epoch == 5 and int(restored.step) == int(state.step)
  with pytest.raises(FileNotFoundError, match=r"no checkpoint of epoch 1 .*available: \[4, 5\]"):
    training.restore_checkpoint(str(tmp_path), like=make_state(), epoch=1)


def test_missing_checkpoint_is_an_error_not_a_fresh_start(tmp_path, state_factory):
  make_state = state_factory
  with pytest.raises(FileNotFoundError, match="no checkpoint in"):
    training.restore_checkpoint(str(tmp_path / "nowhere"), like=make_state())
  os.makedirs(tmp_path / "empty")
  with pytest.raises(FileNotFoundError, match="no checkpoint in"):
    training.restore_checkpoint(str(tmp_path / "empty"), like=make_state())


def test_corrupt_checkpoint_gives_a_clear_error(tmp_path, state_factory):
  make_state = state_factory
  state = make_state()
  training.save_checkpoint(str(tmp_path), state, epoch=1)
  damaged = 0
  for root, _, files in os.walk(tmp_path / "1"):
    for name in files:
      path = os.path.join(root, name)
      if os.path.getsize(path) > 0 and not name.startswith("_CHECKPOINT_METADATA"):
        with open(path, "r+b") as handle:
          handle.write(b"\xff" * min(64, os.path.getsize(path)))
        damaged += 1
  assert damaged
  with pytest.raises(training.CheckpointError, match="cannot be restored"):
    training.restore_checkpoint(str(tmp_path), like=make_state())


def test_checkpoint_of_another_model_is_rejected(tmp_path, state_factory):
  make_state = state_factory
  training.save_checkpoint(str(tmp_path), make_state(), epoch=1)

  class Other(nn.Module):
    @nn.compact
    def __call__(self, x, train):
      return nn.Dense(7)(x)

  other = Other()
  variables = other.init(jax.random.key(0), np.zeros((2, 6), np.float32), train=False)
  like = training.TrainState.create(apply_fn=other.apply, params=variables["params"],
                                    tx=optax.sgd(0.1), rng=jax.random.key(0))
  with pytest.raises(training.CheckpointError, match="different model"):
    training.restore_checkpoint(str(tmp_path), like=like)
