"""placement: batch norm before or after the activation?

The course notes show BN both before the activation (Dense -> BN -> activation, as Ioffe
& Szegedy place it) and after it (Dense -> activation -> BN), and present "before" as
where it belongs. Two networks, each with ReLU and with sigmoid, each trained with BN
before and with BN after the activation over the same seeds (same initial weights, same
batches): the seed MLP on digits and the MNIST-1D benchmark CNN on MNIST-1D. The
difference in test accuracy (after - before) is paired by seed; its 95% t-interval
decides each verdict. The seeds of one network, activation and placement train together
in one compiled program (eight programs).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence

import numpy as np
import optax

from . import plots, runner
from .data import load_dataset
from .measures.stats import paired_difference, summarize
from .models import MLP, MNIST1DCNN
from .population import Recipe, train_population
from .spec import (DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, Anchor, Check, Outcome, RunContext,
                   Spec, Verdict)

NAME = "placement"
DESCRIPTION = ("BN before vs after the activation (ReLU, sigmoid) in the seed MLP (digits) "
               "and the MNIST-1D CNN: paired accuracy differences over seeds")


# ----------------------------------------------------------------- setup (fixed in code)


@dataclasses.dataclass(frozen=True)
class Network:
  """One network of the comparison and how it is trained.

  Attributes:
    label: its name in tables and figures.
    data: the data set it is trained on.
    optimizer: ``"sgd"`` or ``"adam"``.
    learning_rate: the constant learning rate.
    batch_size: examples per step.
    epochs: training length in epochs (full run).
    quick_steps: training steps of the quick smoke run (if it trains this network).
  """

  label: str
  data: str
  optimizer: str
  learning_rate: float
  batch_size: int
  epochs: int
  quick_steps: int


NETWORKS = (
    # The seed notebook's network and recipe (experiments/seed_mlp.py).
    Network("seed MLP", "digits", "sgd", 0.1, 32, 10, 44),
    # Greydanus's MNIST-1D benchmark recipe for its CNN (Adam 1e-2, batch 100).
    Network("MNIST-1D CNN", "mnist1d", "adam", 1e-2, 100, 20, 40),
)
ACTIVATIONS = ("relu", "sigmoid")
PLACEMENTS = ("before", "after")
#: The quick smoke run trains one cell (two compiled programs, ~7 CPU s each to compile).
QUICK_CELLS = (("seed MLP", "relu"),)
SEED_MLP_DROPOUT = 0.3

# ----------------------------------------------------------------- criterion (fixed)
MARGIN = 0.01  # a difference of less than 1 point of accuracy is no practical difference


def make_model(network: Network, activation: str, placement: str, num_classes: int = 10):
  """The network with BN ``placement`` ("before"/"after") the ``activation``."""
  if network.label == "seed MLP":
    return MLP(hidden=(128, 64), num_classes=num_classes, activation=activation,
               norm="batch", placement=placement, dropout_rate=SEED_MLP_DROPOUT)
  return MNIST1DCNN(num_classes=num_classes, norm="batch", activation=activation,
                    placement=placement)


SPEC = Spec(
    name=NAME,
    title="Batch norm before or after the activation",
    description=DESCRIPTION,
    claim=("BN belongs before the activation (Dense -> BN -> activation, Ioffe & "
           "Szegedy's placement): it gives a more accurate network than BN after the "
           "activation, which the notes also show."),
    anchor=Anchor(
        number=("CaffeNet on ImageNet (128 px), top-1 accuracy: BN before ReLU 47.4%, "
                "after ReLU 49.9% (with BN's scale and bias: 47.8% vs 49.3%), i.e. after "
                "was better by 1.5-2.5 points"),
        source=("Mishkin, Sergievskiy & Matas 2017, Systematic evaluation of convolution "
                "neural network advances on the ImageNet, CVIU 161 (BN placement; the "
                "caffenet-benchmark repository's batchnorm table); Ioffe & Szegedy 2015 "
                "§3.2 place BN before the nonlinearity")),
    criterion=(
        "For each network (seed MLP, MNIST-1D CNN) and activation (ReLU, sigmoid): d = "
        "test accuracy with BN after the activation minus before, paired by seed (same "
        "initial weights and batches), with its 95% t-interval over the seeds (5 in a "
        "full run). The notes' claim 'before is better' holds for that cell if the "
        "interval lies below 0; it does not hold if the interval lies above 0 (after is "
        f"better) or entirely within +-{MARGIN * 100:g} point (placement makes no "
        "practical difference); otherwise it is inconclusive. Overall: does not hold if "
        "after is significantly better in any cell, or if every cell shows no practical "
        "difference; holds if before is significantly better in at least half the cells "
        "(and after in none); inconclusive otherwise."),
    data=("The seed MLP on scikit-learn's digits (its default data: 1437 train / 360 "
          "test) and the CNN on MNIST-1D (4000 train / 1000 test, generated locally), the "
          "benchmark it was designed for, where convolutions matter (MLPs reach ~70%, "
          "the CNN ~94%)."),
    setup=(f"Seed MLP: Dense 128 -> BN/activation -> Dropout {SEED_MLP_DROPOUT} -> Dense 64 "
           f"-> BN/activation -> Dropout {SEED_MLP_DROPOUT} -> Dense 10, SGD lr 0.1, batch "
           "32, 10 epochs (the notebook's recipe). CNN: three Conv1D (25 channels, "
           "stride 2) each with BN/activation, then Dense 10 (Greydanus's ConvBase), Adam "
           f"lr 1e-2, batch 100, {NETWORKS[1].epochs} epochs ({NETWORKS[1].epochs * 40} "
           "steps). 'Before': Dense/Conv -> BN -> activation; 'after': Dense/Conv -> "
           "activation -> BN. jaxnorm.BatchNorm (momentum 0.99, scale and bias); test "
           "accuracy at the end, with the running statistics."),
    limits=("Two small networks on small data sets, one recipe each (no tuning of the "
            "learning rate per placement), 5 seeds: differences below about one point "
            "are not resolved (digits' test set has 360 examples, so one example is 0.28 "
            "point). The anchor is a large CNN on ImageNet; what holds there need not "
            "hold here and conversely."),
)


# ----------------------------------------------------------------- the verdicts


def _cell_verdict(network: str, activation: str, before, after) -> tuple[Verdict, str]:
  """The verdict on one cell and why: ``before``/``after`` are per-seed accuracies."""
  diff = paired_difference(after, before)
  claim = f"{network}, {activation}: BN before the activation is more accurate"
  interval = f"[{diff.ci_low * 100:+.2f}, {diff.ci_high * 100:+.2f}]"
  finite = np.all(np.isfinite([diff.mean, diff.ci_low, diff.ci_high]))
  if not finite:
    kind, verdict = "unknown", INCONCLUSIVE
  elif diff.ci_high < 0:
    kind, verdict = "before better", HOLDS
  elif diff.ci_low > 0:
    kind, verdict = "after better", DOES_NOT_HOLD
  elif -MARGIN <= diff.ci_low and diff.ci_high <= MARGIN:
    kind, verdict = "no practical difference", DOES_NOT_HOLD
  else:
    kind, verdict = "undecided", INCONCLUSIVE
  before_s, after_s = summarize(before), summarize(after)
  reason = (f"test accuracy {before_s.mean:.2%} before vs {after_s.mean:.2%} after; "
            f"after - before = {diff.mean * 100:+.2f} points, 95% CI {interval} over "
            f"{diff.n} paired seeds: {kind}.")
  checks = (Check("after - before (points), 95% CI upper end", round(diff.ci_high * 100, 3),
                  "< 0 for 'before better'", bool(diff.ci_high < 0) if finite else None),
            Check("after - before (points), 95% CI lower end", round(diff.ci_low * 100, 3),
                  "> 0 for 'after better'", bool(diff.ci_low > 0) if finite else None))
  return Verdict(claim, verdict, reason,
                 f"after - before = {diff.mean * 100:+.2f} pts, CI {interval}",
                 anchor="CaffeNet: after - before = +2.5 pts (+1.5 with scale & bias)",
                 checks=checks), kind


def decide(accuracy: Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]]
           ) -> list[Verdict]:
  """Per-cell verdicts and the overall one, from per-seed test accuracies.

  Args:
    accuracy: ``{network: {activation: {"before": [...], "after": [...]}}}``, the
      final test accuracy per seed (the same seeds, in the same order, under both
      placements).
  """
  cells, kinds = [], []
  for network, by_activation in accuracy.items():
    for activation, runs in by_activation.items():
      verdict, kind = _cell_verdict(network, activation, runs["before"], runs["after"])
      cells.append(verdict)
      kinds.append(kind)
  counts = {kind: kinds.count(kind) for kind in dict.fromkeys(kinds)}
  if "after better" in counts:
    overall = DOES_NOT_HOLD
  elif counts.get("no practical difference", 0) == len(kinds):
    overall = DOES_NOT_HOLD
  elif counts.get("before better", 0) * 2 >= len(kinds):
    overall = HOLDS
  else:
    overall = INCONCLUSIVE
  tally = ", ".join(f"{n} {kind}" for kind, n in counts.items())
  checks = (Check("cells where after is significantly better", counts.get("after better", 0),
                  "0 for the claim to hold", counts.get("after better", 0) == 0),
            Check("cells where before is significantly better",
                  counts.get("before better", 0), f">= {(len(kinds) + 1) // 2} to hold",
                  counts.get("before better", 0) * 2 >= len(kinds)))
  summary = Verdict(
      "Overall: BN belongs before the activation (the notes)", overall,
      f"of {len(kinds)} network x activation cells: {tally}.",
      f"{counts.get('before better', 0)} of {len(kinds)} cells favour before, "
      f"{counts.get('after better', 0)} favour after",
      anchor="CaffeNet/ImageNet: after better by 1.5-2.5 pts", checks=checks)
  return cells + [summary]


# ----------------------------------------------------------------- training


def _optimizer(network: Network) -> optax.GradientTransformation:
  if network.optimizer == "sgd":
    return optax.sgd(network.learning_rate)
  return optax.adam(network.learning_rate)


def train_cell(ctx: RunContext, network: Network, data, activation: str, placement: str):
  """Trains every seed of one network x activation x placement in one program."""
  steps_per_epoch = len(data.x_train) // network.batch_size
  if ctx.quick:
    steps, eval_every = network.quick_steps, network.quick_steps
  else:
    steps, eval_every = network.epochs * steps_per_epoch, steps_per_epoch
  model = make_model(network, activation, placement, data.num_classes)
  return train_population(
      Recipe(model, _optimizer(network), network.batch_size), data,
      seeds=list(range(ctx.seeds)), steps=steps, eval_every=eval_every,
      progress=ctx.progress, desc=f"{network.label} {activation} BN {placement}")


# ----------------------------------------------------------------- figures and table


def _curves_figure(path, populations, trained, seeds: int):
  with plots.figure(path, f"Test accuracy during training, BN before vs after the "
                    f"activation ({seeds} seeds, band: ± std)", ncols=len(trained),
                    size=(4.2, 3.6)) as axes:
    for ax, (network, activation) in zip(axes, trained):
      for placement in PLACEMENTS:
        pop = populations[(network.label, activation, placement)]
        epochs = pop.steps[1:] / (pop.steps[1] if len(pop.steps) > 1 else 1)
        plots.band(ax, epochs, pop.curves["test_accuracy"][0, :, 1:],
                   label=f"BN {placement} {activation}")
      plots.label(ax, x="epoch", y="test accuracy (fraction)",
                  title=f"{network.label}, {activation} ({network.data})")


def _difference_figure(path, accuracy, seeds: int):
  labels, diffs = [], []
  for network, by_activation in accuracy.items():
    for activation, runs in by_activation.items():
      labels.append(f"{network}\n{activation}")
      diffs.append(paired_difference(runs["after"], runs["before"]))
  with plots.figure(path, f"Paired difference in test accuracy, BN after - before the "
                    f"activation ({seeds} seeds; bars: 95% CI)", size=(7.0, 4.0)) as axes:
    ax = axes[0]
    x = np.arange(len(labels))
    means = np.array([d.mean for d in diffs]) * 100
    low = means - np.array([d.ci_low for d in diffs]) * 100
    high = np.array([d.ci_high for d in diffs]) * 100 - means
    ax.errorbar(x, means, yerr=np.vstack([low, high]), fmt="o", capsize=5,
                label="after - before (mean, 95% CI)")
    for i, runs in enumerate(r for by in accuracy.values() for r in by.values()):
      per_seed = (np.asarray(runs["after"]) - np.asarray(runs["before"])) * 100
      ax.plot(np.full(len(per_seed), i + 0.12), per_seed, ".", color="grey", alpha=0.7,
              label="single seeds" if i == 0 else None)
    ax.axhline(0.0, color="k", lw=1)
    ax.axhspan(-MARGIN * 100, MARGIN * 100, color="grey", alpha=0.12,
               label=f"± {MARGIN * 100:g} point: no practical difference")
    ax.set_xticks(x, labels=labels)
    plots.label(ax, x="network, activation",
                y="accuracy after - before (points, > 0: after better)")


def _table(accuracy, verdicts) -> str:
  rows = []
  cell_verdicts = iter(verdicts)
  for network, by_activation in accuracy.items():
    for activation, runs in by_activation.items():
      diff = paired_difference(runs["after"], runs["before"])
      rows.append([network, activation, summarize(runs["before"]).format(4),
                   summarize(runs["after"]).format(4),
                   f"{diff.mean * 100:+.2f} ± {diff.std * 100:.2f}",
                   f"[{diff.ci_low * 100:+.2f}, {diff.ci_high * 100:+.2f}]",
                   next(cell_verdicts).verdict])
  return runner.markdown_table(
      ["network", "activation", "BN before: test accuracy", "BN after: test accuracy",
       "after - before (points)", "95% CI (points)", "'before is better'"], rows)


# ----------------------------------------------------------------- run


def cells(quick: bool) -> list[tuple[Network, str]]:
  """The ``(network, activation)`` cells a run trains (each under both placements)."""
  every = [(network, activation) for network in NETWORKS for activation in ACTIVATIONS]
  if not quick:
    return every
  return [(network, activation) for network, activation in every
          if (network.label, activation) in QUICK_CELLS]


def run(ctx: RunContext) -> Outcome:
  populations, accuracy, datasets = {}, {}, {}
  for network, activation in cells(ctx.quick):
    if network.data not in datasets:
      datasets[network.data] = load_dataset(network.data)
    for placement in PLACEMENTS:
      pop = train_cell(ctx, network, datasets[network.data], activation, placement)
      populations[(network.label, activation, placement)] = pop
      accuracy.setdefault(network.label, {}).setdefault(activation, {})[placement] = [
          float(v) for v in pop.final("test_accuracy")[0]]
  verdicts = decide(accuracy)
  figures = ["accuracy_curves.png", "paired_differences.png"]
  _curves_figure(os.path.join(ctx.out_dir, figures[0]), populations, cells(ctx.quick),
                 ctx.seeds)
  _difference_figure(os.path.join(ctx.out_dir, figures[1]), accuracy, ctx.seeds)
  summary = {}
  for network, by_activation in accuracy.items():
    for activation, runs in by_activation.items():
      cell = f"{network} {activation}"
      summary[cell] = {"before": summarize(runs["before"]),
                       "after": summarize(runs["after"]),
                       "after_minus_before": paired_difference(runs["after"],
                                                               runs["before"])}
  compile_seconds = sum(p.compile_seconds for p in populations.values())
  train_seconds = sum(p.train_seconds for p in populations.values())
  skipped = {f"{n} {a} {p}": int(pop.skipped_steps.sum())
             for (n, a, p), pop in populations.items()}
  return Outcome(
      config={"networks": [dataclasses.asdict(n) for n in NETWORKS],
              "activations": ACTIVATIONS, "placements": PLACEMENTS,
              "seed_mlp_dropout": SEED_MLP_DROPOUT, "margin": MARGIN,
              "steps": {f"{n} {a} {p}": int(pop.steps[-1])
                        for (n, a, p), pop in populations.items()},
              "compile_seconds": compile_seconds, "train_seconds": train_seconds},
      per_seed={"test_accuracy": accuracy, "skipped_steps": skipped},
      summary=summary, verdicts=verdicts, table=_table(accuracy, verdicts),
      figures=figures,
      notes=[f"{len(populations)} compiled programs: {compile_seconds:.1f} s compiling, "
             f"{train_seconds:.1f} s training; steps rejected by the non-finite guard: "
             f"{sum(skipped.values())}."])
