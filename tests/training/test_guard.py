"""The non-finite guard checks what the update produces, atomically, and nothing more."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxnorm import training


def _scaled_loss(scale):
  """Cross-entropy times ``scale``: finite loss and gradients, huge updates."""
  def loss_fn(logits, labels):
    loss, metrics = training.classification_loss(logits, labels)
    return loss * scale, metrics
  return loss_fn


def _gradients(state, batch, loss_fn):
  x, y = batch
  def objective(params):
    logits, _ = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, x,
                               train=True, mutable=["batch_stats"],
                               rngs={"dropout": jax.random.key(0)})
    return loss_fn(logits, y)[0]
  return jax.value_and_grad(objective)(state.params)


def _assert_rejected(state, after, metrics, trees_equal):
  assert not bool(metrics["finite"])
  assert int(after.skipped_steps) == int(state.skipped_steps) + 1
  assert int(after.step) == int(state.step) + 1
  trees_equal(after.params, state.params)
  trees_equal(after.opt_state, state.opt_state)
  trees_equal(after.batch_stats, state.batch_stats)


def test_adam_second_moment_overflow_is_rejected(state_factory, toy_data, trees_equal):
  """A finite gradient of ~1e20 squares to inf in Adam's second moment; the params of
  that step stay finite (the update is mu / inf = 0), only the optimizer state dies."""
  x, y = toy_data
  batch = (x[:32], y[:32])
  loss_fn = _scaled_loss(1e22)
  state = state_factory(tx=optax.adam(1e-3))
  loss, grads = _gradients(state, batch, loss_fn)
  assert np.isfinite(float(loss))
  assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))
  assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads)) > 1e20

  unguarded, _ = jax.jit(training.make_train_step(loss_fn, guard_nonfinite=False))(
      state, batch)
  assert all(np.all(np.isfinite(np.asarray(p))) for p in jax.tree.leaves(unguarded.params))
  assert not all(np.all(np.isfinite(np.asarray(leaf)))
                 for leaf in jax.tree.leaves(unguarded.opt_state)
                 if np.issubdtype(np.asarray(leaf).dtype, np.floating))

  after, metrics = jax.jit(training.make_train_step(loss_fn))(state, batch)
  _assert_rejected(state, after, metrics, trees_equal)


def test_learning_rate_times_gradient_overflow_is_rejected(state_factory, toy_data,
                                                           trees_equal):
  """lr * grad overflows float32 although both and the loss are finite."""
  x, y = toy_data
  batch = (x[:32], y[:32])
  loss_fn = _scaled_loss(1e10)
  state = state_factory(tx=optax.sgd(1e30))
  loss, grads = _gradients(state, batch, loss_fn)
  assert np.isfinite(float(loss))
  assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))

  unguarded, _ = jax.jit(training.make_train_step(loss_fn, guard_nonfinite=False))(
      state, batch)
  assert not all(np.all(np.isfinite(np.asarray(p))) for p in jax.tree.leaves(unguarded.params))

  after, metrics = jax.jit(training.make_train_step(loss_fn))(state, batch)
  _assert_rejected(state, after, metrics, trees_equal)


def _keeps_an_infinite_best_value():
  """Like optax.contrib.reduce_on_plateau, whose best value starts at inf."""
  def init(params):
    del params
    return {"best": jnp.asarray(jnp.inf), "seen": jnp.zeros(())}

  def update(updates, state, params=None):
    del params
    return updates, {"best": state["best"], "seen": state["seen"] + 1}

  return optax.GradientTransformation(init, update)


def test_optimizer_state_that_starts_infinite_is_accepted(state_factory, toy_data):
  """An inf the optimizer keeps on purpose is not an overflow made by the update."""
  x, y = toy_data
  tx = optax.chain(_keeps_an_infinite_best_value(), optax.sgd(0.1))
  state = state_factory(tx=tx)
  assert not training.all_finite(state.opt_state)
  step = jax.jit(training.make_train_step())
  for i in range(2):
    state, metrics = step(state, (x[i * 32:(i + 1) * 32], y[i * 32:(i + 1) * 32]))
    assert bool(metrics["finite"])
  assert int(state.skipped_steps) == 0 and float(state.opt_state[0]["seen"]) == 2


# ----------------------------------------------------------------- the helpers


def test_all_finite_kinds_of_leaves():
  assert bool(training.all_finite())
  assert bool(training.all_finite({"count": jnp.int32(2**31 - 1), "flag": jnp.bool_(True),
                                   "key": jax.random.key(0)}))
  assert bool(training.all_finite([jnp.ones(3, jnp.bfloat16)], np.float64(3.0)))
  assert not bool(training.all_finite({"a": jnp.ones(2)}, {"b": jnp.array([0.0, -jnp.inf])}))
  assert not bool(training.all_finite(jnp.array([1 + 1j, complex(0, np.nan)], jnp.complex64)))
  assert not bool(training.all_finite(np.array([1.0, np.inf], np.float16)))


def _reference(new, old, checked):
  """NumPy float64 reference of the rule."""
  if not all(np.all(np.isfinite(np.asarray(c, np.float64))) for c in checked):
    return False
  for a, b in zip(new, old):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if np.any(~np.isfinite(a) & np.isfinite(b)):
      return False
  return True


_SPECIAL = st.sampled_from([0.0, 1.5, -2.0, np.inf, -np.inf, np.nan, 3e38])


_ROWS = st.lists(st.lists(_SPECIAL, min_size=3, max_size=3), min_size=2, max_size=2)


class KeepIfNotFiniteTest(chex.TestCase):
  """Against the NumPy reference, with and without jit, float32 and bfloat16."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_reference(self):
    guard = self.variant(training.keep_if_not_finite)

    @settings(max_examples=30, deadline=None)
    @given(new=_ROWS, old=_ROWS, checked=st.lists(_SPECIAL, min_size=2, max_size=2),
           bf16=st.booleans())
    def check(new, old, checked, bf16):
      dtype = jnp.bfloat16 if bf16 else jnp.float32
      new_tree = {"w": jnp.asarray(new[0], dtype), "b": jnp.asarray(new[1], dtype),
                  "n": jnp.int32(3)}
      old_tree = {"w": jnp.asarray(old[0], dtype), "b": jnp.asarray(old[1], dtype),
                  "n": jnp.int32(2)}
      chosen, finite = guard(new_tree, old_tree, jnp.asarray(checked, jnp.float32))
      expected = _reference([new_tree["b"], new_tree["w"]], [old_tree["b"], old_tree["w"]],
                            [checked])
      assert bool(finite) == expected
      source = new_tree if expected else old_tree
      for name in ("w", "b", "n"):  # every leaf from the same side: atomic
        np.testing.assert_array_equal(np.asarray(chosen[name], np.float64),
                                      np.asarray(source[name], np.float64))

    check()


def test_keep_if_not_finite_needs_matching_structures():
  with pytest.raises(ValueError):
    training.keep_if_not_finite({"a": jnp.ones(2)}, {"b": jnp.ones(2)})
