"""Batch-norm state to and from PyTorch's conventions.

jaxnorm (like Flax) keeps ``new = m * old + (1 - m) * batch`` with the biased batch
variance; PyTorch keeps ``new = (1 - p) * old + p * batch`` with ``p = momentum``
(0.1 by default) and the *unbiased* batch variance ``n / (n - 1) * var``, plus a
``num_batches_tracked`` counter. With ``n`` values per feature in every batch and both
running variances starting at ``v0`` (1 in both libraries), after ``t`` updates

.. math::
  u_t = m^t v_0 + \\frac{n}{n - 1}\\,(v_t - m^t v_0)

which the converters apply exactly when given ``momentum`` and ``values_per_batch``
("training" conversion: continuing training in either library gives the same state).
Without them the running variance is copied unchanged ("inference" conversion):
PyTorch normalizes with its running variance at evaluation, so the converted layer
gives the same evaluation outputs. The running means are equal either way.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxnorm.functional import BatchStats
from jaxnorm.training import _validate


def momentum_to_torch(momentum: float) -> float:
  """Flax/jaxnorm momentum (weight of the old value) to PyTorch's (weight of the batch)."""
  if not 0.0 <= momentum <= 1.0:
    raise ValueError(f"jaxnorm.training.momentum_to_torch: momentum must be in [0, 1]; "
                     f"got {momentum}.")
  return 1.0 - momentum


def momentum_from_torch(momentum: float | None) -> float:
  """PyTorch's momentum to jaxnorm's (``0.1 -> 0.9``)."""
  if momentum is None:
    raise ValueError("jaxnorm.training.momentum_from_torch: momentum=None (PyTorch's "
                     "cumulative average) has no EMA equivalent; use precise_batch_stats.")
  return momentum_to_torch(momentum)


def _variance_factor_args(momentum, num_batches_tracked, values_per_batch, fn):
  """None for the inference conversion, else (decay m^t, n) of the training conversion."""
  if (momentum is None) != (values_per_batch is None):
    raise ValueError(f"{fn}: give both momentum and values_per_batch (exact training-state "
                     "conversion) or neither (running variance copied, same evaluation "
                     f"outputs); got momentum={momentum}, values_per_batch={values_per_batch}.")
  if num_batches_tracked < 0:
    raise ValueError(f"{fn}: num_batches_tracked must be >= 0; got {num_batches_tracked}.")
  if momentum is None:
    return None
  if not 0.0 <= momentum <= 1.0:
    raise ValueError(f"{fn}: momentum must be in [0, 1] (jaxnorm convention); got {momentum}.")
  if values_per_batch < 2:
    raise ValueError(f"{fn}: values_per_batch must be >= 2 (PyTorch's unbiased variance "
                     f"divides by n - 1); got {values_per_batch}.")
  return momentum ** num_batches_tracked, values_per_batch


def batch_norm_to_torch(
    stats: BatchStats,
    *,
    num_batches_tracked: int,
    momentum: float | None = None,
    values_per_batch: int | None = None,
    scale: Any = None,
    bias: Any = None,
    initial_var: float = 1.0,
) -> dict[str, np.ndarray]:
  """A ``torch.nn.BatchNorm*d`` state dict (NumPy arrays) from jaxnorm's state.

  Args:
    stats: jaxnorm running statistics (biased variance).
    num_batches_tracked: number of training updates so far.
    momentum: the jaxnorm momentum the statistics were accumulated with; with
      ``values_per_batch``, selects the exact training-state conversion.
    values_per_batch: values per feature in each batch (batch size x spatial size).
    scale, bias: the BN parameters, exported as ``weight`` and ``bias`` when given.
    initial_var: the running variance before training (1 in both libraries).
  """
  fn = "jaxnorm.training.batch_norm_to_torch"
  _validate.check_live({"stats": stats, "scale": scale, "bias": bias}, name="arguments",
                       fn=fn)
  exact = _variance_factor_args(momentum, num_batches_tracked, values_per_batch, fn)
  var = np.asarray(stats.var, np.float64)
  if exact is not None:
    decay, n = exact
    var = decay * initial_var + n / (n - 1) * (var - decay * initial_var)
  state = {"running_mean": np.asarray(stats.mean, np.float32),
           "running_var": var.astype(np.float32),
           "num_batches_tracked": np.asarray(num_batches_tracked, np.int64)}
  if scale is not None:
    state["weight"] = np.asarray(scale, np.float32)
  if bias is not None:
    state["bias"] = np.asarray(bias, np.float32)
  return state


def batch_norm_from_torch(
    state_dict: dict[str, Any],
    *,
    momentum: float | None = None,
    values_per_batch: int | None = None,
    initial_var: float = 1.0,
) -> tuple[BatchStats, dict[str, np.ndarray]]:
  """jaxnorm ``(BatchStats, {'scale', 'bias'})`` from a PyTorch BN state dict.

  Args:
    state_dict: with ``running_mean``, ``running_var``, ``num_batches_tracked`` and
      optionally ``weight``/``bias`` (tensors or arrays).
    momentum: the jaxnorm momentum (``momentum_from_torch(torch_bn.momentum)``); with
      ``values_per_batch``, selects the exact training-state conversion.
    values_per_batch: values per feature in each training batch.
    initial_var: the running variance before training.
  """
  fn = "jaxnorm.training.batch_norm_from_torch"

  def numpy(value):
    return np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)

  t = int(numpy(state_dict.get("num_batches_tracked", 0)))
  exact = _variance_factor_args(momentum, t, values_per_batch, fn)
  var = numpy(state_dict["running_var"]).astype(np.float64)
  if exact is not None:
    decay, n = exact
    var = decay * initial_var + (n - 1) / n * (var - decay * initial_var)
  stats = BatchStats(mean=np.asarray(numpy(state_dict["running_mean"]), np.float32),
                     var=var.astype(np.float32))
  params = {name: np.asarray(numpy(state_dict[key]), np.float32)
            for name, key in (("scale", "weight"), ("bias", "bias")) if key in state_dict}
  return stats, params
