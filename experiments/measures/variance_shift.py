r"""The variance shift of inverted dropout: what batch norm sees in training and at inference.

Inverted dropout with keep probability :math:`p` keeps the mean of its input but not
its variance. On an input of mean :math:`c` and variance :math:`v` it outputs, in
training, a variance of :math:`\frac{1}{p}(c^2 + v) - c^2`, and at inference (no
dropout) :math:`v`. A batch-norm layer after the dropout accumulates its running
variance from the former and normalizes with it at inference, where its input has the
latter. Li et al. (2019) call the quotient the variance shift:

.. math::
  \Delta(p) = \frac{v}{\frac{1}{p}(c^2 + v) - c^2} \le 1 .

References:
  Li, Chen, Hu, Yang, "Understanding the Disharmony between Dropout and Batch
  Normalization by Variance Shift", CVPR 2019.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxnorm import _checks
from jaxnorm import functional as F


def _check_keep_prob(keep_prob, fn: str) -> np.ndarray:
  keep_prob = np.asarray(keep_prob, np.float64)
  if not np.all((keep_prob > 0) & (keep_prob <= 1)):
    raise ValueError(f"{fn}: keep_prob must be in (0, 1] (the probability of keeping a "
                     f"unit: 1 - drop rate); got {keep_prob.tolist()!r}.")
  return keep_prob


def dropout_variance(keep_prob, mean, var) -> np.ndarray:
  r"""Variance of inverted dropout's output in training, on an input of known moments.

  .. math:: \operatorname{Var}\Big[\frac{b\,x}{p}\Big] = \frac{1}{p}(c^2 + v) - c^2,
     \qquad b \sim \mathrm{Bernoulli}(p)

  with :math:`p` = ``keep_prob``, :math:`c` = ``mean`` and :math:`v` = ``var`` (the
  mask independent of :math:`x`). Arguments broadcast against each other.

  Example:
    >>> float(dropout_variance(0.5, mean=1.0, var=1.0))
    3.0
  """
  fn = "experiments.measures.variance_shift.dropout_variance"
  keep_prob = _check_keep_prob(keep_prob, fn)
  mean, var = np.asarray(mean, np.float64), np.asarray(var, np.float64)
  if not np.all(var >= 0):
    raise ValueError(f"{fn}: var must be >= 0 (a variance); got {var.tolist()!r}.")
  return (mean ** 2 + var) / keep_prob - mean ** 2


def shift_ratio(keep_prob, mean, var, *, batch_size: int | None = None) -> np.ndarray:
  r"""Li et al.'s variance shift :math:`\Delta(p)`: inference variance over training variance.

  .. math:: \Delta(p) = \frac{v}{\frac{1}{p}(c^2 + v) - c^2}

  with :math:`p` = ``keep_prob``, :math:`c` = ``mean``, :math:`v` = ``var``. Given
  ``batch_size`` :math:`B`, the ratio is taken against what a batch-norm running
  variance holds instead: the average of biased batch variances, :math:`(B-1)/B` of the
  training variance, so the result is :math:`\Delta(p)\,B/(B-1)`.

  Args:
    keep_prob: probability of keeping a unit, in (0, 1] (1 - drop rate).
    mean: the input's mean :math:`c`.
    var: the input's variance :math:`v` (>= 0). Where both are 0 the ratio of two zero
      variances is undefined and the result is NaN.
    batch_size: the batch size of a running variance to compare against (>= 2), or
      None for the training variance itself.

  Returns:
    A float64 array, the broadcast shape of the arguments.

  Example:
    >>> round(float(shift_ratio(0.5, mean=1.0, var=1.0)), 6)
    0.333333
    >>> float(shift_ratio(0.8, mean=0.0, var=2.0))   # zero mean: the ratio is p
    0.8
  """
  fn = "experiments.measures.variance_shift.shift_ratio"
  if batch_size is not None and (isinstance(batch_size, bool) or
                                 not isinstance(batch_size, (int, np.integer))
                                 or batch_size < 2):
    raise ValueError(f"{fn}: batch_size must be an int >= 2 (a biased batch variance "
                     f"needs two examples) or None; got {batch_size!r}.")
  train = dropout_variance(keep_prob, mean, var)
  var = np.asarray(var, np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    ratio = np.where(train > 0, var / np.where(train > 0, train, 1.0), np.nan)
  if batch_size is not None:
    ratio = ratio * batch_size / (batch_size - 1)
  return ratio


def measured_shift_ratio(key: jax.Array, x: jax.Array, *, rate: float,
                         axis: int = 0) -> jax.Array:
  r"""The shift measured on a sample: variance of ``x`` over variance of ``dropout(x)``.

  .. math:: \hat\Delta = \frac{\hat\sigma^2(x)}{\hat\sigma^2(\mathrm{dropout}(x))}

  Both variances are biased sample variances along ``axis`` (per feature on the other
  axes), computed with :func:`jaxnorm.functional.moments`; dropout is
  :func:`jaxnorm.functional.dropout` with ``key``. A feature whose dropped-out sample
  has zero variance gives NaN (no ratio exists).

  Args:
    key: the dropout key.
    x: samples, floating point.
    rate: drop probability in [0, 1); may be traced (not range-checked then).
    axis: the sample axis.

  Example:
    >>> x = jax.random.normal(jax.random.key(0), (100_000,)) + 1.0   # c = 1, v = 1
    >>> r = measured_shift_ratio(jax.random.key(1), x, rate=0.5)
    >>> abs(float(r) - 1 / 3) < 0.01
    True
  """
  fn = "experiments.measures.variance_shift.measured_shift_ratio"
  static_rate = _checks.concrete_float(rate)
  if static_rate is not None and not 0.0 <= static_rate < 1.0:
    raise ValueError(f"{fn}: rate must be in [0, 1) (the drop probability; at 1 every "
                     f"unit is dropped and no variance is left); got {rate!r}.")
  x = jnp.asarray(x)
  _, eval_var = F.moments(x, axis)
  _, train_var = F.moments(F.dropout(key, x, rate=rate), axis)
  return jnp.where(train_var > 0, eval_var / jnp.where(train_var > 0, train_var, 1.0),
                   jnp.nan)
