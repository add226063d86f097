"""Move variables between a linen model and the equivalent NNX model.

``nnx.Param`` corresponds to the linen ``params`` collection and ``nnx.BatchStat`` to
``batch_stats``; a variable's path is its module path plus its name in both front-ends
(``bn1/mean`` in NNX is ``batch_stats/bn1/mean`` in linen). Where the module names
differ (linen's automatic ``Dense_0`` against an NNX attribute ``linear1``, linen's
``layers_0`` against an NNX list ``layers/0``), ``rename`` maps linen module paths to NNX
module paths; a prefix renames everything below it. Other variables (RNG state,
optimizer state, intermediates) are not converted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

_COLLECTIONS = ((nnx.Param, "params"), (nnx.BatchStat, "batch_stats"))
_FILTER = nnx.Any(nnx.Param, nnx.BatchStat)


def _collection(variable) -> str:
  for kind, name in _COLLECTIONS:
    if isinstance(variable, kind):
      return name
  raise TypeError(f"unexpected variable type {type(variable).__name__}")


def _to_linen_paths(rename: Mapping[str, str] | None):
  """A function mapping NNX module paths (tuples of str) to linen ones through ``rename``."""
  pairs = [(tuple(v.split("/")) if v else (), tuple(k.split("/")) if k else ())
           for k, v in (rename or {}).items()]
  pairs.sort(key=lambda pair: -len(pair[0]))  # the longest prefix wins

  def apply(path: tuple[str, ...]) -> tuple[str, ...]:
    for old, new in pairs:
      if path[:len(old)] == old:
        return new + path[len(old):]
    return path

  return apply


def _flat_linen(variables: Mapping[str, Any]) -> dict[tuple[str, ...], Any]:
  """``{(collection, *module_path, name): leaf}`` for params and batch_stats."""
  flat = {}
  for _, collection in _COLLECTIONS:
    def visit(tree, prefix):
      for key, item in tree.items():
        if isinstance(item, Mapping):
          visit(item, prefix + (str(key),))
        else:
          flat[prefix + (str(key),)] = item
    visit(variables.get(collection, {}), (collection,))
  return flat


def _fail(fn: str, problems: list[str], hint: str):
  raise ValueError(f"{fn}: the variables do not match the model:\n  " +
                   "\n  ".join(problems[:20]) +
                   (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "") +
                   f"\n{hint}")


_RENAME_HINT = ("Give linen submodules the NNX attribute names (nn.Dense(..., name='linear1'))"
                " or pass rename={'Dense_0': 'linear1', ...} (linen module path -> NNX "
                "module path, '/'-separated; a prefix renames everything below it).")


def state_from_linen(model: nnx.Module, variables: Mapping[str, Any], *,
                     rename: Mapping[str, str] | None = None) -> nnx.State:
  """The NNX state (``Param`` and ``BatchStat``) of ``model`` taken from linen ``variables``.

  Apply it with ``nnx.update(model, state)``. Every ``Param``/``BatchStat`` of the
  model must find a linen variable of the same shape and dtype and every linen
  ``params``/``batch_stats`` leaf must be used; otherwise ``ValueError`` lists the
  paths that do not match.

  Args:
    model: the NNX model (its structure, shapes and dtypes are the template).
    variables: ``{'params': ..., 'batch_stats': ...}`` of the linen model.
    rename: linen module path -> NNX module path (prefixes), e.g. ``{'Dense_0':
      'linear1', 'layers_0': 'layers/0'}``.

  Example:
    >>> import flax.linen as nn, jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> import jaxnorm
    >>> from jaxnorm import nnx as jnnx
    >>> class LinenNet(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x, train):
    ...     x = nn.Dense(4, name="linear")(x)
    ...     return jaxnorm.linen.BatchNorm(use_running_average=not train, name="bn")(x)
    >>> class NNXNet(nnx.Module):
    ...   def __init__(self, rngs):
    ...     self.linear = nnx.Linear(3, 4, rngs=rngs)
    ...     self.bn = jnnx.BatchNorm(4, rngs=rngs)
    ...   def __call__(self, x):
    ...     return self.bn(self.linear(x))
    >>> x = jnp.ones((2, 3))
    >>> variables = LinenNet().init(jax.random.key(0), x, train=False)
    >>> model = NNXNet(nnx.Rngs(1))
    >>> nnx.update(model, jnnx.state_from_linen(model, variables))
    >>> bool(jnp.all(model.linear.kernel[...] == variables["params"]["linear"]["kernel"]))
    True
  """
  fn = "jaxnorm.nnx.state_from_linen"
  to_linen = _to_linen_paths(rename)
  linen = _flat_linen(variables)
  used, problems, flat = set(), [], []
  for path, variable in nnx.to_flat_state(nnx.state(model, _FILTER)):
    parts = tuple(str(p) for p in path)
    key = (_collection(variable),) + to_linen(parts[:-1]) + parts[-1:]
    if key not in linen:
      problems.append(f"NNX {'/'.join(parts)} ({type(variable).__name__}): no linen "
                      f"variable {'/'.join(key)}")
      continue
    used.add(key)
    leaf = linen[key]
    if np.shape(leaf) != variable.shape or jax.numpy.result_type(leaf) != variable.dtype:
      problems.append(f"NNX {'/'.join(parts)} has shape {variable.shape} and dtype "
                      f"{variable.dtype}; linen {'/'.join(key)} has shape "
                      f"{np.shape(leaf)} and dtype {jax.numpy.result_type(leaf)}")
      continue
    flat.append((path, variable.replace(jax.numpy.asarray(leaf))))
  problems += [f"linen {'/'.join(key)}: no NNX variable takes it"
               for key in linen if key not in used]
  if problems:
    _fail(fn, problems, _RENAME_HINT)
  return nnx.from_flat_state(flat)


def state_to_linen(model: nnx.Module, *, rename: Mapping[str, str] | None = None
                   ) -> dict[str, Any]:
  """The linen ``{'params': ..., 'batch_stats': ...}`` of an NNX model's variables.

  The inverse of :func:`state_from_linen` (same ``rename``, linen -> NNX); a
  collection without variables is left out, as linen's ``init`` does.

  Example:
    >>> from flax import nnx
    >>> from jaxnorm import nnx as jnnx
    >>> class Net(nnx.Module):
    ...   def __init__(self, rngs):
    ...     self.linear = nnx.Linear(3, 4, rngs=rngs)
    ...     self.bn = jnnx.BatchNorm(4, rngs=rngs)
    >>> variables = jnnx.state_to_linen(Net(nnx.Rngs(0)), rename={"Dense_0": "linear"})
    >>> sorted(variables["params"]), sorted(variables["batch_stats"]["bn"])
    (['Dense_0', 'bn'], ['mean', 'var'])
  """
  to_linen = _to_linen_paths(rename)
  out: dict[str, Any] = {}
  for path, variable in nnx.to_flat_state(nnx.state(model, _FILTER)):
    parts = tuple(str(p) for p in path)
    node = out.setdefault(_collection(variable), {})
    for name in to_linen(parts[:-1]):
      node = node.setdefault(name, {})
    node[parts[-1]] = variable[...]
  return out
