"""Epoch runners: a ``lax.scan``-fused epoch on device, and a plain per-step loop.

Both shuffle with the same key and visit the same batches in the same order, so they
give the same result for the same seed; use the per-step path when the data does not
fit on the device or you want per-step progress.

Before anything is jitted, the runners check what they can see: the state is alive
(not donated), ``x`` and ``y`` hold as many examples, and with
:func:`~jaxnorm.training.classification_loss` every label lies in ``[0, C)`` for the
model's ``C`` outputs (errors name the label and its position). Labels traced under
an outer ``jax.jit`` cannot be checked; such a label makes the loss NaN and the guarded
step is skipped (counted in ``state.skipped_steps``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from jaxnorm.training import _validate
from jaxnorm.training.state import TrainState
from jaxnorm.training.steps import Batch


def _check_batch_size(batch_size, *, fn: str, positive: bool = True) -> int:
  if isinstance(batch_size, (bool, np.bool_)) or not isinstance(batch_size,
                                                                (int, np.integer)):
    raise TypeError(f"{fn}: batch_size must be an int; got {batch_size!r} of type "
                    f"{type(batch_size).__name__}.")
  if positive and batch_size < 1:
    raise ValueError(f"{fn}: batch_size must be >= 1; got {batch_size}.")
  return int(batch_size)


def _check_inputs(step, state, x, y, batch_size: int, *, fn: str) -> None:
  """The pre-jit checks: the step's own ``check_batch`` if it has one (see
  :func:`~jaxnorm.training.make_train_step`), else a live state and matching lengths."""
  check_batch = getattr(step, "check_batch", None)
  if check_batch is not None:
    check_batch(state, x, y, batch_size=batch_size, fn=fn)
  else:
    _validate.check_live(state, name="state", fn=fn)
    _validate.check_same_length(x, y, fn=fn)


def epoch_batch_indices(key: jax.Array, num_examples: int, batch_size: int) -> jax.Array:
  """``(steps, batch_size)`` indices of one shuffled epoch; the last partial batch is dropped."""
  _check_batch_size(batch_size, fn="jaxnorm.training", positive=False)
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
    *,
    donate: bool = True,
) -> Callable[[TrainState, jax.Array, jax.Array, jax.Array], tuple[TrainState, dict]]:
  """Builds ``run_epoch(state, x, y, key) -> (state, metrics)``, one jitted program.

  The whole epoch is one XLA program: the permutation, the batch gathers and every step
  (``lax.scan``) run on device with ``x`` and ``y`` kept there. ``metrics`` holds one
  row per step. Before the program runs, the state, the lengths of ``x`` and ``y`` and
  (for :func:`~jaxnorm.training.make_train_step` steps) the labels are checked.

  Donation: with ``donate=True`` (the default) the input state's buffers are reused for
  the returned state, so training holds one copy of params and optimizer state instead
  of two. The input state is deleted by the call, and so is everything that shares its
  arrays, such as the ``variables`` from ``model.init`` that built it: always continue
  with the returned state (``state, metrics = run_epoch(state, ...)``). jaxnorm's
  functions given a deleted state raise a ``ValueError`` that says so; to keep the input
  state (e.g. to compare before and after) use ``donate=False``.

  ``run_epoch.jitted`` is the jitted epoch without the checks (e.g. for ``.lower()``).

  Args:
    train_step: ``(state, (x, y)) -> (state, metrics)``, e.g. from
      :func:`~jaxnorm.training.make_train_step` (not jitted; the epoch jits it).
    batch_size: examples per step; the last partial batch is dropped.
    donate: reuse (and delete) the input state's buffers.

  Example:
    >>> import jax, jax.numpy as jnp, optax, flax.linen as nn
    >>> import jaxnorm
    >>> from jaxnorm import training
    >>> class Net(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x, train):
    ...     x = jaxnorm.BatchNorm(use_running_average=not train)(nn.Dense(8)(x))
    ...     return nn.Dense(3)(nn.relu(x))
    >>> x, y = jnp.ones((8, 4)), jnp.zeros(8, jnp.int32)
    >>> variables = Net().init(jax.random.key(0), x, train=False)
    >>> state = training.TrainState.create(apply_fn=Net().apply,
    ...     params=variables["params"], batch_stats=variables["batch_stats"],
    ...     tx=optax.sgd(0.1), rng=jax.random.key(1))
    >>> run_epoch = training.make_scan_epoch(training.make_train_step(), 4)
    >>> state, metrics = run_epoch(state, x, y, jax.random.key(2))
    >>> int(state.step), metrics["loss"].shape
    (2, (2,))
    >>> run_epoch(state, x, y.at[5].set(3), jax.random.key(3))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: jaxnorm.training.make_scan_epoch(...) run_epoch: labels must be ... y[5] = 3...
  """
  fn = "jaxnorm.training.make_scan_epoch"
  batch_size = _check_batch_size(batch_size, fn=fn)
  donate = bool(donate)

  def epoch(state, x, y, key):
    indices = epoch_batch_indices(key, x.shape[0], batch_size)

    def body(state, batch_indices):
      return train_step(state, (x[batch_indices], y[batch_indices]))

    return jax.lax.scan(body, state, indices)

  jitted = jax.jit(epoch, donate_argnums=0 if donate else ())

  def run_epoch(state, x, y, key):
    _check_inputs(train_step, state, x, y, batch_size, fn=f"{fn}(...) run_epoch")
    return jitted(state, x, y, key)

  run_epoch.jitted = jitted
  return run_epoch


def iterate_epoch(x, y, key: jax.Array, batch_size: int) -> Iterator[Batch]:
  """The batches of one shuffled epoch, in the order :func:`make_scan_epoch` uses."""
  _validate.check_same_length(x, y, fn="jaxnorm.training.iterate_epoch")
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

  Returns the final state and the per-step metrics stacked like the scan path's. The
  checks of :func:`make_scan_epoch` run once, before the first step.
  """
  fn = "jaxnorm.training.run_epoch_per_step"
  batch_size = _check_batch_size(batch_size, fn=fn)
  _check_inputs(jitted_step, state, x, y, batch_size, fn=fn)
  rows = []
  for batch in iterate_epoch(x, y, key, batch_size):
    state, metrics = jitted_step(state, batch)
    rows.append(metrics)
    if on_step is not None:
      on_step(metrics)
  return state, jax.tree.map(lambda *values: jnp.stack(values), *rows)


def evaluate(jitted_eval_step, state: TrainState, x, y, batch_size: int = 1024) -> dict:
  """Metrics over all of ``(x, y)``, averaged exactly (weighted by batch sizes).

  The state, the lengths of ``x`` and ``y`` and the labels are checked first, as in
  :func:`make_scan_epoch`.
  """
  fn = "jaxnorm.training.evaluate"
  batch_size = _check_batch_size(batch_size, fn=fn)
  num_examples = _validate.check_same_length(x, y, fn=fn)
  if num_examples == 0:
    raise ValueError(f"{fn}: x and y hold no examples; metrics of an empty set are "
                     "undefined. Pass at least one example.")
  _check_inputs(jitted_eval_step, state, x, y, min(batch_size, num_examples), fn=fn)
  totals: dict[str, float] = {}
  count = 0.0
  for start in range(0, len(x), batch_size):
    metrics = jitted_eval_step(state, (x[start:start + batch_size], y[start:start + batch_size]))
    n = float(metrics.pop("count"))
    for name, value in metrics.items():
      totals[name] = totals.get(name, 0.0) + float(value) * n
    count += n
  return {name: total / count for name, total in totals.items()}
