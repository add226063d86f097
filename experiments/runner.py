"""Shared machinery of the experiments: seeded training runs, results, plots, tables."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import numpy as np
import optax

from .data import Dataset
from jaxnorm import training


@dataclasses.dataclass
class RunResult:
  """Per-epoch curves and final numbers of one training run."""

  variant: str
  seed: int
  curves: dict[str, list[float]]
  test_accuracy: float
  test_loss: float
  seconds: float
  skipped_steps: int


@dataclasses.dataclass(frozen=True)
class Trainer:
  """A model with its optimizer and compiled epoch/eval functions, reused across seeds."""

  model: nn.Module
  tx: optax.GradientTransformation
  batch_size: int

  @functools.cached_property
  def run_epoch(self):
    return training.make_scan_epoch(training.make_train_step(), self.batch_size)

  @functools.cached_property
  def eval_step(self):
    return jax.jit(training.make_eval_step())


def train_run(trainer: Trainer, data: Dataset, *, variant: str, seed: int, epochs: int,
              progress: Callable[..., object] | None = None) -> RunResult:
  """Trains on ``data`` with the scan-fused epoch loop; evaluates after every epoch."""
  init_key, state_key, shuffle_key = jax.random.split(jax.random.key(seed), 3)
  variables = trainer.model.init(init_key, data.x_train[:2], train=False)
  state = training.TrainState.create(
      apply_fn=trainer.model.apply, params=variables["params"],
      batch_stats=variables.get("batch_stats"), tx=trainer.tx, rng=state_key)
  run_epoch, eval_step = trainer.run_epoch, trainer.eval_step
  x_train, y_train = jax.device_put(data.x_train), jax.device_put(data.y_train)
  curves: dict[str, list[float]] = {"train_loss": [], "train_accuracy": [],
                                    "test_loss": [], "test_accuracy": []}
  bar = progress(range(1, epochs + 1), desc=f"{variant} seed {seed}", unit="epoch",
                 leave=False) if progress else range(1, epochs + 1)
  start = time.perf_counter()
  for epoch in bar:
    state, metrics = run_epoch(state, x_train, y_train, jax.random.fold_in(shuffle_key, epoch))
    test = training.evaluate(eval_step, state, data.x_test, data.y_test)
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
                   int(state.skipped_steps))


def mean_spread(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (0 for a single value)."""
  values = np.asarray(values, np.float64)
  return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(lines)


def plot_curves(path: str, results: Sequence[RunResult], metrics: Sequence[str],
                title: str) -> str | None:
  """Mean curve per variant (band: min to max over seeds), one panel per metric."""
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  except ImportError:
    print("matplotlib is not installed (pip install -e '.[experiments]'); no plot written.")
    return None
  variants = list(dict.fromkeys(r.variant for r in results))
  fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
  for ax, metric in zip(axes[0], metrics):
    for variant in variants:
      runs = np.array([r.curves[metric] for r in results if r.variant == variant])
      epochs = np.arange(1, runs.shape[1] + 1)
      ax.plot(epochs, runs.mean(0), label=variant)
      ax.fill_between(epochs, runs.min(0), runs.max(0), alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric.replace("_", " "))
    ax.grid(alpha=0.3)
  axes[0][0].legend()
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def write_results(out_dir: str, payload: dict, table: str) -> None:
  """``results.json`` and ``table.md`` in ``out_dir``."""
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "results.json"), "w", encoding="utf-8") as handle:
    json.dump(payload, handle, indent=2)
  with open(os.path.join(out_dir, "table.md"), "w", encoding="utf-8") as handle:
    handle.write(table + "\n")
