"""Internal covariate shift, measured two ways.

Santurkar et al. (2018, §2.2, Definition 2.1) define the internal covariate shift of
layer :math:`i` at step :math:`t` through gradients: :math:`G` is the gradient of the
loss with respect to the layer's parameters at the current parameters, :math:`G'` the
same gradient, on the same batch, after the earlier layers have taken their update of
this step while the layer itself and the later ones have not. A layer whose input
distribution did not move sees :math:`G' = G`. :func:`gradient_shift` measures
:math:`\\lVert G - G' \\rVert_2` and :math:`\\cos(G, G')` for every layer at once.

The plain reading of "covariate shift" is the movement of a layer's input distribution
over training: :func:`distribution_shift` measures how far each unit's mean and
standard deviation move between evaluations, relative to the layer's scale.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class GradientShift(NamedTuple):
  """Per-layer change of a layer's gradient when the earlier layers are updated.

  Attributes:
    l2: :math:`\\lVert G - G' \\rVert_2`, shape ``(layers,)``.
    cosine: :math:`\\langle G, G' \\rangle / (\\lVert G\\rVert \\lVert G'\\rVert)`
      (1 when a gradient is zero and the other equals it).
    relative_l2: :math:`\\lVert G - G' \\rVert_2 / \\lVert G \\rVert_2` (0 when both are
      zero).
  """

  l2: jax.Array
  cosine: jax.Array
  relative_l2: jax.Array


def _flat(tree) -> jax.Array:
  leaves = jax.tree.leaves(tree)
  return jnp.concatenate([jnp.ravel(leaf) for leaf in leaves])


def _check_groups(params, new_params, groups) -> None:
  if not groups or any(not group for group in groups):
    raise ValueError("gradient_shift: groups must be a non-empty sequence of non-empty "
                     f"name sequences (layers in forward order); got {groups!r}.")
  names = [name for group in groups for name in group]
  if len(set(names)) != len(names):
    raise ValueError(f"gradient_shift: a parameter name appears in two groups: {groups!r}; "
                     "list each top-level name once.")
  for name in names:
    if name not in params or name not in new_params:
      raise ValueError(f"gradient_shift: group name {name!r} is not a top-level entry of "
                       f"params and new_params (params has {sorted(params)}); pass the "
                       "names of the model's modules.")


def gradient_shift(loss_fn: Callable[[Any], jax.Array], params, new_params,
                   groups: Sequence[Sequence[str]]) -> GradientShift:
  r"""Santurkar et al.'s internal covariate shift of every layer at one step.

  For layer :math:`i` with measured parameters :math:`W_i` (the first name of
  ``groups[i]``):

  .. math::
    G_i = \nabla_{W_i} L(W_{<i}, W_i, W_{>i}), \qquad
    G'_i = \nabla_{W_i} L(W'_{<i}, W_i, W_{>i}),

  where :math:`W'` are the parameters after this step's update (``new_params``) and
  :math:`W_{<i}` every parameter of the groups before ``i``; the result holds
  :math:`\lVert G_i - G'_i \rVert_2`, :math:`\cos(G_i, G'_i)` and the relative distance.
  The first layer has no earlier layers: its shift is 0 and its cosine 1.

  Args:
    loss_fn: ``params -> scalar loss`` on one fixed batch (any randomness inside, e.g.
      injected noise, must be fixed by the closure, so that only the parameters differ).
    params: the current parameters, a dict keyed by top-level module names.
    new_params: the parameters after the step's update, same structure.
    groups: the layers in forward order, each a sequence of top-level names; the first
      name of a group is the layer whose gradient is measured, all names of the groups
      before it are "earlier layers" (e.g. ``[["Dense_0", "BatchNorm_0"], ["Dense_1"]]``).

  Returns:
    A :class:`GradientShift` with arrays of shape ``(len(groups),)``.

  Reference: Santurkar, Tsipras, Ilyas & Madry 2018, How Does Batch Normalization Help
  Optimization?, §2.2 and Definition 2.1.

  Example:
    >>> import jax.numpy as jnp
    >>> loss = lambda p: 0.5 * (p["b"] * p["a"] * 2.0 - 1.0) ** 2
    >>> shift = gradient_shift(loss, {"a": jnp.array(1.0), "b": jnp.array(1.0)},
    ...                        {"a": jnp.array(0.5), "b": jnp.array(0.9)}, [["a"], ["b"]])
    >>> [round(float(v), 4) for v in shift.l2]  # G_b = (2ab-1)2a: 2.0 -> 0.0
    [0.0, 2.0]
  """
  _check_groups(params, new_params, groups)
  # One parameter set per layer i (the groups before i updated), differentiated in one
  # vmapped backward pass: set 0 is the current parameters, so it gives every G.
  names = {name: i for i, group in enumerate(groups) for name in group}
  mixed = {name: jax.tree.map(
      lambda old, new, first=names.get(name, len(groups)): jnp.stack(
          [new if first < i else old for i in range(len(groups))]),
      value, new_params[name]) for name, value in params.items()}
  grads = jax.vmap(jax.grad(loss_fn))(mixed)
  l2, cosine, relative = [], [], []
  for i, group in enumerate(groups):
    g = _flat(jax.tree.map(lambda leaf: leaf[0], grads[group[0]]))
    g_new = _flat(jax.tree.map(lambda leaf, i=i: leaf[i], grads[group[0]]))
    diff = jnp.linalg.norm(g - g_new)
    norm, norm_new = jnp.linalg.norm(g), jnp.linalg.norm(g_new)
    both = norm * norm_new
    l2.append(diff)
    cosine.append(jnp.where(both > 0, jnp.dot(g, g_new) / jnp.where(both > 0, both, 1.0),
                            jnp.where(diff == 0, 1.0, 0.0)))
    relative.append(jnp.where(norm > 0, diff / jnp.where(norm > 0, norm, 1.0),
                              jnp.where(diff == 0, 0.0, jnp.inf)))
  return GradientShift(jnp.stack(l2), jnp.stack(cosine), jnp.stack(relative))


def unit_moments(h: jax.Array) -> jax.Array:
  r"""Mean and standard deviation of every unit over a batch, stacked ``(2, U)``.

  .. math:: m_u = \frac1N \sum_n h_{nu}, \quad s_u = \sqrt{\tfrac1N \sum_n (h_{nu} - m_u)^2}

  Example:
    >>> import jax.numpy as jnp
    >>> unit_moments(jnp.array([[0.0, 1.0], [2.0, 1.0]])).tolist()
    [[1.0, 1.0], [1.0, 0.0]]
  """
  h = jnp.asarray(h)
  if h.ndim != 2:
    raise ValueError(f"unit_moments: h must be (examples, units); got shape {h.shape}; "
                     "reshape it to 2-D first.")
  return jnp.stack([jnp.mean(h, axis=0), jnp.std(h, axis=0)])


def distribution_shift(moments: np.ndarray) -> np.ndarray:
  r"""How far a layer's per-unit distributions move between consecutive evaluations.

  Each unit is summarized by its mean :math:`m_u` and standard deviation :math:`s_u`;
  the move of unit :math:`u` from evaluation :math:`e-1` to :math:`e` is the
  2-Wasserstein distance between the Gaussians with those moments, relative to the
  layer's scale at :math:`e-1` (the root mean square of its units' deviations from
  their means, :math:`\bar s`), averaged over units:

  .. math::
    D_e = \frac{1}{U} \sum_u \frac{\sqrt{(m_{u,e} - m_{u,e-1})^2 + (s_{u,e} - s_{u,e-1})^2}}
                               {\bar s_{e-1}}, \qquad
    \bar s_{e} = \sqrt{\tfrac1U \textstyle\sum_u s_{u,e}^2}.

  Dividing by the scale makes the number comparable between networks whose
  activations have different sizes (a network without BN whose weights grow).

  Args:
    moments: ``(..., E, 2, U)``: means (index 0) and standard deviations (index 1) of
      ``U`` units at ``E`` evaluations (leading axes, e.g. seeds or layers, are kept).

  Returns:
    ``(..., E - 1)``: :math:`D_e` for ``e = 1 .. E-1`` (NaN where the layer's scale at
    ``e-1`` is 0: every unit constant, nothing to compare with).

  Example:
    >>> import numpy as np
    >>> m = np.array([[[0.0, 0.0], [1.0, 1.0]], [[0.3, -0.3], [1.0, 1.0]]])  # E=2, U=2
    >>> distribution_shift(m).round(6).tolist()
    [0.3]
  """
  moments = np.asarray(moments, np.float64)
  if moments.ndim < 3 or moments.shape[-2] != 2 or moments.shape[-3] < 2:
    raise ValueError("distribution_shift: moments must be (..., evaluations >= 2, 2, "
                     f"units) with means and stds on axis -2; got shape {moments.shape}.")
  mean, std = moments[..., 0, :], moments[..., 1, :]
  moved = np.sqrt(np.diff(mean, axis=-2) ** 2 + np.diff(std, axis=-2) ** 2)
  scale = np.sqrt(np.mean(std[..., :-1, :] ** 2, axis=-1))
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(scale > 0, moved.mean(axis=-1) / np.where(scale > 0, scale, 1.0),
                    np.nan)
