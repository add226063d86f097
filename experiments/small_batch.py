"""small-batch: does batch norm degrade with small batches, and do GN / LN not?

The course notes: "BN degrades with small batches; use group or layer norm". Wu & He
2018 (Group Normalization, Fig. 1) trained ResNet-50 on ImageNet with 32 down to 2
images per GPU: BN's error rose from 23.6% to 34.7% while GN's stayed at 24.1-24.2%.
Here the MNIST-1D benchmark CNN is trained at batch sizes 32, 16, 8, 4 and 2, each seeing
the same number of examples with the learning rate scaled linearly with the batch, with
BN, GN, LN, batch renorm (Ioffe 2017, with its r_max/d_max schedule), ghost BN (an
optimization batch of 32 whose BN statistics come from virtual batches of the small
size: Wu & He's per-GPU statistics) and BN evaluated with precise-BN statistics
(recomputed over the training set with the final weights). One compiled program per
normalization and batch size trains all seeds.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence

import jax
import numpy as np
import optax

from jaxnorm import training

from . import plots, runner
from .data import load_dataset
from .measures.stats import paired_difference, summarize
from .models import MNIST1DCNN
from .population import Recipe, train_population
from .spec import (DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, Anchor, Check, Outcome, RunContext,
                   Spec, Verdict)

NAME = "small-batch"
DESCRIPTION = ("BN, GN, LN, batch renorm, ghost BN and precise-BN on the MNIST-1D CNN at "
               "batch sizes 32..2: test error against batch size (Wu & He 2018, Fig. 1)")

# ----------------------------------------------------------------- setup (fixed in code)
BATCHES = (32, 16, 8, 4, 2)
#: Examples seen by every run (3 epochs of MNIST-1D's 4000): 375 steps at batch 32,
#: 6000 at batch 2.
EPOCHS = 3
#: SGD with momentum 0.9; the learning rate is BASE_LR * batch / 32 (linear scaling).
BASE_LR = 0.1
MOMENTUM = 0.9
GROUPS = 5  # 25 channels in 5 groups of 5
#: Batch renorm's schedule, as fractions of a run's steps (Ioffe 2017 trains ~5k of
#: 130k+ steps as plain BN, then relaxes r_max 1 -> 3 and d_max 0 -> 5 gradually).
RENORM_WARMUP = 0.05
RENORM_RAMP_END = 0.5
R_MAX, D_MAX = 3.0, 5.0
#: Precise-BN recomputes the statistics over the training set in batches of this size
#: (the merge is exact, so the batching changes nothing but memory).
PRECISE_BATCH = 1000

#: Conditions, in the order of the table and the figure.
CONDITIONS = ("BN", "BN, precise-BN eval", "GN", "LN", "batch renorm", "ghost BN")
#: The quick smoke run: two programs (compilation is ~10 CPU s per program).
QUICK_CONDITIONS = ("BN", "BN, precise-BN eval", "batch renorm")
QUICK_BATCHES = (2,)
QUICK_STEPS = 40

# ----------------------------------------------------------------- criterion (fixed)
BN_SPREADS = 2.0  # BN's rise from batch 32 to 2 must exceed 2 seed spreads
GN_POINTS = 2.0   # GN's change within max(2 points, 1 seed spread)

SPEC = Spec(
    name=NAME,
    title="Batch norm with small batches",
    description=DESCRIPTION,
    claim=("Batch norm degrades when the batch is small, because its statistics become "
           "noisy; group norm and layer norm, which do not normalize over the batch, do "
           "not, and batch renorm repairs part of the damage."),
    anchor=Anchor(
        number=("ResNet-50 on ImageNet, top-1 error at 32/16/8/4/2 images per GPU: BN "
                "23.6, 23.7, 24.8, 27.3, 34.7%; GN 24.1, 24.2, 24.0, 24.2, 24.1%; batch "
                "renorm 26.3% at 4"),
        source=("Wu & He 2018, Group Normalization, ECCV, Fig. 1 and Table 3; batch "
                "renorm: §4 (Ioffe 2017, Batch Renormalization, NeurIPS)")),
    criterion=(
        "Test error (%) at the end of training, per seed (5 in a full run). (1) BN "
        "degrades: BN's mean error at batch 2 minus at batch 32 exceeds "
        f"{BN_SPREADS:g} seed spreads, the spread being the larger of the two sample "
        "standard deviations over seeds: holds if above 2 spreads, inconclusive between "
        "1 and 2, does not hold at 1 spread or less. (2) GN does not degrade: |GN's mean "
        f"error at 2 - at 32| <= max({GN_POINTS:g} points, one seed spread): holds, "
        "else does not hold; (3) the same test for LN (the notes name both). (4) Batch "
        "renorm helps: at batches 4 and 2, BN error - batch renorm error, paired by "
        "seed: holds if its mean is positive at both; does not hold if at either batch "
        "its 95% t-interval lies below 0 (renorm significantly worse) or its mean is "
        "<= 0 at both; inconclusive otherwise. Ghost BN and precise-BN are reported "
        "without a verdict."),
    data=("MNIST-1D (4000 train / 1000 test, generated locally): the benchmark the "
          "small CNN was made for; its convolutions pool BN's statistics over positions, "
          "as in an image CNN, so a batch of 2 still normalizes over 2 x 20 values in "
          "the first layer."),
    setup=(f"Greydanus's CNN (three Conv1D of 25 channels, stride 2, each followed by "
           f"the normalization and ReLU; Dense 10). SGD momentum {MOMENTUM}, learning "
           f"rate {BASE_LR} x batch/32, {EPOCHS} epochs ({EPOCHS * 4000} examples) at "
           f"every batch size. BN/ghost BN/batch renorm momentum 0.99; GN {GROUPS} groups "
           "of 5 channels; LN over positions and channels. Batch renorm: plain BN for "
           f"the first {RENORM_WARMUP:.0%} of steps, then r_max 1 -> {R_MAX:g} and d_max "
           f"0 -> {D_MAX:g} linearly until {RENORM_RAMP_END:.0%} of the steps. Ghost "
           "BN: batch 32 and the learning rate of batch 32, statistics over virtual "
           "batches of the small size (at 32 it is BN and shares BN's runs). Precise-BN: "
           "the BN runs, evaluated with each layer's mean and variance recomputed over "
           "the training set (sequentially, layer by layer) with the final weights."),
    limits=("A 3-layer CNN on 40-sample signals, trained 3 epochs: far from convergence "
            "(the test error is still falling at the end), so at a fixed number of "
            "examples a smaller batch, which takes more steps, can come out ahead for "
            "every normalization; Wu & He's networks were trained to convergence. Ghost "
            "BN, whose optimization batch stays at 32, is the condition that isolates the "
            "noise of small-batch statistics from this effect. One learning rate per "
            "batch size from the linear scaling rule, not tuned per normalization; 5 "
            "seeds resolve differences of a few points. The convolutions' positions make "
            "BN's statistics less noisy at batch 2 than in an MLP."),
)


# ----------------------------------------------------------------- the verdicts


def _spread(*runs) -> float:
  return max(summarize(r).std for r in runs)


def _mean(runs) -> float:
  return float(np.mean(runs))


def _bn_verdict(error) -> Verdict:
  claim = "BN's error rises as the batch shrinks from 32 to 2"
  anchor = "ResNet-50/ImageNet BN: 23.6% at 32 -> 34.7% at 2 (+11.1 pts)"
  runs = error.get("BN", {})
  if 32 not in runs or 2 not in runs:
    return Verdict(claim, INCONCLUSIVE, "BN was not trained at both batch 32 and 2.",
                   "not measured", anchor=anchor)
  rise, spread = _mean(runs[2]) - _mean(runs[32]), _spread(runs[2], runs[32])
  if not np.isfinite(rise) or not np.isfinite(spread):
    verdict = INCONCLUSIVE
  elif rise > BN_SPREADS * spread:
    verdict = HOLDS
  elif rise > spread:
    verdict = INCONCLUSIVE
  else:
    verdict = DOES_NOT_HOLD
  reason = (f"BN test error {_mean(runs[32]):.1f}% at batch 32 vs {_mean(runs[2]):.1f}% "
            f"at 2: rise {rise:+.1f} points against a seed spread of {spread:.2f} "
            f"({rise / spread if spread > 0 else float('inf'):.1f} spreads; "
            f"{BN_SPREADS:g} needed).")
  return Verdict(claim, verdict, reason,
                 f"{_mean(runs[32]):.1f}% -> {_mean(runs[2]):.1f}% ({rise:+.1f} pts)",
                 anchor=anchor, checks=(Check(
                     "BN error(2) - error(32), in seed spreads",
                     round(rise / spread, 3) if spread > 0 else None,
                     f"> {BN_SPREADS:g}", bool(rise > BN_SPREADS * spread)
                     if np.isfinite(rise) and spread > 0 else None),))


def _stable_verdict(error, condition: str, anchor: str) -> Verdict:
  claim = f"{condition}'s error does not depend on the batch size (32 vs 2)"
  runs = error.get(condition, {})
  if 32 not in runs or 2 not in runs:
    return Verdict(claim, INCONCLUSIVE, f"{condition} was not trained at both batch 32 "
                   "and 2.", "not measured", anchor=anchor)
  change, spread = _mean(runs[2]) - _mean(runs[32]), _spread(runs[2], runs[32])
  tolerance = max(GN_POINTS, spread)
  ok = bool(abs(change) <= tolerance) if np.isfinite(change) else None
  verdict = INCONCLUSIVE if ok is None else HOLDS if ok else DOES_NOT_HOLD
  reason = (f"{condition} test error {_mean(runs[32]):.1f}% at batch 32 vs "
            f"{_mean(runs[2]):.1f}% at 2: change {change:+.1f} points, tolerance "
            f"{tolerance:.2f} (max of {GN_POINTS:g} points and the seed spread "
            f"{spread:.2f}).")
  return Verdict(claim, verdict, reason,
                 f"{_mean(runs[32]):.1f}% -> {_mean(runs[2]):.1f}% ({change:+.1f} pts)",
                 anchor=anchor, checks=(Check(f"|{condition} error(2) - error(32)| (points)",
                                              round(abs(change), 3),
                                              f"<= {tolerance:.2f}", ok),))


def _renorm_verdict(error) -> Verdict:
  claim = "Batch renorm has a lower error than BN at batches 4 and 2"
  anchor = "ResNet-50/ImageNet at 4 per GPU: batch renorm 26.3% vs BN 27.3%"
  bn, brn = error.get("BN", {}), error.get("batch renorm", {})
  batches = [b for b in (4, 2) if b in bn and b in brn]
  if not batches:
    return Verdict(claim, INCONCLUSIVE, "BN and batch renorm were not both trained at "
                   "batch 4 or 2.", "not measured", anchor=anchor)
  diffs = {b: paired_difference(bn[b], brn[b]) for b in batches}
  checks = tuple(Check(f"BN - batch renorm error at batch {b} (points), mean [95% CI]",
                       f"{d.mean:+.2f} [{d.ci_low:+.2f}, {d.ci_high:+.2f}]", "mean > 0",
                       bool(d.mean > 0) if np.isfinite(d.mean) else None)
                 for b, d in diffs.items())
  if any(not np.isfinite(d.mean) for d in diffs.values()):
    verdict = INCONCLUSIVE
  elif any(d.ci_high < 0 for d in diffs.values()) or all(
      d.mean <= 0 for d in diffs.values()):
    verdict = DOES_NOT_HOLD
  elif len(batches) == 2 and all(d.mean > 0 for d in diffs.values()):
    verdict = HOLDS
  else:
    verdict = INCONCLUSIVE
  parts = [f"at batch {b}: BN {_mean(bn[b]):.1f}% vs renorm {_mean(brn[b]):.1f}% "
           f"(BN - renorm {d.mean:+.2f} pts, 95% CI [{d.ci_low:+.2f}, {d.ci_high:+.2f}])"
           for b, d in diffs.items()]
  return Verdict(claim, verdict, "; ".join(parts) + ".",
                 ", ".join(f"{b}: {_mean(brn[b]):.1f}% vs BN {_mean(bn[b]):.1f}%"
                           for b in batches), anchor=anchor, checks=checks)


def decide(error: Mapping[str, Mapping[int, Sequence[float]]]) -> list[Verdict]:
  """The four verdicts from per-seed test errors in percent.

  Args:
    error: ``{condition: {batch size: [error per seed]}}``; conditions as in
      :data:`CONDITIONS`; the same seeds, in the same order, in every list.
  """
  return [_bn_verdict(error),
          _stable_verdict(error, "GN", "ResNet-50/ImageNet GN: 24.1% at 32, 24.1% at 2"),
          _stable_verdict(error, "LN", "Wu & He: LN 25.3% at 32 (not run at small batches)"),
          _renorm_verdict(error)]


# ----------------------------------------------------------------- models and training


@dataclasses.dataclass(frozen=True)
class Run:
  """One compiled program: a normalization trained at one batch size."""

  condition: str
  batch: int


def renorm_limits(steps: int):
  """Batch renorm's ``(r_max, d_max)`` schedules over a run of ``steps`` steps.

  Example:
    >>> r_max, d_max = renorm_limits(1000)
    >>> float(r_max(0)), float(r_max(500)), float(d_max(1000))
    (1.0, 3.0, 5.0)
  """
  start = int(RENORM_WARMUP * steps)
  ramp = max(int(RENORM_RAMP_END * steps) - start, 1)
  return (optax.linear_schedule(1.0, R_MAX, ramp, start),
          optax.linear_schedule(0.0, D_MAX, ramp, start))


def make_model(condition: str, batch: int, steps: int) -> MNIST1DCNN:
  """The CNN with the normalization of ``condition`` for a run at ``batch``."""
  if condition in ("BN", "BN, precise-BN eval"):
    return MNIST1DCNN(norm="batch")
  if condition == "GN":
    return MNIST1DCNN(norm="group", norm_options=(("num_groups", GROUPS),))
  if condition == "LN":
    return MNIST1DCNN(norm="layer", norm_options=(("reduction_axes", (-2, -1)),
                                                  ("feature_axes", -1)))
  if condition == "batch renorm":
    r_max, d_max = renorm_limits(steps)
    return MNIST1DCNN(norm="batch_renorm", norm_options=(("r_max", r_max),
                                                         ("d_max", d_max)))
  if condition == "ghost BN":
    return MNIST1DCNN(norm="ghost_batch", norm_options=(("virtual_batch_size", batch),))
  raise ValueError(f"small_batch.make_model: condition must be one of {CONDITIONS}; got "
                   f"{condition!r}.")


def optimization_batch(condition: str, batch: int) -> int:
  """Examples per step: ghost BN always steps on 32 (its statistics use ``batch``)."""
  return max(BATCHES) if condition == "ghost BN" else batch


def plan(quick: bool) -> list[Run]:
  """The compiled programs of a run (precise-BN reuses the BN runs; ghost BN at 32 is BN)."""
  conditions = QUICK_CONDITIONS if quick else CONDITIONS
  batches = QUICK_BATCHES if quick else BATCHES
  return [Run(c, b) for c in conditions for b in batches
          if c != "BN, precise-BN eval" and not (c == "ghost BN" and b == max(BATCHES))]


def train_run(ctx: RunContext, data, run: Run):
  """Trains every seed of one condition at one batch size (one program)."""
  batch = optimization_batch(run.condition, run.batch)
  if ctx.quick:
    steps, eval_every = QUICK_STEPS, QUICK_STEPS
  else:
    steps = EPOCHS * len(data.x_train) // batch
    eval_every = steps // EPOCHS
  model = make_model(run.condition, run.batch, steps)
  tx = optax.sgd(BASE_LR * batch / max(BATCHES), momentum=MOMENTUM)
  return train_population(Recipe(model, tx, batch), data, seeds=list(range(ctx.seeds)),
                          steps=steps, eval_every=eval_every, keep_states=True,
                          progress=ctx.progress, desc=f"{run.condition} @ {run.batch}")


def precise_errors(pop, data) -> list[float]:
  """Test error (%) of each seed's BN network with precise-BN statistics."""
  batches = [data.x_train[i:i + PRECISE_BATCH]
             for i in range(0, len(data.x_train), PRECISE_BATCH)]
  errors = []
  for seed_index in range(len(pop.seeds)):
    state = pop.state(0, seed_index)
    stats = training.precise_batch_stats(state.apply_fn, state.variables, batches)
    logits = state.apply_fn({"params": state.params, "batch_stats": stats}, data.x_test,
                            train=False)
    errors.append(100.0 * float(np.mean(np.argmax(logits, -1) != data.y_test)))
  return errors


# ----------------------------------------------------------------- figures and table


def _error_figure(path, error, seeds: int):
  with plots.figure(path, f"MNIST-1D CNN: test error against batch size ({seeds} seeds, "
                    "band: ± std)", size=(7.0, 4.6)) as axes:
    ax = axes[0]
    for condition in CONDITIONS:
      runs = error.get(condition, {})
      batches = sorted(runs, reverse=True)
      if not batches:
        continue
      values = np.array([runs[b] for b in batches]).T  # (seeds, batches)
      plots.band(ax, batches, values, label=condition, marker="o",
                 linestyle="--" if condition in ("BN, precise-BN eval", "ghost BN")
                 else "-")
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(BATCHES), labels=[str(b) for b in BATCHES])
    ax.invert_xaxis()
    plots.label(ax, x="batch size (examples per step; log scale)",
                y="test error (%)")


def _curves_figure(path, populations, seeds: int):
  batches = sorted({run.batch for run in populations}, reverse=True)
  with plots.figure(path, f"Test error during training by batch size ({seeds} seeds, "
                    "band: ± std)", ncols=len(batches), size=(3.6, 3.4)) as axes:
    for ax, batch in zip(axes, batches):
      for run, pop in populations.items():
        if run.batch == batch:
          plots.band(ax, pop.steps * optimization_batch(run.condition, batch) / 4000,
                     100 * (1 - pop.curves["test_accuracy"][0]), label=run.condition)
      plots.label(ax, x="epochs (examples seen / 4000)", y="test error (%)",
                  title=f"batch {batch}")


def _table(error) -> str:
  batches = sorted({b for runs in error.values() for b in runs}, reverse=True)
  rows = [[condition] + [summarize(error[condition][b]).format(1)
                         if b in error[condition] else "-" for b in batches]
          for condition in CONDITIONS if condition in error]
  return runner.markdown_table(["test error (%) at batch"] + [str(b) for b in batches],
                               rows)


# ----------------------------------------------------------------- run


def run(ctx: RunContext) -> Outcome:
  data = load_dataset("mnist1d")
  populations, error = {}, {}
  for planned in ctx.bar(plan(ctx.quick), desc="small-batch programs"):
    pop = train_run(ctx, data, planned)
    populations[planned] = pop
    error.setdefault(planned.condition, {})[planned.batch] = [
        100.0 * (1.0 - float(a)) for a in pop.final("test_accuracy")[0]]
    if planned.condition == "BN":
      error.setdefault("BN, precise-BN eval", {})[planned.batch] = precise_errors(pop, data)
  if "ghost BN" in error and max(BATCHES) in error.get("BN", {}):
    error["ghost BN"][max(BATCHES)] = list(error["BN"][max(BATCHES)])
  error = {c: dict(sorted(error[c].items(), reverse=True)) for c in CONDITIONS if c in error}
  verdicts = decide(error)
  figures = ["error_vs_batch.png", "error_curves.png"]
  _error_figure(os.path.join(ctx.out_dir, figures[0]), error, ctx.seeds)
  _curves_figure(os.path.join(ctx.out_dir, figures[1]), populations, ctx.seeds)
  compile_seconds = sum(p.compile_seconds for p in populations.values())
  train_seconds = sum(p.train_seconds for p in populations.values())
  skipped = {f"{r.condition} @ {r.batch}": int(p.skipped_steps.sum())
             for r, p in populations.items()}
  return Outcome(
      config={"batches": BATCHES, "epochs": EPOCHS, "base_lr": BASE_LR,
              "momentum": MOMENTUM, "groups": GROUPS, "renorm_warmup": RENORM_WARMUP,
              "renorm_ramp_end": RENORM_RAMP_END, "r_max": R_MAX, "d_max": D_MAX,
              "conditions": list(error),
              "steps": {f"{r.condition} @ {r.batch}": int(p.steps[-1])
                        for r, p in populations.items()},
              "compile_seconds": compile_seconds, "train_seconds": train_seconds},
      per_seed={"test_error_percent": {c: {str(b): v for b, v in runs.items()}
                                       for c, runs in error.items()},
                "skipped_steps": skipped},
      summary={c: {str(b): summarize(v) for b, v in runs.items()}
               for c, runs in error.items()},
      verdicts=verdicts, table=_table(error), figures=figures,
      notes=[f"{len(populations)} compiled programs: {compile_seconds:.1f} s compiling, "
             f"{train_seconds:.1f} s training; steps rejected by the non-finite guard: "
             f"{sum(skipped.values())}.",
             "Ghost BN at batch 32 is BN at batch 32 (one virtual batch): its entry "
             "there repeats BN's runs."])
