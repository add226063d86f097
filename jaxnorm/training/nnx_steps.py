"""Training NNX models: a train state, train and eval steps, a scan-fused epoch.

The NNX counterpart of :class:`~jaxnorm.training.TrainState`,
:func:`~jaxnorm.training.make_train_step`, :func:`~jaxnorm.training.make_eval_step` and
:func:`~jaxnorm.training.make_scan_epoch`, with the same guarantees: the dropout keys of
step ``t`` come from ``fold_in(rng, t)`` (the same seed gives bitwise-identical runs,
and the scan-fused epoch equals the per-step loop up to float32 rounding: XLA may fuse
the scanned step differently), and a step with a non-finite loss,
gradient, parameter, optimizer state or running statistic changes nothing but the step
counter and ``skipped_steps``. The steps take and return the state, so they work under
``nnx.jit`` (which keeps shared references such as tied weights) and with
:func:`~jaxnorm.training.run_epoch_per_step` and :func:`~jaxnorm.training.evaluate`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxnorm.training.loop import epoch_batch_indices
from jaxnorm.training.state import key_data
from jaxnorm.training.guard import keep_if_not_finite
from jaxnorm.training.steps import Batch, LossFn, classification_loss

#: ``nnx.view`` arguments of training and evaluation mode.
TRAIN_VIEW: Mapping[str, bool] = {"deterministic": False, "use_running_average": False}
EVAL_VIEW: Mapping[str, bool] = {"deterministic": True, "use_running_average": True}


class RunState(nnx.Variable):
  """Bookkeeping of a training run (root key, skip counter): never optimized."""


class NNXTrainState(nnx.Pytree):
  """An NNX model, its ``nnx.Optimizer``, the root key and a counter of skipped steps.

  Everything that decides the rest of a run, in one object for ``nnx.jit``, the
  scan-fused epoch and checkpoints.

  Attributes:
    model: the ``nnx.Module``.
    optimizer: ``nnx.Optimizer(model, tx, wrt=wrt)``; its ``step`` counts train steps.
    rng: raw data of the root key; step ``t`` reseeds the model's RNG streams from
      ``fold_in(rng, t)``.
    skipped_steps: how many steps the non-finite guard rejected.

  Example:
    >>> import jax, optax
    >>> from flax import nnx
    >>> from jaxnorm import training
    >>> model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    >>> state = training.NNXTrainState(model, optax.sgd(0.1), rng=jax.random.key(1))
    >>> int(state.step), int(state.skipped_steps[...])
    (0, 0)
  """

  def __init__(self, model: nnx.Module, tx: optax.GradientTransformation, *,
               rng: jax.Array, wrt: Any = nnx.Param):
    self.model = model
    self.optimizer = nnx.Optimizer(model, tx, wrt=wrt)
    self.rng = RunState(key_data(rng))
    self.skipped_steps = RunState(jnp.zeros((), jnp.int32))

  @property
  def step(self) -> jax.Array:
    """The number of train steps taken (the optimizer's step counter)."""
    return self.optimizer.step[...]

  def step_key(self) -> jax.Array:
    """The key of the current step: ``fold_in(rng, step)``."""
    return jax.random.fold_in(jax.random.wrap_key_data(self.rng[...]), self.step)


def reseed_streams(model: nnx.Module, key: jax.Array) -> None:
  """Reseeds every RNG stream of ``model`` from ``key`` (one key per stream name).

  Streams are reseeded with ``nnx.reseed``, so each layer's stream gets its own key;
  a layer built from ``nnx.Rngs(seed)`` draws its dropout key from the ``default``
  stream, which is reseeded too.
  """
  tags = sorted({node.key.tag for _, node in nnx.iter_graph(model)
                 if isinstance(node, nnx.RngStream)})
  if tags:
    nnx.reseed(model, **{tag: jax.random.fold_in(key, i) for i, tag in enumerate(tags)})


def _guarded(state: NNXTrainState):
  """What the non-finite guard restores: Params, BatchStats and the optax state."""
  return (nnx.state(state.model, nnx.Any(nnx.Param, nnx.BatchStat)),
          nnx.state(state.optimizer.opt_state))


def make_nnx_train_step(
    loss_fn: LossFn = classification_loss,
    *,
    guard_nonfinite: bool = True,
    train_view: Mapping[str, Any] | None = None,
) -> Callable[[NNXTrainState, Batch], tuple[NNXTrainState, dict]]:
  """Builds ``train_step(state, (x, y)) -> (state, metrics)`` (not jitted: wrap it).

  Each step reseeds the model's RNG streams from ``state.step_key()``, runs
  ``nnx.view(state.model, **train_view)(x)`` (training mode: dropout on, batch
  statistics), differentiates ``loss_fn(outputs, y)`` with respect to the optimizer's
  ``wrt`` variables and applies ``state.optimizer.update``. BatchStats move as the
  layers update them.

  With ``guard_nonfinite`` the update is atomic: if the loss, a gradient, a new
  parameter, the new optimizer state or a new running statistic is not finite, Params,
  optimizer state and BatchStats keep their values, ``skipped_steps`` grows by one and
  ``metrics['finite']`` is False. The step counter advances either way, so the next
  batch gets fresh dropout keys.

  Args:
    loss_fn: ``(outputs, targets) -> (scalar loss, metrics dict)``.
    guard_nonfinite: reject non-finite steps as described above.
    train_view: ``nnx.view`` arguments of training mode (default
      ``{'deterministic': False, 'use_running_average': False}``).

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from flax import nnx
    >>> from jaxnorm import training
    >>> state = training.NNXTrainState(nnx.Linear(3, 2, rngs=nnx.Rngs(0)), optax.sgd(0.1),
    ...                                rng=jax.random.key(1))
    >>> train_step = nnx.jit(training.make_nnx_train_step())
    >>> state, metrics = train_step(state, (jnp.ones((4, 3)), jnp.zeros(4, jnp.int32)))
    >>> int(state.step), bool(metrics["finite"])
    (1, True)
  """
  view = dict(TRAIN_VIEW if train_view is None else train_view)

  def train_step(state: NNXTrainState, batch: Batch):
    x, y = batch
    reseed_streams(state.model, state.step_key())
    before = nnx.as_pure(_guarded(state)) if guard_nonfinite else None  # arrays: a snapshot

    def objective(model):
      loss, metrics = loss_fn(model(x), y)
      return loss, metrics

    model = nnx.view(state.model, raise_if_not_found=False, **view)
    (loss, metrics), grads = nnx.value_and_grad(
        objective, argnums=nnx.DiffState(0, state.optimizer.wrt), has_aux=True)(model)
    state.optimizer.update(state.model, grads)
    metrics = {"loss": loss, **metrics}
    if guard_nonfinite:
      kept, finite = keep_if_not_finite(nnx.as_pure(_guarded(state)), before, loss,
                                        nnx.as_pure(grads))
      nnx.update(state.model, kept[0])
      nnx.update(state.optimizer.opt_state, kept[1])
      state.skipped_steps[...] += jnp.logical_not(finite).astype(jnp.int32)
      metrics["finite"] = finite
    return state, metrics

  return train_step


def make_nnx_eval_step(
    loss_fn: LossFn = classification_loss,
    *,
    eval_view: Mapping[str, Any] | None = None,
) -> Callable[[NNXTrainState, Batch], dict]:
  """Builds ``eval_step(state, (x, y)) -> metrics`` in evaluation mode (not jitted).

  Runs ``nnx.view(state.model, **eval_view)(x)`` (default: running statistics, no
  dropout), which changes no variable. ``metrics['count']`` is the batch size, as for
  :func:`~jaxnorm.training.make_eval_step`, so :func:`~jaxnorm.training.evaluate`
  averages exactly over uneven batches.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from flax import nnx
    >>> from jaxnorm import training
    >>> state = training.NNXTrainState(nnx.Linear(3, 2, rngs=nnx.Rngs(0)), optax.sgd(0.1),
    ...                                rng=jax.random.key(1))
    >>> eval_step = nnx.jit(training.make_nnx_eval_step())
    >>> float(eval_step(state, (jnp.ones((4, 3)), jnp.zeros(4, jnp.int32)))["count"])
    4.0
  """
  view = dict(EVAL_VIEW if eval_view is None else eval_view)

  def eval_step(state: NNXTrainState, batch: Batch):
    x, y = batch
    outputs = nnx.view(state.model, raise_if_not_found=False, **view)(x)
    loss, metrics = loss_fn(outputs, y)
    return {"loss": loss, **metrics, "count": jnp.asarray(x.shape[0], jnp.float32)}

  return eval_step


def make_nnx_scan_epoch(
    train_step: Callable[[NNXTrainState, Batch], tuple[NNXTrainState, dict]],
    batch_size: int,
) -> Callable[[NNXTrainState, jax.Array, jax.Array, jax.Array], tuple[NNXTrainState, dict]]:
  """Builds an ``nnx.jit``-ed ``run_epoch(state, x, y, key) -> (state, metrics)``.

  The whole epoch is one XLA program: the permutation
  (:func:`~jaxnorm.training.epoch_batch_indices`), the batch gathers and every step
  (``lax.scan`` over ``nnx.split`` state) run on device with ``x`` and ``y`` kept
  there. ``metrics`` holds one row per step. The state is updated in place and returned.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from flax import nnx
    >>> from jaxnorm import training
    >>> state = training.NNXTrainState(nnx.Linear(3, 2, rngs=nnx.Rngs(0)), optax.sgd(0.1),
    ...                                rng=jax.random.key(1))
    >>> run_epoch = training.make_nnx_scan_epoch(training.make_nnx_train_step(), 4)
    >>> state, metrics = run_epoch(state, jnp.ones((8, 3)), jnp.zeros(8, jnp.int32),
    ...                            jax.random.key(2))
    >>> metrics["loss"].shape, int(state.step)
    ((2,), 2)
  """

  @nnx.jit
  def run_epoch(state, x, y, key):
    indices = epoch_batch_indices(key, x.shape[0], batch_size)
    graphdef, carry = nnx.split(state)

    def body(carry, batch_indices):
      current, metrics = train_step(nnx.merge(graphdef, carry),
                                    (x[batch_indices], y[batch_indices]))
      return nnx.split(current)[1], metrics

    carry, metrics = jax.lax.scan(body, carry, indices)
    nnx.update(state, carry)
    return state, metrics

  return run_epoch
