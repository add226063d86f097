"""Epoch runners: a ``lax.scan``-fused epoch on device, and a plain per-step loop.

Both shuffle with the same key and visit the same batches in the same order, so they
give the same result for the same seed; use the per-step path when the data does not
fit on the device or you want per-step progress.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from jaxnorm.training.state import TrainState
from jaxnorm.training.steps import Batch


def epoch_batch_indices(key: jax.Array, num_examples: int, batch_size: int) -> jax.Array:
  """``(steps, batch_size)`` indices of one shuffled epoch; the last partial batch is dropped."""
  if batch_size < 1 or batch_size > num_examples:
    raise ValueError(
        f"jaxnorm.training: batch_size must be in [1, {num_examples}] (the number of "
        f"examples); got {batch_size}.")
  steps = num_examples // batch_size
  order = jax.random.permutation(key, num_examples)
  return order[:steps * batch_size].reshape(steps, batch_size)


def make_scan_epoch(
    train_step: Callable[[TrainState, Batch], tuple[TrainState, dict]],
    batch_size: int,
) -> Callable[[TrainState, jax.Array, jax.Array, jax.Array], tuple[TrainState, dict]]:
  """Builds a jitted ``run_epoch(state, x, y, key) -> (state, metrics)``.

  The whole epoch is one XLA program: the permutation, the batch gathers and every step
  (``lax.scan``) run on device with ``x`` and ``y`` kept there. ``metrics`` holds one
  row per step.
  """

  def run_epoch(state, x, y, key):
    indices = epoch_batch_indices(key, x.shape[0], batch_size)

    def body(state, batch_indices):
      return train_step(state, (x[batch_indices], y[batch_indices]))

    return jax.lax.scan(body, state, indices)

  return jax.jit(run_epoch, donate_argnums=0)


def iterate_epoch(x, y, key: jax.Array, batch_size: int) -> Iterator[Batch]:
  """The batches of one shuffled epoch, in the order :func:`make_scan_epoch` uses."""
  indices = np.asarray(epoch_batch_indices(key, len(x), batch_size))
  for batch_indices in indices:
    yield x[batch_indices], y[batch_indices]


def run_epoch_per_step(
    jitted_step: Callable[[TrainState, Batch], tuple[TrainState, dict]],
    state: TrainState,
    x,
    y,
    key: jax.Array,
    batch_size: int,
    *,
    on_step: Callable[[dict], None] | None = None,
) -> tuple[TrainState, dict]:
  """One epoch as a Python loop over a jitted step (data may stay on the host).

  Returns the final state and the per-step metrics stacked like the scan path's.
  """
  rows = []
  for batch in iterate_epoch(x, y, key, batch_size):
    state, metrics = jitted_step(state, batch)
    rows.append(metrics)
    if on_step is not None:
      on_step(metrics)
  return state, jax.tree.map(lambda *values: jnp.stack(values), *rows)


def evaluate(jitted_eval_step, state: TrainState, x, y, batch_size: int = 1024) -> dict:
  """Metrics over all of ``(x, y)``, averaged exactly (weighted by batch sizes)."""
  totals: dict[str, float] = {}
  count = 0.0
  for start in range(0, len(x), batch_size):
    metrics = jitted_eval_step(state, (x[start:start + batch_size], y[start:start + batch_size]))
    n = float(metrics.pop("count"))
    for name, value in metrics.items():
      totals[name] = totals.get(name, 0.0) + float(value) * n
    count += n
  return {name: total / count for name, total in totals.items()}
