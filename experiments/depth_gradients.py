"""depth-gradients: do gradients vanish or explode with depth, and does BN prevent it?

At initialization, for 50-layer MLPs of width 512 with sigmoid, tanh, ReLU and linear
activations, with and without batch norm (before the activation), on batches of
Gaussian inputs: the squared Frobenius norm of the loss gradient with respect to each
layer's weight matrix, and the per-layer factor by which it grows from the last layer
towards the first (a least-squares fit on its logarithm, :mod:`experiments.measures.growth`).
With BN the factor is measured for batch sizes 4 to 256 and held against Yang et al.'s
mean-field values: pi/(pi-1) for ReLU as the batch grows, (B-2)/(B-3) for linear
networks. Then ReLU networks of depth 10, 20, 30 and 50 with and without BN are trained
for a few epochs on digits to see which train.

The measured network is a pure function (stacked weights, ``lax.scan`` over layers,
``jaxnorm.functional.batch_norm`` without affine parameters, as in the paper at
initialization); the activation and BN are traced arguments, so one compiled program per
batch size serves every configuration. The trained networks are the Flax module
:class:`DeepMLP` (``jaxnorm.BatchNorm``), trained with :mod:`experiments.population`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxnorm
from jaxnorm import functional as F

from . import plots, runner
from .data import load_dataset
from .measures.growth import fit_growth_factor, log_squared_norm
from .measures.stats import Summary, summarize
from .models import ACTIVATIONS
from .population import Recipe, grid_product, train_population
from .spec import (DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, Anchor, Check, Outcome, RunContext,
                   Spec, Verdict, verdict_from_checks)

NAME = "depth-gradients"
DESCRIPTION = ("vanishing/exploding gradients at init for 50-layer MLPs (4 activations, "
               "+/- BN, batch 4..256) vs Yang et al. 2019; which deep nets train")


# ----------------------------------------------------------------- setup (fixed in code)


@dataclasses.dataclass(frozen=True)
class Setup:
  """Sizes of one run (the full run or the quick smoke run).

  Attributes:
    depth: hidden layers of the measured networks.
    width: their width (and the input dimension: Gaussian inputs of full rank).
    batch_sizes: batch sizes at which the BN networks are measured.
    reference_batch: the batch at which every configuration (with and without BN) is
      measured and compared.
    anchor_batch: the batch at which the ReLU+BN factor is held against its
      large-batch limit.
    linear_batches: the batches at which linear+BN is held against (B-2)/(B-3).
    fit_skip: layers left out of the fit at each end (the forward transient near the
      input, the backward transient near the loss).
    train_depths: depths of the trained ReLU networks.
    train_width: their width.
    train_batch: their batch size.
    train_epochs: their training length.
    learning_rates: SGD learning rates, each trained for every depth and seed.
  """

  depth: int
  width: int
  batch_sizes: tuple[int, ...]
  reference_batch: int
  anchor_batch: int
  linear_batches: tuple[int, ...]
  fit_skip: int
  train_depths: tuple[int, ...]
  train_width: int
  train_batch: int
  train_epochs: int
  learning_rates: tuple[float, ...]

  @property
  def fit_window(self) -> tuple[int, int]:
    """``(start, stop)`` layer indices (0-based) of the growth fit."""
    return self.fit_skip, self.depth - self.fit_skip


FULL = Setup(depth=50, width=512, batch_sizes=(4, 8, 16, 32, 64, 128, 256),
             reference_batch=64, anchor_batch=256, linear_batches=(8, 16), fit_skip=5,
             train_depths=(10, 20, 30, 50), train_width=128, train_batch=32,
             train_epochs=5, learning_rates=(0.01, 0.1))
QUICK = Setup(depth=10, width=64, batch_sizes=(8, 16), reference_batch=8, anchor_batch=16,
              linear_batches=(8, 16), fit_skip=2, train_depths=(4,), train_width=32,
              train_batch=32, train_epochs=1, learning_rates=(0.1,))

ACTIVATION_ORDER = ("relu", "tanh", "sigmoid", "linear")
#: Variance gain of the weight initialization: He (2 / fan-in) for ReLU, LeCun
#: (1 / fan-in) otherwise. With BN the gain does not change the gradients' growth.
INIT_GAIN = {"relu": 2.0, "tanh": 1.0, "sigmoid": 1.0, "linear": 1.0}
NUM_CLASSES = 10
TRAIN_DATA = "digits"

# ----------------------------------------------------------------- criterion (fixed)
RELU_LIMIT = math.pi / (math.pi - 1)  # Yang et al.: ReLU+BN, batch -> infinity
RELU_TOLERANCE = 0.05                 # "within 5% of pi/(pi-1)"
LINEAR_TOLERANCE = 0.10               # "excess over 1 within 10% of 1/(B-3)"
DECADE = 10.0   # a squared gradient norm that grows (or shrinks) 10x or more over the
                # depth of the network counts as exploding (vanishing)
TRAINS_ACCURACY = 0.80  # a trained network "trains" if its best mean test accuracy
                        # over the learning rates reaches this (chance: 0.10)


def linear_bn_factor(batch: int) -> float:
  """Yang et al.'s per-layer factor of the squared gradient norm, linear net with BN."""
  return (batch - 2) / (batch - 3)


def decade_factor(depth: int) -> float:
  """The per-layer factor that compounds to :data:`DECADE` over ``depth - 1`` layers."""
  return DECADE ** (1.0 / (depth - 1))


def config_key(activation: str, batch_norm: bool, batch: int) -> str:
  """``relu+BN@256`` / ``sigmoid@64``: the name of one measured configuration."""
  return f"{activation}{'+BN' if batch_norm else ''}@{batch}"


SPEC = Spec(
    name=NAME,
    title="Vanishing and exploding gradients with depth, with and without batch norm",
    description=DESCRIPTION,
    claim=("Batch norm prevents vanishing and exploding gradients: with BN the gradient "
           "reaching the first layers of a deep network keeps a usable size, where without "
           "it (sigmoid) it vanishes with depth."),
    anchor=Anchor(
        number=("with BN at initialization gradients explode with depth: the squared "
                "weight-gradient norm grows by a factor tending to pi/(pi-1) = 1.467 per "
                "layer for ReLU as the batch grows (the norm by 1.211), and by "
                "(B-2)/(B-3) per layer for linear networks with batch B"),
        source=("Yang, Pennington, Rao, Sohl-Dickstein & Schoenholz 2019, A Mean Field "
                "Theory of Batch Normalization, ICLR (gradient explosion theorem, §3-4)")),
    criterion=(
        f"Per configuration, each seed's per-layer factor is the fitted growth of the "
        f"squared weight-gradient norm from the last layer towards the first over layers "
        f"{FULL.fit_skip + 1}-{FULL.depth - FULL.fit_skip} of {FULL.depth}; the 95% "
        f"t-interval over seeds is compared with each band. (1) ReLU+BN at batch "
        f"{FULL.anchor_batch} (the largest tested, B < width): holds if the interval lies "
        f"within {RELU_TOLERANCE:.0%} of pi/(pi-1), fails if it lies outside that band. "
        f"(2) linear+BN at B = {', '.join(map(str, FULL.linear_batches))}: the excess "
        f"(factor - 1)(B - 3) within {LINEAR_TOLERANCE:.0%} of 1 at each B. (3) sigmoid "
        f"without BN (batch {FULL.reference_batch}): factor < 1. (4) BN prevents "
        f"vanishing: with BN no activation's factor is at or below 1/g, and (5) BN "
        f"prevents exploding (the notes' claim): none is at or above g, where "
        f"g = {DECADE:g}^(1/{FULL.depth - 1}) = {decade_factor(FULL.depth):.4f} is the "
        f"factor that changes the squared norm {DECADE:g}-fold over the {FULL.depth} "
        f"layers (batch {FULL.reference_batch}). Each part is inconclusive when the "
        f"interval straddles a band's edge. Trained networks: one 'trains' if its best "
        f"mean test accuracy over the learning rates reaches {TRAINS_ACCURACY:.0%} "
        "(reported, not a verdict)."),
    data=("Initialization: Gaussian inputs N(0, I) of dimension = width (512), as in the "
          "paper: full rank for every batch B < width, which the linear prediction needs "
          "(a linear network cannot raise the rank of its input batch), and random labels "
          "over 10 classes for the loss. Training: scikit-learn's digits (1437 train / "
          "360 test, 64 features): cheap enough to train 8 deep networks x 2 learning "
          "rates x 5 seeds, and easy enough (a shallow MLP reaches ~97%) that a network "
          "which stays near chance failed to train, not to fit."),
    setup=(f"Measured networks: {FULL.depth} layers h_l = phi(BN(h_(l-1) W_l)) of width "
           f"{FULL.width}, no biases, BN without affine parameters (Yang et al.'s network at "
           "initialization: gamma = 1, beta = 0), epsilon 1e-5, then a linear read-out to 10 "
           "classes and softmax cross-entropy; W_l ~ N(0, gain/width), gain 2 for ReLU "
           "(He) and 1 otherwise (LeCun; with BN the gain cancels). We measure "
           "||dL/dW_l||_F^2, the squared norm of each layer's weight gradient (the paper's "
           "quantity), with the batch statistics in the backward pass, and fit "
           "ln ||dL/dW_l||^2 = a + (L - l) ln(factor) by least squares. Every activation "
           f"with and without BN at batch {FULL.reference_batch}; with BN also at batches "
           f"{', '.join(map(str, FULL.batch_sizes))}; the same weights and inputs per seed "
           f"across configurations. Training: DeepMLP (Dense {FULL.train_width} -> "
           "[jaxnorm.BatchNorm] -> ReLU per layer, He init) at depths "
           f"{', '.join(map(str, FULL.train_depths))}, plain SGD at learning rates "
           f"{', '.join(map(str, FULL.learning_rates))}, batch {FULL.train_batch}, "
           f"{FULL.train_epochs} epochs; final test accuracy (running statistics)."),
    limits=(f"Width {FULL.width} is finite while the theory is for infinite width (its "
            "corrections are of order 1/width per layer, a few tenths of a percent), and "
            f"the batch sweep stops at {FULL.batch_sizes[-1]}, so the ReLU limit is "
            "approached, not reached. The measurements are at initialization only; Yang et "
            "al. report that the explosion relaxes after the first training steps. The "
            f"training check is small ({FULL.train_epochs} epochs of plain SGD at two "
            "learning rates on digits): a network that fails here might train with "
            "another optimizer, schedule or more epochs."),
)


# ----------------------------------------------------------------- the measured network


def _network_loss(kernels, readout, x, labels, activation, batch_norm):
  """Cross-entropy of ``x -> phi(BN(x W_1)) -> ... -> h_L readout``.

  ``activation`` indexes :data:`ACTIVATION_ORDER` and ``batch_norm`` switches BN (no
  affine part, batch statistics); both may be traced.
  """
  width = kernels.shape[-1]
  stats = jaxnorm.BatchStats(jnp.zeros(width, jnp.float32), jnp.ones(width, jnp.float32))
  branches = tuple(ACTIVATIONS[name] for name in ACTIVATION_ORDER)

  def layer(h, kernel):
    z = h @ kernel
    normalized, _ = F.batch_norm(z, None, None, stats, train=True)
    z = jnp.where(batch_norm, normalized, z)
    return jax.lax.switch(activation, branches, z), None

  h, _ = jax.lax.scan(layer, x, kernels)
  return optax.softmax_cross_entropy_with_integer_labels(h @ readout, labels).mean()


def layer_gradient_log_norms(unit_kernels, readout, x, labels, activation, batch_norm):
  r"""Log squared norms of the weight gradients of every layer, at initialization.

  .. math::
    W_l = \sqrt{g_\phi}\, U_l, \qquad
    h_l = \phi(\mathrm{BN}(h_{l-1} W_l)), \qquad
    \text{returns } \ln \lVert \partial L / \partial W_l \rVert_F^2,\ l = 1 \dots L

  Args:
    unit_kernels: ``U``, shape ``(L, width, width)``, entries N(0, 1/width).
    readout: the read-out weights ``(width, classes)``.
    x: the input batch ``(B, width)``.
    labels: integer labels ``(B,)``.
    activation: index into :data:`ACTIVATION_ORDER` (the gain :math:`g_\phi` is
      :data:`INIT_GAIN` of that activation).
    batch_norm: whether each layer normalizes with its batch statistics.

  Returns:
    ``(L,)`` natural logarithms (first layer first); ``-inf`` where a gradient
    underflowed to 0.

  Example:
    >>> u = jnp.ones((3, 4, 4)) / 2
    >>> x = jnp.arange(8.0).reshape(2, 4) / 8
    >>> layer_gradient_log_norms(u, jnp.ones((4, 2)), x, jnp.array([0, 1]), 0, False).shape
    (3,)
  """
  gains = jnp.asarray([INIT_GAIN[name] for name in ACTIVATION_ORDER], jnp.float32)
  kernels = jnp.sqrt(gains[activation]) * unit_kernels
  grads = jax.grad(_network_loss)(kernels, readout, x, labels, activation, batch_norm)
  return jax.vmap(log_squared_norm)(grads)


def _draw_network(seed: int, setup: Setup):
  """Unit-variance weights, read-out, Gaussian inputs and random labels of one seed."""
  rng = np.random.default_rng(seed)
  width = setup.width
  unit = rng.standard_normal((setup.depth, width, width), dtype=np.float32)
  unit /= np.float32(np.sqrt(width))
  readout = rng.standard_normal((width, NUM_CLASSES), dtype=np.float32)
  readout /= np.float32(np.sqrt(width))
  batch = max(setup.batch_sizes + (setup.reference_batch,))
  x = rng.standard_normal((batch, width), dtype=np.float32)
  labels = rng.integers(0, NUM_CLASSES, batch).astype(np.int32)
  return jnp.asarray(unit), jnp.asarray(readout), x, labels


def configurations(setup: Setup) -> list[tuple[str, bool, int]]:
  """``(activation, batch_norm, batch)`` of every measurement of one seed."""
  configs = [(name, True, batch) for batch in setup.batch_sizes for name in ACTIVATION_ORDER]
  configs += [(name, False, setup.reference_batch) for name in ACTIVATION_ORDER]
  if setup.reference_batch not in setup.batch_sizes:
    configs += [(name, True, setup.reference_batch) for name in ACTIVATION_ORDER]
  return configs


def measure_initial_gradients(ctx: RunContext, setup: Setup) -> dict:
  """Log squared weight-gradient norms per configuration and seed, and timings."""
  configs = configurations(setup)
  compiled, compile_seconds, run_seconds = {}, 0.0, 0.0
  log_norms = {config_key(*config): [] for config in configs}
  tasks = [(seed, config) for seed in range(ctx.seeds) for config in configs]
  network_seed, network = None, None
  for seed, (activation, batch_norm, batch) in ctx.bar(tasks, desc="gradients at init",
                                                       unit="network", leave=True):
    if seed != network_seed:
      network_seed, network = seed, _draw_network(seed, setup)
    unit, readout, x_all, labels_all = network
    x, labels = x_all[:batch], labels_all[:batch]
    if batch not in compiled:
      start = time.perf_counter()
      compiled[batch] = jax.jit(layer_gradient_log_norms).lower(
          unit, readout, x, labels, 0, True).compile()
      compile_seconds += time.perf_counter() - start
    start = time.perf_counter()
    values = np.asarray(compiled[batch](unit, readout, x, labels,
                                        ACTIVATION_ORDER.index(activation), batch_norm))
    run_seconds += time.perf_counter() - start
    log_norms[config_key(activation, batch_norm, batch)].append(values.tolist())
  return {"log_norms": log_norms, "compile_seconds": compile_seconds,
          "run_seconds": run_seconds, "programs": len(compiled)}


def growth_factors(log_norms: Mapping[str, Sequence[Sequence[float]]],
                   setup: Setup) -> dict[str, list[float]]:
  """The fitted per-layer factor of every configuration and seed."""
  start, stop = setup.fit_window
  return {key: [fit_growth_factor(np.asarray(seed_values), start=start, stop=stop).factor
                for seed_values in values] for key, values in log_norms.items()}


# ----------------------------------------------------------------- the verdicts


def _band(values: Sequence[float], low: float, high: float) -> tuple[Summary, bool | None]:
  """Whether the 95% interval of the mean lies inside [low, high] (True), outside it
  (False), or straddles an edge or cannot be computed (None)."""
  summary = summarize(values)
  ends = (summary.mean, summary.ci_low, summary.ci_high)
  if not all(np.isfinite(ends)):
    return summary, None
  if low <= summary.ci_low and summary.ci_high <= high:
    return summary, True
  if summary.ci_high < low or summary.ci_low > high:
    return summary, False
  return summary, None


def _interval(summary: Summary, digits: int = 4) -> str:
  return (f"{summary.mean:.{digits}f} (95% CI {summary.ci_low:.{digits}f} to "
          f"{summary.ci_high:.{digits}f}, {summary.n} seeds)")


_VERDICT = {True: HOLDS, False: DOES_NOT_HOLD, None: INCONCLUSIVE}


def _relu_verdict(factors, setup: Setup) -> Verdict:
  batch = setup.anchor_batch
  low, high = RELU_LIMIT * (1 - RELU_TOLERANCE), RELU_LIMIT * (1 + RELU_TOLERANCE)
  summary, passed = _band(factors[config_key("relu", True, batch)], low, high)
  check = Check(f"ReLU+BN factor at batch {batch}", round(summary.mean, 5),
                f"95% CI within [{low:.4f}, {high:.4f}]", passed)
  reason = (f"at batch {batch} the squared weight-gradient norm grows by "
            f"{_interval(summary)} per layer towards the input, against pi/(pi-1) = "
            f"{RELU_LIMIT:.4f} (band +-{RELU_TOLERANCE:.0%}: {low:.4f} to {high:.4f}); the "
            f"norm itself grows by {math.sqrt(max(summary.mean, 0.0)):.4f} per layer "
            f"(anchor {math.sqrt(RELU_LIMIT):.4f}).")
  return Verdict(f"ReLU+BN: squared gradient norm grows by pi/(pi-1) per layer (batch "
                 f"{batch})", _VERDICT[passed], reason,
                 f"{summary.mean:.3f} per layer at B = {batch}",
                 anchor=f"pi/(pi-1) = {RELU_LIMIT:.3f} per layer (B -> infinity)",
                 checks=(check,))


def _linear_verdict(factors, setup: Setup) -> Verdict:
  checks, parts = [], []
  for batch in setup.linear_batches:
    excess = [(f - 1.0) * (batch - 3) for f in factors[config_key("linear", True, batch)]]
    summary, passed = _band(excess, 1 - LINEAR_TOLERANCE, 1 + LINEAR_TOLERANCE)
    factor = summarize(factors[config_key("linear", True, batch)])
    checks.append(Check(f"(factor - 1)(B - 3) at B = {batch}", round(summary.mean, 4),
                        f"95% CI within [{1 - LINEAR_TOLERANCE:g}, "
                        f"{1 + LINEAR_TOLERANCE:g}]", passed))
    parts.append(f"B = {batch}: factor {factor.mean:.4f} against (B-2)/(B-3) = "
                 f"{linear_bn_factor(batch):.4f}, excess over 1 at "
                 f"{_interval(summary, 3)} of 1/(B-3)")
  verdict = verdict_from_checks(checks)
  ours = "; ".join(f"B={b}: {summarize(factors[config_key('linear', True, b)]).mean:.4f}"
                   for b in setup.linear_batches)
  anchor = "; ".join(f"B={b}: {linear_bn_factor(b):.4f}" for b in setup.linear_batches)
  return Verdict("linear+BN: squared gradient norm grows by (B-2)/(B-3) per layer",
                 verdict, "; ".join(parts) + f" (band +-{LINEAR_TOLERANCE:.0%}).", ours,
                 anchor=f"(B-2)/(B-3): {anchor}", checks=tuple(checks))


def _sigmoid_verdict(factors, setup: Setup) -> Verdict:
  batch = setup.reference_batch
  summary, passed = _band(factors[config_key("sigmoid", False, batch)], -math.inf, 1.0)
  reason = (f"without BN the sigmoid network's squared gradient norm changes by "
            f"{_interval(summary)} per layer towards the input (batch {batch}), i.e. by "
            f"{_compound(summary.mean, setup.depth)} over its {setup.depth} layers.")
  return Verdict("without BN, sigmoid gradients vanish with depth (factor < 1)",
                 _VERDICT[passed], reason,
                 f"{summary.mean:.3g} per layer ({_compound(summary.mean, setup.depth)} "
                 f"over {setup.depth} layers)",
                 anchor="vanishing gradients (factor < 1) without BN",
                 checks=(Check("sigmoid factor without BN", round(summary.mean, 5),
                               "95% CI below 1", passed),))


def _compound(factor: float, depth: int) -> str:
  """The change of the squared norm over ``depth - 1`` layers, as ``x1.2e+08``."""
  if not np.isfinite(factor) or factor <= 0:
    return "undefined"
  return f"x{factor ** (depth - 1):.2g}"


def _bn_checks(factors, setup: Setup, *, exploding: bool) -> tuple[list[Check], list[str]]:
  g = decade_factor(setup.depth)
  checks, parts = [], []
  for name in ACTIVATION_ORDER:
    key = config_key(name, True, setup.reference_batch)
    if exploding:
      summary, inside = _band(factors[key], -math.inf, g)
      rule = f"95% CI below {g:.4f}"
    else:
      summary, inside = _band(factors[key], 1.0 / g, math.inf)
      rule = f"95% CI above {1.0 / g:.4f}"
    checks.append(Check(f"{name}+BN factor", round(summary.mean, 5), rule, inside))
    parts.append(f"{name} {summary.mean:.4f} ({_compound(summary.mean, setup.depth)})")
  return checks, parts


def _bn_verdict(factors, setup: Setup, *, exploding: bool) -> Verdict:
  g = decade_factor(setup.depth)
  checks, parts = _bn_checks(factors, setup, exploding=exploding)
  plain = ", ".join(
      f"{name} {summarize(factors[config_key(name, False, setup.reference_batch)]).mean:.4f}"
      for name in ACTIVATION_ORDER)
  what = "exploding" if exploding else "vanishing"
  edge = (f"at or above g = {g:.4f} (x{DECADE:g} over {setup.depth} layers)" if exploding
          else f"at or below 1/g = {1.0 / g:.4f} (/{DECADE:g} over {setup.depth} layers)")
  reason = (f"with BN at batch {setup.reference_batch} the per-layer factors are "
            f"{'; '.join(parts)}; a factor {edge} counts as {what}. Without BN the same "
            f"networks give {plain}.")
  worst = max if exploding else min
  extreme = worst(ACTIVATION_ORDER, key=lambda n: summarize(
      factors[config_key(n, True, setup.reference_batch)]).mean)
  extreme_mean = summarize(factors[config_key(extreme, True, setup.reference_batch)]).mean
  claim = ("BN prevents exploding gradients (the notes)" if exploding
           else "BN prevents vanishing gradients")
  anchor = ("Yang et al.: with BN gradients explode for every activation" if exploding
            else "sigmoid without BN vanishes; with BN the gradient is kept")
  return Verdict(claim, verdict_from_checks(checks), reason,
                 f"{extreme}+BN: {extreme_mean:.3f} per layer "
                 f"({_compound(extreme_mean, setup.depth)} over {setup.depth} layers)",
                 anchor=anchor, checks=tuple(checks))


def decide(factors: Mapping[str, Sequence[float]], setup: Setup = FULL) -> list[Verdict]:
  """The five verdicts of :data:`SPEC` from the per-seed factors.

  Args:
    factors: :func:`config_key` -> per-seed fitted factors, for at least ReLU+BN at
      ``setup.anchor_batch``, linear+BN at ``setup.linear_batches`` and every activation
      with and without BN at ``setup.reference_batch``.
    setup: the sizes the factors were measured with.
  """
  return [_relu_verdict(factors, setup), _linear_verdict(factors, setup),
          _sigmoid_verdict(factors, setup), _bn_verdict(factors, setup, exploding=False),
          _bn_verdict(factors, setup, exploding=True)]


# ----------------------------------------------------------------- the trained networks


class _Layer(nn.Module):
  """Dense -> [BatchNorm] -> activation, as a scan body ``(carry, _) -> (carry, None)``."""

  width: int
  activation: str
  batch_norm: bool
  train: bool
  kernel_init: Callable

  @nn.compact
  def __call__(self, x, _=None):
    x = nn.Dense(self.width, kernel_init=self.kernel_init)(x)
    if self.batch_norm:
      x = jaxnorm.BatchNorm(use_running_average=not self.train)(x)
    return ACTIVATIONS[self.activation](x), None


class DeepMLP(nn.Module):
  """``depth`` x (Dense -> [BatchNorm] -> activation), then a Dense classifier.

  The layers after the first are one ``nn.scan`` body with stacked parameters, so the
  compiled program does not grow with the depth.

  Attributes:
    depth: hidden layers (>= 1).
    width: their width.
    num_classes: outputs.
    activation: a key of :data:`experiments.models.ACTIVATIONS`.
    batch_norm: a ``jaxnorm.BatchNorm`` before each activation.
    kernel_init: initializer of every Dense kernel (He normal by default).

  Example:
    >>> model = DeepMLP(depth=5, width=8, batch_norm=True)
    >>> variables = model.init(jax.random.key(0), jnp.ones((4, 3)), train=False)
    >>> variables["params"]["layers"]["Dense_0"]["kernel"].shape
    (4, 8, 8)
  """

  depth: int = 10
  width: int = 128
  num_classes: int = 10
  activation: str = "relu"
  batch_norm: bool = False
  kernel_init: Callable = nn.initializers.he_normal()

  @nn.compact
  def __call__(self, x, train: bool):
    if self.depth < 1:
      raise ValueError(f"DeepMLP: depth must be >= 1; got {self.depth}.")
    options = dict(width=self.width, activation=self.activation,
                   batch_norm=self.batch_norm, train=train, kernel_init=self.kernel_init)
    x, _ = _Layer(name="layer_1", **options)(x.reshape((x.shape[0], -1)))
    if self.depth > 1:
      stack = nn.scan(_Layer, variable_axes={"params": 0, "batch_stats": 0},
                      split_rngs={"params": True}, length=self.depth - 1)
      x, _ = stack(name="layers", **options)(x, None)
    return nn.Dense(self.num_classes, kernel_init=self.kernel_init)(x)


def train_deep_networks(ctx: RunContext, setup: Setup) -> dict:
  """Final test accuracy per depth, BN and learning rate: ``(lrs, seeds)`` arrays."""
  data = load_dataset(TRAIN_DATA)
  steps_per_epoch = len(data.x_train) // setup.train_batch
  results = {}
  for depth in setup.train_depths:
    for batch_norm in (False, True):
      model = DeepMLP(depth=depth, width=setup.train_width, num_classes=data.num_classes,
                      batch_norm=batch_norm)
      tx = optax.inject_hyperparams(optax.sgd)(learning_rate=setup.learning_rates[0])
      pop = train_population(
          Recipe(model, tx, setup.train_batch), data, seeds=list(range(ctx.seeds)),
          steps=setup.train_epochs * steps_per_epoch, eval_every=steps_per_epoch,
          grid=grid_product(learning_rate=setup.learning_rates), progress=ctx.progress,
          desc=f"train depth {depth} {'BN' if batch_norm else 'no BN'}")
      results[(depth, batch_norm)] = {
          "accuracy": pop.final("test_accuracy"), "curves": pop.curves["test_accuracy"],
          "skipped": pop.skipped_steps, "compile_seconds": pop.compile_seconds,
          "train_seconds": pop.train_seconds}
  return results


def trains(accuracy: np.ndarray) -> tuple[bool, float, int]:
  """Whether a network trains: best mean test accuracy over learning rates (and which)."""
  accuracy = np.asarray(accuracy, np.float64)
  counts = np.sum(np.isfinite(accuracy), axis=1)
  means = np.where(counts > 0, np.nansum(accuracy, axis=1) / np.maximum(counts, 1), np.nan)
  if not np.any(np.isfinite(means)):
    return False, float("nan"), -1
  best = int(np.nanargmax(means))
  return bool(means[best] >= TRAINS_ACCURACY), float(means[best]), best


# ----------------------------------------------------------------- figures and tables


def _relative_log10(values: Sequence[Sequence[float]]) -> np.ndarray:
  """log10 of the squared norms relative to the last layer, ``(seeds, layers)``."""
  logs = np.asarray(values, np.float64) / math.log(10.0)
  return logs - logs[:, -1:]


def _norms_figure(path, log_norms, setup: Setup, seeds: int):
  layers = np.arange(1, setup.depth + 1)
  start, stop = setup.fit_window
  with plots.figure(path, f"Squared weight-gradient norm per layer at initialization\n"
                    f"(depth {setup.depth}, width {setup.width}, batch "
                    f"{setup.reference_batch}, {seeds} seeds, band: ± std)",
                    ncols=2, size=(6.0, 4.2)) as axes:
    for ax, batch_norm in zip(axes, (False, True)):
      for name in ACTIVATION_ORDER:
        key = config_key(name, batch_norm, setup.reference_batch)
        plots.band(ax, layers, _relative_log10(log_norms[key]), label=name)
      if batch_norm:
        ax.plot(layers, (setup.depth - layers) * math.log10(RELU_LIMIT), "k--", lw=1,
                label="pi/(pi-1) per layer (Yang et al.)")
      ax.axvspan(start + 1, stop, color="grey", alpha=0.08, label="fit window")
      plots.label(ax, x="layer l (1 = first, next to the input)",
                  y="log10 of ||dL/dW_l||^2 / ||dL/dW_L||^2",
                  title="with BN (before the activation)" if batch_norm else "without BN")


def _batch_figure(path, factors, setup: Setup, seeds: int):
  batches = np.asarray(setup.batch_sizes, np.float64)
  fine = np.geomspace(max(batches[0], 4), batches[-1], 200)
  with plots.figure(path, f"Per-layer growth of the squared gradient norm with BN\n"
                    f"(depth {setup.depth}, width {setup.width}, {seeds} seeds, band: ± std)",
                    size=(7.0, 4.6)) as axes:
    ax = axes[0]
    for name in ACTIVATION_ORDER:
      runs = np.array([factors[config_key(name, True, int(b))] for b in batches]).T
      plots.band(ax, batches, runs, label=f"{name} + BN (measured)", marker="o")
    ax.plot(fine, (fine - 2) / (fine - 3), "k--", lw=1, label="(B-2)/(B-3): linear theory")
    ax.axhline(RELU_LIMIT, color="k", ls=":", lw=1, label="pi/(pi-1): ReLU, B -> infinity")
    ax.axhspan(RELU_LIMIT * (1 - RELU_TOLERANCE), RELU_LIMIT * (1 + RELU_TOLERANCE),
               color="grey", alpha=0.1, label=f"pi/(pi-1) ± {RELU_TOLERANCE:.0%}")
    ax.axhline(1.0, color="grey", lw=0.8)
    plots.label(ax, x="batch size B (log scale)",
                y="factor per layer (last -> first layer)", logx=True)
    ax.set_xticks(batches, labels=[str(int(b)) for b in batches])


def _training_figure(path, training, setup: Setup, seeds: int):
  depths = np.asarray(setup.train_depths)
  with plots.figure(path, f"ReLU MLPs of width {setup.train_width} trained "
                    f"{setup.train_epochs} epochs on digits\n(plain SGD, batch "
                    f"{setup.train_batch}, {seeds} seeds, band: ± std)",
                    size=(7.0, 4.4)) as axes:
    ax = axes[0]
    for batch_norm in (False, True):
      for i, lr in enumerate(setup.learning_rates):
        runs = np.array([training[(int(d), batch_norm)]["accuracy"][i] for d in depths]).T
        plots.band(ax, depths, runs, label=f"{'BN' if batch_norm else 'no BN'}, lr {lr:g}",
                   marker="o" if batch_norm else "s",
                   linestyle="-" if batch_norm else "--")
    ax.axhline(TRAINS_ACCURACY, color="k", ls=":", lw=1,
               label=f"'trains' threshold ({TRAINS_ACCURACY:.0%})")
    ax.axhline(0.1, color="grey", lw=0.8, label="chance (10%)")
    plots.label(ax, x="depth (hidden layers)", y="final test accuracy (fraction)")
    ax.set_xticks(depths)
    ax.set_ylim(0, 1.02)


def _tables(factors, training, setup: Setup) -> str:
  ref = setup.reference_batch
  rows = []
  for batch_norm in (False, True):
    for name in ACTIVATION_ORDER:
      summary = summarize(factors[config_key(name, batch_norm, ref)])
      theory = ""
      if batch_norm and name == "linear":
        theory = f"{linear_bn_factor(ref):.4f}"
      rows.append([f"{name}{' + BN' if batch_norm else ''}", summary.format(4),
                   f"[{summary.ci_low:.4f}, {summary.ci_high:.4f}]",
                   _compound(summary.mean, setup.depth), theory])
  first = runner.markdown_table(
      ["network", "factor per layer", "95% CI", f"over {setup.depth} layers",
       "theory (Yang et al.)"], rows)
  rows = []
  for batch in setup.batch_sizes:
    row = [str(batch)]
    for name in ACTIVATION_ORDER:
      row.append(summarize(factors[config_key(name, True, batch)]).format(4))
    row += [f"{linear_bn_factor(batch):.4f}", f"{RELU_LIMIT:.4f}"]
    rows.append(row)
  second = runner.markdown_table(
      ["batch B"] + [f"{name} + BN" for name in ACTIVATION_ORDER]
      + ["(B-2)/(B-3)", "pi/(pi-1)"], rows)
  rows = []
  for depth in setup.train_depths:
    for batch_norm in (False, True):
      result = training[(depth, batch_norm)]
      ok, best, _ = trains(result["accuracy"])
      cells = [summarize(acc).format(3) for acc in result["accuracy"]]
      skipped = int(np.sum(result["skipped"]))
      rows.append([str(depth), "BN" if batch_norm else "no BN", *cells, str(skipped),
                   "yes" if ok else "no"])
  third = runner.markdown_table(
      ["depth", "network"] + [f"test accuracy, lr {lr:g}" for lr in setup.learning_rates]
      + ["skipped steps (all runs)", f"trains (>= {TRAINS_ACCURACY:.0%})"], rows)
  return (f"**Per-layer factor of the squared weight-gradient norm at initialization** "
          f"(depth {setup.depth}, width {setup.width}, batch {ref}; mean ± std over seeds)"
          f"\n\n{first}\n\n**With BN, against the batch size** (mean ± std)\n\n{second}\n\n"
          f"**Training ReLU MLPs of width {setup.train_width}** ({setup.train_epochs} "
          f"epochs of SGD on digits, batch {setup.train_batch}; test accuracy mean ± std)"
          f"\n\n{third}")


# ----------------------------------------------------------------- run


def run(ctx: RunContext) -> Outcome:
  setup = QUICK if ctx.quick else FULL
  start = time.perf_counter()
  measured = measure_initial_gradients(ctx, setup)
  measure_seconds = time.perf_counter() - start
  factors = growth_factors(measured["log_norms"], setup)
  verdicts = decide(factors, setup)

  training = train_deep_networks(ctx, setup)

  figures = ["gradient_norms.png", "factor_vs_batch.png", "training.png"]
  _norms_figure(os.path.join(ctx.out_dir, figures[0]), measured["log_norms"], setup,
                ctx.seeds)
  _batch_figure(os.path.join(ctx.out_dir, figures[1]), factors, setup, ctx.seeds)
  _training_figure(os.path.join(ctx.out_dir, figures[2]), training, setup, ctx.seeds)

  training_summary, which_train = {}, []
  for (depth, batch_norm), result in training.items():
    label = f"depth {depth} {'BN' if batch_norm else 'no BN'}"
    ok, best, best_index = trains(result["accuracy"])
    for lr, acc in zip(setup.learning_rates, result["accuracy"]):
      training_summary[f"{label} lr {lr:g}"] = summarize(acc)
    best_lr = setup.learning_rates[best_index] if best_index >= 0 else float("nan")
    which_train.append(f"{label}: {'trains' if ok else 'does not train'} (best mean test "
                       f"accuracy {best:.1%} at lr {best_lr:g})")
  offsets = [summarize(factors[config_key("linear", True, b)]).mean - linear_bn_factor(b)
             for b in setup.batch_sizes if b > 4]
  notes = [
      "Which deep ReLU networks train (best learning rate): " + "; ".join(which_train) + ".",
      f"Linear+BN against (B-2)/(B-3) at every batch above 4: measured minus theory "
      f"ranges from {min(offsets):+.4f} to {max(offsets):+.4f} (mean {np.mean(offsets):+.4f});"
      f" a finite-width correction is of order 1/width = {1 / setup.width:.4f}.",
      f"Gradients at initialization: {measured['programs']} compiled programs (one per "
      f"batch size), {measured['compile_seconds']:.1f} s compiling and "
      f"{measured['run_seconds']:.1f} s measuring {sum(map(len, factors.values()))} "
      f"networks; training: "
      f"{sum(r['compile_seconds'] for r in training.values()):.1f} s compiling, "
      f"{sum(r['train_seconds'] for r in training.values()):.1f} s training.",
  ]
  return Outcome(
      config={**dataclasses.asdict(setup), "activations": ACTIVATION_ORDER,
              "init_gain": INIT_GAIN, "num_classes": NUM_CLASSES,
              "train_data": TRAIN_DATA, "fit_window_layers": [setup.fit_window[0] + 1,
                                                              setup.fit_window[1]],
              "measure_seconds": measure_seconds,
              "measure_compile_seconds": measured["compile_seconds"]},
      per_seed={"factors": factors, "log_squared_norms": measured["log_norms"],
                "training_accuracy": {
                    f"depth {d} {'BN' if bn else 'no BN'} lr {lr:g}": acc
                    for (d, bn), r in training.items()
                    for lr, acc in zip(setup.learning_rates, r["accuracy"])},
                "training_skipped_steps": {
                    f"depth {d} {'BN' if bn else 'no BN'} lr {lr:g}": skipped
                    for (d, bn), r in training.items()
                    for lr, skipped in zip(setup.learning_rates, r["skipped"])}},
      summary={"factors": {key: summarize(values) for key, values in factors.items()},
               "training_accuracy": training_summary},
      verdicts=verdicts, table=_tables(factors, training, setup), figures=figures,
      notes=notes)
