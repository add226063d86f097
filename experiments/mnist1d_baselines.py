"""mnist1d-baselines: the MNIST-1D table, and what BN, LN and dropout add to each model.

Greydanus (2020) made MNIST-1D to separate models that MNIST cannot: its table gives
32% test accuracy for logistic regression, 68% for an MLP, 94% for a CNN and 91% for a
GRU. We rebuild the four reference models (:mod:`experiments.mnist1d_models`,
:mod:`experiments.recurrent`) from jaxnorm's modules, train them as the reference code
trains them (Adam, learning rate 1e-2, batch 100) without normalization, with batch
norm, with layer norm and with dropout, over 5 seeds, and check that the plain models
land within 3 points of the published numbers.
"""

from __future__ import annotations

import os

import jax
import numpy as np
import optax

from . import plots, runner
from .data import load_dataset
from .measures.stats import paired_difference, summarize
from .mnist1d_models import ConvNet, Logistic, ResidualMLP
from .population import Recipe, train_population
from .recurrent import GRUClassifier
from .spec import (DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, Anchor, Check, Outcome, Spec,
                   Verdict)

NAME = "mnist1d-baselines"
DESCRIPTION = ("MNIST-1D table (logistic, MLP, CNN, GRU) vs Greydanus 2020, each plain, "
               "+BN, +LN, +dropout")

MODELS = ("logistic", "mlp", "cnn", "gru")
MODEL_LABELS = {"logistic": "logistic regression", "mlp": "MLP", "cnn": "CNN",
                "gru": "GRU"}
VARIANTS = ("none", "batch", "layer", "dropout")
VARIANT_LABELS = {"none": "no normalization", "batch": "+BN", "layer": "+LN",
                  "dropout": "+dropout"}
#: Greydanus 2020, MNIST-1D test accuracy (README table and paper, Table 1).
PUBLISHED = {"logistic": 0.32, "mlp": 0.68, "cnn": 0.94, "gru": 0.91}
#: The criterion: the plain models of these kinds within TOLERANCE of the published
#: accuracy (the issue fixes 3 points; the GRU is reported, not judged: its training
#: is cut most, see LIMITS).
JUDGED = ("logistic", "mlp", "cnn")
TOLERANCE = 0.03

LEARNING_RATE = 1e-2
BATCH_SIZE = 100
EVAL_EVERY = 250
DROPOUT_RATE = 0.3
#: Training steps per model. The reference trains 8000 (200 epochs) each; on two CPU
#: cores the full grid (4 models x 4 variants x 5 seeds) does not fit ten minutes, so
#: the costlier models are cut (chosen from measured step times only).
STEPS = {"logistic": 8000, "mlp": 3000, "cnn": 4000, "gru": 1500}
QUICK_STEPS, QUICK_EVAL_EVERY = 40, 20
#: A quick run trains only these models' plain and dropout runs (see programs()).
QUICK_MODELS = ("logistic", "mlp", "cnn")

SPEC = Spec(
    name=NAME,
    title="MNIST-1D baselines (Greydanus 2020) with and without BN, LN and dropout",
    description=DESCRIPTION,
    claim=("MNIST-1D separates model families that all score ~99% on MNIST: logistic "
           "regression 32%, MLP 68%, CNN 94%, GRU 91% test accuracy. Rebuilt from "
           "jaxnorm's modules and trained as the reference code trains them, the plain "
           "models reproduce these numbers; normalization and dropout layers then "
           "show what each adds to each model."),
    anchor=Anchor(
        number="test accuracy: logistic 32%, MLP 68%, CNN 94%, GRU 91%",
        source=("Greydanus 2020, \"Scaling down deep learning\" (arXiv:2011.14439), "
                "MNIST-1D table (README of github.com/greydanus/mnist1d and Table 1)")),
    criterion=(f"For logistic regression, the MLP and the CNN without normalization: "
               f"the mean final test accuracy over the seeds lies within "
               f"{TOLERANCE * 100:.0f} points of the published number (holds), else "
               "does not hold (inconclusive if a seed diverged). The GRU is reported "
               "against 91% but not judged (its training is cut). BN, LN and dropout "
               "are reported as paired differences from the plain model over the same "
               "seeds, with 95% t-intervals (no verdict)."),
    data=("MNIST-1D generated locally with the package's default arguments (seed 42; "
          "5000 signals of length 40) and split 4000/1000 by a seeded permutation: the "
          "benchmark's own data, at the benchmark's size."),
    setup=("The mnist1d package (0.0.2) ships only the data generator; models and "
           "training defaults are those of the benchmark repository's notebooks/models.py "
           "and notebooks/train.py (hidden 256, Adam 1e-2, batch 100, 8000 steps, no "
           "weight decay). Models: LinearBase "
           "(Dense 40->10), MLPBase with 256 hidden units (h1 = relu(W1 x), h2 = h1 + "
           "relu(W2 h1), Dense 10), ConvBase (three 1-D convolutions with 25 channels, "
           "kernel 5/3/3, stride 2, padding 1, ReLU, Dense 125->10), GRUBase "
           "(bidirectional GRU with 6 hidden units over the 40 values, all 40 outputs "
           "flattened into Dense 480->10); weights initialized as PyTorch does. Variants: "
           "BN between each Dense/convolution and its ReLU (logistic: on the inputs; "
           "GRU: on the recurrent pre-activation, one set of statistics for all steps); "
           "LN in the same places (per example over the features; CNN: over positions "
           "and channels; GRU: inside the cell); dropout "
           f"{DROPOUT_RATE} after each hidden block (logistic: on the inputs; GRU: on "
           f"the flattened outputs). Adam, learning rate {LEARNING_RATE}, batch "
           f"{BATCH_SIZE}, no weight decay; steps: "
           + ", ".join(f"{MODEL_LABELS[m]} {STEPS[m]}" for m in MODELS)
           + f"; test accuracy every {EVAL_EVERY} steps, the last one reported; 5 "
           "seeds (initialization, batch order, dropout masks). All seeds (and the "
           "plain and dropout runs) of one model and normalization train in one "
           "compiled program."),
    limits=("Training is cut relative to the reference's 8000 steps to fit two CPU "
            "cores: " + ", ".join(f"{MODEL_LABELS[m]} {STEPS[m]}" for m in MODELS if
                                 STEPS[m] < 8000)
            + " steps (the CNN, judged against 94%, keeps the most; whether the MLP "
            "has fitted its training set by then is in the train-accuracy column); "
            "logistic regression trains the full 8000. "
            "The GRU is the costliest (a 40-step recurrence per batch) and is only "
            "reported. Batches are reshuffled every epoch (the reference "
            "walks the training set in a fixed order). One drop rate (0.3) and one "
            "placement per layer; no learning-rate retuning for the normalized "
            "variants, so a variant that would need another rate is judged at the "
            "reference's. 5 seeds on one data split: differences under about a point "
            "are within the seed spread."),
)


def build_model(kind: str, norm: str):
  """The reference model ``kind`` with normalization ``norm`` (``"none"`` for plain or
  dropout runs: the drop rate is a call argument)."""
  if kind == "logistic":
    return Logistic(norm=norm)
  if kind == "mlp":
    return ResidualMLP(norm=norm)
  if kind == "cnn":
    return ConvNet(norm=norm)
  if kind == "gru":
    return GRUClassifier(norm=norm)
  raise ValueError(f"build_model: kind must be one of {MODELS}; got {kind!r}.")


def programs(quick: bool):
  """(model, norm, variants trained together): plain and dropout runs share a program.

  A quick run trains only the plain and dropout runs of :data:`QUICK_MODELS` (one
  program each): compilation, not training, is what costs in a smoke run, and the GRU
  is exercised by rnn-norm's quick run.
  """
  for kind in QUICK_MODELS if quick else MODELS:
    yield kind, "none", ("none", "dropout")
    if not quick:
      yield kind, "batch", ("batch",)
      yield kind, "layer", ("layer",)


def train_all(ctx, data):
  """Trains every model and variant; returns per-variant curves and timing."""
  seeds = list(range(ctx.seeds))
  results = {kind: {} for kind in MODELS}
  timing = {}
  for kind, norm, variants in programs(ctx.quick):
    steps = QUICK_STEPS if ctx.quick else STEPS[kind]
    eval_every = QUICK_EVAL_EVERY if ctx.quick else EVAL_EVERY
    grid, hparams = None, ()
    if "dropout" in variants:
      grid, hparams = {"dropout_rate": [0.0, DROPOUT_RATE]}, ("dropout_rate",)
    recipe = Recipe(build_model(kind, norm), optax.adam(LEARNING_RATE), BATCH_SIZE,
                    model_hparams=hparams)
    pop = train_population(recipe, data, seeds=seeds, steps=steps, eval_every=eval_every,
                           grid=grid, progress=ctx.progress,
                           desc=f"{kind} {'+'.join(variants)} ({len(seeds)} seeds)")
    timing[f"{kind}/{norm}"] = {"compile_seconds": pop.compile_seconds,
                                "train_seconds": pop.train_seconds, "steps": steps}
    for setting, variant in enumerate(variants):
      results[kind][variant] = {
          "steps": pop.steps,
          "test_accuracy": pop.curves["test_accuracy"][setting],    # (S, E)
          "train_accuracy": pop.curves["train_accuracy"][setting],
          "test_loss": pop.curves["test_loss"][setting],
          "skipped_steps": pop.skipped_steps[setting]}
  return results, timing


def decide(final: dict) -> list[Verdict]:
  """Verdicts from the final test accuracies ``final[model][variant]`` (one per seed).

  For each judged model, the plain variant's mean over seeds must lie within
  :data:`TOLERANCE` of :data:`PUBLISHED`; a non-finite accuracy (a diverged seed)
  makes the verdict inconclusive.
  """
  verdicts = []
  for kind in JUDGED:
    values = np.asarray(final[kind]["none"], np.float64)
    published = PUBLISHED[kind]
    label = MODEL_LABELS[kind]
    claim = f"{label} without normalization reproduces the published accuracy"
    anchor = f"{label}: {published:.0%}"
    if not np.all(np.isfinite(values)):
      check = Check(f"|{label} - published|", None, f"<= {TOLERANCE * 100:.0f} points", None)
      verdicts.append(Verdict(claim, INCONCLUSIVE,
                              f"{np.sum(~np.isfinite(values))} of {values.size} seeds "
                              "gave no finite accuracy.", "n/a", anchor, (check,)))
      continue
    s = summarize(values)
    gap = s.mean - published
    passed = bool(abs(gap) <= TOLERANCE)
    check = Check(f"|{label} mean - published| (points)", round(abs(gap) * 100, 2),
                  f"<= {TOLERANCE * 100:.0f}", passed)
    ci = f"95% CI {s.ci_low:.1%} to {s.ci_high:.1%}" if s.n > 1 else "one seed"
    reason = (f"{label}: {s.mean:.1%} ± {s.std:.1%} over {s.n} seeds ({ci}) against "
              f"{published:.0%} published: {gap * 100:+.1f} points, "
              f"{'within' if passed else 'outside'} ±{TOLERANCE * 100:.0f}.")
    verdicts.append(Verdict(claim, HOLDS if passed else DOES_NOT_HOLD, reason,
                            f"{s.mean:.1%} ± {s.std:.1%}", anchor, (check,)))
  return verdicts


def _points(summary) -> str:
  return f"{summary.mean * 100:.1f} ± {summary.std * 100:.1f}"


def _table(final: dict, train_final: dict, models, variants, eval_every: int) -> str:
  rows = []
  for kind in models:
    plain = final[kind]["none"]
    for variant in variants:
      s = summarize(final[kind][variant])
      ci = f"{s.ci_low * 100:.1f} to {s.ci_high * 100:.1f}" if s.n > 1 else "—"
      if variant == "none":
        delta = "—"
      else:
        d = paired_difference(final[kind][variant], plain)
        delta = (f"{d.mean * 100:+.1f} ({d.ci_low * 100:+.1f} to {d.ci_high * 100:+.1f})"
                 if d.n > 1 else f"{d.mean * 100:+.1f}")
      rows.append([MODEL_LABELS[kind] if variant == "none" else "",
                   VARIANT_LABELS[variant], _points(s), ci, delta,
                   _points(summarize(train_final[kind][variant])),
                   f"{PUBLISHED[kind]:.0%}" if variant == "none" else ""])
  return runner.markdown_table(
      ["model", "variant", "test accuracy % (mean ± std)", "95% CI", "Δ vs plain, "
       "points (95% CI)", f"train accuracy % (training mode, last {eval_every} steps)",
       "published"], rows)


def _figures(ctx, results, final, models, variants) -> list[str]:
  names = []
  path = os.path.join(ctx.out_dir, "accuracy_by_variant.png")
  with plots.figure(path, "MNIST-1D test accuracy by model and layer (mean ± std over "
                    f"{ctx.seeds} seeds)", size=(8.0, 4.2)) as axes:
    ax = axes[0]
    width = 0.72 / len(variants)
    for j, variant in enumerate(variants):
      means = [100 * np.mean(final[k][variant]) for k in models]
      stds = [100 * np.std(final[k][variant], ddof=1) if len(final[k][variant]) > 1
              else 0.0 for k in models]
      ax.bar(np.arange(len(models)) + (j - (len(variants) - 1) / 2) * width, means, width,
             yerr=stds,
             capsize=3, label=VARIANT_LABELS[variant])
    for i, kind in enumerate(models):
      ax.hlines(100 * PUBLISHED[kind], i - 0.45, i + 0.45, colors="black",
                linestyles="--", label="published (Greydanus 2020)" if i == 0 else None)
    ax.set_xticks(range(len(models)), labels=[MODEL_LABELS[k] for k in models])
    ax.set_ylim(0, 100)
    plots.label(ax, x="model", y="test accuracy (%)")
    ax.legend(fontsize=8, loc="upper left")
  names.append(os.path.basename(path))

  path = os.path.join(ctx.out_dir, "test_curves.png")
  with plots.figure(path, "MNIST-1D test accuracy during training (mean ± std over "
                    f"{ctx.seeds} seeds)", ncols=2, nrows=2, size=(5.0, 3.4)) as axes:
    for ax, kind in zip(axes, models):
      for variant in variants:
        r = results[kind][variant]
        plots.band(ax, r["steps"], 100 * r["test_accuracy"], label=VARIANT_LABELS[variant])
      ax.axhline(100 * PUBLISHED[kind], color="black", linestyle="--", linewidth=1,
                 label="published")
      plots.label(ax, x="training step (batches of 100)", y="test accuracy (%)",
                  title=MODEL_LABELS[kind])
    for ax in axes[len(models):]:
      ax.axis("off")
  names.append(os.path.basename(path))
  return names


def run(ctx) -> Outcome:
  data = load_dataset("mnist1d", seed=ctx.split_seed)
  print(data.describe())
  # The legacy (non-partitionable) threefry: the same quality of random numbers on one
  # device, and programs that draw many of them (initialization, shuffling, dropout)
  # compile several times faster on the CPU.
  with jax.threefry_partitionable(False):
    results, timing = train_all(ctx, data)
  models = [k for k in MODELS if results[k]]
  variants = [v for v in VARIANTS if v in results[models[0]]]
  final = {k: {v: results[k][v]["test_accuracy"][:, -1] for v in variants} for k in models}
  train_final = {k: {v: results[k][v]["train_accuracy"][:, -1] for v in variants}
                 for k in models}
  verdicts = decide(final)
  summary = {}
  for kind in models:
    for variant in variants:
      summary[f"{kind}/{variant}/test_accuracy"] = summarize(final[kind][variant])
      summary[f"{kind}/{variant}/train_accuracy"] = summarize(train_final[kind][variant])
      if variant != "none":
        summary[f"{kind}/{variant}/minus_plain"] = paired_difference(
            final[kind][variant], final[kind]["none"])
  per_seed = {f"{k}/{v}": {"test_accuracy": final[k][v], "train_accuracy": train_final[k][v],
                           "test_accuracy_curve": results[k][v]["test_accuracy"],
                           "skipped_steps": results[k][v]["skipped_steps"]}
              for k in models for v in variants}
  config = {"data": data.describe(), "split_seed": ctx.split_seed, "seeds": ctx.seeds,
            "optimizer": "adam", "learning_rate": LEARNING_RATE, "batch_size": BATCH_SIZE,
            "dropout_rate": DROPOUT_RATE,
            "steps": {k: QUICK_STEPS if ctx.quick else STEPS[k] for k in models},
            "eval_every": QUICK_EVAL_EVERY if ctx.quick else EVAL_EVERY,
            "published": PUBLISHED, "tolerance": TOLERANCE,
            "eval_steps": {k: results[k]["none"]["steps"] for k in models},
            "timing": timing}
  notes = ([f"GRU (reported, not judged): {summarize(final['gru']['none']).mean:.1%} "
            f"without normalization after {config['steps']['gru']} steps, against 91% "
            "published."] if "gru" in models else [])
  notes += ["Compile and training seconds per program are in config.timing; "
            f"compilation took {sum(t['compile_seconds'] for t in timing.values()):.0f} s "
            f"and training {sum(t['train_seconds'] for t in timing.values()):.0f} s "
            "(wall)."]
  return Outcome(config=config, per_seed=per_seed, summary=summary, verdicts=verdicts,
                 table=_table(final, train_final, models, variants, config["eval_every"]),
                 figures=_figures(ctx, results, final, models, variants),
                 notes=notes)
