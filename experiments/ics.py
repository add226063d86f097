"""ics: does BN help by reducing internal covariate shift? Santurkar et al. 2018 at CPU scale.

Three versions of one deep ReLU MLP train on MNIST-1D with plain SGD: (a) without BN,
(b) with BN before each ReLU, (c) "noisy BN": after each BN, noise with a non-zero mean
and a non-unit variance is added to every activation, its mean and variance drawn
afresh for every unit at every step, so that each layer's input distribution moves
more than it does without BN (Santurkar et al.'s Fig. 2 setup). If BN worked by keeping
layer inputs stable, the noise should take its advantage away.

At every evaluation a probe measures, on fixed batches:

- the distribution shift of every hidden layer's pre-activation (each unit's mean and
  standard deviation, moved between evaluations; :func:`~experiments.measures.ics.
  distribution_shift`);
- Santurkar et al.'s gradient-based internal covariate shift (Definition 2.1): the
  change of each layer's weight gradient when the earlier layers take this step's
  update (:func:`~experiments.measures.ics.gradient_shift`).
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
from jaxnorm import training

from . import plots, runner
from .data import load_dataset
from .measures.ics import distribution_shift, gradient_shift, unit_moments
from .measures.speed import geometric_summary
from .measures.stats import paired_difference, summarize
from .population import Recipe, train_population
from .spec import (DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, Anchor, Check, Outcome, RunContext,
                   Spec, Verdict)

NAME = "ics"
DESCRIPTION = ("Santurkar et al. 2018: no BN / BN / noisy BN on a deep MLP: accuracy, "
               "layer-input distribution shift, gradient-based ICS")

# ----------------------------------------------------------------- setup (fixed in code)
DATA = "mnist1d"
HIDDEN = (128,) * 8
KERNEL_INIT = nn.initializers.lecun_normal()   # Flax's default Dense initializer
BATCH_SIZE = 100
LEARNING_RATE = 0.05
STEPS, EVAL_EVERY = 2000, 100
QUICK_STEPS, QUICK_EVAL_EVERY = 100, 50
QUICK_HIDDEN = (32,) * 3   # the smoke run: a smaller net compiles in a fraction of the time
NOISE_MEAN = 0.5           # per step and unit, the noise mean mu ~ U(-0.5, 0.5)
NOISE_STD = 1.0            # per step and unit, the noise std sigma ~ U(0, 1)
SHIFT_PROBE = 500          # training examples whose pre-activations are tracked
VARIANTS = {"no BN": (0.0, 0.0), "BN": (1.0, 0.0), "noisy BN": (1.0, 1.0)}  # (BN, noise)

# ----------------------------------------------------------------- criterion (fixed)
FINAL_FRACTION = 0.25      # final accuracy: mean over the last 25% of evaluations
MEASURE_START_FRACTION = 0.1  # shifts averaged over evaluations after 10% of training
MIN_ADVANTAGE = 0.01       # BN must beat no-BN by >= 1 point (and its interval exclude 0)
RECOVERY = 0.5             # "most of the advantage": noisy BN keeps more than half
SHIFT_RATIO = 1.0          # "larger shift": noisy / no-BN ratio's interval above 1

SPEC = Spec(
    name=NAME,
    title="Internal covariate shift: no BN, BN and noisy BN (Santurkar et al. 2018)",
    description=DESCRIPTION,
    claim=("Batch norm helps training because it reduces internal covariate shift: it "
           "keeps the distribution of each layer's inputs stable while the earlier layers "
           "change (the notes' main explanation of why BN works)."),
    anchor=Anchor(
        number=("VGG on CIFAR-10: a network with noisy BN (noise of non-zero mean and "
                "non-unit variance after each BN, resampled every step) trains about as "
                "well as with standard BN and better than without, although its layers' "
                "input distributions are less stable than without BN (Fig. 2); by the "
                "gradient-based ICS measure (Definition 2.1), BN does not reduce ICS and "
                "sometimes increases it (Fig. 3)"),
        source=("Santurkar, Tsipras, Ilyas & Madry 2018, How Does Batch Normalization Help "
                "Optimization?, NeurIPS, §2.1 Fig. 2 and §2.2 Fig. 3")),
    criterion=(
        f"Per seed ({'5 seeds in a full run'}), final test accuracy = mean over the last "
        f"{FINAL_FRACTION:.0%} of evaluations; distribution shift = mean over hidden layers "
        f"and over the evaluations after the first {MEASURE_START_FRACTION:.0%} of training of "
        "the relative per-unit moment shift between consecutive evaluations (Gaussian "
        "2-Wasserstein distance of each unit's mean/std, over the layer's RMS std). "
        "Verdict 1 (the ICS explanation), three checks on 95% t-intervals over seeds: "
        f"(i) BN has an advantage: BN - no-BN accuracy, paired, interval above 0 and mean >= "
        f"{MIN_ADVANTAGE:.0%} (else inconclusive: nothing to explain); (ii) the noise makes "
        "the shift larger: geometric-mean ratio noisy-BN / no-BN shift with its interval "
        f"above {SHIFT_RATIO:g} (else inconclusive: the test has no power); (iii) per seed "
        f"d = acc(noisy) - acc(no BN) - {RECOVERY:g} x (acc(BN) - acc(no BN)): if d's "
        f"interval lies above 0, noisy BN keeps more than {RECOVERY:.0%} of BN's advantage "
        "while its inputs shift more, and the explanation does not hold (Santurkar's "
        f"finding); if it lies below 0, the noise removes most of the advantage and the "
        "explanation holds; otherwise inconclusive. Verdict 2 (BN reduces ICS by "
        f"Santurkar's Definition 2.1): per seed the mean over layers 2..{len(HIDDEN) + 1} and "
        "the evaluations "
        "after the first 10% of the cosine between G and G' and of ||G - G'|| / ||G||; "
        "holds if the paired BN - no-BN cosine interval lies above 0 and the relative-"
        "distance interval below 0; does not hold if the cosine interval lies below 0 or "
        "the distance interval above 0 (BN increases ICS); otherwise inconclusive."),
    data=("MNIST-1D (4000 train / 1000 test, 40-long signals, generated locally): a task "
          "on which an MLP is far from perfect, so a difference in how well the networks "
          "optimize shows up in accuracy, and small "
          f"enough for 3 variants x 5 seeds of a deep MLP, {STEPS} steps each, probed every "
          f"{EVAL_EVERY} steps, on 2 cores."),
    setup=(f"MLP: {len(HIDDEN)} hidden layers of {HIDDEN[0]} units, Dense (LeCun-normal "
           "kernels, Flax's default) -> "
           "[BN] -> [noise] -> ReLU, then Dense 10. Noisy BN: after each BN, in training "
           "only, every activation gets y + eps, eps ~ N(mu, sigma^2) i.i.d. over examples, "
           f"with mu ~ U(-{NOISE_MEAN:g}, {NOISE_MEAN:g}) and sigma ~ U(0, {NOISE_STD:g}) "
           "drawn per unit at every step (BN's output has unit scale at initialization, so "
           "the mean moves by up to half a standard deviation each step); evaluation without "
           f"noise, BN on running statistics. Plain SGD, learning rate {LEARNING_RATE:g} for "
           f"all three, batch {BATCH_SIZE}, {STEPS:,} steps ({STEPS * BATCH_SIZE // 4000} "
           f"epochs), evaluation every {EVAL_EVERY} steps. Probe at each evaluation: the "
           f"pre-activations (after BN and noise) of the {len(HIDDEN)} hidden layers on "
           f"{SHIFT_PROBE} "
           "fixed training inputs in training mode with that step's kind of noise; and "
           f"G, G' for each Dense kernel+bias on a fixed training batch of {BATCH_SIZE}, "
           "with the earlier layers (Dense and BN parameters) moved by one SGD step on that "
           "batch, the noise held fixed between G and G'. The three variants train in one "
           "compiled program: BN is selected and the noise scaled by traced 0/1 levels (the "
           "no-BN net carries BN parameters that get no gradient)."),
    limits=(f"A {len(HIDDEN)}x{HIDDEN[0]} MLP on a 4000-example 1-D task, {STEPS} steps, one "
            "learning rate, instead "
            "of VGG on CIFAR-10; one noise recipe (our constants: the paper's appendix "
            "gives its own, which we did not copy). The noise also acts as a regularizer "
            "and a source of gradient noise, not only as a distribution shift, so a "
            "noisy-BN deficit cannot be blamed on the shift alone. Shift is measured "
            "between evaluations 100 steps apart, not step to step. BN's advantage depends on "
            "the setup and was looked for in a pilot of no-BN and BN only (2 seeds; noisy BN "
            "had run only in 100-step smoke runs of the code before the criterion was fixed): a 6x128 MLP with He-normal "
            "kernels showed none (test accuracy 60% without BN, 57% with, at learning rate "
            "0.05 and 3000 steps; the plain net also reached the lower training loss), so "
            "the experiment uses 8 layers and Flax's default LeCun-normal kernels, under "
            "which the net without BN trains more slowly (pilot: training loss 0.52 vs "
            "0.06, test accuracy 56% vs 60% after 2000 steps). Final accuracy is averaged "
            "over the last 25% of evaluations because single evaluations of the no-BN net "
            "jump by several points."),
)


# ----------------------------------------------------------------- the verdicts


def _interval_side(summary, threshold: float) -> bool | None:
  """True if the interval lies above ``threshold``, False if below, None if it straddles."""
  if summary.ci_low > threshold:
    return True
  if summary.ci_high < threshold:
    return False
  return None


def _finite(*arrays) -> bool:
  return all(np.all(np.isfinite(np.asarray(a, np.float64))) for a in arrays)


def _ics_explanation_verdict(acc_none, acc_batch, acc_noisy, shift_none,
                             shift_noisy) -> Verdict:
  claim = "BN's advantage comes from reducing the shift of layer-input distributions"
  anchor = "noisy BN trains about as well as BN despite less stable distributions (Fig. 2)"
  acc_none, acc_batch, acc_noisy = (np.asarray(a, np.float64)
                                    for a in (acc_none, acc_batch, acc_noisy))
  if not _finite(acc_none, acc_batch, acc_noisy, shift_none, shift_noisy) or np.any(
      np.asarray(shift_none) <= 0) or np.any(np.asarray(shift_noisy) <= 0):
    return Verdict(claim, INCONCLUSIVE, "An accuracy or a shift is not finite (or a shift "
                   "is 0): a run diverged or a layer is constant.", "not measurable",
                   anchor, (Check("numbers finite", None, "all seeds", None),))
  gain = paired_difference(acc_batch, acc_none)
  advantage = Check("BN - no-BN accuracy, 95% interval",
                    [round(gain.ci_low, 4), round(gain.ci_high, 4)],
                    f"above 0, mean >= {MIN_ADVANTAGE:g}",
                    bool(gain.ci_low > 0 and gain.mean >= MIN_ADVANTAGE))
  ratio = geometric_summary(np.asarray(shift_noisy, np.float64) /
                            np.asarray(shift_none, np.float64))
  larger = Check("shift noisy BN / no BN, 95% interval of the geometric mean",
                 [round(ratio.ci_low, 3), round(ratio.ci_high, 3)], f"above {SHIFT_RATIO:g}",
                 bool(ratio.ci_low > SHIFT_RATIO))
  kept = paired_difference(acc_noisy - acc_none, RECOVERY * (acc_batch - acc_none))
  recovered = float(np.mean(acc_noisy - acc_none) / np.mean(acc_batch - acc_none)) if (
      np.mean(acc_batch - acc_none) != 0) else float("nan")
  side = _interval_side(kept, 0.0)
  most = Check(f"acc(noisy) - acc(no BN) - {RECOVERY:g} x BN's gain, 95% interval",
               [round(kept.ci_low, 4), round(kept.ci_high, 4)],
               "above 0: noisy BN keeps most of the gain; below 0: it loses it", side)
  checks = (advantage, larger, most)
  numbers = (f"test accuracy no BN {np.mean(acc_none):.1%}, BN {np.mean(acc_batch):.1%}, "
             f"noisy BN {np.mean(acc_noisy):.1%} (BN's gain {gain.mean:+.1%}, 95% CI "
             f"[{gain.ci_low:+.1%}, {gain.ci_high:+.1%}]; noisy BN keeps "
             f"{recovered:.0%} of it); distribution shift noisy BN / no BN "
             f"{ratio.mean:.2f}x [{ratio.ci_low:.2f}, {ratio.ci_high:.2f}]")
  ours = (f"noisy BN keeps {recovered:.0%} of BN's +{gain.mean:.1%} gain with "
          f"{ratio.mean:.1f}x the no-BN shift")
  if not advantage.passed:
    return Verdict(claim, INCONCLUSIVE, f"BN shows no clear advantage to explain: {numbers}.",
                   ours, anchor, checks)
  if not larger.passed:
    return Verdict(claim, INCONCLUSIVE, "The noise does not make the layer inputs shift "
                   f"clearly more than without BN, so the test has no power: {numbers}.",
                   ours, anchor, checks)
  if side is True:
    return Verdict(claim, DOES_NOT_HOLD, "Noisy BN keeps most of BN's advantage although its "
                   f"layer inputs shift more than without BN: {numbers}.", ours, anchor, checks)
  if side is False:
    return Verdict(claim, HOLDS, "Making the layer inputs shift takes most of BN's advantage "
                   f"away: {numbers}.", ours, anchor, checks)
  return Verdict(claim, INCONCLUSIVE, f"Whether noisy BN keeps more than {RECOVERY:.0%} of "
                 f"BN's advantage is within the seed spread: {numbers}.", ours, anchor, checks)


def _gradient_ics_verdict(cos_none, cos_batch, rel_none, rel_batch) -> Verdict:
  claim = "BN reduces ICS as measured by the change of a layer's gradient (Def. 2.1)"
  anchor = "BN does not reduce ICS by this measure, sometimes increases it (Fig. 3)"
  if not _finite(cos_none, cos_batch, rel_none, rel_batch):
    return Verdict(claim, INCONCLUSIVE, "A gradient-shift number is not finite.",
                   "not measurable", anchor, (Check("numbers finite", None, "all seeds", None),))
  cos = paired_difference(cos_batch, cos_none)
  rel = paired_difference(rel_batch, rel_none)
  cos_side, rel_side = _interval_side(cos, 0.0), _interval_side(rel, 0.0)
  checks = (Check("cosine(G, G') BN - no BN, 95% interval",
                  [round(cos.ci_low, 4), round(cos.ci_high, 4)], "above 0", cos_side),
            Check("||G - G'|| / ||G|| BN - no BN, 95% interval",
                  [round(rel.ci_low, 4), round(rel.ci_high, 4)], "below 0",
                  None if rel_side is None else not rel_side))
  numbers = (f"cosine(G, G') {np.mean(cos_none):.3f} without BN, {np.mean(cos_batch):.3f} "
             f"with (difference 95% CI [{cos.ci_low:+.3f}, {cos.ci_high:+.3f}]); relative "
             f"distance {np.mean(rel_none):.3f} vs {np.mean(rel_batch):.3f} ([{rel.ci_low:+.3f}"
             f", {rel.ci_high:+.3f}])")
  ours = (f"cos {np.mean(cos_none):.3f} no BN vs {np.mean(cos_batch):.3f} BN; rel. dist. "
          f"{np.mean(rel_none):.3f} vs {np.mean(rel_batch):.3f}")
  if cos_side is True and rel_side is False:
    return Verdict(claim, HOLDS, f"With BN a layer's gradient changes less: {numbers}.", ours,
                   anchor, checks)
  if cos_side is False or rel_side is True:
    return Verdict(claim, DOES_NOT_HOLD, "With BN a layer's gradient changes as much or more "
                   f"when the earlier layers update: {numbers}.", ours, anchor, checks)
  return Verdict(claim, INCONCLUSIVE, f"The difference is within the seed spread: {numbers}.",
                 ours, anchor, checks)


def decide(numbers: Mapping[str, Sequence[float]]) -> list[Verdict]:
  """The two verdicts from per-seed numbers (the criterion of :data:`SPEC`).

  Args:
    numbers: per seed: ``acc_none`` / ``acc_batch`` / ``acc_noisy`` (final test
      accuracy), ``shift_none`` / ``shift_noisy`` (distribution shift), ``cos_none`` /
      ``cos_batch`` (mean cosine between G and G'), ``rel_none`` / ``rel_batch`` (mean
      relative distance ||G - G'|| / ||G||).

  Returns:
    ``[ICS-explanation verdict, gradient-ICS verdict]``.

  Example:
    >>> explanation, gradient = decide({
    ...     "acc_none": [0.50, 0.52, 0.51], "acc_batch": [0.70, 0.71, 0.69],
    ...     "acc_noisy": [0.68, 0.69, 0.66], "shift_none": [0.1, 0.12, 0.11],
    ...     "shift_noisy": [0.5, 0.6, 0.55], "cos_none": [0.9, 0.91, 0.9],
    ...     "cos_batch": [0.8, 0.82, 0.81], "rel_none": [0.2, 0.21, 0.2],
    ...     "rel_batch": [0.4, 0.42, 0.41]})
    >>> explanation.verdict, gradient.verdict
    ('does not hold', 'does not hold')
  """
  return [_ics_explanation_verdict(numbers["acc_none"], numbers["acc_batch"],
                                   numbers["acc_noisy"], numbers["shift_none"],
                                   numbers["shift_noisy"]),
          _gradient_ics_verdict(numbers["cos_none"], numbers["cos_batch"],
                                numbers["rel_none"], numbers["rel_batch"])]


# ----------------------------------------------------------------- model


def covariate_noise(key: jax.Array, shape: Sequence[int], *, mean: float = NOISE_MEAN,
                    std: float = NOISE_STD) -> jax.Array:
  r"""Noise of a random non-zero mean and non-unit variance per unit, i.i.d. over examples.

  .. math::
    \varepsilon_{lnu} \sim \mathcal N(\mu_{lu}, \sigma_{lu}^2), \quad
    \mu_{lu} \sim U(-\mathrm{mean}, \mathrm{mean}), \quad \sigma_{lu} \sim U(0, \mathrm{std})

  for ``shape = (..., N, U)``: one :math:`(\mu, \sigma)` per unit :math:`u` and leading
  index :math:`l` (e.g. a layer), shared by the ``N`` examples; a new key (every step)
  draws new ones. Two random draws whatever the shape (cheap to compile).

  Example:
    >>> import jax
    >>> eps = covariate_noise(jax.random.key(0), (2, 4000, 3))
    >>> eps.shape, bool(abs(eps.mean(1)).max() <= 0.55), bool(eps.std(1).max() <= 1.05)
    ((2, 4000, 3), True, True)
  """
  if len(shape) < 2:
    raise ValueError(f"covariate_noise: shape must be (..., examples, units); got {shape}.")
  key_moments, key_eps = jax.random.split(key)
  moments = jax.random.uniform(key_moments, (2, *shape[:-2], 1, shape[-1]))
  mu, sigma = (2.0 * moments[0] - 1.0) * mean, moments[1] * std
  return mu + sigma * jax.random.normal(key_eps, tuple(shape))


class NoisyBNMLP(nn.Module):
  """Dense -> [BatchNorm] -> [noise] -> ReLU per hidden layer, then a Dense classifier.

  Whether BN is used and how much noise follows it are call arguments, so they may be
  traced and the three variants of the experiment share one compiled program:
  ``batch_norm`` (0 or 1) selects the BN output or the Dense output (with 0 the BN
  parameters get no gradient and the network is a plain MLP); ``noise`` scales the
  noise added after BN in training mode: :func:`covariate_noise` from the rng stream
  ``'noise'``, or the given ``eps`` of shape ``(layers, N, max width)``. Every hidden
  pre-activation is sown into ``intermediates/preactivation``.

  Attributes:
    hidden: widths of the hidden layers.
    num_classes: outputs of the classifier.

  Example:
    >>> import jax, numpy as np
    >>> model = NoisyBNMLP(hidden=(8, 8))
    >>> x = np.ones((4, 5), np.float32)
    >>> variables = model.init(jax.random.key(0), x, train=False)
    >>> sorted(variables["params"])
    ['BatchNorm_0', 'BatchNorm_1', 'Dense_0', 'Dense_1', 'Dense_2']
    >>> model.apply(variables, x, train=True, noise=1.0, mutable=["batch_stats"],
    ...             rngs={"noise": jax.random.key(1)})[0].shape
    (4, 10)
  """

  hidden: Sequence[int] = HIDDEN
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool, batch_norm=1.0, noise=0.0, eps=None):
    x = x.reshape((x.shape[0], -1))
    if train and eps is None:  # every layer's noise in one draw
      eps = covariate_noise(self.make_rng("noise"),
                            (len(self.hidden), x.shape[0], max(self.hidden)))
    for layer, width in enumerate(self.hidden):
      x = nn.Dense(width, kernel_init=KERNEL_INIT)(x)
      normalized = jaxnorm.BatchNorm(use_running_average=not train)(x)
      if train:
        normalized = normalized + noise * eps[layer, :, :width]
      x = jnp.where(batch_norm > 0, normalized, x)
      self.sow("intermediates", "preactivation", x)
      x = nn.relu(x)
    return nn.Dense(self.num_classes, kernel_init=KERNEL_INIT)(x)


def layer_groups(model: NoisyBNMLP) -> list[list[str]]:
  """The layers in forward order for :func:`gradient_shift` (Dense first in each group).

  Example:
    >>> layer_groups(NoisyBNMLP(hidden=(8,)))
    [['Dense_0', 'BatchNorm_0'], ['Dense_1']]
  """
  groups = [[f"Dense_{i}", f"BatchNorm_{i}"] for i in range(len(model.hidden))]
  return groups + [[f"Dense_{len(model.hidden)}"]]


# ----------------------------------------------------------------- training


def make_probe(model: NoisyBNMLP, x_shift: jax.Array, x_batch: jax.Array,
               y_batch: jax.Array):
  """``probe(state, hyper)``: per-layer unit moments and the gradient shift (see module).

  One noise draw per evaluation serves both measurements (the gradient batch uses its
  first rows), so G and G' see the same noise.
  """
  groups = layer_groups(model)
  n_batch = x_batch.shape[0]

  def probe(state, hyper):
    options = {"batch_norm": hyper["batch_norm"], "noise": hyper["noise"]}
    eps = covariate_noise(jax.random.fold_in(state.step_key(), 1),
                          (len(model.hidden), max(x_shift.shape[0], n_batch),
                           max(model.hidden)))
    _, sown = model.apply(state.variables, x_shift, train=True, eps=eps[:, :len(x_shift)],
                          mutable=["batch_stats", "intermediates"], **options)
    moments = jnp.stack([unit_moments(h) for h in sown["intermediates"]["preactivation"]])

    def loss_fn(params):
      outputs, _ = model.apply({"params": params, "batch_stats": state.batch_stats},
                               x_batch, train=True, eps=eps[:, :n_batch],
                               mutable=["batch_stats"], **options)
      return training.classification_loss(outputs, y_batch)[0]

    new_params = state.apply_gradients(grads=jax.grad(loss_fn)(state.params)).params
    shift = gradient_shift(loss_fn, state.params, new_params, groups)
    return {"moments": moments, "cosine": shift.cosine, "relative_l2": shift.relative_l2,
            "l2": shift.l2}

  return probe


def _train(ctx: RunContext, data, hidden, steps: int, eval_every: int):
  """Every variant and seed in one compiled program (settings in :data:`VARIANTS` order)."""
  model = NoisyBNMLP(hidden=hidden, num_classes=data.num_classes)
  grid = {"batch_norm": [bn for bn, _ in VARIANTS.values()],
          "noise": [noise for _, noise in VARIANTS.values()]}
  recipe = Recipe(model, optax.sgd(LEARNING_RATE), BATCH_SIZE,
                  model_hparams=("batch_norm", "noise"))

  def step_factory(hyper):
    return training.make_train_step(rng_collections=("noise",), train_kwargs={
        "train": True, "batch_norm": hyper["batch_norm"], "noise": hyper["noise"]})

  x_train, y_train = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  probe = make_probe(model, x_train[:SHIFT_PROBE], x_train[-BATCH_SIZE:],
                     y_train[-BATCH_SIZE:])
  return train_population(recipe, data, seeds=list(range(ctx.seeds)), steps=steps,
                          eval_every=eval_every, grid=grid, step_factory=step_factory,
                          probe=probe, progress=ctx.progress,
                          desc=f"{len(VARIANTS)} variants x {ctx.seeds} seeds")


def _final(curves: np.ndarray) -> np.ndarray:
  """Mean over the last FINAL_FRACTION of evaluations (step 0 excluded), ``(..., S)``."""
  last = max(1, int(round(FINAL_FRACTION * (curves.shape[-1] - 1))))
  return curves[..., -last:].mean(-1)


def measure(pop) -> dict:
  """Per variant and seed: final accuracy, shift curves and gradient-shift curves."""
  out = {}
  for m, label in enumerate(VARIANTS):
    steps = pop.steps
    start = int(np.searchsorted(steps, MEASURE_START_FRACTION * steps[-1]))
    moments = np.moveaxis(pop.probes["moments"][m], 2, 1)       # (S, L, E, 2, U)
    shift_curve = distribution_shift(moments)                    # (S, L, E-1)
    cos = pop.probes["cosine"][m][..., 1:]                       # (S, E, L-1): layers 2..
    rel = pop.probes["relative_l2"][m][..., 1:]
    l2 = pop.probes["l2"][m][..., 1:]
    out[label] = {
        "final_accuracy": _final(pop.curves["test_accuracy"][m]),
        "final_train_loss": _final(pop.curves["train_loss"][m]),
        "shift_curve": shift_curve.mean(1),                      # (S, E-1)
        "shift_per_layer": shift_curve[..., max(start, 1) - 1:].mean(-1),   # (S, L)
        "shift": shift_curve[..., max(start, 1) - 1:].mean((-1, -2)),
        "cos_curve": cos.mean(-1), "rel_curve": rel.mean(-1), "l2_curve": l2.mean(-1),
        "cos": cos[:, start:].mean((-1, -2)), "rel": rel[:, start:].mean((-1, -2)),
        "l2": l2[:, start:].mean((-1, -2)),
        "test_accuracy_curve": pop.curves["test_accuracy"][m],
        "train_loss_curve": pop.curves["train_loss"][m],
        "skipped_steps": pop.skipped_steps[m],
    }
  return out


def decide_inputs(measured) -> dict:
  """The per-seed numbers :func:`decide` reads, from :func:`measure`'s output."""
  return {"acc_none": measured["no BN"]["final_accuracy"],
          "acc_batch": measured["BN"]["final_accuracy"],
          "acc_noisy": measured["noisy BN"]["final_accuracy"],
          "shift_none": measured["no BN"]["shift"],
          "shift_noisy": measured["noisy BN"]["shift"],
          "cos_none": measured["no BN"]["cos"], "cos_batch": measured["BN"]["cos"],
          "rel_none": measured["no BN"]["rel"], "rel_batch": measured["BN"]["rel"]}


# ----------------------------------------------------------------- figures and table

COLORS = {"no BN": "tab:blue", "BN": "tab:orange", "noisy BN": "tab:green"}


def _accuracy_figure(path, steps, measured, title):
  with plots.figure(path, title, ncols=2, size=(5.2, 3.8)) as (ax_acc, ax_loss):
    for label, row in measured.items():
      plots.band(ax_acc, steps[1:], row["test_accuracy_curve"][:, 1:], label=label,
                 color=COLORS[label])
      plots.band(ax_loss, steps[1:], row["train_loss_curve"][:, 1:], label=label,
                 color=COLORS[label])
    plots.label(ax_acc, x="training step", y="test accuracy (fraction)",
                title="test accuracy (mean ± std over seeds)")
    plots.label(ax_loss, x="training step", y="training loss (cross-entropy, nats)",
                title="training loss, mean over each eval interval", logy=True)


def _shift_figure(path, steps, measured, title):
  with plots.figure(path, title, ncols=3, size=(4.6, 3.8)) as (ax_shift, ax_cos, ax_rel):
    for label, row in measured.items():
      plots.band(ax_shift, steps[1:], row["shift_curve"], label=label, color=COLORS[label])
      plots.band(ax_cos, steps, row["cos_curve"], label=label, color=COLORS[label])
      plots.band(ax_rel, steps, row["rel_curve"], label=label, color=COLORS[label])
    plots.label(ax_shift, x="training step", y="shift since previous eval (layer std units)",
                title="layer-input distribution shift", logy=True)
    plots.label(ax_cos, x="training step", y="cosine(G, G') (1 = no ICS)",
                title="Santurkar ICS: gradient cosine")
    plots.label(ax_rel, x="training step", y="||G - G'|| / ||G|| (0 = no ICS)",
                title="Santurkar ICS: relative gradient change", logy=True)


def _table(measured) -> str:
  rows = []
  for label, row in measured.items():
    rows.append([label, summarize(row["final_accuracy"]).format(3),
                 summarize(row["final_train_loss"]).format(3),
                 summarize(row["shift"]).format(3), summarize(row["cos"]).format(3),
                 summarize(row["rel"]).format(3), summarize(row["l2"]).format(4),
                 str(int(np.sum(row["skipped_steps"])))])
  return runner.markdown_table(
      ["variant", "final test acc", "final train loss", "distribution shift",
       "cos(G, G')", "||G-G'||/||G||", "||G-G'||", "skipped steps"], rows)


# ----------------------------------------------------------------- run


def run(ctx: RunContext) -> Outcome:
  steps, eval_every = (QUICK_STEPS, QUICK_EVAL_EVERY) if ctx.quick else (STEPS, EVAL_EVERY)
  hidden = QUICK_HIDDEN if ctx.quick else HIDDEN
  data = load_dataset(DATA, seed=ctx.split_seed)
  pop = _train(ctx, data, hidden, steps, eval_every)
  measured = measure(pop)
  numbers = decide_inputs(measured)
  verdicts = decide(numbers)
  step_axis = pop.steps

  setting = (f"{data.name}, {len(hidden)}x{hidden[0]} ReLU MLP, SGD {LEARNING_RATE:g}, "
             f"batch {BATCH_SIZE}, {steps:,} steps, {ctx.seeds} seeds")
  figures = ["accuracy.png", "shift.png"]
  _accuracy_figure(os.path.join(ctx.out_dir, figures[0]), step_axis, measured,
                   f"No BN, BN and noisy BN (Santurkar et al. Fig. 2 at small scale)\n"
                   f"({setting})")
  _shift_figure(os.path.join(ctx.out_dir, figures[1]), step_axis, measured,
                "Distribution shift of hidden pre-activations and gradient-based ICS "
                f"(mean over layers)\n({setting})")

  per_seed = {label: {k: row[k] for k in ("final_accuracy", "final_train_loss", "shift",
                                          "shift_per_layer", "cos", "rel", "l2",
                                          "skipped_steps")}
              for label, row in measured.items()}
  summary = {label: {k: summarize(row[k]) for k in ("final_accuracy", "final_train_loss",
                                                    "shift", "cos", "rel", "l2")}
             for label, row in measured.items()}
  summary["bn_gain"] = paired_difference(numbers["acc_batch"], numbers["acc_none"])
  summary["noisy_gain"] = paired_difference(numbers["acc_noisy"], numbers["acc_none"])
  summary["shift_ratio_noisy_over_none"] = geometric_summary(
      numbers["shift_noisy"] / numbers["shift_none"])
  summary["shift_ratio_noisy_over_bn"] = geometric_summary(
      numbers["shift_noisy"] / measured["BN"]["shift"])
  summary["compile_seconds"] = pop.compile_seconds
  summary["train_seconds"] = pop.train_seconds
  config = {"data": data.describe(), "hidden": hidden, "activation": "relu",
            "init": "lecun_normal", "batch_size": BATCH_SIZE, "learning_rate": LEARNING_RATE,
            "optimizer": "sgd", "steps": steps, "eval_every": eval_every,
            "noise": {"mean_range": NOISE_MEAN, "std_range": NOISE_STD},
            "shift_probe_examples": SHIFT_PROBE, "seeds": list(range(ctx.seeds)),
            "final_fraction": FINAL_FRACTION,
            "measure_start_fraction": MEASURE_START_FRACTION,
            "split_seed": ctx.split_seed}
  table = (f"{setting}; mean ± sample std over seeds. *Final*: mean over the last "
           f"{FINAL_FRACTION:.0%} of evaluations. *Distribution shift*: per-unit "
           "mean/std move between evaluations over the layer's RMS std, mean over the "
           f"{len(hidden)} hidden layers and the evaluations after "
           f"{MEASURE_START_FRACTION:.0%} of training. *G, G'*: a layer's weight gradient "
           "before and after the earlier layers' update (Santurkar Def. 2.1), mean over "
           f"layers 2-{len(hidden) + 1}.\n\n" + _table(measured))
  notes = [f"Compilation took {pop.compile_seconds:.1f} s and training "
           f"{pop.train_seconds:.1f} s (wall), all variants and seeds in one program.",
           "Noisy BN is evaluated without noise (BN on running statistics), as dropout is."]
  return Outcome(config=config, per_seed=per_seed, summary=summary, verdicts=verdicts,
                 table=table, figures=figures, notes=notes)
