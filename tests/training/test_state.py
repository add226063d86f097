"""TrainState's root key: int seeds, typed keys kept typed, raw key data, checkpoints."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnorm import training

STEP = jax.jit(training.make_train_step())


def _state(rng, state_factory):
  template = state_factory()
  return training.TrainState.create(apply_fn=template.apply_fn, params=template.params,
                                    batch_stats=template.batch_stats, tx=template.tx,
                                    rng=rng)


def _is_typed(key):
  return jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)


def _step_keys(state, steps=4):
  return [np.asarray(jax.random.key_data(state.replace(step=jnp.asarray(t)).step_key()))
          for t in range(steps)]


@pytest.mark.parametrize("seed", [7, np.int64(7), np.uint32(7), jnp.asarray(7)],
                         ids=["int", "numpy-int64", "numpy-uint32", "0-d-array"])
def test_int_seed_gives_a_typed_key_equal_to_jax_random_key(seed, state_factory):
  state = _state(seed, state_factory)
  assert _is_typed(state.rng)
  np.testing.assert_array_equal(jax.random.key_data(state.rng),
                                jax.random.key_data(jax.random.key(7)))


def test_typed_key_stays_typed_with_its_implementation(state_factory):
  key = jax.random.key(3, impl="rbg")
  state = _state(key, state_factory)
  assert _is_typed(state.rng) and state.rng.dtype == key.dtype
  np.testing.assert_array_equal(jax.random.key_data(state.rng), jax.random.key_data(key))
  # The step key is fold_in(rng, step) in rbg, not a re-wrapped threefry key.
  expected = jax.random.key_data(jax.random.fold_in(key, 2))
  np.testing.assert_array_equal(
      jax.random.key_data(state.replace(step=jnp.asarray(2)).step_key()), expected)


def test_raw_key_data_is_kept_raw(state_factory):
  raw = jax.random.PRNGKey(3)
  state = _state(raw, state_factory)
  assert state.rng.dtype == jnp.uint32
  np.testing.assert_array_equal(state.rng, raw)


def test_seed_typed_key_and_raw_key_give_bitwise_identical_runs(state_factory, toy_data,
                                                               trees_equal):
  x, y = toy_data
  runs = []
  for rng in (5, jax.random.key(5), jax.random.PRNGKey(5)):
    state = _state(rng, state_factory)
    assert [k.tolist() for k in _step_keys(state)] == [
        jax.random.key_data(jax.random.fold_in(jax.random.key(5), t)).tolist()
        for t in range(4)]
    for start in (0, 32, 64):
      state, _ = STEP(state, (x[start:start + 32], y[start:start + 32]))
    runs.append(state)
  for other in runs[1:]:
    trees_equal(other.params, runs[0].params)
    trees_equal(other.batch_stats, runs[0].batch_stats)
    trees_equal(other.opt_state, runs[0].opt_state)


@pytest.mark.parametrize("rng, shown", [
    (True, "got True of type bool"),
    (1.5, "got 1.5 of type float"),
    ("0", "got '0' of type str"),
    (jnp.zeros(2, jnp.float32), "dtype float32 and shape \\(2,\\)"),
    (jnp.zeros(2, jnp.int32), "dtype int32 and shape \\(2,\\)"),
])
def test_bad_rng_says_what_to_pass(rng, shown):
  with pytest.raises(TypeError, match=f"int seed or a PRNG key.*{shown}.*rng=0 or "
                                      "rng=jax.random.key\\(0\\)"):
    training.TrainState.create(apply_fn=None, params={}, tx=optax.sgd(0.1), rng=rng)


def test_checkpoint_keeps_a_typed_key(tmp_path, state_factory, trees_equal):
  state = _state(jax.random.key(9), state_factory)
  training.save_checkpoint(str(tmp_path), state, epoch=1)
  restored, _ = training.restore_checkpoint(str(tmp_path), like=_state(0, state_factory))
  assert _is_typed(restored.rng)
  trees_equal(restored, state)
  assert [k.tolist() for k in _step_keys(restored)] == [k.tolist() for k in _step_keys(state)]


def test_checkpoint_with_raw_key_data_restores_into_a_typed_key_state(tmp_path,
                                                                      state_factory):
  """A checkpoint written with raw key data (as jaxnorm 0.1.0 stored every key) resumes
  with the same step keys when the template state holds a typed key."""
  old = _state(jax.random.PRNGKey(9), state_factory)
  training.save_checkpoint(str(tmp_path), old, epoch=1)
  restored, _ = training.restore_checkpoint(str(tmp_path), like=_state(0, state_factory))
  assert [k.tolist() for k in _step_keys(restored)] == [k.tolist() for k in _step_keys(old)]
