"""mc-dropout: does Monte Carlo dropout give better uncertainty than the deterministic net?

The course notes: "Monte Carlo dropout gives uncertainty estimates" (Gal & Ghahramani
2016). A dropout MLP on MNIST-1D is evaluated two ways from the same trained weights:
deterministically (dropout off, the usual inference) and by MC dropout (T = 50 passes
with dropout on, averaged by ``jaxnorm.training.mc_dropout_predict``). Calibration:
test NLL, accuracy, expected calibration error (15 bins) and a reliability diagram, on a
net trained on all ten classes. Out-of-distribution detection: a second net trained on
classes 0-4 only scores held-out examples of classes 0-4 (in distribution) and 5-9 (out
of distribution) by its MC predictive entropy and by the mutual information between
prediction and weights; AUROC per seed, with a t-interval over seeds. All seeds of one
net train together in one compiled program (two programs), and the MC predictions of
all seeds are one more program per net.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnorm import training

from . import plots, runner
from .data import Dataset, load_dataset
from .measures.calibration import (auroc, expected_calibration_error,
                                   negative_log_likelihood, reliability_bins)
from .measures.stats import Summary, paired_difference, summarize
from .models import MLP
from .population import _UNOPTIMIZED, Recipe, train_population
from .spec import (DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, Anchor, Check, Outcome, RunContext,
                   Spec, Verdict)

NAME = "mc-dropout"
DESCRIPTION = ("MC dropout (T=50) vs the deterministic dropout MLP on MNIST-1D: NLL, ECE, "
               "reliability; OOD detection (classes 0-4 vs 5-9) by entropy and MI, AUROC")

# ----------------------------------------------------------------- setup (fixed in code)
HIDDEN = (256, 256)
DROPOUT_RATE = 0.5
LEARNING_RATE = 1e-2
BATCH_SIZE = 100
STEPS = 3000
EVAL_EVERY = 300
QUICK_STEPS = 100
QUICK_EVAL_EVERY = 50
MC_SAMPLES = 50
NUM_BINS = 15
IN_CLASSES = (0, 1, 2, 3, 4)

# ----------------------------------------------------------------- criterion (fixed)
#: AUROC of a score that carries no information about being out of distribution.
CHANCE_AUROC = 0.5
#: Confidence level of every interval (Student t over seeds).
LEVEL = 0.95
#: The OOD scores judged (both from MC dropout).
OOD_SCORES = ("mc_entropy", "mc_mutual_information")
SCORE_LABELS = {"det_entropy": "entropy, deterministic net",
                "mc_entropy": "predictive entropy, MC dropout",
                "mc_mutual_information": "mutual information, MC dropout"}

SPEC = Spec(
    name=NAME,
    title="Monte Carlo dropout: calibration and out-of-distribution detection",
    description=DESCRIPTION,
    claim=("Averaging T stochastic forward passes with dropout left on (MC dropout) gives "
           "better predictive uncertainty than the usual deterministic pass of the same "
           "dropout net: a lower test NLL and a lower calibration error, and an "
           "uncertainty (predictive entropy, mutual information) that is higher on "
           "inputs of classes never seen in training than on held-out inputs of the "
           "trained classes."),
    anchor=Anchor(
        number=("MC dropout's average test log-likelihood on the UCI regression "
                "benchmarks, e.g. Boston Housing -2.46 ± 0.25, Concrete Strength "
                "-3.04 ± 0.09, Yacht Hydrodynamics -1.55 ± 0.12 nats, better than the "
                "VI and PBP baselines it is compared with there"),
        source=("Gal & Ghahramani 2016, \"Dropout as a Bayesian approximation: "
                "representing model uncertainty in deep learning\", ICML, Table 1 "
                "(MC dropout column; the published code's README repeats these numbers). "
                "ECE with 15 bins as defined by Guo et al. 2017, \"On calibration of "
                "modern neural networks\", ICML; OOD detection by entropy and mutual "
                "information as in Ovadia et al. 2019, \"Can you trust your model's "
                "uncertainty?\", NeurIPS; no published ECE or AUROC number is quoted, "
                "as none was found for a comparable setting that could be cited "
                "exactly")),
    criterion=(
        f"Five seeds (each: initialization, batch order, dropout masks). (1) NLL: the "
        f"paired difference MC - deterministic test NLL over seeds; the claim holds if "
        f"its {LEVEL:.0%} t-interval lies below 0, does not hold if it lies above 0 (MC "
        f"worse), else inconclusive. (2) ECE ({NUM_BINS} equal-width bins, top-label): "
        f"the same rule on MC - deterministic ECE. (3, 4) OOD detection by MC predictive "
        f"entropy and by mutual information, scored separately: AUROC (positives: test "
        f"examples of classes 5-9, negatives: test examples of classes 0-4) per seed; "
        f"holds if the {LEVEL:.0%} t-interval over seeds lies above {CHANCE_AUROC}, does "
        f"not hold if it lies below, else inconclusive. The interval is over seeds (not a "
        f"bootstrap over test examples): it includes the variation of training. The "
        f"experiment's overall verdict holds only if all four do. T = {MC_SAMPLES} MC "
        f"passes throughout. Accuracy and the deterministic net's entropy AUROC are "
        f"reported, not judged."),
    data=("MNIST-1D (4000 train / 1000 test, generated locally): an MLP reaches only "
          "~70% there, so test errors (and so calibration) are plentiful, unlike digits "
          "where an MLP makes a handful of errors on 360 test examples. For OOD: the "
          "training examples of classes 0-4 (~2000), the test examples of classes 0-4 "
          "(~500) against those of classes 5-9 (~500): a 'near' shift (same signal "
          "generator, unseen templates)."),
    setup=(f"MLP 40 -> {HIDDEN[0]} -> {HIDDEN[1]} -> classes, ReLU, jaxnorm.Dropout "
           f"{DROPOUT_RATE} after each hidden layer (p = 0.5 as in Gal & Ghahramani's "
           f"classification experiments), no normalization; Adam {LEARNING_RATE}, batch "
           f"{BATCH_SIZE}, {STEPS} steps (the MNIST-1D reference recipe; the 5-class "
           f"net sees half the data, so twice the epochs). Deterministic prediction: "
           f"dropout off (inverted dropout: no rescaling needed). MC: "
           f"mc_dropout_predict, T = {MC_SAMPLES}; its NLL from the log of the mean "
           f"probability, computed in log space (logsumexp of the passes' log-softmax) "
           f"so that no probability underflows. Entropy of the mean prediction; mutual "
           f"information = entropy of the mean - mean entropy of the passes."),
    limits=("One small MLP, one drop rate, one data set, one training length: how much MC "
            "averaging helps depends on all of them (a net trained until it overfits is "
            "more overconfident, leaving more to fix). T = 50 passes leave a little Monte "
            "Carlo noise in the MC numbers. The OOD shift is 'near' (other digits from "
            "the same generator), harder than the far shifts often reported. The "
            "intervals are over 5 seeds only. The anchor is regression log-likelihood on "
            "UCI data against other Bayesian methods, not classification against the "
            "deterministic pass; it is the claim's source, not a number we can "
            "reproduce here."),
)


# ----------------------------------------------------------------- the verdicts


def _interval(s: Summary, scale: float = 1.0, digits: int = 3) -> str:
  return f"[{s.ci_low * scale:.{digits}f}, {s.ci_high * scale:.{digits}f}]"


def _improvement_verdict(metric: str, mc: Sequence[float], det: Sequence[float],
                         unit: str, scale: float, anchor: str) -> Verdict:
  """MC lowers ``metric`` below the deterministic net's, paired by seed."""
  diff = paired_difference(mc, det, LEVEL)
  finite = bool(np.all(np.isfinite([diff.mean, diff.ci_low, diff.ci_high])))
  if not finite:
    verdict, kind = INCONCLUSIVE, "interval not computable (one seed or non-finite values)"
  elif diff.ci_high < 0:
    verdict, kind = HOLDS, "MC lower"
  elif diff.ci_low > 0:
    verdict, kind = DOES_NOT_HOLD, "MC higher"
  else:
    verdict, kind = INCONCLUSIVE, "interval contains 0"
  mc_s, det_s = summarize(mc, LEVEL), summarize(det, LEVEL)
  reason = (f"test {metric}: MC {mc_s.mean * scale:.4f} vs deterministic "
            f"{det_s.mean * scale:.4f}{unit}; MC - det = {diff.mean * scale:+.4f}"
            f"{unit}, {LEVEL:.0%} CI {_interval(diff, scale, 4)} over {diff.n} paired "
            f"seeds: {kind}.")
  check = Check(f"MC - deterministic {metric}, {LEVEL:.0%} CI upper end",
                round(diff.ci_high * scale, 5) if finite else None, "< 0",
                bool(diff.ci_high < 0) if finite else None)
  return Verdict(f"MC dropout lowers the test {metric}", verdict, reason,
                 f"{metric} MC {mc_s.mean * scale:.3f} vs det {det_s.mean * scale:.3f}"
                 f"{unit} (diff CI {_interval(diff, scale)})", anchor=anchor,
                 checks=(check,))


def _auroc_verdict(score: str, values: Sequence[float]) -> Verdict:
  """AUROC of ``score`` above chance, with its t-interval over seeds."""
  s = summarize(values, LEVEL)
  finite = bool(np.all(np.isfinite([s.mean, s.ci_low, s.ci_high])))
  if not finite:
    verdict, kind = INCONCLUSIVE, "interval not computable (one seed or non-finite values)"
  elif s.ci_low > CHANCE_AUROC:
    verdict, kind = HOLDS, f"above {CHANCE_AUROC}"
  elif s.ci_high < CHANCE_AUROC:
    verdict, kind = DOES_NOT_HOLD, f"below {CHANCE_AUROC}"
  else:
    verdict, kind = INCONCLUSIVE, f"interval contains {CHANCE_AUROC}"
  label = SCORE_LABELS[score]
  reason = (f"AUROC of {label} (classes 5-9 vs held-out 0-4) = {s.mean:.3f}, "
            f"{LEVEL:.0%} CI {_interval(s, digits=4)} over {s.n} seeds: {kind}.")
  check = Check(f"AUROC ({label}), {LEVEL:.0%} CI lower end",
                round(s.ci_low, 5) if finite else None, f"> {CHANCE_AUROC}",
                bool(s.ci_low > CHANCE_AUROC) if finite else None)
  return Verdict(f"{label} detects unseen classes (AUROC > {CHANCE_AUROC})", verdict,
                 reason, f"AUROC {s.mean:.3f}, CI {_interval(s, digits=4)}",
                 anchor="chance = 0.5 (criterion of the issue)", checks=(check,))


def decide(numbers: Mapping[str, Sequence[float]]) -> list[Verdict]:
  """The four verdicts from per-seed numbers.

  Args:
    numbers: per-seed lists (same seed order everywhere) under ``mc_nll``, ``det_nll``,
      ``mc_ece``, ``det_ece``, ``auroc_mc_entropy``, ``auroc_mc_mutual_information``.
  """
  return [
      _improvement_verdict("NLL", numbers["mc_nll"], numbers["det_nll"], " nats", 1.0,
                           "MC dropout test LL, UCI Boston -2.46 ± 0.25 nats (Gal & "
                           "Ghahramani 2016, Table 1)"),
      _improvement_verdict("ECE", numbers["mc_ece"], numbers["det_ece"], " %", 100.0,
                           "the deterministic pass's ECE (15 bins, Guo et al. 2017); no "
                           "published number quoted"),
  ] + [_auroc_verdict(score, numbers[f"auroc_{score}"]) for score in OOD_SCORES]


# ----------------------------------------------------------------- training and prediction


def subset(data: Dataset, classes: Sequence[int]) -> tuple[Dataset, np.ndarray, np.ndarray]:
  """Training on ``classes`` only: the data set restricted to them (labels kept), and
  the test inputs and labels of the other classes (out of distribution)."""
  keep_train = np.isin(data.y_train, classes)
  keep_test = np.isin(data.y_test, classes)
  inside = Dataset(f"{data.name} classes {min(classes)}-{max(classes)}",
                   data.x_train[keep_train], data.y_train[keep_train],
                   data.x_test[keep_test], data.y_test[keep_test], len(classes))
  return inside, data.x_test[~keep_test], data.y_test[~keep_test]


def make_model(num_classes: int) -> MLP:
  return MLP(hidden=HIDDEN, num_classes=num_classes, dropout_rate=DROPOUT_RATE)


def train(ctx: RunContext, data: Dataset, desc: str):
  steps, eval_every = (QUICK_STEPS, QUICK_EVAL_EVERY) if ctx.quick else (STEPS, EVAL_EVERY)
  recipe = Recipe(make_model(data.num_classes), optax.adam(LEARNING_RATE), BATCH_SIZE)
  return train_population(recipe, data, seeds=list(range(ctx.seeds)), steps=steps,
                          eval_every=eval_every, keep_states=True, progress=ctx.progress,
                          desc=desc)


def _predict_member(state, key, x):
  """Deterministic and MC-dropout predictions of one trained net on ``x``."""
  variables = state.variables
  det_logits = state.apply_fn(variables, x, train=False)
  mc = training.mc_dropout_predict(state.apply_fn, variables, x, key,
                                   num_samples=MC_SAMPLES)
  # The same T passes, in log space for the NLL: monte_carlo_predict splits ``key`` into
  # T keys and runs each pass with that key as its 'dropout' rng. With no batch norm,
  # training mode differs from evaluation mode only in sampling the dropout masks.
  keys = jax.random.split(key, MC_SAMPLES)
  logits = jax.vmap(lambda k: state.apply_fn(variables, x, train=True,
                                             rngs={"dropout": k}))(keys)
  mc_log_probs = (jax.nn.logsumexp(jax.nn.log_softmax(logits), axis=0)
                  - jnp.log(MC_SAMPLES))
  det_probs = jax.nn.softmax(det_logits)
  det_entropy = -jnp.sum(det_probs * jax.nn.log_softmax(det_logits), axis=-1)
  return {"det_log_probs": jax.nn.log_softmax(det_logits), "det_probs": det_probs,
          "det_entropy": det_entropy, "mc_log_probs": mc_log_probs, "mc_probs": mc.mean,
          "mc_entropy": mc.entropy, "mc_mutual_information": mc.mutual_information}


def predict(states, seeds: Sequence[int], x: np.ndarray) -> dict[str, np.ndarray]:
  """Predictions of every member (one program), arrays with a leading seed axis."""
  keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(s), 7))(
      jnp.asarray(seeds, jnp.uint32))
  # Runs once per net: compiled unoptimized, which saves more compile time than it costs.
  out = jax.jit(jax.vmap(_predict_member, in_axes=(0, 0, None)),
                compiler_options=_UNOPTIMIZED)(states, keys, jnp.asarray(x))
  return {k: np.asarray(v) for k, v in out.items()}


# ----------------------------------------------------------------- measurement


def calibration_numbers(pred: Mapping[str, np.ndarray], labels: np.ndarray) -> dict:
  """Per-seed NLL, accuracy, ECE and reliability bins of both predictions."""
  out = {}
  for method in ("det", "mc"):
    nll, acc, ece, bins, gap = [], [], [], [], []
    for seed in range(pred[f"{method}_probs"].shape[0]):
      probs = pred[f"{method}_probs"][seed]
      nll.append(negative_log_likelihood(pred[f"{method}_log_probs"][seed], labels))
      acc.append(float(np.mean(probs.argmax(1) == labels)))
      gap.append(float(np.mean(probs.max(1))) - acc[-1])
      ece.append(expected_calibration_error(probs, labels, num_bins=NUM_BINS))
      bins.append(reliability_bins(probs, labels, num_bins=NUM_BINS))
    out[f"{method}_nll"], out[f"{method}_accuracy"], out[f"{method}_ece"] = nll, acc, ece
    out[f"{method}_bins"] = bins
    out[f"{method}_confidence_minus_accuracy"] = gap
  return out


def ood_numbers(pred_in: Mapping[str, np.ndarray], pred_out: Mapping[str, np.ndarray]
                ) -> dict:
  """Per-seed AUROC of each score, out-of-distribution examples as positives."""
  out = {}
  for score in ("det_entropy",) + OOD_SCORES:
    values = []
    for seed in range(pred_in[score].shape[0]):
      scores = np.concatenate([pred_in[score][seed], pred_out[score][seed]])
      positive = np.concatenate([np.zeros(pred_in[score].shape[1], bool),
                                 np.ones(pred_out[score].shape[1], bool)])
      values.append(auroc(scores, positive))
    out[f"auroc_{score}"] = values
  return out


# ----------------------------------------------------------------- figures and table


def _reliability_figure(path, cal, seeds: int):
  edges = cal["det_bins"][0].edges
  centers = (edges[:-1] + edges[1:]) / 2
  with plots.figure(path, f"Reliability on MNIST-1D test, {NUM_BINS} bins ({seeds} seeds, "
                    "band: ± std)", ncols=2, size=(4.8, 4.0)) as axes:
    ax = axes[0]
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    for method, label in (("det", "deterministic"), ("mc", f"MC dropout, T={MC_SAMPLES}")):
      acc = np.array([b.accuracy for b in cal[f"{method}_bins"]])
      plots.band(ax, centers, acc, label=label, marker="o")
    plots.label(ax, x="confidence (top-class probability, bin centre)",
                y="accuracy in bin (fraction)", title="reliability diagram")
    ax = axes[1]
    for method, label in (("det", "deterministic"), ("mc", f"MC dropout, T={MC_SAMPLES}")):
      counts = np.array([b.count for b in cal[f"{method}_bins"]], np.float64)
      fraction = counts / counts.sum(axis=1, keepdims=True)
      plots.band(ax, centers, np.where(fraction > 0, fraction, np.nan), label=label,
                 marker="o")
    plots.label(ax, x="confidence (top-class probability, bin centre)",
                y="fraction of test examples in bin", title="confidence histogram",
                logy=True)


def _ood_figure(path, pred_in, pred_out, ood, seeds: int):
  with plots.figure(path, f"Out-of-distribution detection: net trained on classes 0-4, "
                    f"tested on 0-4 vs 5-9 ({seeds} seeds pooled)", ncols=3,
                    size=(4.4, 3.8)) as axes:
    for ax, score, unit in ((axes[0], "mc_entropy", "nats"),
                            (axes[1], "mc_mutual_information", "nats")):
      inside, outside = pred_in[score].reshape(-1), pred_out[score].reshape(-1)
      bins = np.linspace(0.0, max(inside.max(), outside.max()) + 1e-9, 40)
      ax.hist(inside, bins=bins, alpha=0.55, density=True, label="classes 0-4 (seen)")
      ax.hist(outside, bins=bins, alpha=0.55, density=True, label="classes 5-9 (unseen)")
      plots.label(ax, x=f"{SCORE_LABELS[score]} ({unit})", y="density (1/nats)",
                  title=SCORE_LABELS[score])
    ax = axes[2]
    names = ("det_entropy",) + OOD_SCORES
    for i, score in enumerate(names):
      values = np.asarray(ood[f"auroc_{score}"])
      s = summarize(values, LEVEL)
      ax.plot(np.full(len(values), i + 0.15), values, ".", color="grey", alpha=0.8,
              label="single seeds" if i == 0 else None)
      if np.isfinite(s.ci_low):
        ax.errorbar([i], [s.mean], yerr=[[s.mean - s.ci_low], [s.ci_high - s.mean]],
                    fmt="o", capsize=5, color="C3",
                    label=f"mean, {LEVEL:.0%} CI over seeds" if i == 0 else None)
      else:
        ax.plot([i], [s.mean], "o", color="C3")
    ax.axhline(CHANCE_AUROC, color="k", lw=1, ls="--", label="chance (0.5)")
    ax.set_xticks(range(len(names)),
                  labels=["entropy\ndeterministic", "entropy\nMC", "mutual inf.\nMC"])
    plots.label(ax, x="uncertainty score", y="AUROC (unseen vs seen classes)",
                title="AUROC per score")


def _curves_figure(path, populations, seeds: int):
  with plots.figure(path, f"Training: deterministic test metrics ({seeds} seeds, band: "
                    "± std)", ncols=2, size=(4.6, 3.6)) as axes:
    for name, pop in populations.items():
      plots.band(axes[0], pop.steps, pop.curves["test_loss"][0], label=name)
      plots.band(axes[1], pop.steps, pop.curves["test_accuracy"][0], label=name)
    plots.label(axes[0], x="training step (batches of 100)", y="test NLL (nats)",
                title="test NLL, dropout off")
    plots.label(axes[1], x="training step (batches of 100)",
                y="test accuracy (fraction)", title="test accuracy, dropout off")


def _confidence_note(numbers) -> str:
  """Which way each prediction is miscalibrated on average, from the measured gap."""
  parts = []
  for method, label in (("det", "deterministic"), ("mc", "MC dropout")):
    gap = float(np.mean(numbers[f"{method}_confidence_minus_accuracy"])) * 100
    side = "overconfident" if gap > 0 else "underconfident"
    parts.append(f"{label} {gap:+.2f} points ({side})")
  return ("Mean top-class confidence minus accuracy on the 10-class test set: "
          + "; ".join(parts) + ".")


def _table(numbers) -> str:
  rows = []

  def row(label, det, mc, scale=1.0, digits=4):
    det_s, mc_s = summarize(det, LEVEL), summarize(mc, LEVEL)
    diff = paired_difference(mc, det, LEVEL)
    rows.append([label, det_s.format(digits, scale), mc_s.format(digits, scale),
                 f"{diff.mean * scale:+.{digits}f}", _interval(diff, scale, digits)])

  row("test NLL (nats)", numbers["det_nll"], numbers["mc_nll"])
  row("test ECE (%)", numbers["det_ece"], numbers["mc_ece"], 100.0, 2)
  row("test accuracy (%)", numbers["det_accuracy"], numbers["mc_accuracy"], 100.0, 2)
  row("mean confidence - accuracy (points; < 0: underconfident)",
      numbers["det_confidence_minus_accuracy"], numbers["mc_confidence_minus_accuracy"],
      100.0, 2)
  row("AUROC by entropy, 0-4 vs 5-9", numbers["auroc_det_entropy"],
      numbers["auroc_mc_entropy"], 1.0, 3)
  mi = summarize(numbers["auroc_mc_mutual_information"], LEVEL)
  rows.append(["AUROC by mutual information, 0-4 vs 5-9", "(0 for one pass)",
               mi.format(3), "", f"CI of MC: {_interval(mi)}"])
  return runner.markdown_table(
      ["quantity", "deterministic (mean ± std)", f"MC dropout T={MC_SAMPLES} (mean ± std)",
       "MC - det", f"{LEVEL:.0%} CI (paired)"], rows)


# ----------------------------------------------------------------- run


def run(ctx: RunContext) -> Outcome:
  data = load_dataset("mnist1d")
  seeds = list(range(ctx.seeds))
  full_pop = train(ctx, data, "10 classes")
  inside, x_out, _ = subset(data, IN_CLASSES)
  ood_pop = train(ctx, inside, "classes 0-4")

  pred_full = predict(full_pop.states, seeds, data.x_test)
  both = predict(ood_pop.states, seeds, np.concatenate([inside.x_test, x_out]))
  pred_in = {k: v[:, :len(inside.x_test)] for k, v in both.items()}
  pred_out = {k: v[:, len(inside.x_test):] for k, v in both.items()}
  cal = calibration_numbers(pred_full, data.y_test)
  ood = ood_numbers(pred_in, pred_out)
  numbers = {k: v for k, v in {**cal, **ood}.items() if not k.endswith("_bins")}
  verdicts = decide(numbers)

  figures = ["reliability.png", "ood_detection.png", "training_curves.png"]
  _reliability_figure(os.path.join(ctx.out_dir, figures[0]), cal, ctx.seeds)
  _ood_figure(os.path.join(ctx.out_dir, figures[1]), pred_in, pred_out, ood, ctx.seeds)
  _curves_figure(os.path.join(ctx.out_dir, figures[2]),
                 {"10 classes": full_pop, "classes 0-4": ood_pop}, ctx.seeds)

  summary = {name: summarize(values, LEVEL) for name, values in numbers.items()}
  summary.update({f"mc_minus_det_{m}": paired_difference(numbers[f"mc_{m}"],
                                                         numbers[f"det_{m}"], LEVEL)
                  for m in ("nll", "ece", "accuracy", "confidence_minus_accuracy")})
  bins = {method: {"edges": cal[f"{method}_bins"][0].edges,
                   "confidence": [b.confidence for b in cal[f"{method}_bins"]],
                   "accuracy": [b.accuracy for b in cal[f"{method}_bins"]],
                   "count": [b.count for b in cal[f"{method}_bins"]]}
          for method in ("det", "mc")}
  populations = (full_pop, ood_pop)
  compile_seconds = sum(p.compile_seconds for p in populations)
  train_seconds = sum(p.train_seconds for p in populations)
  skipped = int(sum(p.skipped_steps.sum() for p in populations))
  return Outcome(
      config={"data": "mnist1d", "hidden": HIDDEN, "dropout_rate": DROPOUT_RATE,
              "optimizer": "adam", "learning_rate": LEARNING_RATE,
              "batch_size": BATCH_SIZE, "steps": int(full_pop.steps[-1]),
              "mc_samples": MC_SAMPLES, "num_bins": NUM_BINS, "in_classes": IN_CLASSES,
              "level": LEVEL, "examples": {"test": len(data.x_test),
                                           "ood_train": len(inside.x_train),
                                           "ood_test_in": len(inside.x_test),
                                           "ood_test_out": len(x_out)},
              "compile_seconds": compile_seconds, "train_seconds": train_seconds},
      per_seed={**numbers, "reliability_bins": bins,
                "skipped_steps": skipped},
      summary=summary, verdicts=verdicts, table=_table(numbers), figures=figures,
      notes=[f"2 training programs: {compile_seconds:.1f} s compiling, {train_seconds:.1f} "
             f"s training; steps rejected by the non-finite guard: {skipped}.",
             _confidence_note(numbers),
             "Reliability bins in per_seed are lists over seeds; NaN (null) marks an empty "
             "bin."])
