"""Train many runs at once: seeds × hyper-parameter settings in one compiled program.

On two CPU cores the experiments could not afford hundreds of separate training runs,
each compiled and stepped on its own. :func:`train_population` stacks every run — each
seed of each setting of a grid (learning rate, weight decay, drop rate, ...) — along a
leading axis and trains them together with ``jax.vmap`` over the scan-fused steps of
``jaxnorm.training``, evaluating all of them every ``eval_every`` steps.

Each run is the run that ``jaxnorm.training.make_scan_epoch`` would make for the same seed:
the model is initialized from ``split(key(seed), 3)[0]``, its dropout keys come from the
second key (``TrainState.step_key``) and epoch ``e`` (from 1) visits the batches of
``permutation(fold_in(third key, e))``, the last partial batch dropped.

Optimizer hyper-parameters are set per run with ``optax.inject_hyperparams`` (the
recipe's ``tx`` must expose them in its state); model hyper-parameters (for example a
traced dropout rate) are passed to the model as call keyword arguments.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnorm import training

Hyper = Mapping[str, jax.Array]
StepFactory = Callable[[Hyper], Callable]
Probe = Callable[[training.TrainState, Hyper], Mapping[str, jax.Array]]

_UNOPTIMIZED = {"xla_backend_optimization_level": 0}


@dataclasses.dataclass(frozen=True)
class Recipe:
  """What to train: a model, an optimizer, a batch size and the loss.

  Attributes:
    model: a Flax linen module called as ``model(x, **train_kwargs)``.
    tx: the optax transformation; wrap it in ``optax.inject_hyperparams`` to vary
      its hyper-parameters across the population.
    batch_size: examples per step.
    loss_fn: ``(outputs, labels) -> (loss, metrics)``; metrics must hold ``accuracy``.
    train_kwargs: call arguments selecting training mode.
    eval_kwargs: call arguments selecting evaluation mode.
    model_hparams: names of grid entries passed to the model as call arguments (in
      training and evaluation); the other grid entries set optimizer hyper-parameters.
  """

  model: nn.Module
  tx: optax.GradientTransformation
  batch_size: int
  loss_fn: Callable = training.classification_loss
  train_kwargs: Mapping[str, Any] = dataclasses.field(
      default_factory=lambda: {"train": True})
  eval_kwargs: Mapping[str, Any] = dataclasses.field(
      default_factory=lambda: {"train": False})
  model_hparams: tuple[str, ...] = ()


@dataclasses.dataclass
class Population:
  """Curves of every run, indexed ``[setting, seed, evaluation]``.

  Attributes:
    seeds: the seeds, in order.
    grid: hyper-parameter name -> value per setting, shape ``(M,)``.
    steps: the step count at each evaluation, shape ``(E,)``; the first is 0 (before
      training).
    curves: ``train_loss`` / ``train_accuracy`` (mean over the steps since the previous
      evaluation; NaN at step 0), ``test_loss`` / ``test_accuracy``; shape ``(M, S, E)``.
    probes: what the ``probe`` returned at each evaluation, ``(M, S, E, ...)``.
    skipped_steps: steps rejected by the non-finite guard, ``(M, S)``.
    states: the final states (leading axis ``M * S``) when asked for, else None.
    compile_seconds: time spent compiling.
    train_seconds: time spent training and evaluating, compilation excluded.
  """

  seeds: list[int]
  grid: dict[str, np.ndarray]
  steps: np.ndarray
  curves: dict[str, np.ndarray]
  probes: dict[str, np.ndarray]
  skipped_steps: np.ndarray
  states: Any
  compile_seconds: float
  train_seconds: float

  def final(self, name: str) -> np.ndarray:
    """The last evaluation of curve ``name``, shape ``(M, S)``."""
    return self.curves[name][..., -1]

  def state(self, setting: int, seed_index: int):
    """The final state of one run (needs ``keep_states=True``)."""
    if self.states is None:
      raise ValueError("Population.state: train with keep_states=True to keep states.")
    member = setting * len(self.seeds) + seed_index
    return jax.tree.map(lambda leaf: leaf[member], self.states)


def grid_product(**axes: Sequence[float]) -> dict[str, np.ndarray]:
  """Every combination of the given values, as equal-length columns (last axis fastest).

  Example:
    >>> g = grid_product(lr=[0.1, 1.0], wd=[0.0, 1e-3])
    >>> g["lr"].tolist(), g["wd"].tolist()
    ([0.1, 0.1, 1.0, 1.0], [0.0, 0.001, 0.0, 0.001])
  """
  names = list(axes)
  rows = list(itertools.product(*(axes[name] for name in names)))
  return {name: np.asarray([row[i] for row in rows], np.float32)
          for i, name in enumerate(names)}


def _split_hyper(recipe: Recipe, hyper: Hyper) -> tuple[dict, dict]:
  model = {k: v for k, v in hyper.items() if k in recipe.model_hparams}
  optimizer = {k: v for k, v in hyper.items() if k not in recipe.model_hparams}
  return model, optimizer


def default_step_factory(recipe: Recipe) -> StepFactory:
  """Train steps of ``jaxnorm.training`` with the run's model hyper-parameters."""
  def factory(hyper: Hyper):
    model_hyper, _ = _split_hyper(recipe, hyper)
    return training.make_train_step(recipe.loss_fn,
                                    train_kwargs={**recipe.train_kwargs, **model_hyper})
  return factory


def train_population(
    recipe: Recipe,
    data,
    *,
    seeds: Sequence[int],
    steps: int,
    eval_every: int,
    grid: Mapping[str, Sequence[float]] | None = None,
    step_factory: StepFactory | None = None,
    probe: Probe | None = None,
    keep_states: bool = False,
    progress: Callable[..., Any] | None = None,
    desc: str = "train",
) -> Population:
  """Trains ``len(grid) × len(seeds)`` runs together; see the module docstring.

  Args:
    recipe: model, optimizer, batch size and loss.
    data: an :class:`experiments.data.Dataset` (``x_train``, ``y_train``, ``x_test``,
      ``y_test``).
    seeds: one run per seed and setting.
    steps: training steps per run; a multiple of ``eval_every``.
    eval_every: steps between evaluations on the test set.
    grid: hyper-parameter columns of equal length ``M`` (see :func:`grid_product`);
      None trains one setting.
    step_factory: ``hyper -> train_step(state, (x, y)) -> (state, metrics)`` for custom
      steps (default: :func:`default_step_factory`).
    probe: ``(state, hyper) -> {name: array}``, measured at every evaluation.
    keep_states: keep the final states (memory: one model per run).
    progress: a tqdm-like factory for a progress bar over evaluations.
    desc: the progress bar's label.

  Returns:
    A :class:`Population`.
  """
  if steps < eval_every or steps % eval_every:
    raise ValueError(f"train_population: steps ({steps}) must be a positive multiple of "
                     f"eval_every ({eval_every}).")
  n_train = len(data.x_train)
  batch = recipe.batch_size
  if not 1 <= batch <= n_train:
    raise ValueError(f"train_population: batch_size must be in [1, {n_train}] (the "
                     f"training examples); got {batch}.")
  grid = {k: np.asarray(v, np.float32) for k, v in (grid or {}).items()}
  settings = len(next(iter(grid.values()))) if grid else 1
  if any(len(v) != settings for v in grid.values()):
    raise ValueError("train_population: every grid column must have the same length; "
                     f"got {({k: len(v) for k, v in grid.items()})}.")
  seeds = [int(s) for s in seeds]
  members = settings * len(seeds)
  hyper = {k: jnp.repeat(jnp.asarray(v), len(seeds)) for k, v in grid.items()}
  seed_column = jnp.tile(jnp.asarray(seeds, jnp.uint32), settings)
  step_factory = step_factory or default_step_factory(recipe)
  steps_per_epoch = n_train // batch
  epochs_per_chunk = eval_every // steps_per_epoch + 2

  x_train, y_train = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)

  def init_member(seed, hyper):
    init_key, state_key, shuffle_key = jax.random.split(jax.random.key(seed), 3)
    model_hyper, optimizer_hyper = _split_hyper(recipe, hyper)
    variables = recipe.model.init(init_key, x_train[:2], **recipe.eval_kwargs,
                                  **model_hyper)
    state = training.TrainState.create(
        apply_fn=recipe.model.apply, params=variables["params"],
        batch_stats=variables.get("batch_stats"), tx=recipe.tx, rng=state_key)
    if optimizer_hyper:
      state = state.replace(opt_state=optax.tree_utils.tree_set(
          state.opt_state, **{k: jnp.asarray(v, jnp.float32)
                              for k, v in optimizer_hyper.items()}))
    return state, shuffle_key

  def chunk_member(state, hyper, shuffle_key, start, x, y):
    train_step = step_factory(hyper)
    first_epoch = start // steps_per_epoch
    orders = jax.vmap(lambda e: jax.random.permutation(
        jax.random.fold_in(shuffle_key, e + 1), n_train))(
            first_epoch + jnp.arange(epochs_per_chunk))

    def body(state, t):
      order = orders[t // steps_per_epoch - first_epoch]
      indices = jax.lax.dynamic_slice_in_dim(order, (t % steps_per_epoch) * batch, batch)
      return train_step(state, (x[indices], y[indices]))

    state, metrics = jax.lax.scan(body, state, start + jnp.arange(eval_every))
    return state, {"train_loss": jnp.mean(metrics["loss"]),
                   "train_accuracy": jnp.mean(metrics["accuracy"])}

  def evaluate_member(state, hyper, x, y):
    model_hyper, _ = _split_hyper(recipe, hyper)
    outputs = state.apply_fn(state.variables, x, **recipe.eval_kwargs, **model_hyper)
    loss, metrics = recipe.loss_fn(outputs, y)
    row = {"test_loss": loss, "test_accuracy": metrics["accuracy"]}
    if probe is not None:
      row.update({f"probe:{k}": v for k, v in probe(state, hyper).items()})
    return row

  # Initialization runs once; at XLA's default optimization level, compiling its random
  # number generation costs several CPU seconds per program (7 s against 0.9 s for a
  # 3x100 MLP), so it is compiled unoptimized.
  init = jax.jit(jax.vmap(init_member), compiler_options=_UNOPTIMIZED)
  chunk = jax.jit(jax.vmap(chunk_member, in_axes=(0, 0, 0, None, None, None)),
                  donate_argnums=0)
  evaluate = jax.jit(jax.vmap(evaluate_member, in_axes=(0, 0, None, None)))

  compile_start = time.perf_counter()
  states, shuffle_keys = init(seed_column, hyper)
  start0 = jnp.asarray(0, jnp.int32)
  chunk = chunk.lower(states, hyper, shuffle_keys, start0, x_train, y_train).compile()
  evaluate = evaluate.lower(states, hyper, x_test, y_test).compile()
  compile_seconds = time.perf_counter() - compile_start

  train_start = time.perf_counter()
  rows = [evaluate(states, hyper, x_test, y_test)]
  train_rows = [{"train_loss": jnp.full((members,), jnp.nan),
                 "train_accuracy": jnp.full((members,), jnp.nan)}]
  chunks = range(steps // eval_every)
  bar = progress(chunks, desc=desc, unit="eval", leave=True) if progress else chunks
  for i in bar:
    states, train_metrics = chunk(states, hyper, shuffle_keys,
                                  jnp.asarray(i * eval_every, jnp.int32), x_train, y_train)
    rows.append(evaluate(states, hyper, x_test, y_test))
    train_rows.append(train_metrics)
    if hasattr(bar, "set_postfix"):
      bar.set_postfix(test_acc=f"{float(jnp.nanmean(rows[-1]['test_accuracy'])):.3f}",
                      refresh=False)
  jax.block_until_ready(states)
  train_seconds = time.perf_counter() - train_start

  def stack(name, source):
    values = np.stack([np.asarray(r[name]) for r in source], axis=1)  # (members, E, ...)
    return values.reshape((settings, len(seeds)) + values.shape[1:])

  curves = {name: stack(name, train_rows) for name in ("train_loss", "train_accuracy")}
  curves.update({name: stack(name, rows) for name in ("test_loss", "test_accuracy")})
  probes = {name[len("probe:"):]: stack(name, rows) for name in rows[0]
            if name.startswith("probe:")}
  return Population(
      seeds=seeds, grid={k: np.asarray(v) for k, v in grid.items()},
      steps=np.arange(0, steps + 1, eval_every), curves=curves, probes=probes,
      skipped_steps=np.asarray(states.skipped_steps).reshape(settings, len(seeds)),
      states=states if keep_states else None, compile_seconds=compile_seconds,
      train_seconds=train_seconds)
