"""Jitted train and eval steps that thread ``batch_stats`` and per-step dropout keys."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxnorm.training.state import TrainState

Batch = tuple[jax.Array, jax.Array]
LossFn = Callable[[jax.Array, jax.Array], tuple[jax.Array, dict]]


def classification_loss(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, dict]:
  r"""Mean softmax cross-entropy with integer labels, and the accuracy.

  .. math:: L = -\frac{1}{B}\sum_b \log \mathrm{softmax}(z_b)_{y_b}
  """
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
  return loss, {"accuracy": accuracy}


def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def make_train_step(
    loss_fn: LossFn = classification_loss,
    *,
    guard_nonfinite: bool = True,
    rng_collections: Sequence[str] = ("dropout",),
    train_kwargs: Mapping[str, Any] | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
  """Builds ``train_step(state, (x, y)) -> (state, metrics)`` (not jitted: wrap it).

  Each step calls ``state.apply_fn(variables, x, **train_kwargs, mutable=['batch_stats'],
  rngs=...)`` with keys derived from ``fold_in(state.rng, state.step)`` (one per rng
  collection), differentiates ``loss_fn(outputs, y)`` and applies ``state.tx``.

  With ``guard_nonfinite`` the update is atomic: if the loss, a gradient or a new
  running statistic is not finite, params, optimizer state and ``batch_stats`` keep
  their values, ``skipped_steps`` grows by one and ``metrics['finite']`` is False. The
  step counter advances either way, so the next batch gets a fresh dropout key.

  Args:
    loss_fn: ``(outputs, targets) -> (scalar loss, metrics dict)``.
    guard_nonfinite: reject non-finite steps as described above.
    rng_collections: rng streams to provide (``'dropout'`` as in flax.linen).
    train_kwargs: keyword arguments selecting training mode (default
      ``{'train': True}``).
  """
  train_kwargs = {"train": True} if train_kwargs is None else dict(train_kwargs)

  def train_step(state: TrainState, batch: Batch):
    x, y = batch
    step_key = state.step_key()
    rngs = {name: jax.random.fold_in(step_key, i) for i, name in enumerate(rng_collections)}

    def objective(params):
      outputs, mutated = state.apply_fn(
          {"params": params, "batch_stats": state.batch_stats}, x,
          mutable=["batch_stats"], rngs=rngs, **train_kwargs)
      loss, metrics = loss_fn(outputs, y)
      return loss, (mutated.get("batch_stats", state.batch_stats), metrics)

    (loss, (batch_stats, metrics)), grads = jax.value_and_grad(objective, has_aux=True)(
        state.params)
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    metrics = {"loss": loss, **metrics}
    if guard_nonfinite:
      finite = _all_finite((loss, grads, batch_stats))
      new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
      new_state = new_state.replace(
          step=state.step + 1,
          skipped_steps=state.skipped_steps + jnp.logical_not(finite).astype(jnp.int32))
      metrics["finite"] = finite
    return new_state, metrics

  return train_step


def make_eval_step(
    loss_fn: LossFn = classification_loss,
    *,
    eval_kwargs: Mapping[str, Any] | None = None,
) -> Callable[[TrainState, Batch], dict]:
  """Builds ``eval_step(state, (x, y)) -> metrics`` in evaluation mode (not jitted).

  Uses the running statistics, no dropout and mutates nothing. ``metrics['count']`` is
  the batch size, so batch metrics can be averaged exactly over uneven batches.
  """
  eval_kwargs = {"train": False} if eval_kwargs is None else dict(eval_kwargs)

  def eval_step(state: TrainState, batch: Batch):
    x, y = batch
    outputs = state.apply_fn(state.variables, x, **eval_kwargs)
    loss, metrics = loss_fn(outputs, y)
    return {"loss": loss, **metrics, "count": jnp.asarray(x.shape[0], jnp.float32)}

  return eval_step
