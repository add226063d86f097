"""seed-mlp: the course's Fashion-MNIST notebook network, with and without BN and dropout.

"The notebook" is the course's Keras example this project grew from: a Fashion-MNIST
classifier Dense 128, BatchNorm, ReLU, Dropout 0.3, Dense 64, BatchNorm, ReLU,
Dropout 0.3, Dense 10 (109,770 parameters for 784 inputs), trained with SGD. Here it is
built from jaxnorm's modules and trained with SGD (lr 0.1), batch 32, 10 epochs, 80/20
split, cross-entropy; four variants (plain, +BN, +Dropout, +BN+Dropout) over several
seeds, side by side. The seeds of one variant train together in one compiled program.
"""

from __future__ import annotations

import functools
import os

import jax
import numpy as np
import optax

from . import nnx_runner, runner
from .data import load_dataset
from .measures.stats import summarize
from .models import SeedMLP, SeedMLPNNX, parameter_count, parameter_rows
from .population import Recipe, train_population

NAME = "seed-mlp"
DESCRIPTION = "the notebook's MLP: plain vs +BN vs +Dropout vs +BN+Dropout over seeds"
ACCEPTS_DATA_OPTIONS = True

VARIANTS = {
    "plain": dict(use_batch_norm=False, dropout_rate=0.0),
    "+BN": dict(use_batch_norm=True, dropout_rate=0.0),
    "+Dropout": dict(use_batch_norm=False, dropout_rate=0.3),
    "+BN+Dropout": dict(use_batch_norm=True, dropout_rate=0.3),
}
SUMMARY_VARIANT = "+BN+Dropout"
NOTEBOOK_PARAMETERS_784 = 109_770  # the notebook's model summary for 784 inputs


def parameter_summary(model, input_dim: int) -> str:
  """One line per parameter array (path, shape, count) and the total."""
  params = jax.eval_shape(lambda: model.init(
      jax.random.key(0), np.zeros((2, input_dim), np.float32), train=False))["params"]
  rows = parameter_rows(params)
  width = max(len(name) for name, _, _ in rows)
  lines = [f"{'parameter':<{width}}  {'shape':>12}  {'count':>8}"]
  lines += [f"{name:<{width}}  {str(shape):>12}  {size:>8,}" for name, shape, size in rows]
  lines.append(f"{'total':<{width}}  {'':>12}  {sum(r[2] for r in rows):>8,}")
  return "\n".join(lines)


def run(ctx) -> dict:
  epochs = ctx.epochs or (2 if ctx.quick else 10)
  batch_size, learning_rate = 32, 0.1
  seeds = list(range(ctx.seeds))
  data = load_dataset(ctx.data or "digits", path=ctx.data_path, seed=ctx.split_seed,
                      batch_size=batch_size)
  print(data.describe())
  full = SeedMLP(num_classes=data.num_classes, **VARIANTS[SUMMARY_VARIANT])
  print(f"parameters of the {SUMMARY_VARIANT} variant (the notebook's network) for "
        f"{data.input_dim} inputs:")
  print(parameter_summary(full, data.input_dim))
  at_784 = parameter_count(SeedMLP(**VARIANTS[SUMMARY_VARIANT]), (2, 784))
  print(f"for 784 inputs: {at_784:,} parameters (notebook: {NOTEBOOK_PARAMETERS_784:,}"
        f"{', match' if at_784 == NOTEBOOK_PARAMETERS_784 else ', MISMATCH'})")

  steps_per_epoch = len(data.x_train) // batch_size
  populations, runs = {}, []
  for variant, options in VARIANTS.items():
    if ctx.api == "nnx":  # the same network with flax.nnx and jaxnorm.nnx layers
      make_model = functools.partial(SeedMLPNNX, data.input_dim,
                                     num_classes=data.num_classes, **options)
      pop = nnx_runner.train_population(make_model, optax.sgd(learning_rate), batch_size,
                                        data, seeds=seeds, epochs=epochs,
                                        progress=ctx.progress,
                                        desc=f"{variant} ({len(seeds)} seeds, nnx)")
    else:
      model = SeedMLP(num_classes=data.num_classes, **options)
      pop = train_population(Recipe(model, optax.sgd(learning_rate), batch_size), data,
                             seeds=seeds, steps=epochs * steps_per_epoch,
                             eval_every=steps_per_epoch, progress=ctx.progress,
                             desc=f"{variant} ({len(seeds)} seeds)")
    populations[variant] = pop
    for i, seed in enumerate(seeds):
      curves = {name: [float(v) for v in values[0, i, 1:]]
                for name, values in pop.curves.items()}
      runs.append({"variant": variant, "seed": seed, "curves": curves,
                   "test_accuracy": curves["test_accuracy"][-1],
                   "test_loss": curves["test_loss"][-1],
                   "skipped_steps": int(pop.skipped_steps[0, i])})
      print(f"  {variant:<12} seed {seed}: test accuracy {curves['test_accuracy'][-1]:.4f}, "
            f"final train loss {curves['train_loss'][-1]:.4f}")

  rows = []
  for variant, options in VARIANTS.items():
    pop = populations[variant]
    count = parameter_count(SeedMLP(num_classes=data.num_classes, **options),
                            (2, data.input_dim))
    rows.append([variant, f"{count:,}",
                 summarize(pop.final("test_accuracy")[0]).format(4),
                 summarize(pop.final("test_loss")[0]).format(4),
                 summarize(pop.final("train_loss")[0]).format(4),
                 f"{pop.train_seconds / len(seeds):.2f}", f"{pop.compile_seconds:.1f}"])
  table = runner.markdown_table(
      ["variant", "parameters", "test accuracy", "test loss", "final train loss",
       "train s / run", "compile s"], rows)
  on = f"{data.name} (flax.nnx)" if ctx.api == "nnx" else data.name
  setting = (f"{NAME} on {on}: {epochs} epochs, SGD lr {learning_rate}, batch "
             f"{batch_size}, {len(seeds)} seed{'s' * (len(seeds) > 1)}")
  spread = " (mean ± sample std)" if len(seeds) > 1 else ""
  title = f"{setting}{spread}"

  plot_title = f"{setting} (mean; band: min to max)"
  plots = [runner.plot_curves(os.path.join(ctx.out_dir, "loss_curves.png"), runs,
                              ["train_loss", "test_loss"], plot_title),
           runner.plot_curves(os.path.join(ctx.out_dir, "accuracy_curves.png"), runs,
                              ["train_accuracy", "test_accuracy"], plot_title)]
  payload = {
      "experiment": NAME, "api": ctx.api, "data": data.describe(), "epochs": epochs,
      "seeds": len(seeds),
      "batch_size": batch_size, "learning_rate": learning_rate, "quick": ctx.quick,
      "parameters_784": at_784,
      "compile_seconds": sum(p.compile_seconds for p in populations.values()),
      "train_seconds": sum(p.train_seconds for p in populations.values()),
      "runs": runs,
  }
  runner.write_results(ctx.out_dir, payload, f"{title}\n\n{table}")
  print(f"\n{title}\n\n{table}\n\n"
        f"'train s / run' excludes compilation (the 'compile s' column, once per variant); "
        f"figures: {', '.join(os.path.basename(p) for p in plots if p)}")
  return payload
