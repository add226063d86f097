r"""regularization: do dropout and L2 shrink overfitting, and does BN reduce the need for dropout?

The course notes: dropout and L2 regularize (they shrink the gap between training and
test accuracy); too much dropout (rates above 0.7) underfits; and batch norm, itself a
regularizer, lowers the best drop rate and what dropout adds. The seed MLP overfits a
small MNIST-1D training subset; it is trained over a grid of drop rates x coupled L2
coefficients, without and with BN. All rates x coefficients x seeds of one network train
in one compiled program (two programs): the drop rate is a call-time (traced) argument
of the model and the L2 coefficient an injected optimizer hyper-parameter.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence

import jax.numpy as jnp
import numpy as np
import optax

from jaxnorm import training

from . import plots, runner
from .data import Dataset, load_dataset
from .measures.effects import effect_check
from .measures.stats import paired_difference, summarize
from .models import MLP
from .population import Recipe, grid_product, train_population
from .spec import (DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, Anchor, Check, Outcome, RunContext,
                   Spec, Verdict, verdict_from_checks)

NAME = "regularization"
DESCRIPTION = ("dropout x L2 grid on a small MNIST-1D subset, with and without BN: "
               "train-test gap, underfitting at high rates, BN and the best drop rate")

# ----------------------------------------------------------------- setup (fixed in code)
RATES = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9)
L2S = (0.0, 1e-4, 1e-3, 1e-2)
NORMS = ("none", "batch")
NORM_LABELS = {"none": "no BN", "batch": "BN"}
DATA = "mnist1d"
TRAIN_SUBSET = 500
HIDDEN = (128, 64)
BATCH_SIZE = 32
LEARNING_RATE = 0.1
EPOCHS, EVAL_EVERY_EPOCHS = 200, 10
QUICK_RATES, QUICK_L2S, QUICK_STEPS, QUICK_EVAL_EVERY = (0.0, 0.5, 0.9), (0.0, 1e-2), 150, 75

# ----------------------------------------------------------------- criterion (fixed)
REFERENCE_RATE = 0.5          # Srivastava et al.'s rate for hidden units
UNDERFIT_RATE = 0.9           # the grid's rate above 0.7
MIN_GAP_EFFECT = 0.02         # two points of train-test gap
MIN_UNDERFIT_TRAIN_DROP = 0.05  # five points of training accuracy
MIN_ACCURACY_EFFECT = 0.01    # one point of test accuracy

SPEC = Spec(
    name=NAME,
    title="Dropout and L2 against overfitting, with and without BN",
    description=DESCRIPTION,
    claim=("Dropout and L2 weight decay shrink the gap between training and test accuracy; "
           "drop rates above 0.7 underfit; with batch norm the best drop rate is lower and "
           "dropout adds less."),
    anchor=Anchor(
        number=("MNIST test error 1.60% without dropout, 1.25% with dropout, 1.06% with "
                "dropout and max-norm"),
        source=("Srivastava, Hinton, Krizhevsky, Sutskever, Salakhutdinov 2014, Dropout: A "
                "Simple Way to Prevent Neural Networks from Overfitting (JMLR), Table 9")),
    criterion=(
        "Gaps are training accuracy (evaluation mode, on the training subset) minus test "
        "accuracy at the end of training; differences are paired by seed (same initial "
        "weights and batches) with a 95% t-interval, and an effect of size m is 'present' "
        "if the interval is above 0 and the mean at least m, 'absent' if the interval's "
        "upper end is below m, undecided otherwise. (1) Dropout shrinks the gap: without "
        f"BN and L2, gap(rate 0) - gap(rate {REFERENCE_RATE:g}), m = "
        f"{MIN_GAP_EFFECT * 100:g} points: holds if present, does not hold if absent. (2) "
        "L2 shrinks the gap: without BN and dropout, gap(L2 0) - gap(largest L2), m = "
        f"{MIN_GAP_EFFECT * 100:g} points. (3) Rates above 0.7 underfit: without BN and "
        f"L2, against the rate <= 0.7 with the best mean test accuracy, rate "
        f"{UNDERFIT_RATE:g} loses training accuracy (m = {MIN_UNDERFIT_TRAIN_DROP * 100:g} "
        f"points) and test accuracy (m = {MIN_ACCURACY_EFFECT * 100:g} point): holds if "
        "both present, does not hold if either is absent. (4) With BN the best rate is "
        "lower: the rates with the best mean test accuracy (L2 0) without BN (r0) and with "
        "BN (r1); holds if r1 < r0 and the BN net's accuracy at r1 minus at r0 has its "
        "interval above 0; does not hold if r1 >= r0 and the BN net's accuracy at r1 "
        "minus at the next lower rate (the one it would need to prefer) has its interval "
        "above 0, or if r0 is already the lowest rate (0); inconclusive otherwise. (5) "
        "Dropout adds less with BN: the gain of each net's best rate over rate 0 (L2 0), "
        f"gain(no BN) - gain(BN), m = {MIN_ACCURACY_EFFECT * 100:g} point: holds if "
        "present, does not hold if absent. Over 5 seeds in the full run."),
    data=(f"MNIST-1D (generated locally), the first {TRAIN_SUBSET} examples of the shuffled "
          "4000-example training split for training (the issue's 300-500, small enough "
          "that the MLP fits it perfectly and overfits) and the full 1000-example test "
          "split. Digits is nearly solved by the MLP even from 500 examples, which would "
          "leave little gap to shrink."),
    setup=(f"Seed MLP Dense {HIDDEN[0]} -> [BN] -> ReLU -> Dropout -> Dense {HIDDEN[1]} -> "
           "[BN] -> ReLU -> Dropout -> Dense 10 (jaxnorm.BatchNorm, jaxnorm.Dropout, the "
           "seed notebook's order); drop rates "
           f"{', '.join(f'{r:g}' for r in RATES)} x coupled L2 "
           f"{', '.join(f'{w:g}' for w in L2S)} (added to the gradient before SGD, "
           "sparing biases and BN parameters: jaxnorm.training.decay_mask); SGD lr "
           f"{LEARNING_RATE}, batch {BATCH_SIZE}, {EPOCHS} epochs "
           f"({EPOCHS * (TRAIN_SUBSET // BATCH_SIZE):,} steps), accuracy in evaluation "
           "mode (running BN statistics, no dropout) at the end of training."),
    limits=("A 2-hidden-layer MLP on 500 one-dimensional signals, not Srivastava's large "
            "MNIST networks with max-norm and long schedules; no max-norm constraint, no "
            "learning-rate schedule, one learning rate, final rather than early-stopped "
            "accuracy. 'Best rate' is chosen on the test set from a 6-point grid, so "
            "verdicts (3)-(5) share the selection's optimism; 5 seeds give wide intervals "
            "for one-point effects."),
)


# ----------------------------------------------------------------- the verdicts


def _index(values: Sequence[float], value: float) -> int:
  matches = [i for i, v in enumerate(values) if abs(float(v) - value) < 1e-9]
  if not matches:
    raise ValueError(f"regularization.decide: the grid {list(values)} lacks {value:g}, "
                     "which the criterion needs.")
  return matches[0]


def _verdict_of(check: Check) -> str:
  return {True: HOLDS, False: DOES_NOT_HOLD, None: INCONCLUSIVE}[check.passed]


def _gap_verdict(claim, before, after, what, anchor) -> Verdict:
  difference = paired_difference(before, after)
  check = effect_check(f"gap {what[0]} - gap {what[1]}", difference, minimum=MIN_GAP_EFFECT)
  reason = (f"Train-test gap {what[0]}: {np.mean(before) * 100:.1f} points; {what[1]}: "
            f"{np.mean(after) * 100:.1f} points; shrinks by {difference.mean * 100:+.2f} points (95% CI "
            f"{difference.ci_low * 100:+.2f} to {difference.ci_high * 100:+.2f}; needs >= "
            f"{MIN_GAP_EFFECT * 100:g}).")
  ours = f"gap {np.mean(before) * 100:.1f} -> {np.mean(after) * 100:.1f} points"
  return Verdict(claim, _verdict_of(check), reason, ours, anchor=anchor, checks=(check,))


def _best_rate(test: np.ndarray, rates: Sequence[float], *, at_most: float = 1.0,
               at_least: float = 0.0) -> int:
  """Index of the rate in [at_least, at_most] with the best seed-mean accuracy."""
  means = test.mean(axis=-1)
  allowed = [i for i, r in enumerate(rates) if at_least <= r <= at_most]
  return max(allowed, key=lambda i: means[i])


def _underfit_verdict(rates, train, test) -> Verdict:
  """``train``/``test``: no BN, L2 0, ``(rates, seeds)``."""
  high = _index(rates, UNDERFIT_RATE)
  best = _best_rate(test, rates, at_most=0.7)
  train_check = effect_check(f"train accuracy(rate {rates[best]:g}) - train accuracy(rate "
                             f"{UNDERFIT_RATE:g})",
                             paired_difference(train[best], train[high]),
                             minimum=MIN_UNDERFIT_TRAIN_DROP)
  test_check = effect_check(f"test accuracy(rate {rates[best]:g}) - test accuracy(rate "
                            f"{UNDERFIT_RATE:g})", paired_difference(test[best], test[high]),
                            minimum=MIN_ACCURACY_EFFECT)
  reason = (f"Without BN and L2, rate {UNDERFIT_RATE:g} reaches {train[high].mean():.1%} "
            f"training and {test[high].mean():.1%} test accuracy, against "
            f"{train[best].mean():.1%} and {test[best].mean():.1%} at rate {rates[best]:g} "
            f"(the best rate <= 0.7): {train_check.value} of training accuracy, "
            f"{test_check.value} of test accuracy.")
  ours = (f"rate {UNDERFIT_RATE:g}: train {train[high].mean():.1%}, test "
          f"{test[high].mean():.1%} (rate {rates[best]:g}: {train[best].mean():.1%}, "
          f"{test[best].mean():.1%})")
  return Verdict(f"Drop rates above 0.7 underfit (rate {UNDERFIT_RATE:g})",
                 verdict_from_checks([train_check, test_check]), reason, ours,
                 anchor="Srivastava et al. 2014, Sec. 7.3 (Fig. 9a, MNIST, fixed width): "
                        "test error is flat for retention 0.4 <= p <= 0.8 and rises as p "
                        "falls below 0.4, i.e. drop rates above 0.6",
                 checks=(train_check, test_check))


def _best_rate_verdict(rates, plain, batch) -> Verdict:
  """``plain``/``batch``: test accuracy at L2 0, ``(rates, seeds)``."""
  r0, r1 = _best_rate(plain, rates), _best_rate(batch, rates)
  prefix = (f"Best rate by mean test accuracy: no BN {rates[r0]:g} "
            f"({plain[r0].mean():.1%}), BN {rates[r1]:g} ({batch[r1].mean():.1%}). ")
  if r0 == 0:
    check = Check("best rate without BN", rates[r0], "> lowest rate (room to be lower)", False)
    reason = prefix + "Without BN the best rate is already 0, so BN's cannot be lower."
  elif r1 < r0:
    difference = paired_difference(batch[r1], batch[r0])
    passed = True if difference.ci_low > 0 else None
    check = Check(f"BN: test accuracy(rate {rates[r1]:g}) - (rate {rates[r0]:g})",
                  f"{difference.mean * 100:+.2f} points (95% CI {difference.ci_low * 100:+.2f}"
                  f" to {difference.ci_high * 100:+.2f})", "95% CI above 0", passed)
    reason = prefix + (f"With BN, rate {rates[r1]:g} beats rate {rates[r0]:g} by "
                       f"{check.value}.")
  else:
    lower = r0 - 1
    difference = paired_difference(batch[r1], batch[lower])
    passed = False if difference.ci_low > 0 else None
    check = Check(f"BN: test accuracy(rate {rates[r1]:g}) - (rate {rates[lower]:g})",
                  f"{difference.mean * 100:+.2f} points (95% CI {difference.ci_low * 100:+.2f}"
                  f" to {difference.ci_high * 100:+.2f})",
                  "does not hold if 95% CI above 0 (BN prefers a rate not lower)", passed)
    reason = prefix + (f"BN's best rate is not lower; against rate {rates[lower]:g} it "
                       f"differs by {check.value}.")
  return Verdict("With BN the best drop rate is lower", _verdict_of(check), reason,
                 f"best rate no BN {rates[r0]:g}, BN {rates[r1]:g}",
                 anchor="no published number (the notes' advice)", checks=(check,))


def _adds_less_verdict(rates, plain, batch) -> Verdict:
  zero = _index(rates, 0.0)
  gains = {}
  for name, test in (("no BN", plain), ("BN", batch)):
    best = _best_rate(test, rates, at_least=min(r for r in rates if r > 0))
    gains[name] = (rates[best], test[best] - test[zero])
  difference = paired_difference(gains["no BN"][1], gains["BN"][1])
  check = effect_check("gain of the best rate over no dropout: no BN - BN", difference,
                       minimum=MIN_ACCURACY_EFFECT)
  reason = (f"Best dropout over none (L2 0): no BN {gains['no BN'][1].mean() * 100:+.2f} "
            f"points (rate {gains['no BN'][0]:g}), BN {gains['BN'][1].mean() * 100:+.2f} "
            f"points (rate {gains['BN'][0]:g}); difference {check.value}.")
  ours = (f"dropout adds {gains['no BN'][1].mean() * 100:+.1f} points without BN, "
          f"{gains['BN'][1].mean() * 100:+.1f} with BN")
  return Verdict("Dropout adds less with BN", _verdict_of(check), reason, ours,
                 anchor="Srivastava et al. 2014: MNIST error 1.60% -> 1.25% with dropout "
                        "(no BN)", checks=(check,))


def decide(numbers: Mapping) -> list[Verdict]:
  """The five verdicts of :data:`SPEC` from the measured numbers.

  Args:
    numbers: ``rates`` (R,) and ``l2`` (L,) of the grid (with rates 0, 0.5 and 0.9 and
      L2 0); ``train`` and ``test``: norm (``"none"``, ``"batch"``) -> final accuracy in
      evaluation mode on the training subset and the test set, ``(R, L, S)``.

  Example:
    >>> rates, l2 = [0.0, 0.5, 0.9], [0.0, 1e-2]
    >>> seeds = np.array([0.0, 0.01, -0.01])
    >>> train = np.array([[1.0, 0.8], [0.9, 0.75], [0.5, 0.5]])[..., None] + seeds
    >>> test = np.array([[0.4, 0.45], [0.5, 0.45], [0.35, 0.3]])[..., None] + seeds
    >>> bn_test = np.array([[0.5, 0.5], [0.49, 0.48], [0.3, 0.3]])[..., None] + seeds
    >>> numbers = {"rates": rates, "l2": l2, "train": {"none": train, "batch": train},
    ...            "test": {"none": test, "batch": bn_test}}
    >>> [v.verdict for v in decide(numbers)]
    ['holds', 'holds', 'holds', 'holds', 'holds']
  """
  rates = [float(r) for r in numbers["rates"]]
  l2 = [float(w) for w in numbers["l2"]]
  train = {k: np.asarray(v, np.float64) for k, v in numbers["train"].items()}
  test = {k: np.asarray(v, np.float64) for k, v in numbers["test"].items()}
  gap = {k: train[k] - test[k] for k in train}
  zero_rate, reference = _index(rates, 0.0), _index(rates, REFERENCE_RATE)
  zero_l2, top_l2 = _index(l2, 0.0), int(np.argmax(l2))
  return [
      _gap_verdict("Dropout shrinks the train-test gap (no BN)",
                   gap["none"][zero_rate, zero_l2], gap["none"][reference, zero_l2],
                   ("without dropout", f"with dropout {REFERENCE_RATE:g}"),
                   "Srivastava et al. 2014: MNIST error 1.60% -> 1.25% with dropout"),
      _gap_verdict("L2 shrinks the train-test gap (no BN)",
                   gap["none"][zero_rate, zero_l2], gap["none"][zero_rate, top_l2],
                   ("without L2", f"with L2 {l2[top_l2]:g}"),
                   "no published number (the notes' advice)"),
      _underfit_verdict(rates, train["none"][:, zero_l2], test["none"][:, zero_l2]),
      _best_rate_verdict(rates, test["none"][:, zero_l2], test["batch"][:, zero_l2]),
      _adds_less_verdict(rates, test["none"][:, zero_l2], test["batch"][:, zero_l2]),
  ]


# ----------------------------------------------------------------- training


def _sgd_with_l2(learning_rate, weight_decay):
  """SGD with coupled L2 that spares biases and normalization parameters."""
  return optax.chain(optax.add_decayed_weights(weight_decay, mask=training.decay_mask),
                     optax.sgd(learning_rate))


def subset(data: Dataset, size: int = TRAIN_SUBSET) -> Dataset:
  """The first ``size`` training examples (the split is already shuffled), all test ones.

  Example:
    >>> d = subset(load_dataset("digits"), 100)
    >>> len(d.x_train), len(d.x_test)
    (100, 359)
  """
  return dataclasses.replace(data, x_train=data.x_train[:size], y_train=data.y_train[:size])


def _train_accuracy_probe(x, y):
  def probe(state, hyper):
    logits = state.apply_fn(state.variables, x, train=False,
                            dropout_rate=hyper["dropout_rate"])
    return {"train_accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}
  return probe


def train_grid(ctx: RunContext, data: Dataset, norm: str, rates, l2s, steps: int,
               eval_every: int):
  """Trains every rate x L2 x seed of one network; returns the population and grid."""
  grid = grid_product(dropout_rate=rates, weight_decay=l2s)
  model = MLP(hidden=HIDDEN, num_classes=data.num_classes, norm=norm)
  tx = optax.inject_hyperparams(_sgd_with_l2)(learning_rate=LEARNING_RATE, weight_decay=0.0)
  recipe = Recipe(model, tx, BATCH_SIZE, model_hparams=("dropout_rate",))
  pop = train_population(recipe, data, seeds=list(range(ctx.seeds)), steps=steps,
                         eval_every=eval_every, grid=grid,
                         probe=_train_accuracy_probe(jnp.asarray(data.x_train),
                                                     jnp.asarray(data.y_train)),
                         progress=ctx.progress,
                         desc=f"{NORM_LABELS[norm]}: {len(grid['dropout_rate'])} settings x "
                              f"{ctx.seeds} seeds")
  return pop


# ----------------------------------------------------------------- figures and table


def _heatmaps(path, rates, l2s, test, gap, title):
  with plots.figure(path, title, ncols=2, nrows=2, size=(5.0, 3.8)) as axes:
    for col, norm in enumerate(NORMS):
      for row, (values, what) in enumerate(((test, "test accuracy (%)"),
                                            (gap, "train - test accuracy (points)"))):
        plots.heatmap(axes[row * 2 + col], values[norm].mean(axis=-1) * 100,
                      row_labels=[f"{r:g}" for r in rates],
                      col_labels=[f"{w:g}" for w in l2s], xlabel="coupled L2 coefficient",
                      ylabel="drop rate", title=f"{NORM_LABELS[norm]}: {what}",
                      fmt="{:.1f}")


def _rate_figure(path, rates, train, test, title):
  with plots.figure(path, title, size=(7.5, 4.8)) as (ax,):
    for norm in NORMS:
      plots.band(ax, rates, test[norm][:, 0].T * 100, label=f"{NORM_LABELS[norm]}: test",
                 marker="o")
      plots.band(ax, rates, train[norm][:, 0].T * 100, label=f"{NORM_LABELS[norm]}: train",
                 marker="s", linestyle="--")
    plots.label(ax, x="drop rate", y="accuracy (%), evaluation mode")


def _table(rates, l2s, train, test) -> str:
  header = ["network", "drop rate"] + [f"L2 {w:g}: test acc. (%) / gap (points)"
                                       for w in l2s]
  rows = []
  for norm in NORMS:
    for r, rate in enumerate(rates):
      rows.append([NORM_LABELS[norm], f"{rate:g}"] + [
          f"{summarize(test[norm][r, w] * 100).format(1)} / "
          f"{np.mean(train[norm][r, w] - test[norm][r, w]) * 100:.1f}"
          for w in range(len(l2s))])
  return runner.markdown_table(header, rows)


# ----------------------------------------------------------------- run


def run(ctx: RunContext) -> Outcome:
  rates, l2s = (QUICK_RATES, QUICK_L2S) if ctx.quick else (RATES, L2S)
  data = subset(load_dataset(DATA, seed=ctx.split_seed))
  if ctx.quick:
    steps, eval_every = QUICK_STEPS, QUICK_EVAL_EVERY
  else:
    steps_per_epoch = len(data.x_train) // BATCH_SIZE
    steps, eval_every = EPOCHS * steps_per_epoch, EVAL_EVERY_EPOCHS * steps_per_epoch
  shape = (len(rates), len(l2s), ctx.seeds)
  train, test, timing, skipped = {}, {}, {}, {}
  for norm in NORMS:
    pop = train_grid(ctx, data, norm, rates, l2s, steps, eval_every)
    test[norm] = pop.final("test_accuracy").astype(np.float64).reshape(shape)
    train[norm] = pop.probes["train_accuracy"][..., -1].astype(np.float64).reshape(shape)
    timing[norm] = {"compile_seconds": pop.compile_seconds,
                    "train_seconds": pop.train_seconds}
    skipped[norm] = pop.skipped_steps.reshape(shape)
  gap = {norm: train[norm] - test[norm] for norm in NORMS}
  verdicts = decide({"rates": rates, "l2": l2s, "train": train, "test": test})

  setting = (f"{data.name}, {len(data.x_train)} training examples, SGD lr {LEARNING_RATE}, "
             f"batch {BATCH_SIZE}, {steps:,} steps, {ctx.seeds} seeds")
  figures = ["heatmaps.png", "accuracy_by_rate.png"]
  _heatmaps(os.path.join(ctx.out_dir, figures[0]), rates, l2s, test, gap,
            f"Seed MLP on a small training set: dropout x L2, without and with BN\n"
            f"({setting}; mean over seeds)")
  _rate_figure(os.path.join(ctx.out_dir, figures[1]), rates, train, test,
               f"Seed MLP, accuracy against drop rate (no L2)\n({setting};\n"
               "bands: ±1 std over seeds)")

  def by_grid(values):
    return {f"rate {r:g}": {f"L2 {w:g}": values[i, j] for j, w in enumerate(l2s)}
            for i, r in enumerate(rates)}

  per_seed = {"test_accuracy": {NORM_LABELS[n]: by_grid(test[n]) for n in NORMS},
              "train_accuracy": {NORM_LABELS[n]: by_grid(train[n]) for n in NORMS},
              "skipped_steps": {NORM_LABELS[n]: by_grid(skipped[n]) for n in NORMS}}
  summary = {
      "test_accuracy": {NORM_LABELS[n]: {
          f"rate {r:g}": {f"L2 {w:g}": summarize(test[n][i, j]) for j, w in enumerate(l2s)}
          for i, r in enumerate(rates)} for n in NORMS},
      "gap": {NORM_LABELS[n]: {
          f"rate {r:g}": {f"L2 {w:g}": summarize(gap[n][i, j]) for j, w in enumerate(l2s)}
          for i, r in enumerate(rates)} for n in NORMS},
      "timing": {NORM_LABELS[n]: timing[n] for n in NORMS},
  }
  config = {"data": data.describe(), "split_seed": ctx.split_seed,
            "train_subset": len(data.x_train), "hidden": list(HIDDEN),
            "rates": list(rates), "l2": list(l2s), "norms": list(NORMS),
            "optimizer": "sgd + coupled L2 (decay_mask)", "learning_rate": LEARNING_RATE,
            "batch_size": BATCH_SIZE, "steps": steps, "eval_every": eval_every,
            "seeds": list(range(ctx.seeds)), "reference_rate": REFERENCE_RATE,
            "underfit_rate": UNDERFIT_RATE, "min_gap_effect": MIN_GAP_EFFECT,
            "min_underfit_train_drop": MIN_UNDERFIT_TRAIN_DROP,
            "min_accuracy_effect": MIN_ACCURACY_EFFECT}
  table = (f"{setting}. Test accuracy (mean ± sample std over seeds) / train - test gap "
           "(mean, points), both in evaluation mode at the end of training.\n\n"
           + _table(rates, l2s, train, test))
  notes = [f"{NORM_LABELS[n]}: compilation {timing[n]['compile_seconds']:.1f} s, training "
           f"{timing[n]['train_seconds']:.1f} s (wall), one program of "
           f"{len(rates) * len(l2s) * ctx.seeds} runs." for n in NORMS]
  return Outcome(config=config, per_seed=per_seed, summary=summary, verdicts=verdicts,
                 table=table, figures=figures, notes=notes)
