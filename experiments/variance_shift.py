r"""variance-shift: does dropout before batch norm shift its variance, and where should dropout go?

Li et al. (2019): inverted dropout with keep probability :math:`p` on an input of mean
:math:`c` and variance :math:`v` has variance :math:`\frac1p(c^2+v)-c^2` in training and
:math:`v` at inference, so a batch-norm layer after it normalizes at inference with a
running variance that is too large by the factor :math:`1/\Delta(p)`,
:math:`\Delta(p) = v / (\frac1p(c^2+v)-c^2)`. Three parts:

(a) the ratio measured on synthetic inputs of known :math:`c, v`, drop rates 0.1-0.5;
(b) a trained seed MLP with dropout right before each BN: each BN layer's running
    variance against the variance its input has at evaluation, beside the
    :math:`\Delta(p)` its features' own moments predict;
(c) test accuracy with dropout before BN, after BN (the notebook's order) and only
    before the classifier (Li et al.'s remedy), over drop rates.

Every placement x rate x seed of (b) and (c) trains in one compiled program: the three
dropout sites take their rates at call time (a rate of 0 is no dropout).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxnorm
from jaxnorm import functional as F

from . import plots, runner
from .data import load_dataset
from .measures.effects import effect_check
from .measures.stats import paired_difference, summarize
from .measures.variance_shift import measured_shift_ratio, shift_ratio
from .population import Recipe, train_population
from .spec import (DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, Anchor, Check, Outcome, RunContext,
                   Spec, Verdict, verdict_from_checks)

NAME = "variance-shift"
DESCRIPTION = ("dropout before BN shifts its variance (Li et al. 2019): synthetic Delta(p), "
               "a trained MLP's BN statistics, accuracy by dropout placement")

# ----------------------------------------------------------------- setup (fixed in code)
RATES = (0.1, 0.2, 0.3, 0.4, 0.5)
#: name -> (mean c, variance v, sampler). "ReLU(N(0,1))" is what a ReLU layer outputs.
DISTRIBUTIONS = {
    "N(0, 1)": (0.0, 1.0),
    "N(1, 1)": (1.0, 1.0),
    "N(2, 0.5)": (2.0, 0.5),
    "ReLU(N(0, 1))": (1.0 / np.sqrt(2.0 * np.pi), 0.5 - 1.0 / (2.0 * np.pi)),
}
SYNTHETIC_SAMPLES = 1 << 18
DATA = "mnist1d"
HIDDEN = (128, 64)
BATCH_SIZE = 32
LEARNING_RATE = 0.1
EPOCHS, EVAL_EVERY_EPOCHS = 30, 5
QUICK_STEPS, QUICK_EVAL_EVERY, QUICK_RATES = 100, 50, (0.1, 0.5)
PLACEMENTS = ("before BN", "after BN", "classifier only")
#: placement -> the dropout sites it uses (see :class:`PlacementMLP`).
SITES = {"before BN": ("before_bn",), "after BN": ("after_relu",),
         "classifier only": ("classifier",)}

# ----------------------------------------------------------------- criterion (fixed)
SYNTHETIC_TOLERANCE = 0.02   # "within 2% of Delta(p)" (the criterion)
TRAINED_TOLERANCE = 0.10     # first BN layer of the trained net: within 10% of prediction
MIN_ACCURACY_EFFECT = 0.01   # one point of test accuracy

SPEC = Spec(
    name=NAME,
    title="Dropout before BN: variance shift and where to put dropout",
    description=DESCRIPTION,
    claim=("Dropout placed before batch norm increases the variance BN sees in training "
           "over what its input has at inference, so BN's running statistics are wrong at "
           "test time; put dropout after BN instead."),
    anchor=Anchor(
        number=("Delta(p) = v / ((1/p)(c^2 + v) - c^2) for inverted dropout of keep "
                "probability p on an input of mean c, variance v; DenseNet on CIFAR-100: "
                "77.42% without dropout, 68.55% with dropout 0.5 in each bottleneck"),
        source=("Li, Chen, Hu, Yang 2019, Understanding the Disharmony between Dropout and "
                "Batch Normalization by Variance Shift (CVPR)")),
    criterion=(
        f"(a) Synthetic: for each input distribution ({', '.join(DISTRIBUTIONS)}) and drop "
        f"rate {RATES[0]:g}-{RATES[-1]:g}, the measured ratio var(x) / var(dropout(x)) over "
        f"{SYNTHETIC_SAMPLES:,} samples; holds if every seed's ratio is within "
        f"{SYNTHETIC_TOLERANCE:.0%} of Delta(p) from the known c and v; does not hold if a "
        f"seed-mean is off by more than {SYNTHETIC_TOLERANCE:.0%}; inconclusive otherwise. "
        "(b) Trained MLP, dropout right before each BN: per BN layer and rate, the median "
        "over features of (variance of the BN input at evaluation, on the training set) / "
        "(running variance). 'Dropout before BN increases the variance' holds if every "
        "layer and rate has this ratio's 95% interval over seeds below 1, does not hold if "
        "one interval lies at or above 1, inconclusive otherwise. 'Delta(p) predicts the "
        "shift' compares, in the first BN layer (whose input sees no other dropout), the "
        "median over features of measured / predicted ratio, the prediction being "
        "Delta(p) B/(B-1) from each feature's evaluation mean and variance (a running "
        "variance averages biased batch variances, (B-1)/B of the variance, B = "
        f"{BATCH_SIZE}): holds if at every rate the 95% interval lies within 1 ± "
        f"{TRAINED_TOLERANCE:.0%}, does not hold if one lies outside, inconclusive "
        "otherwise. (c) 'Put dropout after BN': per seed, the mean over rates of test "
        "accuracy(after BN) - accuracy(before BN); holds if its 95% interval is above 0 and "
        f"its mean at least {MIN_ACCURACY_EFFECT * 100:g} point, does not hold if the "
        f"interval's upper end is below {MIN_ACCURACY_EFFECT * 100:g} point, inconclusive "
        "otherwise."),
    data=("MNIST-1D (4000 train / 1000 test, 40-long signals, generated locally): hard "
          "enough for an MLP (about 60-70% test accuracy) that the placements' accuracies "
          "are not squeezed against 100% as on digits, and 4000 examples give 125 batches "
          "per epoch for the running statistics. The synthetic part draws Gaussian and "
          "rectified-Gaussian samples with jax.random."),
    setup=(f"Seed MLP Dense {HIDDEN[0]} -> BN -> ReLU -> Dense {HIDDEN[1]} -> BN -> ReLU -> "
           "Dense 10 (jaxnorm.BatchNorm, momentum 0.99, biased running variance) with three "
           "dropout sites: right before each BN ('before BN'), after each ReLU ('after BN', "
           "the notebook's order, whose first dropout still feeds the next Dense and BN), "
           "or only before the classifier ('classifier only', Li et al.'s remedy: no BN "
           f"after any dropout); drop rates {', '.join(f'{r:g}' for r in RATES)}, plus no "
           f"dropout. SGD lr {LEARNING_RATE}, batch {BATCH_SIZE}, {EPOCHS} epochs; test "
           "accuracy with running statistics. Every setting and seed trains in one "
           "compiled program (rates passed at call time)."),
    limits=("A two-layer MLP on a 4000-example 1-D task, not a DenseNet on CIFAR-100: the "
            "accuracy cost of the shift depends on depth (the shift compounds through "
            "layers) and on how much dropout the task tolerates. Accuracies are at a fixed "
            "30-epoch budget with no tuning per placement. The trained-net prediction "
            "ignores the EMA's lag behind the weights and, in the second layer, the shift "
            "inherited from the first; the median over features hides the per-feature "
            "spread."),
)


# ----------------------------------------------------------------- the model


class PlacementMLP(nn.Module):
  """The seed MLP with BN and three dropout sites whose rates are call arguments.

  Per hidden layer: ``Dense -> Dropout(before_bn) -> BatchNorm -> ReLU ->
  Dropout(after_relu)``; then ``Dropout(classifier) -> Dense``. Rates may be traced (one
  per member of a population); a rate of 0 is no dropout. Each BN layer's input is sown
  as ``intermediates/bn_input_<i>``.

  Example:
    >>> model = PlacementMLP(hidden=(8,), num_classes=3)
    >>> x = jnp.ones((4, 5))
    >>> variables = model.init(jax.random.key(0), x, train=False)
    >>> model.apply(variables, x, train=False, before_bn=0.5).shape
    (4, 3)
  """

  hidden: Sequence[int] = HIDDEN
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool, before_bn=0.0, after_relu=0.0, classifier=0.0):
    x = x.reshape((x.shape[0], -1))
    for i, width in enumerate(self.hidden):
      x = nn.Dense(width)(x)
      x = jaxnorm.Dropout(before_bn, deterministic=not train)(x)
      self.sow("intermediates", f"bn_input_{i}", x)
      x = nn.relu(jaxnorm.BatchNorm(use_running_average=not train)(x))
      x = jaxnorm.Dropout(after_relu, deterministic=not train)(x)
    x = jaxnorm.Dropout(classifier, deterministic=not train)(x)
    return nn.Dense(self.num_classes)(x)


def settings(rates: Sequence[float]) -> tuple[list[tuple[str, float]], dict[str, np.ndarray]]:
  """The no-dropout baseline, then every placement x rate, as grid columns.

  Example:
    >>> names, grid = settings([0.25, 0.5])
    >>> names[:3], grid["before_bn"].tolist()[:3]
    ([('none', 0.0), ('before BN', 0.25), ('before BN', 0.5)], [0.0, 0.25, 0.5])
  """
  names = [("none", 0.0)] + [(p, float(r)) for p in PLACEMENTS for r in rates]
  grid = {site: np.asarray([rate if site in SITES.get(p, ()) else 0.0
                            for p, rate in names], np.float32)
          for site in ("before_bn", "after_relu", "classifier")}
  return names, grid


# ----------------------------------------------------------------- (a) synthetic


def _sample(key, name: str, n: int):
  mean, var = DISTRIBUTIONS[name]
  z = jax.random.normal(key, (n,))
  if name.startswith("ReLU"):
    return nn.relu(z)
  return mean + np.sqrt(var) * z


def synthetic_ratios(seeds: Sequence[int], rates: Sequence[float],
                     samples: int = SYNTHETIC_SAMPLES) -> dict[str, np.ndarray]:
  """Measured var(x) / var(dropout(x)) per distribution, ``(rates, seeds)`` each.

  Example:
    >>> r = synthetic_ratios([0], [0.5], samples=50_000)
    >>> bool(abs(r["N(1, 1)"][0, 0] - 1 / 3) < 0.02)
    True
  """
  measure = jax.jit(lambda key, rate, name: measured_shift_ratio(
      jax.random.fold_in(key, 1), _sample(jax.random.fold_in(key, 0), name, samples),
      rate=rate), static_argnums=2)
  out = {}
  for d, name in enumerate(DISTRIBUTIONS):
    out[name] = np.array([[float(measure(jax.random.fold_in(jax.random.key(seed), d),
                                         jnp.float32(rate), name))
                           for seed in seeds] for rate in rates])
  return out


# ----------------------------------------------------------------- the verdicts


def _synthetic_verdict(rates, measured: Mapping[str, np.ndarray]) -> Verdict:
  checks, worst_seed, worst_mean = [], 0.0, 0.0
  for name, values in measured.items():
    mean, var = DISTRIBUTIONS[name]
    theory = shift_ratio(1.0 - np.asarray(rates, np.float64), mean, var)[:, None]
    error = np.asarray(values, np.float64) / theory - 1.0
    seed_max, mean_max = float(np.max(np.abs(error))), float(
        np.max(np.abs(error.mean(axis=1))))
    worst_seed, worst_mean = max(worst_seed, seed_max), max(worst_mean, mean_max)
    passed = True if seed_max <= SYNTHETIC_TOLERANCE else (
        False if mean_max > SYNTHETIC_TOLERANCE else None)
    checks.append(Check(f"{name}: largest |measured / Delta(p) - 1| over rates and seeds",
                        round(seed_max, 5), f"<= {SYNTHETIC_TOLERANCE:g}", passed))
  verdict = verdict_from_checks(checks)
  reason = (f"Over {len(measured)} input distributions x {len(rates)} drop rates, the "
            f"measured ratio is at most {worst_seed:.2%} from Delta(p) for any seed "
            f"({worst_mean:.2%} for the seed means); tolerance {SYNTHETIC_TOLERANCE:.0%}.")
  return Verdict("Delta(p) gives the variance shift of inverted dropout (synthetic inputs)",
                 verdict, reason, f"largest deviation {worst_seed:.2%}",
                 anchor="Delta(p) = v / ((1/p)(c^2 + v) - c^2)", checks=tuple(checks))


def _increase_verdict(rates, ratio: np.ndarray) -> Verdict:
  """``ratio``: median eval / running variance, ``(layers, rates, seeds)``."""
  checks, parts = [], []
  for layer, per_rate in enumerate(ratio):
    for rate, values in zip(rates, per_rate):
      s = summarize(values)
      passed = (True if s.ci_high < 1 else False if s.ci_low >= 1 else None)
      checks.append(Check(f"BN {layer + 1}, rate {rate:g}: median eval var / running var",
                          f"{s.mean:.4f} (95% CI {s.ci_low:.4f} to {s.ci_high:.4f})",
                          "95% CI below 1", passed))
    parts.append(f"BN {layer + 1}: {np.mean(per_rate[0]):.3f} at rate {rates[0]:g} to "
                 f"{np.mean(per_rate[-1]):.3f} at {rates[-1]:g}")
  reason = ("With dropout right before each BN, the variance of the BN input at "
            "evaluation over the running variance (median over features, mean over seeds): "
            + "; ".join(parts) + " (1 = no shift).")
  ours = f"eval/running variance {np.mean(ratio[0, -1]):.2f} at rate {rates[-1]:g} (BN 1)"
  return Verdict("Dropout before BN increases the variance BN sees in training",
                 verdict_from_checks(checks), reason, ours,
                 anchor=("Delta(p) < 1: the training variance exceeds the inference "
                         "variance by 1/Delta(p)"), checks=tuple(checks))


def _prediction_verdict(rates, relative: np.ndarray) -> Verdict:
  """``relative``: first BN layer, median measured / predicted ratio, ``(rates, seeds)``."""
  checks = []
  low_bound, high_bound = 1 - TRAINED_TOLERANCE, 1 + TRAINED_TOLERANCE
  for rate, values in zip(rates, relative):
    s = summarize(values)
    inside = low_bound <= s.ci_low and s.ci_high <= high_bound
    outside = s.ci_high < low_bound or s.ci_low > high_bound
    checks.append(Check(f"rate {rate:g}: median measured / predicted ratio",
                        f"{s.mean:.4f} (95% CI {s.ci_low:.4f} to {s.ci_high:.4f})",
                        f"95% CI within [{low_bound:g}, {high_bound:g}]",
                        True if inside else False if outside else None))
  means = relative.mean(axis=1)
  reason = (f"In the first BN layer the measured shift is {means.min():.3f}-"
            f"{means.max():.3f} times the Delta(p) B/(B-1) predicted from each feature's "
            f"mean and variance (rates {rates[0]:g}-{rates[-1]:g}; tolerance "
            f"{TRAINED_TOLERANCE:.0%}).")
  return Verdict("Delta(p) predicts the shift in a trained net (first BN layer)",
                 verdict_from_checks(checks), reason,
                 f"measured / predicted {means.min():.3f}-{means.max():.3f}",
                 anchor="Delta(p) = v / ((1/p)(c^2 + v) - c^2)", checks=tuple(checks))


def _placement_verdict(rates, accuracy: Mapping[str, np.ndarray],
                       baseline: np.ndarray) -> Verdict:
  """``accuracy``: placement -> ``(rates, seeds)`` test accuracy; ``baseline``: ``(seeds,)``."""
  after = np.asarray(accuracy["after BN"]).mean(axis=0)
  before = np.asarray(accuracy["before BN"]).mean(axis=0)
  remedy = np.asarray(accuracy["classifier only"]).mean(axis=0)
  difference = paired_difference(after, before)
  check = effect_check("mean over rates of accuracy(after BN) - accuracy(before BN)",
                       difference, minimum=MIN_ACCURACY_EFFECT)
  verdict = {True: HOLDS, False: DOES_NOT_HOLD, None: INCONCLUSIVE}[check.passed]
  remedy_difference = paired_difference(remedy, before)
  top = len(rates) - 1
  reason = (f"Averaged over drop rates {rates[0]:g}-{rates[-1]:g}, dropout after BN gives "
            f"{after.mean():.1%} test accuracy and before BN {before.mean():.1%}: "
            f"{difference.mean * 100:+.2f} points (95% CI {difference.ci_low * 100:+.2f} to "
            f"{difference.ci_high * 100:+.2f}); dropout only before the classifier gives "
            f"{remedy.mean():.1%} ({remedy_difference.mean * 100:+.2f} points against "
            f"before BN). At rate {rates[top]:g}: before BN {accuracy['before BN'][top].mean():.1%}, "
            f"after BN {accuracy['after BN'][top].mean():.1%}, classifier only "
            f"{accuracy['classifier only'][top].mean():.1%}; no dropout {baseline.mean():.1%}.")
  ours = (f"before BN {before.mean():.1%} vs after BN {after.mean():.1%} (mean over rates); "
          f"no dropout {baseline.mean():.1%}")
  return Verdict("Put dropout after BN (more accurate than before BN)", verdict, reason, ours,
                 anchor=("DenseNet, CIFAR-100: 77.42% without dropout, 68.55% with dropout "
                         "0.5 before each BN"), checks=(check,))


def decide(numbers: Mapping) -> list[Verdict]:
  """The four verdicts of :data:`SPEC` from the measured numbers.

  Args:
    numbers: ``rates`` (R,); ``synthetic``: distribution -> measured ratio ``(R, S)``;
      ``increase``: median eval / running variance with dropout before BN
      ``(layers, R, S)``; ``relative``: first BN layer's median measured / predicted
      ratio ``(R, S)``; ``accuracy``: placement -> test accuracy ``(R, S)``;
      ``baseline``: test accuracy without dropout ``(S,)``.

  Example:
    >>> rates = [0.1, 0.5]
    >>> exact = {n: np.repeat(shift_ratio(1 - np.array(rates), *DISTRIBUTIONS[n])[:, None],
    ...                       3, 1) for n in DISTRIBUTIONS}
    >>> numbers = {"rates": rates, "synthetic": exact,
    ...            "increase": np.full((2, 2, 3), 0.7) + [0.0, 0.01, -0.01],
    ...            "relative": np.full((2, 3), 1.0) + [0.0, 0.01, -0.01],
    ...            "accuracy": {"before BN": [[0.5, 0.52, 0.51]] * 2,
    ...                         "after BN": [[0.6, 0.61, 0.6]] * 2,
    ...                         "classifier only": [[0.6, 0.6, 0.6]] * 2},
    ...            "baseline": np.array([0.6, 0.6, 0.6])}
    >>> [v.verdict for v in decide(numbers)]
    ['holds', 'holds', 'holds', 'holds']
  """
  rates = [float(r) for r in numbers["rates"]]
  accuracy = {k: np.asarray(v, np.float64) for k, v in numbers["accuracy"].items()}
  return [_synthetic_verdict(rates, numbers["synthetic"]),
          _increase_verdict(rates, np.asarray(numbers["increase"], np.float64)),
          _prediction_verdict(rates, np.asarray(numbers["relative"], np.float64)),
          _placement_verdict(rates, accuracy, np.asarray(numbers["baseline"], np.float64))]


# ----------------------------------------------------------------- training and probes


def _variance_probe(x):
  """Each BN layer's running variance and its input's moments at evaluation on ``x``."""
  def probe(state, hyper):
    _, sown = state.apply_fn(state.variables, x, train=False, mutable=["intermediates"],
                             **hyper)
    out = {}
    for i in range(len(HIDDEN)):
      (bn_input,) = sown["intermediates"][f"bn_input_{i}"]
      mean, var = F.moments(bn_input, 0)
      out[f"eval_mean_{i}"], out[f"eval_var_{i}"] = mean, var
      out[f"running_var_{i}"] = state.batch_stats[f"BatchNorm_{i}"]["var"]
    return out
  return probe


def _train(ctx, data, rates, steps, eval_every):
  names, grid = settings(rates)
  model = PlacementMLP(hidden=HIDDEN, num_classes=data.num_classes)
  recipe = Recipe(model, optax.sgd(LEARNING_RATE), BATCH_SIZE,
                  model_hparams=tuple(grid))
  pop = train_population(recipe, data, seeds=list(range(ctx.seeds)), steps=steps,
                         eval_every=eval_every, grid=grid,
                         probe=_variance_probe(jnp.asarray(data.x_train)),
                         progress=ctx.progress,
                         desc=f"{len(names)} settings x {ctx.seeds} seeds")
  return names, pop


def trained_shift(names, pop, rates) -> dict[str, np.ndarray]:
  """Per-layer shift numbers at the end of training from the population's probes.

  Returns ``ratio`` (median over features of eval / running variance, ``(placements+1,
  layers, R, S)`` with the no-dropout baseline repeated over rates as the first entry),
  ``predicted`` (median of Delta(p) B/(B-1) for dropout before BN, ``(layers, R, S)``)
  and ``relative`` (median over features of measured / predicted, ``(layers, R, S)``).
  """
  seeds = len(pop.seeds)
  layers = len(HIDDEN)
  index = {name: i for i, name in enumerate(names)}
  ratio = np.zeros((len(PLACEMENTS) + 1, layers, len(rates), seeds))
  predicted = np.zeros((layers, len(rates), seeds))
  relative = np.zeros((layers, len(rates), seeds))
  for layer in range(layers):
    eval_var = pop.probes[f"eval_var_{layer}"][..., -1, :].astype(np.float64)
    eval_mean = pop.probes[f"eval_mean_{layer}"][..., -1, :].astype(np.float64)
    running = pop.probes[f"running_var_{layer}"][..., -1, :].astype(np.float64)
    per_feature = eval_var / running                                  # (M, S, F)
    for r, rate in enumerate(rates):
      ratio[0, layer, r] = np.median(per_feature[index[("none", 0.0)]], axis=-1)
      for p, placement in enumerate(PLACEMENTS):
        ratio[p + 1, layer, r] = np.median(per_feature[index[(placement, float(rate))]],
                                           axis=-1)
      m = index[("before BN", float(rate))]
      theory = shift_ratio(1.0 - rate, eval_mean[m], eval_var[m], batch_size=BATCH_SIZE)
      predicted[layer, r] = np.median(theory, axis=-1)
      relative[layer, r] = np.median(per_feature[m] / theory, axis=-1)
  return {"ratio": ratio, "predicted": predicted, "relative": relative}


# ----------------------------------------------------------------- figures and table


def _synthetic_figure(path, rates, measured, title):
  fine = np.linspace(0.0, max(rates), 101)
  with plots.figure(path, title, size=(6.0, 4.0)) as (ax,):
    for name, values in measured.items():
      mean, var = DISTRIBUTIONS[name]
      line, = ax.plot(fine, shift_ratio(1.0 - fine, mean, var), linewidth=1)
      ax.errorbar(rates, values.mean(axis=1), yerr=values.std(axis=1, ddof=1)
                  if values.shape[1] > 1 else None, fmt="o", color=line.get_color(),
                  label=f"{name}: c={mean:.2f}, v={var:.2f}")
    ax.plot([], [], color="gray", linewidth=1, label="Delta(p) (lines)")
    plots.label(ax, x="drop rate 1 - p", y="var(x) / var(dropout(x)) (ratio)")


def _trained_figure(path, rates, shift, accuracy, baseline, title):
  layer_names = [f"BN {i + 1}" for i in range(len(HIDDEN))]
  with plots.figure(path, title, ncols=len(HIDDEN) + 1, size=(4.6, 3.8)) as axes:
    for layer, ax in enumerate(axes[:len(HIDDEN)]):
      for p, name in enumerate(("no dropout",) + PLACEMENTS):
        plots.band(ax, rates, shift["ratio"][p, layer].T, label=name, marker="o",
                   linestyle="--" if name == "no dropout" else "-")
      plots.band(ax, rates, shift["predicted"][layer].T, label="before BN: predicted",
                 color="black", linestyle=":")
      ax.axhline(1.0, color="gray", linewidth=0.8)
      plots.label(ax, x="drop rate", y="eval variance / running variance",
                  title=f"{layer_names[layer]}: median over features")
    ax = axes[-1]
    for p, name in enumerate(PLACEMENTS):   # the colours of the variance panels
      runs = np.concatenate([np.asarray(baseline)[None], accuracy[name]], axis=0)
      plots.band(ax, (0.0,) + tuple(rates), runs.T * 100, label=name, marker="o",
                 color=f"C{p + 1}")
    plots.label(ax, x="drop rate (0 = no dropout)", y="test accuracy (%)",
                title="test accuracy by dropout placement")


def _table(rates, accuracy, baseline, shift) -> str:
  header = ["drop rate"] + [f"{p}: test acc. (%)" for p in PLACEMENTS] + [
      f"before BN: BN {i + 1} eval/running var (predicted)" for i in range(len(HIDDEN))]
  rows = [["0 (no dropout)"] + [summarize(np.asarray(baseline) * 100).format(2)] * 3 + [
      f"{shift['ratio'][0, i, 0].mean():.3f}" for i in range(len(HIDDEN))]]
  for r, rate in enumerate(rates):
    row = [f"{rate:g}"] + [summarize(accuracy[p][r] * 100).format(2) for p in PLACEMENTS]
    row += [f"{shift['ratio'][1, i, r].mean():.3f} ({shift['predicted'][i, r].mean():.3f})"
            for i in range(len(HIDDEN))]
    rows.append(row)
  return runner.markdown_table(header, rows)


def _synthetic_table(rates, measured) -> str:
  header = ["input (c, v)"] + [f"rate {r:g}: measured / Delta(p)" for r in rates]
  rows = []
  for name, values in measured.items():
    mean, var = DISTRIBUTIONS[name]
    theory = shift_ratio(1.0 - np.asarray(rates), mean, var)
    rows.append([f"{name} ({mean:.3f}, {var:.3f})"] + [
        f"{values[r].mean():.4f} / {theory[r]:.4f}" for r in range(len(rates))])
  return runner.markdown_table(header, rows)


# ----------------------------------------------------------------- run


def run(ctx: RunContext) -> Outcome:
  rates = QUICK_RATES if ctx.quick else RATES
  seeds = list(range(ctx.seeds))
  measured = synthetic_ratios(seeds, rates)

  data = load_dataset(DATA, seed=ctx.split_seed)
  steps_per_epoch = len(data.x_train) // BATCH_SIZE
  if ctx.quick:
    steps, eval_every = QUICK_STEPS, QUICK_EVAL_EVERY
  else:
    steps, eval_every = EPOCHS * steps_per_epoch, EVAL_EVERY_EPOCHS * steps_per_epoch
  names, pop = _train(ctx, data, rates, steps, eval_every)
  index = {name: i for i, name in enumerate(names)}
  final = pop.final("test_accuracy").astype(np.float64)                 # (M, S)
  baseline = final[index[("none", 0.0)]]
  accuracy = {p: np.stack([final[index[(p, float(r))]] for r in rates]) for p in PLACEMENTS}
  shift = trained_shift(names, pop, rates)
  numbers = {"rates": rates, "synthetic": measured, "increase": shift["ratio"][1],
             "relative": shift["relative"][0], "accuracy": accuracy, "baseline": baseline}
  verdicts = decide(numbers)

  setting = (f"{data.name}, SGD lr {LEARNING_RATE}, batch {BATCH_SIZE}, {steps:,} steps, "
             f"{ctx.seeds} seeds")
  figures = ["synthetic_shift.png", "trained_shift_and_accuracy.png"]
  _synthetic_figure(os.path.join(ctx.out_dir, figures[0]), rates, measured,
                    f"Variance shift of inverted dropout on synthetic inputs\n"
                    f"({SYNTHETIC_SAMPLES:,} samples, {ctx.seeds} seeds; bars: ±1 std)")
  _trained_figure(os.path.join(ctx.out_dir, figures[1]), rates, shift, accuracy, baseline,
                  f"Seed MLP with BN: BN variance shift and accuracy by dropout placement\n"
                  f"({setting}; bands: ±1 std over seeds)")

  per_seed = {
      "synthetic_ratio": {name: {f"{r:g}": v[i] for i, r in enumerate(rates)}
                          for name, v in measured.items()},
      "test_accuracy": {"no dropout": baseline, **{
          p: {f"{r:g}": accuracy[p][i] for i, r in enumerate(rates)} for p in PLACEMENTS}},
      "eval_over_running_variance": {
          name: {f"BN {layer + 1}": {f"{r:g}": shift["ratio"][p, layer, i]
                                     for i, r in enumerate(rates)}
                 for layer in range(len(HIDDEN))}
          for p, name in enumerate(("no dropout",) + PLACEMENTS)},
      "before_BN_predicted_ratio": {f"BN {layer + 1}": {
          f"{r:g}": shift["predicted"][layer, i] for i, r in enumerate(rates)}
                                    for layer in range(len(HIDDEN))},
      "before_BN_measured_over_predicted": {f"BN {layer + 1}": {
          f"{r:g}": shift["relative"][layer, i] for i, r in enumerate(rates)}
                                            for layer in range(len(HIDDEN))},
      "skipped_steps": pop.skipped_steps,
  }
  summary = {
      "test_accuracy": {"no dropout": summarize(baseline), **{
          p: {f"{r:g}": summarize(accuracy[p][i]) for i, r in enumerate(rates)}
          for p in PLACEMENTS}},
      "after_minus_before_mean_over_rates": paired_difference(
          accuracy["after BN"].mean(0), accuracy["before BN"].mean(0)),
      "classifier_only_minus_before_mean_over_rates": paired_difference(
          accuracy["classifier only"].mean(0), accuracy["before BN"].mean(0)),
      "before_BN_eval_over_running_variance": {
          f"BN {layer + 1}": {f"{r:g}": summarize(shift["ratio"][1, layer, i])
                              for i, r in enumerate(rates)} for layer in range(len(HIDDEN))},
      "synthetic_largest_relative_error": float(max(
          np.max(np.abs(v / shift_ratio(1.0 - np.asarray(rates), *DISTRIBUTIONS[n])[:, None]
                        - 1)) for n, v in measured.items())),
      "compile_seconds": pop.compile_seconds, "train_seconds": pop.train_seconds,
  }
  config = {"data": data.describe(), "split_seed": ctx.split_seed, "hidden": list(HIDDEN),
            "rates": list(rates), "placements": list(PLACEMENTS),
            "distributions": {k: list(v) for k, v in DISTRIBUTIONS.items()},
            "synthetic_samples": SYNTHETIC_SAMPLES, "batch_size": BATCH_SIZE,
            "learning_rate": LEARNING_RATE, "optimizer": "sgd", "steps": steps,
            "eval_every": eval_every, "seeds": seeds, "bn_momentum": 0.99,
            "synthetic_tolerance": SYNTHETIC_TOLERANCE,
            "trained_tolerance": TRAINED_TOLERANCE,
            "min_accuracy_effect": MIN_ACCURACY_EFFECT}
  table = (f"(a) Synthetic inputs: measured var(x) / var(dropout(x)) (mean over {ctx.seeds} "
           f"seeds) against Delta(p).\n\n{_synthetic_table(rates, measured)}\n\n"
           f"(b, c) {setting}. Test accuracy (mean ± sample std over seeds) by dropout "
           "placement, and with dropout before BN each BN layer's median over features of "
           "evaluation variance / running variance (predicted: Delta(p) B/(B-1) from each "
           "feature's moments); the no-dropout row shows the ratio without any shift.\n\n"
           + _table(rates, accuracy, baseline, shift))
  notes = [f"Compilation took {pop.compile_seconds:.1f} s and training "
           f"{pop.train_seconds:.1f} s (wall), one program of {len(names) * ctx.seeds} runs.",
           "Without dropout the evaluation/running variance ratio sits near B/(B-1) = "
           f"{BATCH_SIZE / (BATCH_SIZE - 1):.3f}, not 1: the running variance averages "
           "biased batch variances."]
  return Outcome(config=config, per_seed=per_seed, summary=summary, verdicts=verdicts,
                 table=table, figures=figures, notes=notes)
