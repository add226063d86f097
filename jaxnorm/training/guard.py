"""The non-finite guard: accept an update only if everything it produced is finite.

A gradient can be finite while what the optimizer makes of it is not: Adam squares it
(a gradient of 1e20 gives a second moment of 1e40, ``inf`` in float32) and SGD
multiplies it by the learning rate (``lr * grad`` can overflow the parameters). Either
way the weights are dead from then on. The guard therefore checks the loss, the
gradients *and* the new state (params, optimizer state, ``batch_stats``) and keeps the
old state unless the loss and gradients are finite and the update turned no finite value
non-finite. (Values that were already infinite may stay so: optax states such as
``reduce_on_plateau``'s best value start at ``inf``.) Any front-end's train step (linen
or NNX) calls the same two functions::

  new_state = ...  # the update, computed as usual
  new_state, finite = keep_if_not_finite(new_state, state, loss, grads)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def all_finite(*trees: Any) -> jax.Array:
  r"""Whether every floating (or complex) leaf of ``trees`` is finite, as a 0-d bool.

  .. math:: \mathrm{finite} = \bigwedge_{\ell \in \mathrm{leaves}} \bigwedge_i
     \mathrm{isfinite}(\ell_i)

  Integer, boolean and key leaves (step counters, PRNG data) cannot be non-finite and
  are skipped; a tree without floating leaves is finite. Works under ``jax.jit``.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxnorm import training
    >>> bool(training.all_finite({"w": jnp.ones(3)}, jnp.asarray(2.0)))
    True
    >>> bool(training.all_finite({"w": jnp.array([1.0, jnp.inf])}))
    False
  """
  flags = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(trees)
           if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)]
  return jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)


def _no_new_nonfinite(new_leaf, old_leaf) -> jax.Array:
  """No element of ``new_leaf`` is non-finite where ``old_leaf`` is finite."""
  if not jnp.issubdtype(jnp.result_type(new_leaf), jnp.inexact):
    return jnp.asarray(True)
  ok = jnp.isfinite(new_leaf)
  if jnp.shape(new_leaf) == jnp.shape(old_leaf):
    ok = ok | ~jnp.isfinite(old_leaf)
  return jnp.all(ok)


def keep_if_not_finite(new: Any, old: Any, *checked: Any) -> tuple[Any, jax.Array]:
  r"""``(new, True)`` if the update made nothing non-finite, else ``(old, False)``.

  .. math:: \mathrm{finite} = \mathrm{finite}(\mathrm{checked}) \wedge
     \bigwedge_i \big(\mathrm{isfinite}(\mathrm{new}_i) \vee
     \neg\,\mathrm{isfinite}(\mathrm{old}_i)\big)

  Every element of ``new`` must be finite wherever the same element of ``old`` was
  finite (an optax state may hold an ``inf`` on purpose, e.g. ``reduce_on_plateau``'s
  initial best value), and every floating leaf of ``checked`` must be finite. The
  choice is made once for the whole tree, so the update is atomic: either every leaf
  of ``new`` is taken or none is. ``new`` and ``old`` must have the same structure
  (e.g. two train states); ``checked`` holds what produced ``new`` and is only
  inspected (e.g. the loss and the gradients). Works under ``jax.jit``.

  Args:
    new: the updated tree.
    old: the tree before the update, kept when the update is rejected.
    *checked: further trees that must be all finite for ``new`` to be accepted.

  Returns:
    The chosen tree and the 0-d bool ``finite``.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxnorm import training
    >>> old = {"w": jnp.ones(2)}
    >>> kept, finite = training.keep_if_not_finite({"w": jnp.array([2.0, jnp.nan])}, old)
    >>> bool(finite), kept["w"].tolist()
    (False, [1.0, 1.0])
  """
  new = jax.lax.optimization_barrier(new)
  flags = jax.tree.leaves(jax.tree.map(_no_new_nonfinite, new, old))
  finite = jnp.all(jnp.stack([all_finite(*checked), *flags]))
  chosen = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
  return chosen, finite
