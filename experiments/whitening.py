"""whitening: does decorrelating the features (DBN, IterNorm) train faster than BN?

Batch norm standardizes each feature; decorrelated batch norm (Huang et al. 2018) also
removes the correlations inside groups of features (ZCA whitening) and IterNorm (Huang
et al. 2019) approximates that whitening with Newton-Schulz iterations. Both papers
report that the whitened networks converge faster than BN and end with a lower test
error (CIFAR-10 VGG and ResNets). Here the seed MLP's two hidden layers (Dense 128 and
64) are normalized by BN, DBN or IterNorm (groups of 16 features, as in the papers'
CIFAR experiments), everything else equal, trained on MNIST-1D over a small
learning-rate grid; the verdicts are read at the learning rate where BN ends best.

Two questions per whitening layer:

(a) speed: how many steps does it need to bring the training loss down to the loss BN
    ends with, against the steps BN needs?
(b) error: is its final test accuracy higher than BN's (paired over seeds)?
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

from . import plots, runner
from .data import load_dataset
from .measures.correlation import mean_abs_correlation
from .measures.speed import geometric_summary, steps_to_reach
from .measures.stats import paired_difference, summarize
from .population import Recipe, grid_product, train_population
from .spec import (DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, Anchor, Check, Outcome, RunContext,
                   Spec, Verdict)

NAME = "whitening"
DESCRIPTION = ("Huang et al. DBN/IterNorm: does whitening each layer's features (groups of "
               "16) train faster and generalize better than BN? Seed MLP on MNIST-1D")

# ----------------------------------------------------------------- setup (fixed in code)
HIDDEN = (128, 64)
GROUP_SIZE = 16            # the papers' CIFAR-10 group size for DBN and IterNorm
ITERATIONS = 5             # IterNorm's Newton-Schulz steps (the paper's default T = 5)
BATCH_SIZE = 64
MOMENTUM = 0.9             # SGD with momentum, as in the papers' CIFAR training
LEARNING_RATES = (0.01, 0.03, 0.1)
STEPS, EVAL_EVERY = 3000, 50
QUICK_STEPS, QUICK_EVAL_EVERY = 100, 50
QUICK_LEARNING_RATES = (0.03,)
QUICK_HIDDEN = (32, 16)    # compiles faster: the quick run is a smoke test of the code
DATA = "mnist1d"
VARIANTS = {"BN": "batch", "DBN": "dbn", "IterNorm": "iternorm"}
WHITENED = ("DBN", "IterNorm")
COLORS = ("tab:blue", "tab:orange", "tab:green")  # one per variant, in every panel

# ----------------------------------------------------------------- criterion (fixed)
FINAL_FRACTION = 0.1       # "final": mean over the last 10% of evaluations
SPEEDUP_THRESHOLD = 1.0    # "faster": the speed-up interval lies above 1
SPEEDUP_MARGIN = 1.2       # ... and it does not hold if the interval excludes a 20% gain
ACCURACY_MARGIN = 0.005    # "lower error": the gain's interval lies above 0; does not
                           # hold if it excludes a gain of half a point

SPEC = Spec(
    name=NAME,
    title="Whitening (DBN, IterNorm) against BN: faster training and lower error?",
    description=DESCRIPTION,
    claim=("Whitening each layer's features within groups — decorrelated batch norm (ZCA) "
           "or its iterative approximation IterNorm — improves on batch norm, which only "
           "standardizes them: the network converges faster and ends with a lower test "
           "error."),
    anchor=Anchor(
        number=("DBN 'further improves BN's optimization efficiency and generalization "
                "ability' and 'consistently improve[s] the accuracy of residual networks on "
                "CIFAR-10, CIFAR-100, and ImageNet'; IterNorm shows 'consistently improved "
                "performance ... on CIFAR-10 and ImageNet over BN and DBN' (VGG and "
                "residual networks, groups of 16 features). This report quotes the papers' "
                "statements, not their table entries, which could not be checked against "
                "the papers when the criterion was written"),
        source=("Huang, Yang, Lang & Deng 2018, Decorrelated Batch Normalization, CVPR "
                "(abstract; CIFAR-10 VGG-A and residual-network experiments); Huang, Zhou, "
                "Zhu, Liu & Shao 2019, Iterative Normalization: Beyond Standardization "
                "towards Efficient Whitening, CVPR (abstract; CIFAR-10 VGG and wide "
                "residual networks)")),
    criterion=(
        f"At the learning rate where BN ends with the highest test accuracy (grid "
        f"{list(LEARNING_RATES)}), for each whitening layer (DBN, IterNorm) and each of the "
        "seeds (paired with BN's run of the same seed). Speed: target = BN's final training "
        f"loss (mean over the last {FINAL_FRACTION:.0%} of evaluations of the training-mode "
        "loss); speed-up = (first evaluated step at which BN's training loss is at or below "
        "the target) / (the same for the whitened net). Speed holds if the 95% t-interval "
        f"of the geometric-mean speed-up lies above {SPEEDUP_THRESHOLD:g}, does not hold if "
        f"it lies below {SPEEDUP_MARGIN:g} (a gain of 20% or more is excluded) or if the "
        "whitened net misses the target on at least half the seeds, and is inconclusive "
        "otherwise. Error: the paired difference of final test accuracy (whitened - BN, "
        f"mean over the last {FINAL_FRACTION:.0%} of evaluations). It holds if the 95% "
        "t-interval lies above 0, does not hold if it lies below "
        f"{ACCURACY_MARGIN * 100:g} points (a gain of half a point or more is excluded), "
        "and is inconclusive otherwise. A seed whose run was stopped by the non-finite "
        "guard makes both verdicts of that layer inconclusive."),
    data=("MNIST-1D (4000 train / 1000 test, 40-long signals, generated locally): an MLP "
          "neither saturates it (about 60-70% test accuracy) nor fails on it, so both the "
          "speed of training and the final error can differ between normalizations; on "
          "scikit-learn's digits every variant of this MLP ends near 97-98% and the "
          "differences would be within the noise of a 360-example test set."),
    setup=(f"The seed MLP without dropout: Dense 128 -> norm -> ReLU -> Dense 64 -> norm -> "
           f"ReLU -> Dense 10, norm = jaxnorm.BatchNorm, jaxnorm.DecorrelatedBatchNorm "
           f"(ZCA by eigendecomposition) or jaxnorm.IterNorm ({ITERATIONS} Newton-Schulz "
           f"iterations), groups of {GROUP_SIZE} features, momentum 0.99, learnable scale and "
           f"bias. SGD with momentum {MOMENTUM}, batch {BATCH_SIZE}, {STEPS:,} steps "
           f"(~{STEPS * BATCH_SIZE // 4000} epochs), learning rates {list(LEARNING_RATES)}; "
           f"training loss (mean over the steps between evaluations) and test accuracy "
           f"(running statistics) every {EVAL_EVERY} steps. Probe: the mean absolute "
           "correlation between the first hidden layer's normalized features (before the "
           "ReLU) on the 1000 test inputs in evaluation mode, within groups of "
           f"{GROUP_SIZE} and over all pairs: whether the layers whiten what they claim to."),
    limits=("A 2-hidden-layer MLP on 40-feature signals instead of VGG / ResNets on "
            "CIFAR-10 images; ~48 epochs; one batch size, one group size and a 3-point "
            "learning-rate grid; no data augmentation or weight decay. The papers whiten "
            "convolutional features, where neighbouring channels are strongly correlated; "
            "a small MLP's hidden features may be less so, which leaves whitening less to "
            "do. The speed criterion uses the training loss (what the papers' convergence "
            "curves show); the test accuracy uses running statistics. Before the criterion "
            "was fixed a single 1000-step pilot at learning rate 0.05 was run to size the "
            "experiment (it showed BN ahead of DBN in test accuracy at that point); the "
            "thresholds were not changed after the full run."),
)


# ----------------------------------------------------------------- the verdicts


def _interval_verdict(summary, holds_above: float, fails_below: float):
  if summary.ci_low > holds_above:
    return HOLDS, True
  if summary.ci_high < fails_below:
    return DOES_NOT_HOLD, False
  return INCONCLUSIVE, None


def _speed_verdict(method: str, steps_bn, steps_method, diverged: int) -> Verdict:
  steps_bn = np.asarray(steps_bn, np.float64)
  steps_method = np.asarray(steps_method, np.float64)
  claim = f"{method} reaches BN's final training loss in fewer steps than BN"
  anchor = "faster convergence than BN (training curves, CIFAR-10 VGG / ResNets)"
  seeds = len(steps_method)
  if diverged:
    return Verdict(claim, INCONCLUSIVE,
                   f"{diverged} of {seeds} {method} runs hit non-finite steps (skipped by "
                   "the guard); a speed comparison would be biased.",
                   f"{method}: {diverged}/{seeds} runs unstable", anchor=anchor,
                   checks=(Check("runs with skipped steps", diverged, "0", None),))
  never = int(np.sum(~np.isfinite(steps_method)))
  reached = Check(f"{method} seeds that never reach BN's final loss", never,
                  f"< half of {seeds}", never * 2 < seeds)
  if not reached.passed:
    return Verdict(claim, DOES_NOT_HOLD,
                   f"{method} never brings the training loss down to BN's final loss on "
                   f"{never} of {seeds} seeds.",
                   f"{method} misses BN's final loss on {never}/{seeds} seeds",
                   anchor=anchor, checks=(reached,))
  if never or np.any(~np.isfinite(steps_bn)) or np.any(steps_bn <= 0) or np.any(
      steps_method <= 0):
    return Verdict(claim, INCONCLUSIVE,
                   f"On {never} of {seeds} seeds {method} never reaches BN's final training "
                   "loss (or a step count is not positive): no speed-up interval can be "
                   "formed.", f"{method} misses the target on {never}/{seeds} seeds",
                   anchor=anchor, checks=(reached,))
  speedup = geometric_summary(steps_bn / steps_method)
  verdict, passed = _interval_verdict(speedup, SPEEDUP_THRESHOLD, SPEEDUP_MARGIN)
  interval = Check(f"speed-up BN steps / {method} steps, 95% interval of the geometric "
                   f"mean over {speedup.n} seeds",
                   [round(speedup.ci_low, 3), round(speedup.ci_high, 3)],
                   f"entirely > {SPEEDUP_THRESHOLD:g} (entirely < {SPEEDUP_MARGIN:g}: fails)",
                   passed)
  ours = (f"{method}: {speedup.mean:.2f}x BN's speed (95% CI {speedup.ci_low:.2f}-"
          f"{speedup.ci_high:.2f})")
  reason = (f"{method} reaches BN's final training loss after {np.mean(steps_method):,.0f} "
            f"steps against BN's {np.mean(steps_bn):,.0f} (means over seeds); geometric-mean "
            f"speed-up {speedup.mean:.2f}x, 95% interval [{speedup.ci_low:.2f}, "
            f"{speedup.ci_high:.2f}]: holds above {SPEEDUP_THRESHOLD:g}, fails below "
            f"{SPEEDUP_MARGIN:g}.")
  return Verdict(claim, verdict, reason, ours, anchor=anchor, checks=(reached, interval))


def _accuracy_verdict(method: str, final_bn, final_method, diverged: int) -> Verdict:
  claim = f"{method} ends with a higher test accuracy than BN"
  anchor = "lower CIFAR-10 test error than BN (VGG and residual networks)"
  seeds = len(final_method)
  if diverged:
    return Verdict(claim, INCONCLUSIVE,
                   f"{diverged} of {seeds} {method} runs hit non-finite steps (skipped by "
                   "the guard).", f"{method}: {diverged}/{seeds} runs unstable",
                   anchor=anchor,
                   checks=(Check("runs with skipped steps", diverged, "0", None),))
  gain = paired_difference(final_method, final_bn)
  if not np.isfinite(gain.ci_low):
    return Verdict(claim, INCONCLUSIVE, "The accuracy gain has no interval (one seed or a "
                   "non-finite accuracy).", f"{method}: gain {gain.mean * 100:+.2f} points",
                   anchor=anchor, checks=(Check("gain interval", None, "finite", None),))
  verdict, passed = _interval_verdict(gain, 0.0, ACCURACY_MARGIN)
  check = Check(f"test-accuracy gain {method} - BN (points), 95% interval over {gain.n} "
                "paired seeds", [round(gain.ci_low * 100, 3), round(gain.ci_high * 100, 3)],
                f"entirely > 0 (entirely < {ACCURACY_MARGIN * 100:g}: fails)", passed)
  ours = (f"{method} {np.mean(final_method):.1%} vs BN {np.mean(final_bn):.1%} "
          f"({gain.mean * 100:+.2f} points, 95% CI {gain.ci_low * 100:+.2f} to "
          f"{gain.ci_high * 100:+.2f})")
  reason = (f"Final test accuracy {np.mean(final_method):.2%} with {method} against "
            f"{np.mean(final_bn):.2%} with BN; paired gain {gain.mean * 100:+.2f} points, 95% "
            f"interval [{gain.ci_low * 100:+.2f}, {gain.ci_high * 100:+.2f}]: holds above 0, "
            f"fails below {ACCURACY_MARGIN * 100:g}.")
  return Verdict(claim, verdict, reason, ours, anchor=anchor, checks=(check,))


def decide(numbers: Mapping[str, Mapping[str, Sequence[float]]]) -> list[Verdict]:
  """The verdicts from per-seed numbers (the criterion of :data:`SPEC`).

  Args:
    numbers: for ``"BN"`` and each of :data:`WHITENED`, per seed: ``steps`` (first
      evaluated step at which the training loss is at or below BN's final training loss
      of that seed; ``inf`` if never), ``final`` (final test accuracy) and ``skipped``
      (steps skipped by the non-finite guard).

  Returns:
    ``[DBN speed, DBN error, IterNorm speed, IterNorm error]``.

  Example:
    >>> bn = {"steps": [1000, 1200, 900], "final": [0.60, 0.62, 0.61], "skipped": [0] * 3}
    >>> fast = {"steps": [500, 600, 400], "final": [0.64, 0.65, 0.66], "skipped": [0] * 3}
    >>> [v.verdict for v in decide({"BN": bn, "DBN": fast, "IterNorm": bn})]
    ['holds', 'holds', 'does not hold', 'does not hold']
  """
  bn = numbers["BN"]
  verdicts = []
  for method in WHITENED:
    row = numbers[method]
    diverged = int(np.sum(np.asarray(row["skipped"]) > 0))
    verdicts.append(_speed_verdict(method, bn["steps"], row["steps"], diverged))
    verdicts.append(_accuracy_verdict(method, bn["final"], row["final"], diverged))
  return verdicts


# ----------------------------------------------------------------- model and training


class WhitenedMLP(nn.Module):
  """The seed MLP (no dropout) with BN, DBN or IterNorm after each hidden Dense.

  Dense 128 -> norm -> ReLU -> Dense 64 -> norm -> ReLU -> Dense ``num_classes``. The
  normalization modules are named ``norm_0``, ``norm_1``.

  Attributes:
    norm: ``"batch"``, ``"dbn"`` or ``"iternorm"``.
    hidden: widths of the hidden layers (multiples of ``group_size``).
    num_classes: outputs of the classifier.
    group_size: features per whitening group.
    iterations: IterNorm's Newton-Schulz steps.

  Example:
    >>> import jax, numpy as np
    >>> model = WhitenedMLP("dbn")
    >>> variables = model.init(jax.random.key(0), np.ones((2, 40), np.float32), train=False)
    >>> jax.tree.map(np.shape, variables["batch_stats"]["norm_1"])
    {'mean': (64,), 'whitening': (4, 16, 16)}
  """

  norm: str = "batch"
  hidden: Sequence[int] = HIDDEN
  num_classes: int = 10
  group_size: int = GROUP_SIZE
  iterations: int = ITERATIONS

  def _norm(self, train: bool, name: str):
    if self.norm == "batch":
      return jaxnorm.BatchNorm(use_running_average=not train, name=name)
    if self.norm == "dbn":
      return jaxnorm.DecorrelatedBatchNorm(use_running_average=not train,
                                           group_size=self.group_size, name=name)
    if self.norm == "iternorm":
      return jaxnorm.IterNorm(use_running_average=not train, group_size=self.group_size,
                              iterations=self.iterations, name=name)
    raise ValueError(f"WhitenedMLP: norm must be one of {tuple(VARIANTS.values())}; got "
                     f"{self.norm!r}.")

  @nn.compact
  def __call__(self, x, train: bool):
    x = x.reshape((x.shape[0], -1))
    for i, width in enumerate(self.hidden):
      x = nn.Dense(width)(x)
      x = nn.relu(self._norm(train, f"norm_{i}")(x))
    return nn.Dense(self.num_classes)(x)


def normalized_features(model: WhitenedMLP, variables, x: jax.Array) -> jax.Array:
  """The first hidden layer's normalized features ``(N, hidden[0])`` in evaluation mode.

  Example:
    >>> import jax, numpy as np
    >>> model, x = WhitenedMLP("iternorm"), np.ones((4, 40), np.float32)
    >>> jax.eval_shape(lambda: normalized_features(
    ...     model, model.init(jax.random.key(0), x, train=False), x)).shape
    (4, 128)
  """
  _, state = model.apply(variables, x, train=False, mutable=["intermediates"],
                         capture_intermediates=lambda module, _: module.name == "norm_0")
  return state["intermediates"]["norm_0"]["__call__"][0]


def _probe(model: WhitenedMLP, x_probe: jax.Array):
  def probe(state, hyper):
    del hyper
    h = normalized_features(model, state.variables, x_probe)
    return {"corr_within": mean_abs_correlation(h, group_size=GROUP_SIZE),
            "corr_all": mean_abs_correlation(h)}
  return probe


def _train(ctx: RunContext, data, norm: str, label: str, steps: int, eval_every: int,
           learning_rates: Sequence[float], hidden: Sequence[int]):
  model = WhitenedMLP(norm, hidden=tuple(hidden), num_classes=data.num_classes)
  tx = optax.inject_hyperparams(optax.sgd)(learning_rate=learning_rates[0],
                                           momentum=MOMENTUM)
  return train_population(
      Recipe(model, tx, BATCH_SIZE), data, seeds=list(range(ctx.seeds)), steps=steps,
      eval_every=eval_every, grid=grid_product(learning_rate=learning_rates),
      probe=_probe(model, jnp.asarray(data.x_test)), progress=ctx.progress,
      desc=f"{label} ({len(learning_rates)} lr x {ctx.seeds} seeds)")


def _final(curves: np.ndarray) -> np.ndarray:
  """Mean over the last FINAL_FRACTION of evaluations (step 0 excluded), ``(M, S)``."""
  evaluations = curves.shape[-1] - 1
  last = max(1, int(round(FINAL_FRACTION * evaluations)))
  return curves[..., -last:].mean(-1)


def _measure(pops) -> dict:
  """Per learning rate and seed: BN's final loss, steps to reach it, final accuracies."""
  steps = pops["BN"].steps
  target = _final(pops["BN"].curves["train_loss"])                      # (M, S)
  numbers = {"target_loss": target}
  for label, pop in pops.items():
    loss = pop.curves["train_loss"]
    numbers[label] = {
        "steps": np.array([[steps_to_reach(-loss[m, s], steps, -target[m, s])
                            for s in range(loss.shape[1])] for m in range(loss.shape[0])]),
        "final": _final(pop.curves["test_accuracy"]),
        "final_train_loss": _final(loss),
        "skipped": pop.skipped_steps,
        "corr_within": pop.probes["corr_within"][..., -1],
        "corr_all": pop.probes["corr_all"][..., -1]}
  return numbers


# ----------------------------------------------------------------- figures and table


def _curves_figure(path, pops, m, learning_rates, numbers, title):
  with plots.figure(path, title, ncols=2, size=(5.4, 3.9)) as (ax_loss, ax_acc):
    for color, (label, pop) in zip(COLORS, pops.items()):
      seeds = pop.curves["train_loss"].shape[1]
      plots.band(ax_loss, pop.steps[1:], pop.curves["train_loss"][m, :, 1:], color=color,
                 label=f"{label} (mean ± std, {seeds} seeds)")
      plots.band(ax_acc, pop.steps[1:], pop.curves["test_accuracy"][m, :, 1:], color=color,
                 label=f"{label} (mean ± std, {seeds} seeds)")
    target = float(np.mean(numbers["target_loss"][m]))
    ax_loss.axhline(target, color="gray", linestyle="--", linewidth=1,
                    label=f"BN's final training loss ({target:.3f})")
    plots.label(ax_loss, x="training step (log scale)",
                y="training cross-entropy (nats, log scale)",
                title=f"(a) training loss, learning rate {learning_rates[m]:g}",
                logx=True, logy=True)
    plots.label(ax_acc, x="training step (log scale)", y="test accuracy (fraction)",
                title=f"(b) test accuracy, learning rate {learning_rates[m]:g}", logx=True)


def _summary_figure(path, pops, learning_rates, numbers, title):
  with plots.figure(path, title, ncols=2, size=(5.2, 3.8)) as (ax_lr, ax_corr):
    for color, label in zip(COLORS, pops):
      plots.band(ax_lr, learning_rates, numbers[label]["final"].T, label=label, marker="o",
                 color=color)
    plots.label(ax_lr, x="learning rate (log scale)",
                y=f"final test accuracy (last {FINAL_FRACTION:.0%} of evals)",
                title="(a) final accuracy over the learning-rate grid", logx=True)
    m = int(np.argmax(np.mean(numbers["BN"]["final"], axis=1)))
    for color, (label, pop) in zip(COLORS, pops.items()):
      for key, style in (("corr_within", "-"), ("corr_all", ":")):
        plots.band(ax_corr, pop.steps, pop.probes[key][m], linestyle=style, color=color,
                   label=f"{label}, {'within groups' if key == 'corr_within' else 'all pairs'}")
    plots.label(ax_corr, x="training step",
                y="mean |correlation| between features",
                title="(b) first hidden layer after normalization (test set, eval mode)")


def _table(numbers, m, learning_rates, seeds) -> str:
  rows = []
  for i, lr in enumerate(learning_rates):
    for label in VARIANTS:
      row = numbers[label]
      reach = row["steps"][i]
      if label == "BN":
        speed = "1 (reference)"
      elif np.all(np.isfinite(reach)) and np.all(reach > 0) and np.all(
          numbers["BN"]["steps"][i] > 0):
        s = geometric_summary(numbers["BN"]["steps"][i] / reach)
        speed = (f"{s.mean:.2f}x [{s.ci_low:.2f}, {s.ci_high:.2f}]" if seeds > 1
                 else f"{s.mean:.2f}x")
      else:
        speed = f"misses on {int(np.sum(~np.isfinite(reach)))}/{seeds} seeds"
      gain = ("" if label == "BN" else
              f"{np.mean(row['final'][i] - numbers['BN']['final'][i]) * 100:+.2f}")
      rows.append([f"{lr:g}" + (" (verdict)" if i == m else ""), label,
                   summarize(row["final"][i]).format(3, 1.0),
                   gain,
                   summarize(row["final_train_loss"][i]).format(3),
                   (f"{np.mean(reach):,.0f}" if np.all(np.isfinite(reach)) else "never"),
                   speed,
                   f"{np.mean(row['corr_within'][i]):.3f} / {np.mean(row['corr_all'][i]):.3f}",
                   str(int(np.sum(row["skipped"][i])))])
  return runner.markdown_table(
      ["learning rate", "layer", "final test acc", "gain vs BN (points)",
       "final train loss", "steps to BN's final loss", "speed-up vs BN (geo. mean [95% CI])",
       "mean abs corr within groups / all pairs", "skipped steps"], rows)


# ----------------------------------------------------------------- run


def run(ctx: RunContext) -> Outcome:
  if ctx.quick:
    steps, eval_every, learning_rates = QUICK_STEPS, QUICK_EVAL_EVERY, QUICK_LEARNING_RATES
    hidden = QUICK_HIDDEN
  else:
    steps, eval_every, learning_rates, hidden = STEPS, EVAL_EVERY, LEARNING_RATES, HIDDEN
  data = load_dataset(DATA, seed=ctx.split_seed)
  pops = {label: _train(ctx, data, norm, label, steps, eval_every, learning_rates, hidden)
          for label, norm in VARIANTS.items()}
  numbers = _measure(pops)
  m = int(np.argmax(np.mean(numbers["BN"]["final"], axis=1)))
  per_seed_numbers = {label: {key: numbers[label][key][m]
                              for key in ("steps", "final", "skipped")}
                      for label in VARIANTS}
  verdicts = decide(per_seed_numbers)

  setting = (f"{data.name}, hidden {'x'.join(map(str, hidden))}, SGD momentum {MOMENTUM} "
             f"batch {BATCH_SIZE}, {steps:,} steps, {ctx.seeds} seeds")
  figures = ["curves.png", "summary.png"]
  _curves_figure(os.path.join(ctx.out_dir, figures[0]), pops, m, learning_rates, numbers,
                 f"Seed MLP with BN, DBN or IterNorm (groups of {GROUP_SIZE})\n({setting})")
  _summary_figure(os.path.join(ctx.out_dir, figures[1]), pops, learning_rates, numbers,
                  f"Accuracy over learning rates and how decorrelated the features are\n"
                  f"({setting})")

  per_lr = {f"{lr:g}": {label: {"final_test_accuracy": numbers[label]["final"][i],
                                "final_train_loss": numbers[label]["final_train_loss"][i],
                                "steps_to_bn_final_loss": numbers[label]["steps"][i],
                                "corr_within_groups": numbers[label]["corr_within"][i],
                                "corr_all_pairs": numbers[label]["corr_all"][i],
                                "skipped_steps": numbers[label]["skipped"][i]}
                        for label in VARIANTS} | {"bn_final_train_loss":
                                                  numbers["target_loss"][i]}
            for i, lr in enumerate(learning_rates)}
  summary = {
      "verdict_learning_rate": learning_rates[m],
      "final_test_accuracy": {f"{lr:g}": {label: summarize(numbers[label]["final"][i])
                                          for label in VARIANTS}
                              for i, lr in enumerate(learning_rates)},
  }
  for method in WHITENED:
    summary[f"accuracy_gain_{method}"] = paired_difference(
        per_seed_numbers[method]["final"], per_seed_numbers["BN"]["final"])
    reach = per_seed_numbers[method]["steps"]
    if np.all(np.isfinite(reach)) and np.all(reach > 0):
      summary[f"speedup_{method}"] = geometric_summary(
          per_seed_numbers["BN"]["steps"] / reach)
  summary["compile_seconds"] = {label: pop.compile_seconds for label, pop in pops.items()}
  summary["train_seconds"] = {label: pop.train_seconds for label, pop in pops.items()}
  config = {"data": data.describe(), "hidden": tuple(hidden), "group_size": GROUP_SIZE,
            "iterations": ITERATIONS, "batch_size": BATCH_SIZE, "momentum": MOMENTUM,
            "learning_rates": learning_rates, "steps": steps, "eval_every": eval_every,
            "seeds": list(range(ctx.seeds)), "final_fraction": FINAL_FRACTION,
            "norm_momentum": 0.99, "split_seed": ctx.split_seed}
  table = (f"{setting}; mean ± sample std over seeds. *Final*: mean over the last "
           f"{FINAL_FRACTION:.0%} of evaluations. *Speed-up*: BN's steps / the layer's steps "
           "to reach BN's final training loss. *Correlation*: mean |corr| between the first "
           "hidden layer's normalized features on the test set (evaluation mode) at the "
           "end.\n\n" + _table(numbers, m, learning_rates, ctx.seeds))
  notes = [f"The verdicts are read at learning rate {learning_rates[m]:g}, where BN ends "
           "most accurate; the table gives every learning rate of the grid.",
           f"Compilation took {sum(p.compile_seconds for p in pops.values()):.1f} s and "
           f"training {sum(p.train_seconds for p in pops.values()):.1f} s (wall)."]
  return Outcome(config=config,
                 per_seed={"verdict_lr": per_seed_numbers, "per_lr": per_lr},
                 summary=summary, verdicts=verdicts, table=table, figures=figures,
                 notes=notes)
