"""seed-mlp: the notebook's network with and without BatchNorm and Dropout.

Dense 128, BatchNorm, ReLU, Dropout 0.3, Dense 64, BatchNorm, ReLU, Dropout 0.3,
Dense 10; SGD (lr 0.1), batch 32, 10 epochs, 80/20 split, cross-entropy. Four variants
(plain, +BN, +Dropout, +BN+Dropout) over several seeds, side by side.
"""

from __future__ import annotations

import dataclasses
import os
import time

import optax

from . import runner
from .data import load_dataset
from .models import SeedMLP, parameter_count, parameter_rows

NAME = "seed-mlp"
DESCRIPTION = "the notebook's MLP: plain vs +BN vs +Dropout vs +BN+Dropout over seeds"

VARIANTS = {
    "plain": dict(use_batch_norm=False, dropout_rate=0.0),
    "+BN": dict(use_batch_norm=True, dropout_rate=0.0),
    "+Dropout": dict(use_batch_norm=False, dropout_rate=0.3),
    "+BN+Dropout": dict(use_batch_norm=True, dropout_rate=0.3),
}
NOTEBOOK_PARAMETERS_784 = 109_770  # the notebook's summary for 784 inputs


def parameter_summary(model, input_dim: int) -> str:
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((2, input_dim),
                                                                        np.float32),
                                             train=False))["params"]
  rows = parameter_rows(params)
  width = max(len(name) for name, _, _ in rows)
  lines = [f"{'parameter':<{width}}  {'shape':>12}  {'count':>8}"]
  lines += [f"{name:<{width}}  {str(shape):>12}  {size:>8,}" for name, shape, size in rows]
  lines.append(f"{'total':<{width}}  {'':>12}  {sum(r[2] for r in rows):>8,}")
  return "\n".join(lines)


def run(args) -> dict:
  epochs = args.epochs or (2 if args.quick else 10)
  seeds = args.seeds or (2 if args.quick else 5)
  batch_size, learning_rate = 32, 0.1
  data = load_dataset(args.data, path=args.data_path, seed=args.split_seed,
                      batch_size=batch_size)
  print(data.describe())
  full = SeedMLP(num_classes=data.num_classes, **VARIANTS["+BN+Dropout"])
  print(parameter_summary(full, data.input_dim))
  at_784 = parameter_count(SeedMLP(**VARIANTS["+BN+Dropout"]), (2, 784))
  print(f"for 784 inputs: {at_784:,} parameters (notebook: {NOTEBOOK_PARAMETERS_784:,}"
        f"{', match' if at_784 == NOTEBOOK_PARAMETERS_784 else ', MISMATCH'})")

  progress = _progress_bar()
  results = []
  start = time.perf_counter()
  for variant, options in VARIANTS.items():
    trainer = runner.Trainer(SeedMLP(num_classes=data.num_classes, **options),
                             optax.sgd(learning_rate), batch_size)
    for seed in range(seeds):
      results.append(runner.train_run(trainer, data, variant=variant, seed=seed,
                                      epochs=epochs, progress=progress))
      last = results[-1]
      print(f"  {variant:<12} seed {seed}: test accuracy {last.test_accuracy:.4f}, "
            f"final train loss {last.curves['train_loss'][-1]:.4f} ({last.seconds:.1f} s)")
  wall = time.perf_counter() - start

  rows = []
  for variant, options in VARIANTS.items():
    runs = [r for r in results if r.variant == variant]
    acc, acc_sd = runner.mean_spread([r.test_accuracy for r in runs])
    loss, loss_sd = runner.mean_spread([r.test_loss for r in runs])
    train, train_sd = runner.mean_spread([r.curves["train_loss"][-1] for r in runs])
    rows.append([variant, f"{parameter_count(SeedMLP(num_classes=data.num_classes, **options), (2, data.input_dim)):,}",
                 f"{acc:.4f} ± {acc_sd:.4f}", f"{loss:.4f} ± {loss_sd:.4f}",
                 f"{train:.4f} ± {train_sd:.4f}",
                 f"{sum(r.seconds for r in runs) / len(runs):.1f}"])
  table = runner.markdown_table(
      ["variant", "parameters", "test accuracy", "test loss", "final train loss",
       "s / run"], rows)
  setting = (f"{NAME} on {args.data}: {epochs} epochs, SGD lr {learning_rate}, batch "
             f"{batch_size}, {seeds} seed{'s' * (seeds > 1)}")
  title = f"{setting} (mean ± sample std)"
  plot_title = f"{setting} (mean; band: min to max)"

  out_dir = os.path.join(args.out, NAME)
  os.makedirs(out_dir, exist_ok=True)
  plots = [runner.plot_curves(os.path.join(out_dir, "loss_curves.png"), results,
                              ["train_loss", "test_loss"], plot_title),
           runner.plot_curves(os.path.join(out_dir, "accuracy_curves.png"), results,
                              ["train_accuracy", "test_accuracy"], plot_title)]
  payload = {
      "experiment": NAME, "data": data.describe(), "epochs": epochs, "seeds": seeds,
      "batch_size": batch_size, "learning_rate": learning_rate, "quick": args.quick,
      "parameters_784": at_784, "wall_seconds": wall,
      "runs": [dataclasses.asdict(r) for r in results],
  }
  runner.write_results(out_dir, payload, f"{title}\n\n{table}")
  print(f"\n{title}\n\n{table}\n\nwall time {wall:.1f} s; results, table and plots in "
        f"{out_dir}/ ({', '.join(os.path.basename(p) for p in plots if p)})")
  return payload


def _progress_bar():
  try:
    from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  return tqdm
