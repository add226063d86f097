"""Run the functional core as one compiled program, also when called outside ``jax.jit``.

Outside any transform JAX executes a function op by op and compiles every primitive
separately for each new shape and dtype. The statistics path is some forty primitives,
so an eager ``batch_norm`` on a new shape would pay forty small compilations (and
dispatch forty kernels) where one program does. :func:`compiled` wraps a core function
in ``jax.jit`` with its configuration static; under an outer ``jax.jit``, ``grad``,
``vmap`` or ``shard_map`` the nested program is traced once per signature and inlined
by XLA, so nothing changes there.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any


def _hashable(value: Any) -> Any:
  """Lists (e.g. ``axis_index_groups=[[0, 1], [2, 3]]``) as tuples, so they can be static."""
  if isinstance(value, (list, tuple)):
    return tuple(_hashable(v) for v in value)
  return value


def compiled(*, static_argnums: tuple[int, ...]) -> Callable[[Callable], Callable]:
  """Decorator: ``jax.jit(fun, static_argnums=static_argnums)``, lists made hashable.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxnorm.functional._compiled import compiled
    >>> @compiled(static_argnums=(1,))
    ... def total(x, axes):
    ...   return x.sum(axis=axes)
    >>> total(jnp.ones((2, 3)), [0, 1])   # a list, passed as the static tuple (0, 1)
    Array(6., dtype=float32)
  """
  import jax

  def decorate(fun: Callable) -> Callable:
    jitted = jax.jit(fun, static_argnums=static_argnums)
    names = list(inspect.signature(fun).parameters)
    static_names = {names[i] for i in static_argnums}

    @functools.wraps(fun)
    def call(*args, **kwargs):
      args = tuple(_hashable(a) if i in static_argnums else a for i, a in enumerate(args))
      kwargs = {k: _hashable(v) if k in static_names else v for k, v in kwargs.items()}
      return jitted(*args, **kwargs)

    return call

  return decorate
