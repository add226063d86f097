"""Viewing a normalization as runs of axes B, S, G, K: statistics per (b, g) over (s, k).

The kernels take ``x`` as it is (no reshape, no transpose) together with a *layout*
``(nb, ns, ng, nk)``: its first ``nb`` axes form B (kept), the next ``ns`` S
(reduced), then ``ng`` G (kept) and ``nk`` K (reduced); the kernel works on the
row-major (B, S, G, K) view. A normalization fits when, after merging neighbouring
axes of the same kind (size-1 axes fit either), its axes read kept-reduced-kept-reduced
or a part of it: layer norm (B, K), batch norm with features last (S, G), NCHW batch
norm (S, G, K), instance and group norm (B, S, G, K). Because no axis is merged by a
reshape, each keeps its own sharding under ``jax.jit``.

Statistics have ``x``'s rank with size 1 on S and K ("keep-dims"); parameters have
``x``'s rank with size 1 on B and S, ``x``'s sizes on G and ``x``'s sizes or 1 on K; a
mask has ``x``'s sizes on B and S and ``x``'s sizes or 1 on G and on K.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp


class Geometry(NamedTuple):
  """How ``x`` of ``shape`` reduced over ``reduce_axes`` maps onto runs B, S, G, K.

  Attributes:
    shape: the shape of ``x``.
    reduce_axes: the reduced axes (sorted, non-negative).
    layout: ``(nb, ns, ng, nk)``, the number of axes in each run.
  """

  shape: tuple[int, ...]
  reduce_axes: tuple[int, ...]
  layout: tuple[int, int, int, int]

  @property
  def runs(self) -> tuple[tuple[int, ...], ...]:
    """The axes of each of B, S, G, K."""
    bounds = [0]
    for n in self.layout:
      bounds.append(bounds[-1] + n)
    return tuple(tuple(range(bounds[r], bounds[r + 1])) for r in range(4))

  @property
  def dims(self) -> tuple[int, int, int, int]:
    """``(B, S, G, K)``."""
    return tuple(math.prod(self.shape[a] for a in run) for run in self.runs)

  @property
  def stats_shape(self) -> tuple[int, ...]:
    return stats_shape(self.shape, self.layout)

  def param_ks(self, *params) -> int | None:
    """K when a parameter varies along the K run, else 1; None if one varies along B or S.

    Parameters broadcast against ``x`` (any rank up to ``x``'s).
    """
    b_run, s_run, _, k_run = self.runs
    varies_k = False
    for p in params:
      if p is None:
        continue
      p_shape = _padded_shape(p, len(self.shape))
      if any(p_shape[a] != 1 for a in b_run + s_run):
        return None
      varies_k |= any(p_shape[a] != 1 for a in k_run)
    return self.dims[3] if varies_k else 1

  def param_shape(self, ks: int) -> tuple[int, ...]:
    """The kernels' shape of a parameter (without the leading row axis)."""
    _, _, g_run, k_run = self.runs
    kept = set(g_run) | (set(k_run) if ks != 1 else set())
    return tuple(n if a in kept else 1 for a, n in enumerate(self.shape))

  def param(self, p: jax.Array | None, ks: int) -> jax.Array | None:
    """A parameter broadcastable to ``x`` in the kernels' shape, float32."""
    if p is None:
      return None
    p = jnp.asarray(p).reshape(_padded_shape(p, len(self.shape)))
    return jnp.broadcast_to(p, self.param_shape(ks)).astype(jnp.float32)

  def param_cotangent(self, d: jax.Array, like: jax.Array) -> jax.Array:
    """A cotangent in the kernels' parameter shape summed back to ``like``'s shape."""
    like_shape = _padded_shape(like, len(self.shape))
    axes = tuple(a for a in range(len(self.shape)) if like_shape[a] == 1 and d.shape[a] != 1)
    if axes:
      d = jnp.sum(d, axis=axes, keepdims=True)
    return d.reshape(jnp.shape(like)).astype(like.dtype)

  def mask(self, mask: jax.Array | None) -> jax.Array | None:
    """A mask broadcastable to ``x`` in the kernels' shape (bool)."""
    if mask is None:
      return None
    _, _, g_run, k_run = self.runs
    m_shape = _padded_shape(mask, len(self.shape))
    mask = jnp.asarray(mask).reshape(m_shape)
    keep_one = set()
    for run in (g_run, k_run):
      if all(m_shape[a] == 1 for a in run):
        keep_one |= set(run)
    target = tuple(1 if a in keep_one else n for a, n in enumerate(self.shape))
    return jnp.broadcast_to(mask.astype(jnp.bool_), target)


def _padded_shape(p, rank: int) -> tuple[int, ...]:
  shape = tuple(jnp.shape(p))
  return (1,) * (rank - len(shape)) + shape


def stats_shape(shape: Sequence[int], layout: Sequence[int]) -> tuple[int, ...]:
  """``shape`` with size 1 on the S and K runs of ``layout``."""
  nb, ns, ng, nk = layout
  reduced = set(range(nb, nb + ns)) | set(range(nb + ns + ng, nb + ns + ng + nk))
  return tuple(1 if a in reduced else n for a, n in enumerate(shape))


def geometry(shape: Sequence[int], reduce_axes: Sequence[int], *,
             params: Sequence = ()) -> Geometry | None:
  """The runs (B, S, G, K) of ``x.shape`` reduced over ``reduce_axes``, or None.

  Kept axes before the first reduced one form B unless a parameter (``params``: arrays
  broadcasting to ``x``, or None) varies along them: then, when nothing is kept after
  the reduced axes, the kept axes from the first such one on form G (group norm on
  ``(N, groups, C / groups)``).

  Example:
    >>> from jaxnorm import kernels
    >>> kernels.geometry((8, 16, 16, 32), (0, 1, 2)).dims     # batch norm, NHWC
    (1, 2048, 32, 1)
    >>> kernels.geometry((4, 10, 64), (2,)).dims              # layer norm
    (40, 1, 1, 64)
    >>> kernels.geometry((4, 6, 5), (0, 2)).layout            # reduced, kept, reduced
    (0, 1, 1, 1)
    >>> print(kernels.geometry((2, 3, 4, 5, 6), (1, 3)))      # kept-reduced x 2, then kept
    None
    >>> import jax.numpy as jnp                               # group norm, 2-D input
    >>> kernels.geometry((64, 32, 8), (2,), params=[jnp.ones((1, 32, 8))]).layout
    (1, 0, 1, 1)
  """
  shape = tuple(int(n) for n in shape)
  rank = len(shape)
  reduced = {int(a) % rank for a in reduce_axes} if rank else set()
  # Runs of neighbouring axes of one kind; a size-1 axis joins the run before it.
  kinds: list[bool] = []
  sizes: list[int] = []
  for axis, size in enumerate(shape):
    kind = axis in reduced
    if kinds and (kinds[-1] == kind or size == 1):
      sizes[-1] += 1
    else:
      kinds.append(kind)
      sizes.append(1)
  # Slots B (kept), S (reduced), G (kept), K (reduced), filled in order.
  layout = [0, 0, 0, 0]
  slot = 0
  for kind, count in zip(kinds, sizes):
    while slot < 4 and (slot % 2 == 1) != kind:
      slot += 1
    if slot >= 4:
      return None
    layout[slot] = count
    slot += 1
  # A lone reduced run after B goes to K (reduced along contiguous memory: layer norm is
  # (B, 1, 1, K)); likewise S, G with nothing after them stay as they are.
  if layout[1] and not layout[2] and not layout[3]:
    layout[1], layout[3] = 0, layout[1]
  if not layout[1] and not layout[2]:
    varying = [a for a in range(layout[0]) for p in params if p is not None
               and _padded_shape(p, rank)[a] != 1]
    if varying:
      first = min(varying)
      layout[0], layout[2] = first, layout[0] - first
  return Geometry(shape, tuple(sorted(reduced)), tuple(layout))
