"""Gated recurrent units with normalization inside the cell, and variable-length data.

The MNIST-1D benchmark's recurrent baseline (Greydanus 2020, ``GRUBase``) reads a
length-40 signal one value per step with a bidirectional GRU of 6 hidden units and
classifies the flattened outputs of every step with one Dense layer. :class:`GRUClassifier`
is that model built from Flax and jaxnorm's modules, with the time loop a
``flax.linen.scan`` (one ``lax.scan``) per direction, and three choices of
normalization inside the cell (:data:`RECURRENT_NORMS`):

- ``"none"``: PyTorch's GRU equations;
- ``"layer"``: layer norm of the recurrent pre-activation of the three gates, per
  example and step (Ba et al. 2016, "Layer normalization", §3.1 and the GRU of §A);
- ``"batch"``: batch norm of the same pre-activation, with **one** set of running
  statistics shared by every time step: in training each step is normalized with its
  own batch statistics, and each step moves the shared running mean and variance (an
  exponential average over steps and training steps); evaluation normalizes every
  step with the shared running statistics. (Cooijmans et al. 2016 keep statistics per
  step instead; sharing them is what a single BN layer in a cell does.)

Only the recurrent projection :math:`W_h h_{t-1}` is normalized: the input has one value
per step, so its projection :math:`W_x x_t` has rank one and normalizing it over its
features would keep only the sign of :math:`x_t`.

Variable-length sequences are given as ``(N, T, 2)`` arrays of ``[value, valid]``
(:func:`variable_length`): padded steps leave the hidden state unchanged, output
zeros, and are excluded from batch-norm statistics through jaxnorm's ``mask=``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jaxnorm

from .mnist1d_models import TorchDense, torch_uniform

RECURRENT_NORMS = ("none", "layer", "batch")


class NormGRUCell(nn.Module):
  r"""One step of a GRU whose recurrent pre-activation may be normalized.

  .. math::
    (a_r, a_z, a_n) &= \mathrm{norm}(W_h h_{t-1} + b_h) \\
    r &= \sigma(u_r + a_r), \quad z = \sigma(u_z + a_z), \quad
    n = \tanh(u_n + r \odot a_n) \\
    h_t &= (1 - z) \odot n + z \odot h_{t-1}

  where :math:`u = W_x x_t + b_x` (``inputs[0]``, computed for all steps before the
  scan) and ``norm`` is the identity, a layer norm or a batch norm over the
  :math:`3H` features (``b_h`` is left out when a normalization follows: its shift
  replaces it). At a padded step (``inputs[1]`` False) :math:`h_t = h_{t-1}` and the
  output is zero.

  Attributes:
    hidden: :math:`H`.
    norm: one of :data:`RECURRENT_NORMS`.
    train: batch norm uses batch statistics and updates its running ones.
    momentum: batch norm's running-average momentum (per time step).
  """

  hidden: int
  norm: str = "none"
  train: bool = False
  momentum: float = 0.99

  @nn.compact
  def __call__(self, h, inputs):
    projected, valid = inputs
    init = torch_uniform(self.hidden)
    recurrent = nn.Dense(3 * self.hidden, use_bias=self.norm == "none", kernel_init=init,
                         bias_init=init, name="recurrent")(h)
    self.sow("intermediates", "preactivation", recurrent)
    if self.norm == "layer":
      recurrent = jaxnorm.LayerNorm(name="norm")(recurrent)
    elif self.norm == "batch":
      recurrent = jaxnorm.BatchNorm(use_running_average=not self.train,
                                    momentum=self.momentum, name="norm")(
                                        recurrent, mask=valid[:, None])
    elif self.norm != "none":
      raise ValueError(f"NormGRUCell: norm must be one of {RECURRENT_NORMS}; got "
                       f"{self.norm!r}. Use 'none', 'layer' or 'batch'.")
    u_r, u_z, u_n = jnp.split(projected, 3, axis=-1)
    a_r, a_z, a_n = jnp.split(recurrent, 3, axis=-1)
    r = nn.sigmoid(u_r + a_r)
    z = nn.sigmoid(u_z + a_z)
    n = jnp.tanh(u_n + r * a_n)
    new = (1.0 - z) * n + z * h
    keep = valid[:, None]
    new = jnp.where(keep, new, h)
    return new, jnp.where(keep, new, jnp.zeros_like(new))


class GRU(nn.Module):
  """A GRU over ``(N, T, F)`` inputs with a validity mask ``(N, T)``, in one scan.

  Returns the outputs ``(N, T, H)`` (zero at padded steps) in input order; with
  ``reverse=True`` the sequence is read from its end (padding at the end is skipped
  because padded steps keep the zero initial state).
  """

  hidden: int
  norm: str = "none"
  train: bool = False
  reverse: bool = False
  momentum: float = 0.99

  @nn.compact
  def __call__(self, x, valid):
    init = torch_uniform(self.hidden)
    projected = nn.Dense(3 * self.hidden, kernel_init=init, bias_init=init,
                         name="input")(x)
    # One set of parameters and one of running statistics for every step. The
    # statistics are created (init) and read (evaluation) like the parameters, and
    # carried from step to step when they are updated (training).
    carry = self.is_mutable_collection("batch_stats") and not self.is_initializing()
    scan = nn.scan(NormGRUCell,
                   variable_broadcast="params" if carry else ("params", "batch_stats"),
                   variable_carry="batch_stats" if carry else (),
                   variable_axes={"intermediates": 1},
                   split_rngs={"params": False}, in_axes=1, out_axes=1,
                   reverse=self.reverse)
    cell = scan(hidden=self.hidden, norm=self.norm, train=self.train,
                momentum=self.momentum, name="cell")
    h0 = jnp.zeros((x.shape[0], self.hidden), projected.dtype)
    _, outputs = cell(h0, (projected, valid))
    return outputs


class GRUClassifier(nn.Module):
  """The MNIST-1D ``GRUBase``: a (bidirectional) GRU, flattened outputs, one Dense.

  Inputs are ``(N, T)`` signals (every step valid) or, with ``masked_input=True``,
  ``(N, T, 2)`` arrays whose last axis holds ``[value, valid]`` (see
  :func:`variable_length`). Dropout (the call's ``dropout_rate``, which may be traced)
  acts on the flattened outputs before the classifier, never inside the recurrence.

  Attributes:
    hidden: hidden units per direction (the benchmark uses 6).
    num_classes: outputs of the classifier.
    norm: one of :data:`RECURRENT_NORMS`, inside the cell.
    bidirectional: read the sequence both ways (as the benchmark).
    masked_input: inputs carry a validity channel.
    momentum: batch norm's running-average momentum (applied at every time step).

  Example:
    >>> model = GRUClassifier(hidden=3, norm="batch")
    >>> x = jnp.ones((4, 8))
    >>> variables = model.init(jax.random.key(0), x, train=False)
    >>> logits, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
    >>> logits.shape
    (4, 10)
  """

  hidden: int = 6
  num_classes: int = 10
  norm: str = "none"
  bidirectional: bool = True
  masked_input: bool = False
  momentum: float = 0.99

  @nn.compact
  def __call__(self, x, train: bool, dropout_rate=0.0):
    if self.masked_input:
      if x.ndim != 3 or x.shape[-1] != 2:
        raise ValueError(f"GRUClassifier: with masked_input=True, x must have shape "
                         f"(N, T, 2) holding [value, valid]; got x.shape={x.shape}. Build "
                         "it with experiments.recurrent.variable_length.")
      values, valid = x[..., :1], x[..., 1] > 0.5
    else:
      if x.ndim != 2:
        raise ValueError(f"GRUClassifier: x must have shape (N, T) (one value per step); "
                         f"got x.shape={x.shape}. For padded sequences use "
                         "masked_input=True.")
      values, valid = x[..., None], jnp.ones(x.shape, bool)
    options = dict(hidden=self.hidden, norm=self.norm, train=train, momentum=self.momentum)
    outputs = [GRU(**options, name="forward")(values, valid)]
    if self.bidirectional:
      outputs.append(GRU(**options, reverse=True, name="backward")(values, valid))
    h = jnp.concatenate(outputs, axis=-1).reshape((x.shape[0], -1))
    h = jaxnorm.Dropout(dropout_rate, deterministic=not train, name="dropout")(h)
    return TorchDense(self.num_classes, name="readout")(h)


def variable_length(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  """Each signal resampled to its own length, left-aligned and zero-padded, with a mask.

  Signal ``i`` (length ``T``) is linearly interpolated at ``lengths[i]`` evenly spaced
  points from its first to its last value (the whole signal, read faster), as the
  MNIST-1D generator itself resamples its signals to 40 points.

  Args:
    x: ``(N, T)`` signals.
    lengths: ``(N,)`` integers in ``[2, T]``.

  Returns:
    ``(N, T, 2)`` float32: ``[..., 0]`` the resampled values (0 after the end),
    ``[..., 1]`` 1 at valid steps and 0 at padding.

  Example:
    >>> out = variable_length(np.array([[0., 1., 2., 3.]]), np.array([3]))
    >>> out[0, :, 0].tolist(), out[0, :, 1].tolist()
    ([0.0, 1.5, 3.0, 0.0], [1.0, 1.0, 1.0, 0.0])
  """
  x = np.asarray(x, np.float64)
  lengths = np.asarray(lengths)
  if x.ndim != 2:
    raise ValueError(f"variable_length: x must have shape (N, T); got x.shape={x.shape}.")
  n, steps = x.shape
  if lengths.shape != (n,) or not np.issubdtype(lengths.dtype, np.integer):
    raise ValueError(f"variable_length: lengths must be {n} integers (one per signal); got "
                     f"shape {lengths.shape} and dtype {lengths.dtype}.")
  if lengths.min() < 2 or lengths.max() > steps:
    raise ValueError(f"variable_length: lengths must lie in [2, {steps}] (T = x.shape[1]); "
                     f"got values from {lengths.min()} to {lengths.max()}.")
  out = np.zeros((n, steps, 2), np.float32)
  grid = np.arange(steps)
  for i, length in enumerate(lengths):
    out[i, :length, 0] = np.interp(np.linspace(0, steps - 1, length), grid, x[i])
    out[i, :length, 1] = 1.0
  return out


def recurrent_moments(variables: dict[str, Any], intermediates, valid) -> dict:
  """Per-step batch moments of each cell's recurrent pre-activation, and BN's running ones.

  Args:
    variables: the model's variables (for ``batch_stats``, may lack them).
    intermediates: the ``intermediates`` collection of a call of
      :class:`GRUClassifier` (``mutable=["intermediates", ...]``).
    valid: ``(N, T)`` validity mask of that call.

  Returns:
    ``{direction: {"mean": (T, 3H), "var": (T, 3H), "running_mean": (3H,) or None,
    "running_var": (3H,) or None}}``, the moments over the valid examples of each step.
  """
  out = {}
  for direction, tree in intermediates.items():
    values = tree["cell"]["preactivation"][0]  # (N, T, 3H)
    mean, var = jaxnorm.functional.moments(values, axes=0, mask=valid[..., None])
    stats = variables.get("batch_stats", {}).get(direction, {}).get("cell", {}).get("norm")
    out[direction] = {"mean": mean, "var": var,
                      "running_mean": None if stats is None else stats["mean"],
                      "running_var": None if stats is None else stats["var"]}
  return out
