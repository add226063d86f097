"""lr-sweep: does batch norm let a network train at higher learning rates?

The seed MLP (Dense 128, Dense 64) and a deeper one (six hidden Dense 128 layers), each
with and without BN before every ReLU, trained with plain SGD at every learning rate of
a log grid from 1e-3 to 10. Every seed x learning rate of one network trains in one
compiled program (four programs in all). For each network: the final test accuracy at
each learning rate, the fraction of runs that diverged, and the largest learning rate
whose mean accuracy stays within 2 points of that network's best.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import jax
import numpy as np
import optax

from . import plots, runner
from .data import load_dataset
from .measures.lr_range import diverged, largest_lr_within
from .measures.stats import summarize
from .models import SeedMLP
from .population import Recipe, grid_product, train_population
from .spec import (DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, Anchor, Check, Outcome, RunContext,
                   Spec, Verdict)

NAME = "lr-sweep"
DESCRIPTION = ("BN allows higher learning rates: seed MLP and a 6-layer MLP, with/without "
               "BN, SGD over a log grid 1e-3..10")

# ----------------------------------------------------------------- setup (fixed in code)
LEARNING_RATES = tuple(float(10.0 ** (k / 3 - 3)) for k in range(13))  # 1e-3 .. 10
MODELS = {"seed MLP": (128, 64), "deep MLP": (128,) * 6}
VARIANTS = {"no BN": False, "BN": True}
BATCH_SIZE = 32
EPOCHS, QUICK_STEPS = 20, 100
QUICK_MODELS = ("seed MLP",)  # a smoke run compiles two programs, not four
DATA = "mnist1d"
LOSS_PROBE_EXAMPLES = 512
CHANCE_MARGIN = 0.05       # "at chance": final test accuracy below 1/classes + 5 points

# ----------------------------------------------------------------- criterion (fixed)
TOLERANCE = 0.02           # "within 2 points of that model's best"
RATIO_THRESHOLD = 4.0      # "at least 4x larger with BN"

SPEC = Spec(
    name=NAME,
    title="BN allows higher learning rates (seed MLP and a 6-layer MLP, plain SGD)",
    description=DESCRIPTION,
    claim=("Batch norm lets a network train at much higher learning rates: the range of "
           "learning rates that give (near) the best accuracy extends further up with BN, "
           "where the same network without BN degrades or diverges."),
    anchor=Anchor(
        number=("BN-Inception trained at 5x and 30x the base learning rate (BN-x5: 73.0% "
                "in 2.1M steps; BN-x30: 74.8% in 2.7M) where Inception without BN at 5x "
                "'caused the model parameters to reach machine infinity'"),
        source=("Ioffe & Szegedy 2015, Batch Normalization: Accelerating Deep Network "
                "Training by Reducing Internal Covariate Shift, §4.2.1-4.2.2, Table 2")),
    criterion=(
        f"Per network (seed MLP, deep MLP) and variant: the mean final test accuracy over "
        f"seeds at each learning rate of the grid; the best mean; eta_max = the largest "
        f"learning rate whose mean is within {TOLERANCE * 100:g} points of that best. "
        f"Holds if eta_max(BN) / eta_max(no BN) >= {RATIO_THRESHOLD:g} and still >= "
        f"{RATIO_THRESHOLD:g} when each mean is replaced by the unfavourable end of its 95% "
        "t-interval (the lower end for BN, the upper end for no BN); does not hold if the "
        f"ratio is < {RATIO_THRESHOLD:g} and still < {RATIO_THRESHOLD:g} with the favourable "
        "ends, unless BN's eta_max (favourable end) is the top of the grid, which leaves "
        "the ratio open; inconclusive otherwise. A run diverged if the non-finite guard "
        "skipped a step or its training loss on a fixed batch ended above its initial value."),
    data=("MNIST-1D (4000 train / 1000 test, 40-long signals, generated locally): hard "
          "enough that accuracy separates good learning rates from poor ones (on digits "
          "nearly every rate that trains ends within a few points of 100%), and its 4000 "
          "examples give 125 steps per epoch."),
    setup=(f"Dense -> [BN] -> ReLU per hidden layer, then Dense 10 (the seed notebook's "
           f"network without dropout: hidden {MODELS['seed MLP']}; deep: hidden "
           f"{MODELS['deep MLP']}); LeCun-normal kernels; jaxnorm.BatchNorm momentum 0.99. "
           f"Plain SGD (no momentum, no decay), batch {BATCH_SIZE}, {EPOCHS} epochs "
           f"({EPOCHS * (4000 // BATCH_SIZE):,} steps), learning rates 10^(k/3 - 3), "
           f"k = 0..12 (1e-3 to 10, three per decade). Final test accuracy with running "
           f"statistics; loss probe on the first {LOSS_PROBE_EXAMPLES} training examples in "
           "training mode, before and after training. Reported beside the diverged "
           "runs (not part of the criterion): runs that end at chance, with a final test "
           f"accuracy below 1/10 + {CHANCE_MARGIN * 100:g} points."),
    limits=("Small MLPs on a 4000-example set for 20 epochs at a constant learning rate "
            "(no warm-up or decay, which let large rates work in practice); three grid "
            "points per decade, so eta_max is known to a factor of 2.15 and a 4x criterion "
            "needs two grid steps. Small learning rates are under-trained at this budget, "
            "which lowers nothing but their own accuracy. The divergence test (a skipped "
            "step, or a final loss above the initial one) does not see a run that stalls "
            "at chance with a finite loss near log 10 when its initial loss was higher, as "
            "a BN net's can be; the at-chance count shows those."),
)


# ----------------------------------------------------------------- the verdicts


def _interval(accuracy: np.ndarray):
  """Mean, lower and upper 95% bound per learning rate of ``(L, S)`` accuracies."""
  rows = [summarize(row) for row in accuracy]
  mean = np.array([r.mean for r in rows])
  if accuracy.shape[1] < 2:
    return mean, mean, mean
  return mean, np.array([r.ci_low for r in rows]), np.array([r.ci_high for r in rows])


def lr_range(learning_rates: Sequence[float], accuracy) -> dict:
  """eta_max from the means and from the ends of their 95% intervals.

  Args:
    learning_rates: the grid, ``(L,)``.
    accuracy: final test accuracy ``(L, S)`` (NaN for a run with no number).

  Returns:
    ``best`` (the best mean), ``point`` (eta_max from the means), ``low`` (from the lower
    interval ends, at least the best mean's own rate) and ``high`` (from the upper ends).

  Example:
    >>> acc = [[0.60, 0.62, 0.61], [0.70, 0.71, 0.69], [0.69, 0.70, 0.68], [0.1, 0.1, 0.1]]
    >>> r = lr_range([0.01, 0.1, 1.0, 10.0], acc)
    >>> round(r["best"], 3), r["best_lr"], r["point"]
    (0.7, 0.1, 1.0)
  """
  lrs = np.asarray(learning_rates, np.float64)
  accuracy = np.asarray(accuracy, np.float64)
  mean, low, high = _interval(accuracy)
  if not np.any(np.isfinite(mean)):
    nan = float("nan")
    return {"best": nan, "best_lr": nan, "point": nan, "low": nan, "high": nan}
  best_index = int(np.nanargmax(mean))
  best = float(mean[best_index])
  point = largest_lr_within(lrs, mean, tolerance=TOLERANCE, best=best)
  pessimistic = largest_lr_within(lrs, low, tolerance=TOLERANCE, best=best)
  pessimistic = float(np.nanmax([pessimistic, lrs[best_index]]))
  optimistic = largest_lr_within(lrs, high, tolerance=TOLERANCE, best=best)
  return {"best": best, "best_lr": float(lrs[best_index]), "point": point,
          "low": pessimistic, "high": max(optimistic, point)}


def _model_verdict(model: str, learning_rates, no_bn, bn) -> Verdict:
  top = float(np.max(learning_rates))
  plain, normed = lr_range(learning_rates, no_bn), lr_range(learning_rates, bn)
  claim = f"{model}: BN tolerates >= {RATIO_THRESHOLD:g}x larger learning rates"
  values = [plain[k] for k in ("point", "low", "high")] + [
      normed[k] for k in ("point", "low", "high")]
  if not np.all(np.isfinite(values)):
    return Verdict(claim, INCONCLUSIVE, "No learning rate has a finite mean accuracy for "
                   "one of the variants.", "no accuracy",
                   checks=(Check("eta_max defined", None, "both variants", None),))
  ratio = normed["point"] / plain["point"]
  unfavourable = normed["low"] / plain["high"]
  favourable = normed["high"] / plain["low"]
  censored = normed["high"] >= top
  checks = (
      Check("eta_max(BN) / eta_max(no BN), means", round(ratio, 4),
            f">= {RATIO_THRESHOLD:g}", bool(ratio >= RATIO_THRESHOLD)),
      Check("ratio with the unfavourable interval ends", round(unfavourable, 4),
            f">= {RATIO_THRESHOLD:g} to hold", bool(unfavourable >= RATIO_THRESHOLD)),
      Check("ratio with the favourable interval ends", round(favourable, 4),
            f"< {RATIO_THRESHOLD:g} to fail", bool(favourable >= RATIO_THRESHOLD)),
      Check("BN's eta_max below the top of the grid", normed["high"], f"< {top:g}",
            not censored))
  if ratio >= RATIO_THRESHOLD and unfavourable >= RATIO_THRESHOLD:
    verdict = HOLDS
  elif ratio < RATIO_THRESHOLD and favourable < RATIO_THRESHOLD and not censored:
    verdict = DOES_NOT_HOLD
  else:
    verdict = INCONCLUSIVE
  ours = (f"eta_max {normed['point']:.3g} with BN vs {plain['point']:.3g} without "
          f"({ratio:.2g}x)")
  reason = (f"Best mean accuracy {plain['best']:.1%} without BN (at lr "
            f"{plain['best_lr']:.3g}) and {normed['best']:.1%} with BN (at "
            f"{normed['best_lr']:.3g}); the largest learning rate within "
            f"{TOLERANCE * 100:g} points of the best is {plain['point']:.3g} without BN and "
            f"{normed['point']:.3g} with BN, a ratio of {ratio:.3g} (threshold "
            f"{RATIO_THRESHOLD:g}); with the 95% interval ends the ratio lies between "
            f"{unfavourable:.3g} and {favourable:.3g}"
            + (f", and BN's range reaches the top of the grid ({top:g})." if censored
               else "."))
  return Verdict(claim, verdict, reason, ours,
                 anchor="BN-Inception trained at 5x and 30x the base rate; without BN 5x "
                        "diverged", checks=checks)


def decide(numbers: Mapping[str, Mapping]) -> list[Verdict]:
  """One verdict per network from its accuracies (the criterion of :data:`SPEC`).

  Args:
    numbers: ``{network: {"learning_rates": (L,), "no BN": (L, S), "BN": (L, S)}}``,
      final test accuracies per learning rate and seed.

  Example:
    >>> good, bad = [0.70, 0.705, 0.695], [0.1, 0.1, 0.1]
    >>> no_bn = [good, good, bad, bad, bad]          # good up to lr 0.01
    >>> bn = [good, good, good, good, bad]           # good up to lr 1: 100x
    >>> lrs = [0.001, 0.01, 0.1, 1.0, 10.0]
    >>> [v.verdict for v in decide({"net": {"learning_rates": lrs, "no BN": no_bn, "BN": bn}})]
    ['holds']
  """
  return [_model_verdict(model, np.asarray(n["learning_rates"]), np.asarray(n["no BN"]),
                         np.asarray(n["BN"])) for model, n in numbers.items()]


# ----------------------------------------------------------------- training


def make_model(hidden: Sequence[int], batch_norm: bool, num_classes: int = 10) -> SeedMLP:
  """Dense -> [BN] -> ReLU per hidden width, then Dense (no dropout).

  Example:
    >>> make_model(MODELS["deep MLP"], batch_norm=True).hidden
    (128, 128, 128, 128, 128, 128)
  """
  return SeedMLP(use_batch_norm=batch_norm, dropout_rate=0.0, hidden=tuple(hidden),
                 num_classes=num_classes)


def _loss_probe(x, y):
  def probe(state, hyper):
    del hyper
    logits, _ = state.apply_fn(state.variables, x, train=True, mutable=["batch_stats"])
    return {"train_loss": optax.softmax_cross_entropy_with_integer_labels(
        logits, y).mean()}
  return probe


def _train(ctx, data, hidden, batch_norm, learning_rates, steps, eval_every, desc):
  model = make_model(hidden, batch_norm, data.num_classes)
  tx = optax.inject_hyperparams(optax.sgd)(learning_rate=learning_rates[0])
  probe = _loss_probe(jax.numpy.asarray(data.x_train[:LOSS_PROBE_EXAMPLES]),
                      jax.numpy.asarray(data.y_train[:LOSS_PROBE_EXAMPLES]))
  return train_population(Recipe(model, tx, BATCH_SIZE), data,
                          seeds=list(range(ctx.seeds)), steps=steps, eval_every=eval_every,
                          grid=grid_product(learning_rate=learning_rates), probe=probe,
                          progress=ctx.progress, desc=desc)


# ----------------------------------------------------------------- figure and table


def _figure(path, learning_rates, results, ranges, title):
  with plots.figure(path, title, ncols=len(results), nrows=2, size=(5.2, 3.4)) as axes:
    for col, (model, variants) in enumerate(results.items()):
      ax_acc, ax_div = axes[col], axes[len(results) + col]
      for label, result in variants.items():
        plots.band(ax_acc, learning_rates, result["accuracy"].T,
                   label=f"{label} (mean ± std)", marker="o")
        color = ax_acc.lines[-1].get_color()
        point = ranges[model][label]["point"]
        if np.isfinite(point):
          ax_acc.axvline(point, color=color, linestyle="--", linewidth=1,
                         label=f"{label}: largest lr within {TOLERANCE * 100:g} pts ({point:.3g})")
        ax_div.plot(learning_rates, result["diverged"].mean(axis=1), marker="o",
                    color=color, label=f"{label}: diverged")
        ax_div.plot(learning_rates, result["at_chance"].mean(axis=1), marker="x",
                    color=color, linestyle="--", label=f"{label}: ended at chance")
      plots.label(ax_acc, x="learning rate (log scale)", y="final test accuracy (fraction)",
                  title=model, logx=True)
      plots.label(ax_div, x="learning rate (log scale)", y="fraction of runs",
                  title=f"{model}: diverged runs and runs at chance accuracy", logx=True)
      ax_div.set_ylim(-0.05, 1.05)


def _table(learning_rates, results, ranges) -> str:
  header = ["learning rate"]
  for model, variants in results.items():
    for label in variants:
      header += [f"{model} {label}: accuracy", "diverged, at chance"]
  rows = []
  for i, lr in enumerate(learning_rates):
    row = [f"{lr:.3g}"]
    for model, variants in results.items():
      for label, result in variants.items():
        row += [summarize(result["accuracy"][i]).format(3),
                f"{int(result['diverged'][i].sum())}, {int(result['at_chance'][i].sum())}"
                f" of {result['diverged'].shape[1]}"]
    rows.append(row)
  row = ["eta_max (mean; 95% ends)"]
  for model, variants in results.items():
    for label in variants:
      r = ranges[model][label]
      row += [f"{r['point']:.3g} ({r['low']:.3g}-{r['high']:.3g})", ""]
  rows.append(row)
  return runner.markdown_table(header, rows)


# ----------------------------------------------------------------- run


def run(ctx: RunContext) -> Outcome:
  data = load_dataset(DATA, seed=ctx.split_seed)
  steps_per_epoch = len(data.x_train) // BATCH_SIZE
  if ctx.quick:
    steps, eval_every = QUICK_STEPS, QUICK_STEPS // 2
  else:
    steps, eval_every = EPOCHS * steps_per_epoch, steps_per_epoch
  models = {m: MODELS[m] for m in QUICK_MODELS} if ctx.quick else MODELS
  results, pops = {}, {}
  for model, hidden in models.items():
    results[model] = {}
    for label, batch_norm in VARIANTS.items():
      pop = _train(ctx, data, hidden, batch_norm, LEARNING_RATES, steps, eval_every,
                   f"{model}, {label} ({len(LEARNING_RATES)} lr x {ctx.seeds} seeds)")
      pops[(model, label)] = pop
      loss = pop.probes["train_loss"]
      results[model][label] = {
          "accuracy": pop.final("test_accuracy"),                      # (L, S)
          "initial_loss": loss[..., 0], "final_loss": loss[..., -1],
          "skipped_steps": pop.skipped_steps,
          "diverged": diverged(pop.skipped_steps, loss[..., 0], loss[..., -1]),
          "at_chance": pop.final("test_accuracy") < 1 / data.num_classes + CHANCE_MARGIN}
  numbers = {model: {"learning_rates": LEARNING_RATES,
                     **{label: r["accuracy"] for label, r in variants.items()}}
             for model, variants in results.items()}
  verdicts = decide(numbers)
  ranges = {model: {label: lr_range(LEARNING_RATES, r["accuracy"])
                    for label, r in variants.items()} for model, variants in results.items()}

  setting = (f"{data.name}, SGD batch {BATCH_SIZE}, {steps:,} steps, {ctx.seeds} seeds")
  figure = "accuracy_vs_lr.png"
  _figure(os.path.join(ctx.out_dir, figure), LEARNING_RATES, results, ranges,
          f"Accuracy against learning rate\n({setting})")
  per_seed = {model: {label: {key: r[key] for key in (
      "accuracy", "initial_loss", "final_loss", "skipped_steps", "diverged", "at_chance")}
                      for label, r in variants.items()}
              for model, variants in results.items()}
  summary = {
      model: {label: {"eta_max": ranges[model][label],
                      "accuracy": {f"{lr:.3g}": summarize(r["accuracy"][i])
                                   for i, lr in enumerate(LEARNING_RATES)},
                      "diverged_fraction": {f"{lr:.3g}": float(r["diverged"][i].mean())
                                            for i, lr in enumerate(LEARNING_RATES)},
                      "at_chance_fraction": {f"{lr:.3g}": float(r["at_chance"][i].mean())
                                             for i, lr in enumerate(LEARNING_RATES)}}
              for label, r in variants.items()}
      for model, variants in results.items()}
  summary["compile_seconds"] = sum(p.compile_seconds for p in pops.values())
  summary["train_seconds"] = sum(p.train_seconds for p in pops.values())
  config = {"data": data.describe(), "models": {k: list(v) for k, v in models.items()},
            "activation": "relu", "learning_rates": LEARNING_RATES,
            "batch_size": BATCH_SIZE, "steps": steps, "eval_every": eval_every,
            "seeds": list(range(ctx.seeds)), "tolerance": TOLERANCE,
            "ratio_threshold": RATIO_THRESHOLD, "split_seed": ctx.split_seed,
            "loss_probe_examples": LOSS_PROBE_EXAMPLES, "chance_margin": CHANCE_MARGIN}
  table = (f"{setting}. Final test accuracy, mean ± sample std over seeds; diverged: runs "
           "with a skipped (non-finite) step or a final training loss above the initial "
           f"one; at chance: final test accuracy below {1 / data.num_classes + CHANCE_MARGIN:.0%}"
           " (counts of seeds). Last row: the largest learning rate within "
           f"{TOLERANCE * 100:g} points of the network's best mean (from the lower and upper "
           "95% interval ends in parentheses).\n\n" + _table(LEARNING_RATES, results, ranges))
  notes = [f"Compilation took {summary['compile_seconds']:.1f} s and training "
           f"{summary['train_seconds']:.1f} s (wall), {len(pops)} programs of "
           f"{len(LEARNING_RATES) * ctx.seeds} runs each."]
  return Outcome(config=config, per_seed=per_seed, summary=summary, verdicts=verdicts,
                 table=table, figures=[figure], notes=notes)
