"""Checkpoints of the whole training state with orbax.

Everything that decides the rest of a run is saved: params, ``batch_stats``, optimizer
state, step, root key and skip counter. Restoring needs a template state (for the
structure, shapes and dtypes) and gives back a state that continues bit for bit.
Writes are atomic (orbax finalizes a checkpoint only when it is complete).
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp

from jaxnorm.training.state import TrainState


class CheckpointError(ValueError):
  """A checkpoint exists but cannot be restored (corrupt, incomplete or mismatched)."""


def _manager(directory: str, max_to_keep: int | None = None) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.abspath(directory),
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))


def save_checkpoint(directory: str, state: TrainState, epoch: int,
                    *, max_to_keep: int | None = 3) -> None:
  """Saves ``state`` as the checkpoint of ``epoch`` (completed epochs) in ``directory``."""
  with _manager(directory, max_to_keep) as manager:
    manager.save(epoch, args=ocp.args.StandardSave(state))
    manager.wait_until_finished()


def latest_epoch(directory: str) -> int | None:
  """The epoch of the newest complete checkpoint in ``directory``, or None."""
  if not os.path.isdir(directory):
    return None
  with _manager(directory) as manager:
    return manager.latest_step()


def restore_checkpoint(directory: str, like: TrainState, epoch: int | None = None
                       ) -> tuple[TrainState, int]:
  """Restores ``(state, epoch)`` from ``directory`` (the newest epoch unless given).

  Args:
    directory: where :func:`save_checkpoint` wrote.
    like: a state with the same structure (e.g. freshly created); only its shapes and
      dtypes are used, and its ``apply_fn``/``tx`` are kept.
    epoch: which checkpoint; the newest when None.

  Raises:
    FileNotFoundError: no checkpoint there (never a silent fresh start).
    CheckpointError: the checkpoint is corrupt, incomplete or of another model.
  """
  available = latest_epoch(directory)
  if available is None:
    raise FileNotFoundError(
        f"jaxnorm.training.restore_checkpoint: no checkpoint in {directory!r}. Check the "
        "path, or start a fresh run without resuming.")
  epoch = available if epoch is None else epoch
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
  try:
    with _manager(directory) as manager:
      if epoch not in manager.all_steps():
        raise FileNotFoundError(
            f"jaxnorm.training.restore_checkpoint: no checkpoint of epoch {epoch} in "
            f"{directory!r}; available: {sorted(manager.all_steps())}.")
      restored = manager.restore(epoch, args=ocp.args.StandardRestore(abstract))
  except FileNotFoundError:
    raise
  except Exception as error:  # orbax/tensorstore raise many types for damaged files
    raise CheckpointError(
        f"jaxnorm.training.restore_checkpoint: the checkpoint of epoch {epoch} in "
        f"{directory!r} cannot be restored ({type(error).__name__}: {error}). It is "
        "corrupt, incomplete, or was written for a different model or optimizer.") from error
  return restored, epoch
