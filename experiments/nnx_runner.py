"""Seeded training runs of flax.nnx models with the NNX training toolkit.

The NNX counterpart of :func:`population.train_population` for a single setting: each
seed is trained in turn (the scan-fused epochs of ``jaxnorm.training``, one compiled
program per model structure), with the same keys — the model is built from
``nnx.Rngs(split(key(seed), 3)[0])``, the dropout keys come from the second key and
epoch ``e`` (from 1) visits the batches of ``permutation(fold_in(third key, e))`` — and
the same :class:`population.Population` of curves comes back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from .population import Population
from jaxnorm import training


def train_population(make_model: Callable[..., nnx.Module], tx: optax.GradientTransformation,
                     batch_size: int, data, *, seeds: Sequence[int], epochs: int,
                     progress: Callable[..., Any] | None = None,
                     desc: str = "train") -> Population:
  """Trains one run per seed for ``epochs`` epochs, evaluating on the test set after each.

  Args:
    make_model: builds the model from ``rngs=nnx.Rngs(...)``.
    tx: the optax transformation (shared by the seeds, so they share compiled code).
    batch_size: examples per step.
    data: an :class:`experiments.data.Dataset`.
    seeds: one run per seed.
    epochs: training epochs per run.
    progress: a tqdm-like factory for a progress bar over the runs' epochs.
    desc: the progress bar's label.
  """
  run_epoch = training.make_nnx_scan_epoch(training.make_nnx_train_step(), batch_size)
  eval_step = training.make_nnx_eval_step()
  x_train, y_train = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)

  def build(seed):
    init_key, state_key, shuffle_key = jax.random.split(jax.random.key(seed), 3)
    state = training.NNXTrainState(make_model(rngs=nnx.Rngs(init_key)), tx, rng=state_key)
    return nnx.split(state), shuffle_key

  (graphdef, _), _ = build(seeds[0])

  @jax.jit
  def epoch(state, key):
    current, metrics = run_epoch(nnx.merge(graphdef, state), x_train, y_train, key)
    return nnx.state(current), {"train_loss": jnp.mean(metrics["loss"]),
                                "train_accuracy": jnp.mean(metrics["accuracy"])}

  @jax.jit
  def evaluate(state):
    metrics = eval_step(nnx.merge(graphdef, state), (x_test, y_test))
    return {"test_loss": metrics["loss"], "test_accuracy": metrics["accuracy"]}

  compile_start = time.perf_counter()
  (_, state0), key0 = build(seeds[0])
  epoch = epoch.lower(state0, key0).compile()
  evaluate = evaluate.lower(state0).compile()
  compile_seconds = time.perf_counter() - compile_start

  train_start = time.perf_counter()
  names = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")
  curves = {name: np.full((1, len(seeds), epochs + 1), np.nan) for name in names}
  skipped = np.zeros((1, len(seeds)), np.int64)
  runs = [(i, e) for i in range(len(seeds)) for e in range(epochs + 1)]
  bar = progress(runs, desc=desc, unit="epoch", leave=True) if progress else runs
  for i, e in bar:
    if e == 0:  # a new seed: build it and evaluate before training
      (_, state), shuffle_key = build(seeds[i])
      row = evaluate(state)
    else:
      state, train_row = epoch(state, jax.random.fold_in(shuffle_key, e))
      row = {**train_row, **evaluate(state)}
    for name in names:
      curves[name][0, i, e] = float(row.get(name, np.nan))
    if e == epochs:
      skipped[0, i] = int(nnx.merge(graphdef, state).skipped_steps[...])
    if hasattr(bar, "set_postfix"):
      bar.set_postfix(test_acc=f"{curves['test_accuracy'][0, i, e]:.3f}", refresh=False)
  steps_per_epoch = len(data.x_train) // batch_size
  return Population(
      seeds=[int(s) for s in seeds], grid={}, steps=np.arange(epochs + 1) * steps_per_epoch,
      curves=curves, probes={}, skipped_steps=skipped, states=None,
      compile_seconds=compile_seconds, train_seconds=time.perf_counter() - train_start)
