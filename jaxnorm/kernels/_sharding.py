"""The kernel calls under ``jax.jit`` with sharded operands: one kernel call per shard.

XLA cannot split a custom call by itself and would gather its operands onto every
device. ``custom_partitioning`` tells it how: every operand keeps the sharding of
``x`` along each of its axes (parameters follow the G and K axes); each device runs the
kernel on its shard; where axes of the S or K runs (the reduced ones) are split across
devices, the per-shard statistics are merged exactly (counts, means and centred second
moments, Chan et al.) and the backward sums added with ``psum``, between two kernel
calls. Operations folded from several vmapped problems (``instances > 1``) keep the B
run whole.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax.numpy as jnp
from jax import lax
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


def _names(axes) -> tuple[str, ...]:
  if axes is None:
    return ()
  return (axes,) if isinstance(axes, str) else tuple(axes)


def _x_axes(shape: Sequence[int], x_shape: Sequence[int]) -> list[int | None]:
  """For each axis of an operand, the axis of ``x`` it follows (None: its own).

  Operands have ``x``'s rank (data, statistics, masks) or one leading row axis more
  (parameters); an axis follows ``x``'s when it has the same size.
  """
  offset = len(shape) - len(x_shape)
  return [None if a < offset or n != x_shape[a - offset] else a - offset
          for a, n in enumerate(shape)]


def partitioned(name: str, masked: bool, layout: Sequence[int], instances: int,
                local: Callable, sharded: Callable) -> Callable:
  """``local`` (the kernel call on whole operands) made shardable.

  On each shard, ``sharded(reduced_axes, param_axes, *operands)`` runs the kernel(s):
  ``reduced_axes`` are the mesh axes that split the S and K runs (statistics and
  backward sums must be merged over them) and ``param_axes`` those over which
  parameter cotangents must be summed.
  """
  del name, masked
  nb, ns, ng, nk = layout
  runs = {"b": range(0, nb), "s": range(nb, nb + ns), "g": range(nb + ns, nb + ns + ng),
          "k": range(nb + ns + ng, nb + ns + ng + nk)}

  @custom_partitioning
  def call(*operands):
    return local(*operands)

  def rule(mesh, operand_types, result_types):
    del mesh
    x_shape = operand_types[0].shape
    fresh = iter(f"u{i}" for i in range(10_000))

    def factors(t):
      return " ".join(f"x{a}" if a is not None else next(fresh)
                      for a in _x_axes(t.shape, x_shape))

    return (", ".join(factors(t) for t in operand_types) + " -> "
            + ", ".join(factors(t) for t in result_types))

  def partition(mesh, arg_shapes, result_shape):
    x_shape = arg_shapes[0].shape
    spec = tuple(arg_shapes[0].sharding.spec) + (None,) * len(x_shape)
    spec = list(spec[:len(x_shape)])
    if instances > 1:
      for a in runs["b"]:  # folded vmapped problems: parameters are per instance
        spec[a] = None

    def sharding(shape):
      return NamedSharding(mesh, P(*(None if a is None else spec[a]
                                     for a in _x_axes(shape, x_shape))))

    results = result_shape if isinstance(result_shape, (tuple, list)) else (result_shape,)
    arg_shardings = tuple(sharding(a.shape) for a in arg_shapes)
    result_shardings = tuple(sharding(r.shape) for r in results)

    def mesh_axes(run):
      return tuple(n for a in runs[run] for n in _names(spec[a]))

    reduced = mesh_axes("s") + mesh_axes("k")
    # Parameter cotangents sum over B and S, and over K where the parameters are
    # constant along it (size 1 there); along G (and K) they stay split like x.
    params = [a.shape for a in arg_shapes if len(a.shape) == len(x_shape) + 1]
    constant_k = any(p[1 + a] == 1 and x_shape[a] != 1 for p in params for a in runs["k"])
    param_axes = mesh_axes("b") + mesh_axes("s") + (mesh_axes("k") if constant_k else ())

    def lower(*operands):
      return sharded(reduced, param_axes, *operands)

    return mesh, lower, result_shardings, arg_shardings

  call.def_partition(partition=partition, sharding_rule=rule)
  return call


def merge_moments(shift, delta, var, count, axes, *, center: bool):
  """Exact merge of per-shard (shift, delta, var, count) over mesh ``axes``.

  A common shift ``k`` (the count-weighted mean of the shards' shifts, near the data)
  replaces each shard's; ``d_i = (shift_i - k) + delta_i`` are small, so
  ``delta = sum n_i d_i / n`` and ``M2 = sum (M2_i + n_i (d_i - delta)^2)`` keep their
  precision (Chan, Golub & LeVeque, 1979).
  """
  if not axes:
    return shift, delta, var, count
  n = lax.psum(count, axes)
  safe = jnp.maximum(n, 1)
  if not center:
    return shift, delta, lax.psum(var * count, axes) / safe, n
  k = lax.psum(count * shift, axes) / safe
  d = (shift - k) + delta
  new_delta = lax.psum(count * d, axes) / safe
  m2 = lax.psum(var * count + count * jnp.square(d - new_delta), axes)
  return k, new_delta, m2 / safe, n
