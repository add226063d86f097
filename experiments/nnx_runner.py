"""Seeded training runs of flax.nnx models, with the NNX training toolkit.

The NNX counterpart of :class:`runner.Trainer` / :func:`runner.train_run`: the same data
handling, scan-fused epochs, evaluation after every epoch and :class:`runner.RunResult`.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable

import jax
import numpy as np
import optax
from flax import nnx

from .data import Dataset
from .runner import RunResult
from jaxnorm import training


@dataclasses.dataclass(frozen=True)
class NNXTrainer:
  """A model factory ``make_model(rngs=...)`` with its optimizer and compiled functions."""

  make_model: Callable[[nnx.Rngs], nnx.Module]
  tx: optax.GradientTransformation
  batch_size: int

  @functools.cached_property
  def run_epoch(self):
    return training.make_nnx_scan_epoch(training.make_nnx_train_step(), self.batch_size)

  @functools.cached_property
  def eval_step(self):
    return nnx.jit(training.make_nnx_eval_step())


def train_run(trainer: NNXTrainer, data: Dataset, *, variant: str, seed: int, epochs: int,
              progress: Callable[..., object] | None = None) -> RunResult:
  """Trains on ``data`` with the scan-fused NNX epoch; evaluates after every epoch."""
  init_key, state_key, shuffle_key = jax.random.split(jax.random.key(seed), 3)
  state = training.NNXTrainState(trainer.make_model(rngs=nnx.Rngs(init_key)), trainer.tx,
                                 rng=state_key)
  x_train, y_train = jax.device_put(data.x_train), jax.device_put(data.y_train)
  curves: dict[str, list[float]] = {"train_loss": [], "train_accuracy": [],
                                    "test_loss": [], "test_accuracy": []}
  bar = progress(range(1, epochs + 1), desc=f"{variant} seed {seed} (nnx)", unit="epoch",
                 leave=False) if progress else range(1, epochs + 1)
  start = time.perf_counter()
  for epoch in bar:
    state, metrics = trainer.run_epoch(state, x_train, y_train,
                                       jax.random.fold_in(shuffle_key, epoch))
    test = training.evaluate(trainer.eval_step, state, data.x_test, data.y_test)
    curves["train_loss"].append(float(np.mean(metrics["loss"])))
    curves["train_accuracy"].append(float(np.mean(metrics["accuracy"])))
    curves["test_loss"].append(test["loss"])
    curves["test_accuracy"].append(test["accuracy"])
    if hasattr(bar, "set_postfix"):
      bar.set_postfix(loss=f"{curves['train_loss'][-1]:.3f}",
                      acc=f"{curves['train_accuracy'][-1]:.3f}",
                      test_acc=f"{test['accuracy']:.3f}")
  return RunResult(variant, seed, curves, curves["test_accuracy"][-1],
                   curves["test_loss"][-1], time.perf_counter() - start,
                   int(state.skipped_steps[...]))
