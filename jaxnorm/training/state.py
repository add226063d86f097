"""Training state: flax's TrainState plus batch statistics, a root key and a skip counter."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from jaxnorm.training import _validate


def key_data(key: jax.Array) -> jax.Array:
  """Raw ``uint32`` data of a PRNG key, typed or raw.

  Example:
    >>> import jax
    >>> from jaxnorm.training.state import key_data
    >>> key_data(jax.random.key(0)).tolist(), key_data(jax.random.PRNGKey(0)).tolist()
    ([0, 0], [0, 0])
  """
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    return jax.random.key_data(key)
  if key.dtype != jnp.uint32:
    raise TypeError(
        f"jaxnorm.training: rng must be an int seed or a PRNG key (jax.random.key(seed) "
        f"or jax.random.PRNGKey(seed)); got an array of dtype {key.dtype} and shape "
        f"{tuple(key.shape)}. Pass e.g. rng=0 or rng=jax.random.key(0).")
  return key


def _is_typed_key(value) -> bool:
  return jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key)


def root_key(rng) -> jax.Array:
  """The root key of a run from a seed or a key.

  An int seed (Python, NumPy or a 0-D integer array) becomes ``jax.random.key(seed)``;
  a typed key (``jax.random.key``) and raw key data (``jax.random.PRNGKey``, ``uint32``)
  are kept as they are. All three give the same keys for the same seed.

  Example:
    >>> import jax
    >>> from jaxnorm.training.state import root_key
    >>> root_key(0).dtype
    key<fry>
    >>> bool((jax.random.key_data(root_key(0)) == jax.random.PRNGKey(0)).all())
    True
  """
  if isinstance(rng, bool) or not (isinstance(rng, int) or hasattr(rng, "dtype")):
    raise TypeError(
        "jaxnorm.training.TrainState.create: rng must be an int seed or a PRNG key "
        f"(jax.random.key(seed) or jax.random.PRNGKey(seed)); got {rng!r} of type "
        f"{type(rng).__name__}. Pass e.g. rng=0 or rng=jax.random.key(0).")
  if isinstance(rng, int):
    return jax.random.key(rng)
  if _is_typed_key(rng):
    return rng
  if np.issubdtype(rng.dtype, np.integer) and np.ndim(rng) == 0:
    return jax.random.key(rng)
  key_data(rng)  # raises unless raw uint32 key data
  return rng


class TrainState(train_state.TrainState):
  """``flax.training.train_state.TrainState`` with what BN/dropout training needs.

  Attributes:
    batch_stats: the ``batch_stats`` collection (``{}`` for a model without BN).
    rng: the root key, as given to :meth:`create` (a typed key from an int seed or a
      ``jax.random.key``; raw ``uint32`` data from a ``jax.random.PRNGKey``); step ``t``
      draws its dropout key as ``fold_in(rng, t)``, so the same seed gives
      bitwise-identical runs whichever form it was given in.
    skipped_steps: how many steps the non-finite guard rejected.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from jaxnorm import training
    >>> state = training.TrainState.create(apply_fn=None, params={"w": jnp.ones(2)},
    ...                                    tx=optax.sgd(0.1), rng=0)
    >>> int(state.step), state.rng.dtype
    (0, key<fry>)
  """

  batch_stats: Any
  rng: jax.Array
  skipped_steps: jax.Array

  @classmethod
  def create(cls, *, apply_fn, params, tx: optax.GradientTransformation,
             rng: int | jax.Array, batch_stats: Any = None, **kwargs) -> "TrainState":
    """Builds a state at step 0 with ``tx.init(params)`` as optimizer state.

    ``rng`` is an int seed or a PRNG key (see :func:`root_key`). The state shares the
    arrays of ``params`` and ``batch_stats`` (no copy); a donating epoch
    (:func:`~jaxnorm.training.make_scan_epoch`) therefore deletes them along with the
    state.
    """
    _validate.check_live({"params": params, "batch_stats": batch_stats}, name="arguments",
                         fn="jaxnorm.training.TrainState.create")
    state = super().create(
        apply_fn=apply_fn, params=params, tx=tx,
        batch_stats={} if batch_stats is None else batch_stats,
        rng=root_key(rng), skipped_steps=jnp.zeros((), jnp.int32), **kwargs)
    return state.replace(step=jnp.zeros((), jnp.int32))

  @property
  def variables(self) -> dict:
    """The variables to pass to ``apply_fn``."""
    if self.batch_stats:
      return {"params": self.params, "batch_stats": self.batch_stats}
    return {"params": self.params}

  def step_key(self) -> jax.Array:
    """The key of the current step: ``fold_in(rng, step)``, a typed key."""
    rng = self.rng if _is_typed_key(self.rng) else jax.random.wrap_key_data(self.rng)
    return jax.random.fold_in(rng, self.step)
