"""The training toolkit on NNX models: steps, guard, epochs, checkpoints, precise-BN,
folding and MC dropout.

Numbers are compared with the linen toolkit on the same network and variables (its own
tests hold it against references), with float64 NumPy, or with the uninterrupted run.
"""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxnorm
from jaxnorm import nnx as jnnx
from jaxnorm import training


class Net(nnx.Module):
  """Linear -> BatchNorm -> ReLU -> Dropout -> Linear (as the linen SmallNet)."""

  def __init__(self, rngs, *, rate=0.25, width=16):
    self.linear1 = nnx.Linear(6, width, rngs=rngs)
    self.bn = jnnx.BatchNorm(width, momentum=0.9, rngs=rngs)
    self.drop = jnnx.Dropout(rate, rngs=rngs)
    self.linear2 = nnx.Linear(width, 3, rngs=rngs)

  def __call__(self, x):
    return self.linear2(self.drop(nnx.relu(self.bn(self.linear1(x)))))


def _data(n=96, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, 6)).astype(np.float32)
  y = ((x[:, 0] + x[:, 1] > 0).astype(np.int32) + (x[:, 2] > 1).astype(np.int32))
  return x, y


# One optimizer object: nnx.jit caches on the graph definition, which holds ``tx``, so
# states sharing it share compiled steps.
TX = optax.sgd(0.1, momentum=0.9)


def _state(seed=0, tx=TX, **kwargs):
  return training.NNXTrainState(Net(nnx.Rngs(seed), **kwargs), tx,
                                rng=jax.random.key(seed + 100))


def _plain(tree):
  """Arrays of a state as NumPy (PRNG keys as their raw data)."""
  def convert(value):
    if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
      value = jax.random.key_data(value)
    return np.asarray(value)
  return jax.tree.map(convert, nnx.to_pure_dict(nnx.state(tree)))


def _assert_equal(a, b):
  flat_a = jax.tree_util.tree_flatten_with_path(_plain(a))[0]
  flat_b = jax.tree_util.tree_flatten_with_path(_plain(b))[0]
  assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
  for (path, la), (_, lb) in zip(flat_a, flat_b):
    np.testing.assert_array_equal(la, lb, err_msg=str(path))


TRAIN_STEP = nnx.jit(training.make_nnx_train_step())
EVAL_STEP = nnx.jit(training.make_nnx_eval_step())
RUN_EPOCH = training.make_nnx_scan_epoch(training.make_nnx_train_step(), 32)


def test_train_steps_match_the_linen_toolkit_without_dropout():
  class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
      x = nn.Dense(16, name="linear1")(x)
      x = jaxnorm.linen.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(x)
      return nn.Dense(3, name="linear2")(nn.relu(x))

  state = _state(rate=0.0)
  variables = jnnx.state_to_linen(state.model)
  linen_state = training.TrainState.create(
      apply_fn=LinenNet().apply, params=variables["params"],
      batch_stats=variables["batch_stats"], tx=TX,
      rng=jax.random.key(0))
  linen_step = jax.jit(training.make_train_step())
  x, y = _data()
  for i in range(3):
    batch = (x[32 * i:32 * (i + 1)], y[32 * i:32 * (i + 1)])
    state, metrics = TRAIN_STEP(state, batch)
    linen_state, linen_metrics = linen_step(linen_state, batch)
    np.testing.assert_allclose(metrics["loss"], linen_metrics["loss"], rtol=1e-6)
  ours = jnnx.state_to_linen(state.model)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(linen_state.variables), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert int(state.step) == 3


def test_same_seed_same_run_and_keys_depend_only_on_the_step():
  x, y = _data()
  a, b = _state(), _state()
  for i in range(3):
    batch = (x[32 * i:32 * (i + 1)], y[32 * i:32 * (i + 1)])
    a, _ = TRAIN_STEP(a, batch)
    if i == 1:   # side calls that draw dropout keys do not shift the training keys
      nnx.view(b.model, use_running_average=True)(x[:4])   # dropout on, stats fixed
      EVAL_STEP(b, batch)
    b, _ = TRAIN_STEP(b, batch)
  _assert_equal(a.model, b.model)
  c = _state()
  c, m1 = TRAIN_STEP(c, (x[:32], y[:32]))
  c, m2 = TRAIN_STEP(c, (x[:32], y[:32]))   # same batch, next step: other masks
  assert float(m1["loss"]) != float(m2["loss"])


def test_guard_is_atomic_over_params_optimizer_state_and_batch_stats():
  x, y = _data()
  state, _ = TRAIN_STEP(_state(), (x[:32], y[:32]))
  before = _plain(state)
  bad = x[:32].copy()
  bad[3, 2] = np.nan
  state, metrics = TRAIN_STEP(state, (bad, y[:32]))
  after = _plain(state)
  assert not bool(metrics["finite"])
  assert int(state.skipped_steps[...]) == 1 and int(state.step) == 2
  for part in ("model", "optimizer"):
    for path, value in jax.tree_util.tree_flatten_with_path(before[part])[0]:
      if "rngs" in str(path) or "step" in str(path):
        continue   # the RNG streams and the step counter move on
      np.testing.assert_array_equal(value, _get(after[part], path), err_msg=str(path))
  state, metrics = TRAIN_STEP(state, (x[:32], y[:32]))   # training continues
  assert bool(metrics["finite"]) and int(state.skipped_steps[...]) == 1


def _get(tree, path):
  for entry in path:
    tree = tree[entry.key]
  return tree


def test_guard_rejects_non_finite_parameters_from_finite_gradients():
  x, y = _data()
  overflow = optax.chain(optax.sgd(0.1), optax.scale(np.inf))   # finite grads, inf updates
  state = _state(tx=overflow)
  before = _plain(state.model)
  state, metrics = TRAIN_STEP(state, (x[:32], y[:32]))
  assert not bool(metrics["finite"]) and bool(jnp.isfinite(metrics["loss"]))
  np.testing.assert_array_equal(_plain(state.model)["linear1"]["kernel"],
                                before["linear1"]["kernel"])
  unguarded = nnx.jit(training.make_nnx_train_step(guard_nonfinite=False))
  state, metrics = unguarded(_state(tx=overflow), (x[:32], y[:32]))
  assert "finite" not in metrics
  assert not np.all(np.isfinite(state.model.linear1.kernel[...]))


def test_scan_epoch_equals_the_per_step_loop():
  x, y = _data()
  scanned, metrics = RUN_EPOCH(_state(), x, y, jax.random.key(7))
  looped, loop_metrics = training.run_epoch_per_step(TRAIN_STEP, _state(), x, y,
                                                     jax.random.key(7), 32)
  assert metrics["loss"].shape == (3,)
  np.testing.assert_allclose(metrics["loss"], loop_metrics["loss"], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(_plain(scanned)), jax.tree.leaves(_plain(looped))):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  assert int(scanned.step) == 3


def test_evaluate_and_eval_step_change_nothing():
  x, y = _data(90)
  state = _state()
  before = _plain(state)
  full = EVAL_STEP(state, (x, y))
  again = EVAL_STEP(state, (x, y))
  chunked = training.evaluate(EVAL_STEP, state, x, y, batch_size=32)   # 32, 32, 26
  assert float(full["loss"]) == float(again["loss"])
  np.testing.assert_allclose(chunked["loss"], full["loss"], rtol=1e-5)
  np.testing.assert_allclose(chunked["accuracy"], full["accuracy"], rtol=1e-6)
  _assert_equal(state, state)
  after = _plain(state)
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
    np.testing.assert_array_equal(a, b)


def test_checkpoint_resume_is_bit_exact(tmp_path):
  x, y = _data()
  run_epoch = RUN_EPOCH
  key = jax.random.key(3)
  full = _state()
  for epoch in range(3):
    full, _ = run_epoch(full, x, y, jax.random.fold_in(key, epoch))
  part = _state()
  part, _ = run_epoch(part, x, y, jax.random.fold_in(key, 0))
  directory = os.path.join(tmp_path, "ckpt")
  training.save_nnx_checkpoint(directory, part, epoch=1)
  resumed, epoch = training.restore_nnx_checkpoint(directory, like=_state(seed=5))
  assert epoch == 1
  for e in range(epoch, 3):
    resumed, _ = run_epoch(resumed, x, y, jax.random.fold_in(key, e))
  _assert_equal(resumed, full)


def test_checkpoint_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    training.restore_nnx_checkpoint(os.path.join(tmp_path, "none"), like=_state())
  directory = os.path.join(tmp_path, "ckpt")
  training.save_nnx_checkpoint(directory, _state(), epoch=0)
  with pytest.raises(training.CheckpointError, match="different model"):
    training.restore_nnx_checkpoint(directory, like=_state(width=8))


def _bn_net(rngs):
  return nnx.Sequential(nnx.Linear(6, 5, rngs=rngs), jnnx.BatchNorm(5, rngs=rngs), nnx.relu,
                        jnnx.Dropout(0.5, rngs=rngs), nnx.Linear(5, 4, rngs=rngs),
                        nnx.BatchNorm(4, rngs=rngs))


def test_precise_batch_stats_match_float64_sequential_reference():
  model = _bn_net(nnx.Rngs(0))
  x, _ = _data(40)
  batches = [x[:16], x[16:24], x[24:]]
  stats = training.nnx_precise_batch_stats(model, batches)
  assert float(model.layers[1].mean[...].sum()) == 0.0   # the model is not changed
  w1, b1 = (np.asarray(v, np.float64) for v in (model.layers[0].kernel[...],
                                                 model.layers[0].bias[...]))
  w2, b2 = (np.asarray(v, np.float64) for v in (model.layers[4].kernel[...],
                                                 model.layers[4].bias[...]))
  z1 = np.asarray(x, np.float64) @ w1 + b1
  mean1, var1 = z1.mean(0), z1.var(0)
  h = np.maximum((z1 - mean1) / np.sqrt(var1 + 1e-5), 0.0)   # scale 1, bias 0
  z2 = h @ w2 + b2
  np.testing.assert_allclose(stats["layers"][1]["mean"][...], mean1, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats["layers"][1]["var"][...], var1, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats["layers"][5]["mean"][...], z2.mean(0), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(stats["layers"][5]["var"][...], z2.var(0), rtol=1e-5, atol=1e-5)
  nnx.update(model, stats)
  model.eval()
  train_view = nnx.view(nnx.clone(model), use_running_average=False, deterministic=True)
  np.testing.assert_allclose(model(x), train_view(x), rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="no BatchNorm layer"):
    training.nnx_precise_batch_stats(nnx.Linear(6, 2, rngs=nnx.Rngs(0)), batches)
  with pytest.raises(ValueError, match="batches is empty"):
    training.nnx_precise_batch_stats(model, [])


def test_fold_batch_norm_keeps_evaluation_outputs():
  model = nnx.Sequential(
      nnx.Linear(6, 5, use_bias=False, rngs=nnx.Rngs(0)), jnnx.BatchNorm(5, rngs=nnx.Rngs(1)),
      nnx.relu, nnx.Linear(5, 4, rngs=nnx.Rngs(2)), nnx.BatchNorm(4, rngs=nnx.Rngs(3)),
      nnx.relu, jnnx.BatchNorm(4, rngs=nnx.Rngs(4)))
  x, _ = _data(32)
  for _ in range(3):   # non-trivial running statistics
    model(x)
  model.eval()
  pairs = training.nnx_find_foldable_pairs(model, x[:2])
  assert [(p.linear, p.batch_norm) for p in pairs] == [
      (("layers", 0), ("layers", 1)), (("layers", 3), ("layers", 4))]
  folded = training.nnx_fold_batch_norm(model, pairs)
  assert not nnx.state(folded.layers[1]) and folded.layers[0].use_bias
  np.testing.assert_allclose(folded(x), model(x), rtol=1e-5, atol=1e-5)
  assert model.layers[0].bias is None   # the original is unchanged


def test_mc_dropout_predict_samples_masks_and_keeps_bn_in_eval_mode():
  model = _bn_net(nnx.Rngs(0))
  x, _ = _data(8)
  model(x)   # move the running statistics away from their initial values
  before = _plain(model)
  key = jax.random.key(4)
  a = training.nnx_mc_dropout_predict(model, x, key, num_samples=16)
  b = training.nnx_mc_dropout_predict(model, x, key, num_samples=16)
  np.testing.assert_array_equal(a.probs, b.probs)
  assert a.probs.shape == (16, 8, 4) and float(a.std.max()) > 0
  np.testing.assert_allclose(a.probs.sum(-1), 1.0, rtol=1e-5)
  assert not np.allclose(a.probs[0], a.probs[1])
  for u, v in zip(jax.tree.leaves(before), jax.tree.leaves(_plain(model))):
    np.testing.assert_array_equal(u, v)
  model.layers[3].rate = 0.0   # no dropout: every sample is the evaluation output
  c = training.nnx_mc_dropout_predict(model, x, key, num_samples=4)
  expected = jax.nn.softmax(nnx.view(model, deterministic=True, use_running_average=True)(x))
  np.testing.assert_allclose(c.mean, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(c.std, 0.0, atol=1e-6)
