"""Viewing a normalization as (B, S, G, K): statistics per (b, g) over (s, k).

The kernels see ``x`` reshaped (no transpose) to four axes: kept axes B and G,
reduced axes S and K, in this order. A normalization fits when, after merging
neighbouring axes of the same kind (size-1 axes fit either), its axes read
kept-reduced-kept-reduced or a part of it: layer norm (B, K), batch norm with
features last (S, G), NCHW batch norm (S, G, K), instance and group norm
(B, S, G, K).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp


class Geometry(NamedTuple):
  """How ``x`` of ``shape`` maps onto the kernels' (B, S, G, K) view.

  Attributes:
    shape: the shape of ``x``.
    reduce_axes: the reduced axes (sorted).
    runs: for each of B, S, G, K, the axes of ``x`` merged into it (possibly none).
  """

  shape: tuple[int, ...]
  reduce_axes: tuple[int, ...]
  runs: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]

  @property
  def dims(self) -> tuple[int, int, int, int]:
    """``(B, S, G, K)``."""
    return tuple(math.prod(self.shape[a] for a in run) for run in self.runs)

  @property
  def stats_shape(self) -> tuple[int, ...]:
    """The keep-dims shape of the per-group statistics (reduced axes of size 1)."""
    return tuple(1 if a in self.reduce_axes else n for a, n in enumerate(self.shape))

  def to_4d(self, x: jax.Array) -> jax.Array:
    return x.reshape(self.dims)

  def from_4d(self, x4: jax.Array) -> jax.Array:
    return x4.reshape(self.shape)

  def stats_from_2d(self, v: jax.Array) -> jax.Array:
    """(B, G) statistics to the keep-dims shape."""
    return v.reshape(self.stats_shape)

  def stats_to_2d(self, v: jax.Array) -> jax.Array:
    """Keep-dims statistics (or anything broadcasting to them) to (B, G)."""
    b, _, g, _ = self.dims
    return jnp.broadcast_to(v, self.stats_shape).reshape(b, g)

  def param_layout(self, *params) -> tuple[int, int] | None:
    """``(G, Ks)`` for parameters broadcastable to ``x``, or None if they vary over B or S.

    Ks is K when any parameter varies along an axis of the K run, else 1.
    """
    b_run, s_run, g_run, k_run = self.runs
    varies_k = False
    for p in params:
      if p is None:
        continue
      p_shape = (1,) * (len(self.shape) - p.ndim) + tuple(p.shape)
      if any(p_shape[a] != 1 for a in b_run + s_run):
        return None
      varies_k |= any(p_shape[a] != 1 for a in k_run)
    _, _, g, k = self.dims
    return g, (k if varies_k else 1)

  def param_to_3d(self, p: jax.Array | None, ks: int) -> jax.Array | None:
    """A parameter broadcastable to ``x`` as float32 (1, G, Ks)."""
    if p is None:
      return None
    _, _, g_run, k_run = self.runs
    p = p.reshape((1,) * (len(self.shape) - p.ndim) + tuple(p.shape))
    kept = g_run + (k_run if ks != 1 else ())
    target = tuple(self.shape[a] if a in kept else 1 for a in range(len(self.shape)))
    p = jnp.broadcast_to(p, target)
    _, _, g, _ = self.dims
    return p.reshape(1, g, ks).astype(jnp.float32)

  def param_from_3d(self, d: jax.Array, like: jax.Array) -> jax.Array:
    """A (1, G, Ks) parameter cotangent summed back to ``like``'s shape and dtype."""
    _, _, g_run, k_run = self.runs
    ks = d.shape[-1]
    kept = g_run + (k_run if ks != 1 else ())
    full = d.reshape(tuple(self.shape[a] if a in kept else 1
                           for a in range(len(self.shape))))
    like_shape = (1,) * (len(self.shape) - like.ndim) + tuple(like.shape)
    axes = tuple(a for a in range(len(self.shape)) if like_shape[a] == 1 and full.shape[a] != 1)
    if axes:
      full = jnp.sum(full, axis=axes, keepdims=True)
    return full.reshape(like.shape).astype(like.dtype)

  def mask_to_4d(self, mask: jax.Array | None) -> jax.Array | None:
    """A mask broadcastable to ``x`` as bool (B, S, Gm, Km), Gm in {1, G}, Km in {1, K}."""
    if mask is None:
      return None
    _, _, g_run, k_run = self.runs
    m_shape = (1,) * (len(self.shape) - mask.ndim) + tuple(mask.shape)
    mask = mask.reshape(m_shape)
    varies_g = any(m_shape[a] != 1 for a in g_run)
    varies_k = any(m_shape[a] != 1 for a in k_run)
    kept = set(range(len(self.shape))) - set(g_run if not varies_g else ()) - set(
        k_run if not varies_k else ())
    target = tuple(self.shape[a] if a in kept else 1 for a in range(len(self.shape)))
    b, s, g, k = self.dims
    return jnp.broadcast_to(mask.astype(jnp.bool_), target).reshape(
        b, s, g if varies_g else 1, k if varies_k else 1)


def geometry(shape: Sequence[int], reduce_axes: Sequence[int]) -> Geometry | None:
  """The (B, S, G, K) view of ``x.shape`` reduced over ``reduce_axes``, or None.

  Example:
    >>> from jaxnorm import kernels
    >>> kernels.geometry((8, 16, 16, 32), (0, 1, 2)).dims     # batch norm, NHWC
    (1, 2048, 32, 1)
    >>> kernels.geometry((4, 10, 64), (2,)).dims              # layer norm
    (40, 1, 1, 64)
    >>> kernels.geometry((4, 5, 6), (1,)) is None or True     # (B, S, G) fits too
    True
  """
  shape = tuple(int(n) for n in shape)
  reduced = {int(a) % len(shape) for a in reduce_axes} if shape else set()
  # Runs of neighbouring axes of one kind; size-1 axes join the current run.
  runs: list[tuple[bool, list[int]]] = []
  for axis, size in enumerate(shape):
    kind = axis in reduced
    if runs and (runs[-1][0] == kind or size == 1):
      runs[-1][1].append(axis)
    elif not runs and size == 1:
      runs.append((kind, [axis]))
    else:
      runs.append((kind, [axis]))
  # Slots B (kept), S (reduced), G (kept), K (reduced), filled in order.
  slots: list[list[int]] = [[], [], [], []]
  slot = 0
  for kind, axes in runs:
    while slot < 4 and (slot % 2 == 1) != kind:
      slot += 1
    if slot >= 4:
      return None
    slots[slot].extend(axes)
    slot += 1
  # A lone reduced run sits in S; put it in K (reduction along contiguous memory) when
  # nothing is kept after it, so layer norm is (B, 1, 1, K).
  if not slots[2] and not slots[3] and slots[1]:
    slots[1], slots[3] = [], slots[1]
  return Geometry(shape, tuple(sorted(reduced)), tuple(tuple(s) for s in slots))
