"""Checkpoints of an NNX training state with orbax, through the linen checkpoint path.

Every variable of the state is saved (Params, BatchStats, optimizer state and step, RNG
streams, root key, skip counter) as a flat dict of arrays keyed by variable path, PRNG
keys as their raw data; :func:`~jaxnorm.training.save_checkpoint` and
:func:`~jaxnorm.training.restore_checkpoint` do the writing and reading, so both
front-ends share their atomic writes and their checks. Resuming after epoch k equals the
uninterrupted run bit for bit.
"""

from __future__ import annotations

import jax
from flax import nnx

from jaxnorm.training.checkpoint import restore_checkpoint, save_checkpoint


def _is_key(value) -> bool:
  return jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key)


def _name(path) -> str:
  return "/".join(str(part) for part in path)


def _flat_arrays(node) -> dict[str, jax.Array]:
  """``{'model/bn/mean': array, ...}`` of every variable, keys as raw key data."""
  out = {}
  for path, variable in nnx.to_flat_state(nnx.state(node)):
    value = variable.get_value()
    out[_name(path)] = jax.random.key_data(value) if _is_key(value) else value
  return out


def save_nnx_checkpoint(directory: str, state: nnx.Pytree, epoch: int, *,
                        max_to_keep: int | None = 3) -> None:
  """Saves every variable of ``state`` (e.g. an :class:`NNXTrainState`) as epoch ``epoch``.

  Example:
    >>> import os, tempfile, jax, optax
    >>> from flax import nnx
    >>> from jaxnorm import training
    >>> state = training.NNXTrainState(nnx.Linear(3, 2, rngs=nnx.Rngs(0)), optax.sgd(0.1),
    ...                                rng=jax.random.key(1))
    >>> directory = os.path.join(tempfile.mkdtemp(), "ckpt")
    >>> training.save_nnx_checkpoint(directory, state, epoch=1)
    >>> restored, epoch = training.restore_nnx_checkpoint(directory, like=state)
    >>> epoch
    1
  """
  save_checkpoint(directory, _flat_arrays(state), epoch, max_to_keep=max_to_keep)


def restore_nnx_checkpoint(directory: str, like: nnx.Pytree, epoch: int | None = None
                           ) -> tuple[nnx.Pytree, int]:
  """Restores ``(state, epoch)``: a copy of ``like`` holding the saved variables.

  Args:
    directory: where :func:`save_nnx_checkpoint` wrote.
    like: a state with the same structure (e.g. freshly built); it is not changed.
    epoch: which checkpoint; the newest when None.

  Raises:
    FileNotFoundError: no checkpoint there (never a silent fresh start).
    CheckpointError: the checkpoint is corrupt, incomplete or of another model.
  """
  restored, epoch = restore_checkpoint(directory, like=_flat_arrays(like), epoch=epoch)
  state = nnx.clone(like)
  updates = []
  for path, variable in nnx.to_flat_state(nnx.state(state)):
    value, saved = variable.get_value(), restored[_name(path)]
    if _is_key(value):
      saved = jax.random.wrap_key_data(saved, impl=jax.random.key_impl(value))
    updates.append((path, variable.replace(saved)))
  nnx.update(state, nnx.from_flat_state(updates))
  return state, epoch
