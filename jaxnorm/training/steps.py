"""Jitted train and eval steps that thread ``batch_stats`` and per-step dropout keys."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxnorm.training import _validate
from jaxnorm.training.guard import keep_if_not_finite
from jaxnorm.training.state import TrainState

Batch = tuple[jax.Array, jax.Array]
LossFn = Callable[[jax.Array, jax.Array], tuple[jax.Array, dict]]


def classification_loss(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, dict]:
  r"""Mean softmax cross-entropy with integer labels, and the accuracy.

  .. math:: L = -\frac{1}{B}\sum_b \log \mathrm{softmax}(z_b)_{y_b}

  with logits :math:`z` = ``logits`` (``(..., C)``) and labels :math:`y` = ``labels``
  (``logits.shape[:-1]``, integers).

  A label outside ``[0, C)`` has no class to index. Labels traced under ``jax.jit``
  cannot raise an error, so such a label makes the loss NaN (rather than training on a
  wrapped-around or clamped class): :func:`make_train_step`'s guard then rejects the
  step and counts it in ``state.skipped_steps``. The epoch runners
  (:func:`~jaxnorm.training.make_scan_epoch`, :func:`~jaxnorm.training.run_epoch_per_step`,
  :func:`~jaxnorm.training.evaluate`) check concrete labels before jit and raise a
  ``ValueError`` naming the label and its position.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxnorm import training
    >>> loss, metrics = training.classification_loss(jnp.zeros((2, 4)), jnp.array([0, 3]))
    >>> round(float(loss), 4), float(metrics["accuracy"])
    (1.3863, 0.5)
  """
  fn = "jaxnorm.training.classification_loss"
  if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
    raise TypeError(f"{fn}: labels must be integer class indices; got dtype "
                    f"{jnp.result_type(labels)}. Cast them, e.g. labels.astype(jnp.int32).")
  if jnp.shape(labels) != jnp.shape(logits)[:-1]:
    raise ValueError(f"{fn}: labels must have shape logits.shape[:-1] = "
                     f"{jnp.shape(logits)[:-1]}; got labels.shape={jnp.shape(labels)}.")
  num_classes = jnp.shape(logits)[-1]
  valid = (labels >= 0) & (labels < num_classes)
  per_example = optax.softmax_cross_entropy_with_integer_labels(
      logits, jnp.clip(labels, 0, num_classes - 1))
  loss = jnp.where(valid, per_example, jnp.nan).mean()
  accuracy = jnp.mean(valid & (jnp.argmax(logits, -1) == labels))
  return loss, {"accuracy": accuracy}


def _output_classes(state: TrainState, x_shape, x_dtype, kwargs: Mapping[str, Any],
                    rng_collections: Sequence[str] | None) -> int | None:
  """The size of the model's last output axis (the classes), found without computing.

  ``rng_collections`` is None in evaluation mode, else the step's rng streams.
  """
  def forward(variables, x):
    if rng_collections is None:
      return state.apply_fn(variables, x, **kwargs)
    rngs = {name: jax.random.key(0) for name in rng_collections}
    return state.apply_fn(variables, x, mutable=["batch_stats"], rngs=rngs, **kwargs)[0]

  if rng_collections is None:
    variables = state.variables
  else:
    variables = {"params": state.params, "batch_stats": state.batch_stats}
  try:
    outputs = jax.eval_shape(forward, variables, jax.ShapeDtypeStruct(x_shape, x_dtype))
  except Exception:  # pylint: disable=broad-except
    return None  # the step itself will raise the model's own error
  shape = getattr(outputs, "shape", None)
  return int(shape[-1]) if shape else None


def _batch_checker(loss_fn: LossFn, kwargs: Mapping[str, Any],
                   rng_collections: Sequence[str] | None):
  """``check_batch(state, x, y, *, batch_size, fn)``: the checks a step's caller can run
  on concrete data before jit (live state, matching lengths, labels in range)."""
  cache: dict[Any, tuple[Any, int | None]] = {}  # key -> (apply_fn, classes)

  def check_batch(state: TrainState, x, y, *, batch_size: int, fn: str) -> None:
    _validate.check_live(state, name="state", fn=fn)
    _validate.check_same_length(x, y, fn=fn)
    if loss_fn is not classification_loss:
      return
    x_shape = (batch_size,) + tuple(jnp.shape(x)[1:])
    key = (id(state.apply_fn), x_shape, str(jnp.result_type(x)), jax.tree.structure(
        state.params), tuple(jnp.shape(leaf) for leaf in jax.tree.leaves(state.params)))
    if key not in cache or cache[key][0] is not state.apply_fn:
      cache[key] = (state.apply_fn, _output_classes(
          state, x_shape, jnp.result_type(x), kwargs, rng_collections))
    num_classes = cache[key][1]
    if num_classes is not None:
      _validate.check_labels(y, num_classes, fn=fn)

  return check_batch


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

  With ``guard_nonfinite`` the update is atomic: if the loss or a gradient is not finite,
  or the update turned a finite value of the params, the optimizer state or
  ``batch_stats`` non-finite (an overflowing Adam second moment, an ``lr * grad`` that
  overflows a weight, a running statistic), params, optimizer state and ``batch_stats``
  keep their values, ``skipped_steps`` grows by one and ``metrics['finite']`` is False
  (see :func:`~jaxnorm.training.keep_if_not_finite`). The step counter advances either
  way, so the next batch gets a fresh dropout key.

  The returned function has a ``check_batch(state, x, y, *, batch_size, fn)``
  attribute (kept by ``jax.jit``) that the epoch runners call on concrete data before
  jit: the state must not be donated, ``x`` and ``y`` must hold as many examples, and
  with :func:`classification_loss` the labels must lie in ``[0, C)`` for the model's
  ``C`` outputs.

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
      new_state, finite = keep_if_not_finite(new_state, state, loss, grads)
      new_state = new_state.replace(
          step=state.step + 1,
          skipped_steps=state.skipped_steps + jnp.logical_not(finite).astype(jnp.int32))
      metrics["finite"] = finite
    return new_state, metrics

  train_step.check_batch = _batch_checker(loss_fn, train_kwargs, tuple(rng_collections))
  return train_step


def make_eval_step(
    loss_fn: LossFn = classification_loss,
    *,
    eval_kwargs: Mapping[str, Any] | None = None,
) -> Callable[[TrainState, Batch], dict]:
  """Builds ``eval_step(state, (x, y)) -> metrics`` in evaluation mode (not jitted).

  Uses the running statistics, no dropout and mutates nothing. ``metrics['count']`` is
  the batch size, so batch metrics can be averaged exactly over uneven batches. Like
  :func:`make_train_step`'s, the function has a ``check_batch`` attribute that
  :func:`~jaxnorm.training.evaluate` calls before jit.
  """
  eval_kwargs = {"train": False} if eval_kwargs is None else dict(eval_kwargs)

  def eval_step(state: TrainState, batch: Batch):
    x, y = batch
    outputs = state.apply_fn(state.variables, x, **eval_kwargs)
    loss, metrics = loss_fn(outputs, y)
    return {"loss": loss, **metrics, "count": jnp.asarray(x.shape[0], jnp.float32)}

  eval_step.check_batch = _batch_checker(loss_fn, eval_kwargs, None)
  return eval_step
