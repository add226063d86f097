"""Epoch runners: the scan-fused epoch and the per-step loop agree; exact evaluation."""

import jax
import numpy as np
import pytest

from jaxnorm import training


def test_scan_epoch_equals_per_step_loop(state_factory, toy_data, trees_equal):
  x, y = toy_data
  step = training.make_train_step()
  scan_epoch = training.make_scan_epoch(step, batch_size=16)
  jitted_step = jax.jit(step)
  scan_state, per_step_state = state_factory(), state_factory()
  for epoch in range(2):
    key = jax.random.fold_in(jax.random.key(7), epoch)
    scan_state, scan_metrics = scan_epoch(scan_state, x, y, key)
    per_step_state, step_metrics = training.run_epoch_per_step(
        jitted_step, per_step_state, x, y, key, batch_size=16)
    assert scan_metrics["loss"].shape == (6,)
    np.testing.assert_allclose(np.asarray(scan_metrics["loss"]),
                               np.asarray(step_metrics["loss"]), rtol=1e-6, atol=1e-7)
  # Same batches, same keys, same arithmetic; XLA may fuse the scan body and a lone step
  # differently (an FMA more or less), so floats agree to rounding, the rest exactly.
  leaves = zip(jax.tree_util.tree_flatten_with_path(scan_state)[0],
               jax.tree.leaves(per_step_state))
  for (path, a), b in leaves:
    if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):  # the state's root key
      a, b = jax.random.key_data(a), jax.random.key_data(b)
    a, b = np.asarray(a), np.asarray(b)
    if np.issubdtype(a.dtype, np.floating):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=str(path))
    else:
      np.testing.assert_array_equal(a, b, err_msg=str(path))
  assert int(scan_state.step) == 12


def test_scan_epoch_is_deterministic(state_factory, toy_data, trees_equal):
  x, y = toy_data
  scan_epoch = training.make_scan_epoch(training.make_train_step(), batch_size=16)
  key = jax.random.key(3)
  first, _ = scan_epoch(state_factory(), x, y, key)
  second, _ = scan_epoch(state_factory(), x, y, key)
  trees_equal(first, second)


def test_epoch_batch_indices_is_a_shuffled_partition():
  indices = np.asarray(training.epoch_batch_indices(jax.random.key(0), 50, 8))
  assert indices.shape == (6, 8)
  flat = indices.ravel()
  assert len(set(flat.tolist())) == 48 and flat.min() >= 0 and flat.max() < 50
  assert not np.array_equal(flat, np.sort(flat))
  again = np.asarray(training.epoch_batch_indices(jax.random.key(0), 50, 8))
  np.testing.assert_array_equal(indices, again)
  batches = list(training.iterate_epoch(np.arange(50), np.arange(50), jax.random.key(0), 8))
  np.testing.assert_array_equal(np.stack([b[0] for b in batches]), indices)


@pytest.mark.parametrize("batch_size", [0, 51])
def test_epoch_batch_indices_rejects_bad_batch_size(batch_size):
  with pytest.raises(ValueError, match=r"batch_size must be in \[1, 50\].*got " +
                     str(batch_size)):
    training.epoch_batch_indices(jax.random.key(0), 50, batch_size)


def test_evaluate_weights_uneven_batches_exactly(state_factory, toy_data):
  x, y = toy_data
  state = state_factory()
  eval_step = jax.jit(training.make_eval_step())
  metrics = training.evaluate(eval_step, state, x, y, batch_size=40)  # 40 + 40 + 16
  logits = np.asarray(state.apply_fn(state.variables, x, train=False), np.float64)
  log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  np.testing.assert_allclose(metrics["loss"], -log_softmax[np.arange(len(y)), y].mean(),
                             rtol=1e-5)
  np.testing.assert_allclose(metrics["accuracy"], np.mean(logits.argmax(1) == y), rtol=1e-6)
