"""Batch-norm state to and from PyTorch's conventions.

jaxnorm (like Flax) keeps ``new = m * old + (1 - m) * batch`` with the biased batch
variance; PyTorch keeps ``new = (1 - p) * old + p * batch`` with ``p = momentum``
(0.1 by default) and the *unbiased* batch variance ``n / (n - 1) * var``, plus a
``num_batches_tracked`` counter. With ``n`` values per feature in every batch and both
running variances starting at ``v0`` (1 in both libraries), after ``t`` updates

.. math::
  u_t = m^t v_0 + \\frac{n}{n - 1}\\,(v_t - m^t v_0)

which the converters below apply exactly (the running means are equal).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxnorm.functional import BatchStats


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


def _check_counts(num_batches_tracked: int, values_per_batch: int, fn: str) -> None:
  if num_batches_tracked < 0:
    raise ValueError(f"{fn}: num_batches_tracked must be >= 0; got {num_batches_tracked}.")
  if values_per_batch < 2:
    raise ValueError(f"{fn}: values_per_batch must be >= 2 (PyTorch's unbiased variance "
                     f"divides by n - 1); got {values_per_batch}.")


def batch_norm_to_torch(
    stats: BatchStats,
    *,
    momentum: float,
    num_batches_tracked: int,
    values_per_batch: int,
    scale: Any = None,
    bias: Any = None,
    initial_var: float = 1.0,
) -> dict[str, np.ndarray]:
  """A ``torch.nn.BatchNorm*d`` state dict (NumPy arrays) from jaxnorm's state.

  Args:
    stats: jaxnorm running statistics (biased variance).
    momentum: the jaxnorm momentum they were accumulated with.
    num_batches_tracked: number of training updates so far.
    values_per_batch: values per feature in each batch (batch size x spatial size).
    scale, bias: the BN parameters, exported as ``weight`` and ``bias`` when given.
    initial_var: the running variance before training (1 in both libraries).
  """
  fn = "jaxnorm.training.batch_norm_to_torch"
  _check_counts(num_batches_tracked, values_per_batch, fn)
  decay = momentum ** num_batches_tracked
  var = np.asarray(stats.var, np.float64)
  n = values_per_batch
  running_var = decay * initial_var + n / (n - 1) * (var - decay * initial_var)
  state = {"running_mean": np.asarray(stats.mean, np.float32),
           "running_var": running_var.astype(np.float32),
           "num_batches_tracked": np.asarray(num_batches_tracked, np.int64)}
  if scale is not None:
    state["weight"] = np.asarray(scale, np.float32)
  if bias is not None:
    state["bias"] = np.asarray(bias, np.float32)
  return state


def batch_norm_from_torch(
    state_dict: dict[str, Any],
    *,
    momentum: float,
    values_per_batch: int,
    initial_var: float = 1.0,
) -> tuple[BatchStats, dict[str, np.ndarray]]:
  """jaxnorm ``(BatchStats, {'scale', 'bias'})`` from a PyTorch BN state dict.

  Args:
    state_dict: with ``running_mean``, ``running_var``, ``num_batches_tracked`` and
      optionally ``weight``/``bias`` (tensors or arrays).
    momentum: the jaxnorm momentum (``momentum_from_torch(torch_bn.momentum)``).
    values_per_batch: values per feature in each training batch.
    initial_var: the running variance before training.
  """
  fn = "jaxnorm.training.batch_norm_from_torch"

  def numpy(value):
    return np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)

  t = int(numpy(state_dict["num_batches_tracked"]))
  _check_counts(t, values_per_batch, fn)
  decay = momentum ** t
  n = values_per_batch
  unbiased = numpy(state_dict["running_var"]).astype(np.float64)
  var = decay * initial_var + (n - 1) / n * (unbiased - decay * initial_var)
  stats = BatchStats(mean=np.asarray(numpy(state_dict["running_mean"]), np.float32),
                     var=var.astype(np.float32))
  params = {name: np.asarray(numpy(state_dict[key]), np.float32)
            for name, key in (("scale", "weight"), ("bias", "bias")) if key in state_dict}
  return stats, params
