"""rnn-norm: "BN is ill-suited to recurrent nets; LN is made for them", on MNIST-1D.

The benchmark's bidirectional GRU (:class:`experiments.recurrent.GRUClassifier`) reads
each MNIST-1D signal one value per step, without normalization, with layer norm inside
the cell, and with batch norm inside the cell whose running statistics are shared by
all time steps. It does so on the fixed-length signals and on a variable-length version
of the same signals (each resampled to 20-40 steps and padded, with masks), and we
measure what the claim predicts: LN costs nothing; BN's shared running statistics do not
match the per-step batch statistics it trains with (so evaluation mode falls behind
batch-statistics mode); and BN is the one that suffers when lengths vary.
"""

from __future__ import annotations

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import plots, runner
from .data import Dataset, load_dataset
from .measures.stats import Summary, paired_difference, summarize
from .population import Recipe, train_population
from .recurrent import RECURRENT_NORMS, GRUClassifier, recurrent_moments, variable_length
from .spec import Anchor, Check, Outcome, Spec, Verdict, verdict_from_checks

NAME = "rnn-norm"
DESCRIPTION = ("GRU on MNIST-1D as a sequence: no norm vs LN in the cell vs BN shared "
               "over time steps, fixed and variable lengths")

NORM_LABELS = {"none": "no normalization", "layer": "LN in the cell",
               "batch": "BN in the cell (shared statistics)"}
LENGTHS = ("fixed", "variable")
LENGTH_LABELS = {"fixed": "fixed length (40)", "variable": "variable length (20-40)"}
PUBLISHED_GRU = 0.91  # Greydanus 2020, MNIST-1D table
#: Non-inferiority margin: LN is "at least as accurate" unless reliably worse by more.
MARGIN = 0.01
#: Smallest effect that counts (a BN evaluation gap, an LN advantage), in accuracy.
MIN_EFFECT = 0.01

HIDDEN = 6
LEARNING_RATE = 1e-2
BATCH_SIZE = 100
STEPS, EVAL_EVERY = 2000, 250
QUICK_STEPS, QUICK_EVAL_EVERY = 40, 20
MIN_LENGTH = 20
LENGTH_SEED = 1
#: Where the figure draws a zero variance ratio (the first step reads the zero initial
#: state, whose batch variance is 0), so that the log axis keeps it.
VAR_RATIO_FLOOR = 1e-3

SPEC = Spec(
    name=NAME,
    title="Normalization inside a GRU: LN vs BN with statistics shared over time",
    description=DESCRIPTION,
    claim=("Batch norm is ill-suited to recurrent networks: its statistics differ from "
           "one time step to the next, so one set of running statistics shared by all "
           "steps does not describe what the network saw in training, and sequences of "
           "different lengths make it worse. Layer norm, computed per example and step, "
           "is made for them: it costs no accuracy."),
    anchor=Anchor(
        number="MNIST-1D GRU (no normalization): 91% test accuracy",
        source=("Greydanus 2020, \"Scaling down deep learning\" (arXiv:2011.14439), "
                "MNIST-1D table; the claim: Ba, Kiros & Hinton 2016, \"Layer "
                "normalization\" (§1, §3.1), Cooijmans et al. 2016, \"Recurrent batch "
                "normalization\" (statistics kept per time step)")),
    criterion=(
        "Over 5 seeds, paired by seed, 95% t-intervals. (1) LN at least as accurate as "
        f"no normalization, on fixed and on variable lengths: holds if the interval of "
        f"LN minus none lies above -{MARGIN * 100:.0f} point, does not hold if it lies "
        f"below -{MARGIN * 100:.0f} point, else inconclusive (both lengths must hold). "
        "(2) BN with shared statistics, fixed length: test accuracy in batch-statistics "
        "mode (the test sequences normalized at each step with their own statistics at "
        "that step, as in training) minus evaluation mode (the shared running "
        "statistics): holds "
        f"if the gap's interval lies above 0 and its mean is at least {MIN_EFFECT * 100:.0f}"
        f" point, does not hold if its interval lies below {MIN_EFFECT * 100:.0f} point, "
        "else inconclusive (the variable-length gap is reported). (3) On variable "
        "lengths BN (evaluation mode) falls behind LN: LN minus BN, same rule as (2)."),
    data=("MNIST-1D generated locally (package defaults, 4000 train / 1000 test, split "
          "by a seeded permutation), the benchmark's data and the anchor's. Variable "
          f"lengths: each signal linearly resampled to a length drawn uniformly from "
          f"{MIN_LENGTH} to 40 (seed {LENGTH_SEED}), left-aligned, zero-padded to 40 "
          "with a mask: the whole digit, read at different speeds."),
    setup=(f"The benchmark's GRUBase: a bidirectional GRU with {HIDDEN} hidden units per "
           "direction over the 40 values, the outputs of all steps flattened into one "
           "Dense layer; PyTorch's initialization. The normalization acts on the "
           "recurrent pre-activation W_h h of the three gates (the input has one value "
           "per step, so normalizing its projection over features would keep only its "
           "sign): LN per example and step (Ba et al.), or BN with one scale/shift and "
           "one running mean/variance for all steps, each step normalized with its own "
           "batch statistics in training and moving the running ones (momentum 0.99 per "
           "step). Masks: padded steps keep the hidden state, output zero and are left "
           "out of BN's statistics (jaxnorm's mask=). Adam, learning rate "
           f"{LEARNING_RATE}, batch {BATCH_SIZE}, {STEPS} steps, test accuracy every "
           f"{EVAL_EVERY} steps (the last reported); BN is also evaluated in "
           "batch-statistics mode, and its per-step statistics on the test set are "
           "compared with its running ones. Fixed- and variable-length runs of one "
           "normalization train together in one compiled program."),
    limits=(f"Training is cut to {STEPS} steps (the reference trains 8000) to fit two CPU "
            f"cores. The GRU is tiny ({HIDDEN} units per direction) and the sequences "
            "short (40): a single hidden layer's statistics settle within a few steps, "
            "so longer sequences or deeper recurrent stacks could show larger BN effects. "
            "Only one BN design is tested (statistics shared over time); per-step "
            "statistics (Cooijmans et al.) or BN of the input projection only (Laurent et "
            "al. 2016) are not. One learning rate, no tuning per normalization."),
)


class EitherLength(nn.Module):
  """The GRU classifier on the fixed- or the variable-length version of each example.

  Inputs are ``(N, 40, 4)``: ``[fixed value, 1, variable value, valid]``; the traced
  call argument ``variable`` (0 or 1) picks one pair, so fixed- and variable-length runs
  share one compiled program (a fixed-length signal through the masked path with every
  step valid is the unmasked computation).
  """

  norm: str = "none"

  @nn.compact
  def __call__(self, x, train: bool, variable=0.0):
    pair = jnp.where(jnp.asarray(variable) > 0.5, x[..., 2:], x[..., :2])
    return GRUClassifier(hidden=HIDDEN, norm=self.norm, masked_input=True,
                         name="gru")(pair, train)


def both_lengths(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """``(N, T)`` signals -> ``(N, T, 4)``: each signal fixed and variable-length, masked."""
  lengths = rng.integers(MIN_LENGTH, x.shape[1] + 1, size=len(x))
  fixed = np.stack([x, np.ones_like(x)], axis=-1).astype(np.float32)
  return np.concatenate([fixed, variable_length(x, lengths)], axis=-1)


def make_data(split_seed: int = 0) -> Dataset:
  """MNIST-1D with every example in both versions (see :func:`both_lengths`)."""
  data = load_dataset("mnist1d", seed=split_seed)
  rng = np.random.default_rng(LENGTH_SEED)
  return Dataset("mnist1d (fixed and variable length)", both_lengths(data.x_train, rng),
                 data.y_train, both_lengths(data.x_test, rng), data.y_test,
                 data.num_classes)


def batch_stats_probe(model: nn.Module, x_test, y_test):
  """BN measured in batch-statistics mode on the whole test set, at every evaluation.

  The test set is one batch: at each step its sequences are normalized with their own
  statistics at that step (the running ones untouched), which is what training does,
  without the noise of small batches. Returns the accuracy, and per direction and step
  the median over the 3H features of (batch variance / running variance) and of
  |batch mean - running mean| / running std (NaN where no sequence is running).
  """
  x_test = jnp.asarray(x_test)
  y_test = jnp.asarray(y_test)

  def probe(state, hyper):
    variable = hyper["variable"]
    logits, updates = model.apply(state.variables, x_test, train=True, variable=variable,
                                  mutable=["batch_stats", "intermediates"])
    valid = jnp.where(variable > 0.5, x_test[..., 3], x_test[..., 1]) > 0.5
    moments = recurrent_moments({"batch_stats": state.batch_stats["gru"]},
                                updates["intermediates"]["gru"], valid)
    running = jnp.any(valid, axis=0)[:, None]
    out = {"batch_stats_accuracy": jnp.mean(jnp.argmax(logits, -1) == y_test)}
    for direction, m in moments.items():
      ratio = jnp.where(running, m["var"] / m["running_var"], jnp.nan)
      offset = jnp.where(running, jnp.abs(m["mean"] - m["running_mean"])
                         / jnp.sqrt(m["running_var"]), jnp.nan)
      out[f"{direction}/var_ratio"] = jnp.median(ratio, axis=-1)
      out[f"{direction}/mean_offset"] = jnp.median(offset, axis=-1)
    return out
  return probe


def _check_at_least(diff: Summary, margin: float, name: str) -> Check:
  """Non-inferiority: passes if the interval lies above -margin, fails if below."""
  if not np.isfinite(diff.mean) or diff.n < 2:
    return Check(name, None, f"95% CI above -{margin * 100:.0f} point", None)
  passed = True if diff.ci_low > -margin else False if diff.ci_high < -margin else None
  return Check(name, [round(diff.ci_low * 100, 2), round(diff.ci_high * 100, 2)],
               f"95% CI above -{margin * 100:.0f} point", passed)


def _check_effect(diff: Summary, minimum: float, name: str) -> Check:
  """An effect: passes if the interval lies above 0 and the mean reaches ``minimum``,
  fails if the interval lies below ``minimum``."""
  if not np.isfinite(diff.mean) or diff.n < 2:
    return Check(name, None, f"95% CI above 0, mean >= {minimum * 100:.0f} point", None)
  if diff.ci_low > 0 and diff.mean >= minimum:
    passed = True
  elif diff.ci_high < minimum:
    passed = False
  else:
    passed = None
  return Check(name, [round(diff.mean * 100, 2), round(diff.ci_low * 100, 2),
                      round(diff.ci_high * 100, 2)],
               f"95% CI above 0 and mean >= {minimum * 100:.0f} point", passed)


def _interval(d: Summary) -> str:
  if d.n < 2:
    return f"{d.mean * 100:+.1f} points (one seed)"
  return f"{d.mean * 100:+.1f} points (95% CI {d.ci_low * 100:+.1f} to {d.ci_high * 100:+.1f})"


def decide(eval_acc: dict, batch_acc: dict) -> list[Verdict]:
  """Verdicts from per-seed test accuracies.

  Args:
    eval_acc: ``eval_acc[length][norm]``: evaluation-mode accuracy per seed, for
      ``length`` in :data:`LENGTHS` and ``norm`` in :data:`RECURRENT_NORMS`.
    batch_acc: ``batch_acc[length]``: BN's batch-statistics-mode accuracy per seed.
  """
  verdicts = []
  # (1) LN at least as accurate as no normalization.
  diffs = {length: paired_difference(eval_acc[length]["layer"], eval_acc[length]["none"])
           for length in LENGTHS}
  checks = tuple(_check_at_least(diffs[length], MARGIN, f"LN - none, {length} (points)")
                 for length in LENGTHS)
  verdict = verdict_from_checks(checks)
  reason = "; ".join(f"{LENGTH_LABELS[length]}: LN {np.mean(eval_acc[length]['layer']):.1%}"
                     f" vs none {np.mean(eval_acc[length]['none']):.1%}, "
                     f"{_interval(diffs[length])}" for length in LENGTHS)
  verdicts.append(Verdict(
      "LN inside a GRU is at least as accurate as no normalization", verdict,
      reason + f" (non-inferiority margin {MARGIN * 100:.0f} point).",
      f"fixed: LN {np.mean(eval_acc['fixed']['layer']):.1%} vs none "
      f"{np.mean(eval_acc['fixed']['none']):.1%}; variable: LN "
      f"{np.mean(eval_acc['variable']['layer']):.1%} vs none "
      f"{np.mean(eval_acc['variable']['none']):.1%}",
      f"GRU without normalization: {PUBLISHED_GRU:.0%} (Greydanus 2020)", checks))

  # (2) BN's gap between batch-statistics mode and evaluation mode.
  gaps = {length: paired_difference(batch_acc[length], eval_acc[length]["batch"])
          for length in LENGTHS}
  check = _check_effect(gaps["fixed"], MIN_EFFECT, "BN batch-stats - eval mode, fixed")
  verdict = verdict_from_checks([check])
  verdicts.append(Verdict(
      "BN with statistics shared over time steps: evaluation mode falls behind the "
      "batch statistics it trained with", verdict,
      f"fixed length: batch-statistics mode {np.mean(batch_acc['fixed']):.1%} vs "
      f"evaluation mode {np.mean(eval_acc['fixed']['batch']):.1%}, gap "
      f"{_interval(gaps['fixed'])}; variable length (reported): "
      f"{np.mean(batch_acc['variable']):.1%} vs {np.mean(eval_acc['variable']['batch']):.1%},"
      f" gap {_interval(gaps['variable'])}.",
      f"gap {gaps['fixed'].mean * 100:+.1f} points (fixed), "
      f"{gaps['variable'].mean * 100:+.1f} (variable)",
      "no published number: Ba et al. 2016 and Cooijmans et al. 2016 keep BN "
      "statistics per time step", (check,)))

  # (3) On variable lengths, BN falls behind LN.
  d = paired_difference(eval_acc["variable"]["layer"], eval_acc["variable"]["batch"])
  check = _check_effect(d, MIN_EFFECT, "LN - BN, variable length")
  verdicts.append(Verdict(
      "On variable-length sequences (masked), BN falls behind LN",
      verdict_from_checks([check]),
      f"variable length: LN {np.mean(eval_acc['variable']['layer']):.1%}, BN "
      f"{np.mean(eval_acc['variable']['batch']):.1%} (none "
      f"{np.mean(eval_acc['variable']['none']):.1%}): LN - BN {_interval(d)}.",
      f"BN {np.mean(eval_acc['variable']['batch']):.1%} vs LN "
      f"{np.mean(eval_acc['variable']['layer']):.1%} (variable length)",
      "no published number on MNIST-1D", (check,)))
  return verdicts


def _table(eval_acc, batch_acc) -> str:
  rows = []
  for length in LENGTHS:
    for norm in RECURRENT_NORMS:
      s = summarize(eval_acc[length][norm])
      ci = f"{s.ci_low * 100:.1f} to {s.ci_high * 100:.1f}" if s.n > 1 else "—"
      vs_none = ("—" if norm == "none" else
                 _interval(paired_difference(eval_acc[length][norm],
                                             eval_acc[length]["none"])))
      if norm == "batch":
        b = summarize(batch_acc[length])
        batch_mode = f"{b.mean * 100:.1f} ± {b.std * 100:.1f}"
        gap = _interval(paired_difference(batch_acc[length], eval_acc[length]["batch"]))
      else:
        batch_mode = gap = "—"
      rows.append([LENGTH_LABELS[length] if norm == "none" else "", NORM_LABELS[norm],
                   f"{s.mean * 100:.1f} ± {s.std * 100:.1f}", ci, vs_none, batch_mode, gap])
  return runner.markdown_table(
      ["sequences", "GRU", "test accuracy % (mean ± std)", "95% CI", "Δ vs none",
       "BN batch-statistics mode %", "batch-stats - eval gap"], rows)


def _figures(ctx, curves, batch_curves, steps, stats) -> list[str]:
  names = []
  path = os.path.join(ctx.out_dir, "accuracy_curves.png")
  with plots.figure(path, "GRU on MNIST-1D: test accuracy during training (mean ± std "
                    f"over {ctx.seeds} seeds)", ncols=2, size=(5.4, 3.8)) as axes:
    for ax, length in zip(axes, LENGTHS):
      for norm in RECURRENT_NORMS:
        plots.band(ax, steps, 100 * curves[length][norm], label=NORM_LABELS[norm])
      plots.band(ax, steps, 100 * batch_curves[length], linestyle="--",
                 label="BN, batch-statistics mode")
      ax.axhline(100 * PUBLISHED_GRU, color="black", linestyle=":", linewidth=1,
                 label="published GRU (91%)")
      ax.set_ylim(max(0.0, ax.get_ylim()[0]), 100)
      plots.label(ax, x="training step (batches of 100)", y="test accuracy (%)",
                  title=LENGTH_LABELS[length])
  names.append(os.path.basename(path))

  path = os.path.join(ctx.out_dir, "bn_statistics.png")
  with plots.figure(path, "BN in the GRU cell: per-step batch statistics of its input vs "
                    "the shared running ones (test set, median over features)", ncols=2,
                    size=(5.4, 3.8)) as axes:
    positions = np.arange(stats["fixed"]["forward"]["var_ratio"].shape[-1])
    for length in LENGTHS:
      for direction, style in (("forward", "-"), ("backward", "--")):
        label = f"{length}, {direction}"
        plots.band(axes[0], positions,
                   np.maximum(stats[length][direction]["var_ratio"], VAR_RATIO_FLOOR),
                   label=label, linestyle=style)
        plots.band(axes[1], positions, stats[length][direction]["mean_offset"],
                   label=label, linestyle=style)
    axes[0].axhline(1.0, color="black", linewidth=1)
    plots.label(axes[0], x="time step (position in the sequence)",
                y=f"batch variance / running variance (floor {VAR_RATIO_FLOOR:g})",
                logy=True)
    plots.label(axes[1], x="time step (position in the sequence)",
                y="|batch mean - running mean| / running std")
  names.append(os.path.basename(path))
  return names


def run(ctx) -> Outcome:
  data = make_data(ctx.split_seed)
  print(data.describe())
  seeds = list(range(ctx.seeds))
  steps = QUICK_STEPS if ctx.quick else STEPS
  eval_every = QUICK_EVAL_EVERY if ctx.quick else EVAL_EVERY
  grid = {"variable": [0.0, 1.0]}  # setting 0: fixed length, 1: variable length
  curves, eval_acc, timing = {l: {} for l in LENGTHS}, {l: {} for l in LENGTHS}, {}
  batch_curves, batch_acc, stats, skipped = {}, {}, {}, {}
  # The legacy threefry: same-quality random numbers, several times faster compilation.
  with jax.threefry_partitionable(False):
    for norm in RECURRENT_NORMS:
      model = EitherLength(norm=norm)
      probe = batch_stats_probe(model, data.x_test, data.y_test) if norm == "batch" else None
      pop = train_population(
          Recipe(model, optax.adam(LEARNING_RATE), BATCH_SIZE, model_hparams=("variable",)),
          data, seeds=seeds, steps=steps, eval_every=eval_every, grid=grid, probe=probe,
          progress=ctx.progress, desc=f"GRU {norm} (fixed + variable, {len(seeds)} seeds)")
      timing[norm] = {"compile_seconds": pop.compile_seconds,
                      "train_seconds": pop.train_seconds}
      for i, length in enumerate(LENGTHS):
        curves[length][norm] = pop.curves["test_accuracy"][i]
        eval_acc[length][norm] = pop.final("test_accuracy")[i]
        skipped[f"{length}/{norm}"] = pop.skipped_steps[i]
        if norm == "batch":
          batch_curves[length] = pop.probes["batch_stats_accuracy"][i]
          batch_acc[length] = batch_curves[length][:, -1]
          stats[length] = {d: {k: pop.probes[f"{d}/{k}"][i][:, -1]
                               for k in ("var_ratio", "mean_offset")}
                           for d in ("forward", "backward")}
  verdicts = decide(eval_acc, batch_acc)
  summary = {}
  for length in LENGTHS:
    for norm in RECURRENT_NORMS:
      summary[f"{length}/{norm}/test_accuracy"] = summarize(eval_acc[length][norm])
      if norm != "none":
        summary[f"{length}/{norm}/minus_none"] = paired_difference(
            eval_acc[length][norm], eval_acc[length]["none"])
    summary[f"{length}/batch/batch_stats_accuracy"] = summarize(batch_acc[length])
    summary[f"{length}/batch/batch_stats_minus_eval"] = paired_difference(
        batch_acc[length], eval_acc[length]["batch"])
    summary[f"{length}/layer/minus_batch"] = paired_difference(
        eval_acc[length]["layer"], eval_acc[length]["batch"])
  per_seed = {f"{length}/{norm}": {"test_accuracy": eval_acc[length][norm],
                                   "test_accuracy_curve": curves[length][norm],
                                   "skipped_steps": skipped[f"{length}/{norm}"]}
              for length in LENGTHS for norm in RECURRENT_NORMS}
  for length in LENGTHS:
    per_seed[f"{length}/batch"]["batch_stats_accuracy"] = batch_acc[length]
    per_seed[f"{length}/batch"]["batch_stats_accuracy_curve"] = batch_curves[length]
    per_seed[f"{length}/batch"]["step_statistics"] = stats[length]
  eval_steps = np.arange(0, steps + 1, eval_every)
  config = {"data": data.describe(), "split_seed": ctx.split_seed, "seeds": ctx.seeds,
            "hidden": HIDDEN, "bidirectional": True, "optimizer": "adam",
            "learning_rate": LEARNING_RATE, "batch_size": BATCH_SIZE, "steps": steps,
            "eval_every": eval_every, "eval_steps": eval_steps, "bn_momentum": 0.99,
            "min_length": MIN_LENGTH, "length_seed": LENGTH_SEED, "margin": MARGIN,
            "min_effect": MIN_EFFECT, "timing": timing}
  fixed_none = summarize(eval_acc["fixed"]["none"])
  notes = [f"Our GRU without normalization, fixed length: {fixed_none.mean:.1%} after "
           f"{steps} steps, against {PUBLISHED_GRU:.0%} published (8000 steps).",
           "Batch-statistics mode normalizes the 1000 test sequences at each step with "
           "their own statistics at that step, as training does with each batch (one "
           "batch of 1000 rather than ten of 100, so that small-batch noise does not "
           "blur the comparison); it is not the accuracy on the training set."]
  return Outcome(config=config, per_seed=per_seed, summary=summary, verdicts=verdicts,
                 table=_table(eval_acc, batch_acc),
                 figures=_figures(ctx, curves, batch_curves, eval_steps, stats), notes=notes)
