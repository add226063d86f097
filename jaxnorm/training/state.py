"""Training state: flax's TrainState plus batch statistics, a root key and a skip counter."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from jaxnorm.training import _validate


def key_data(key: jax.Array) -> jax.Array:
  """Raw ``uint32`` data of a PRNG key (typed or raw), the form kept in checkpoints."""
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    return jax.random.key_data(key)
  if key.dtype != jnp.uint32:
    raise TypeError(
        f"jaxnorm.training: rng must be a PRNG key (jax.random.key(seed)); got dtype "
        f"{key.dtype}.")
  return key


class TrainState(train_state.TrainState):
  """``flax.training.train_state.TrainState`` with what BN/dropout training needs.

  Attributes:
    batch_stats: the ``batch_stats`` collection (``{}`` for a model without BN).
    rng: raw data of the root key; step ``t`` draws its dropout key as
      ``fold_in(rng, t)``, so the same seed gives bitwise-identical runs.
    skipped_steps: how many steps the non-finite guard rejected.
  """

  batch_stats: Any
  rng: jax.Array
  skipped_steps: jax.Array

  @classmethod
  def create(cls, *, apply_fn, params, tx: optax.GradientTransformation,
             rng: jax.Array, batch_stats: Any = None, **kwargs) -> "TrainState":
    """Builds a state at step 0 with ``tx.init(params)`` as optimizer state.

    The state shares the arrays of ``params`` and ``batch_stats`` (no copy); a
    donating epoch (:func:`~jaxnorm.training.make_scan_epoch`) therefore deletes them
    along with the state.
    """
    _validate.check_live({"params": params, "batch_stats": batch_stats}, name="arguments",
                         fn="jaxnorm.training.TrainState.create")
    state = super().create(
        apply_fn=apply_fn, params=params, tx=tx,
        batch_stats={} if batch_stats is None else batch_stats,
        rng=key_data(rng), skipped_steps=jnp.zeros((), jnp.int32), **kwargs)
    return state.replace(step=jnp.zeros((), jnp.int32))

  @property
  def variables(self) -> dict:
    """The variables to pass to ``apply_fn``."""
    if self.batch_stats:
      return {"params": self.params, "batch_stats": self.batch_stats}
    return {"params": self.params}

  def step_key(self) -> jax.Array:
    """The key of the current step: ``fold_in(rng, step)``."""
    return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)
