"""Host-side checks of what the training toolkit is given, run before anything is jitted.

Under ``jax.jit`` values are traced and cannot be inspected; these checks look at
concrete arrays (NumPy, or JAX arrays outside a transform) and skip traced ones. Each
raises ``TypeError``/``ValueError`` naming the function, the argument, the rule, the
value received and the fix.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

# How many offending positions an error message lists.
_SHOWN = 5


def deleted_leaves(tree: Any) -> list[str]:
  """Paths (``jax.tree_util.keystr``) of the JAX arrays in ``tree`` that were deleted."""
  paths = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer):
      if leaf.is_deleted():
        paths.append(jax.tree_util.keystr(path))
  return paths


def check_live(tree: Any, *, name: str, fn: str) -> None:
  """Raises ``ValueError`` if ``tree`` holds deleted (e.g. donated) arrays.

  A state passed to a donating epoch (:func:`jaxnorm.training.make_scan_epoch`) has its
  buffers reused for the result and deleted; so have the arrays it shares, such as the
  ``variables`` from ``model.init`` that built it.
  """
  paths = deleted_leaves(tree)
  if paths:
    shown = ", ".join(name + path for path in paths[:_SHOWN])
    shown += ", ..." if len(paths) > _SHOWN else ""
    raise ValueError(
        f"{fn}: {name} holds {len(paths)} deleted array(s) ({shown}); "
        "its buffers were donated to a run_epoch of make_scan_epoch, which reuses them "
        "for the state it returns. Use the state returned by the epoch (state, metrics "
        "= run_epoch(state, ...)), or build the epoch with make_scan_epoch(..., "
        "donate=False) to keep the input state alive.")


def concrete_all_finite(x: Any) -> bool:
  """False only when ``x`` is concrete and holds a non-finite value (traced: True)."""
  if isinstance(x, jax.core.Tracer):
    return True
  return bool(np.all(np.isfinite(np.asarray(x))))


def leading_length(x: Any, *, name: str, fn: str) -> int:
  """``len(x)`` of an array-like with at least one dimension."""
  shape = np.shape(x)
  if not shape:
    raise ValueError(f"{fn}: {name} must have a leading example axis; got a 0-d value "
                     f"(shape {shape}).")
  return int(shape[0])


def check_same_length(x: Any, y: Any, *, fn: str) -> int:
  """The number of examples; ``ValueError`` unless ``x`` and ``y`` have as many."""
  nx = leading_length(x, name="x", fn=fn)
  ny = leading_length(y, name="y", fn=fn)
  if nx != ny:
    raise ValueError(
        f"{fn}: x and y must hold the same number of examples; got x.shape="
        f"{tuple(np.shape(x))} ({nx} examples) and y.shape={tuple(np.shape(y))} ({ny} "
        "labels). Pass matching inputs and labels.")
  return nx


def host_blocks(a: Any) -> list[tuple[int, np.ndarray]] | None:
  """``[(first example index, values)]`` of the parts of ``a`` visible on this host.

  A NumPy array or a fully addressable JAX array gives one block; an array sharded
  over several processes gives this process's shards. ``None`` when ``a`` is traced.
  """
  if isinstance(a, jax.core.Tracer):
    return None
  if isinstance(a, jax.Array) and not a.is_fully_addressable:
    blocks = {}  # replicated shards appear once per device: keep one of each
    for shard in a.addressable_shards:
      start = (shard.index[0].start or 0) if shard.index else 0
      blocks.setdefault(str(shard.index), (start, np.asarray(shard.data)))
    return list(blocks.values())
  return [(0, np.asarray(a))]


def check_labels(y: Any, num_classes: int, *, fn: str, name: str = "y") -> None:
  """Raises unless the concrete labels ``y`` are integers in ``[0, num_classes)``.

  The message names the first offending labels with their positions. Traced labels are
  not checked (see :func:`jaxnorm.training.classification_loss` for what happens then).
  """
  blocks = host_blocks(y)
  if blocks is None:
    return
  dtype = blocks[0][1].dtype if blocks else np.asarray(y).dtype
  if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.bool_)):
    raise TypeError(
        f"{fn}: {name} must hold integer class labels in [0, {num_classes}); got dtype "
        f"{dtype}. Cast them, e.g. {name}.astype(np.int32), after checking they are "
        "whole numbers.")
  shown, total = [], 0
  for start, values in sorted(blocks, key=lambda block: block[0]):
    bad = np.argwhere((values < 0) | (values >= num_classes))
    total += len(bad)
    for index in bad[:_SHOWN - len(shown)]:
      position = ", ".join(str(int(i) + start * (axis == 0)) for axis, i in enumerate(index))
      shown.append(f"{name}[{position}] = {values[tuple(index)]}")
  if total:
    raise ValueError(
        f"{fn}: labels must be class indices in [0, {num_classes}) (the model has "
        f"{num_classes} outputs); {total} label(s) are outside: {', '.join(shown)}"
        f"{', ...' if total > len(shown) else ''}. Fix or drop those examples, or give "
        "the model as many outputs as there are classes.")
