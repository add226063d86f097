"""What code written against flax.nnx expects after swapping the import.

Complex inputs: the same variables (names, shapes, dtypes) and the same outputs and
running statistics as flax.nnx. Bad arguments: the same exception type as flax.nnx,
with flax's words inside jaxnorm's fuller message (each case runs flax first to get its
message). Numbers are compared with flax, never with jaxnorm itself.
"""

import warnings

import jax
import numpy as np
import pytest
from flax import nnx

from jaxnorm import nnx as jnnx

TOL = 1e-5
_RNG = np.random.default_rng(37)

_LAYERS = {
    "BatchNorm": dict(momentum=0.9),
    "LayerNorm": {},
    "GroupNorm": dict(num_groups=2),
    "InstanceNorm": {},
    "RMSNorm": {},
}


def _dtypes(module):
  return jax.tree.map(lambda a: (a.shape, np.dtype(a.dtype)), nnx.state(module))


def _arrays(module):
  return {"/".join(map(str, path)): np.asarray(v[...])
          for path, v in nnx.to_flat_state(nnx.state(module))}


@pytest.mark.parametrize("name", list(_LAYERS))
def test_complex_inputs_like_flax(name):
  x = (_RNG.normal(size=(4, 3, 4)) + 1j * _RNG.normal(size=(4, 3, 4)) - 0.5j).astype(
      np.complex64)
  ours = getattr(jnnx, name)(4, rngs=nnx.Rngs(0), **_LAYERS[name])
  theirs = getattr(nnx, name)(4, rngs=nnx.Rngs(0), **_LAYERS[name])
  assert _dtypes(ours) == _dtypes(theirs)
  with warnings.catch_warnings():  # both store the real part of a complex running mean
    warnings.simplefilter("ignore", np.exceptions.ComplexWarning)
    warnings.simplefilter("ignore", FutureWarning)  # jax: complex into a float32 scatter
    y_ours, y_theirs = ours(x), theirs(x)
  assert y_ours.dtype == y_theirs.dtype
  np.testing.assert_allclose(np.asarray(y_ours), np.asarray(y_theirs), rtol=TOL, atol=TOL)
  assert _dtypes(ours) == _dtypes(theirs)
  state_ours, state_theirs = _arrays(ours), _arrays(theirs)
  assert state_ours.keys() == state_theirs.keys()
  for key in state_ours:
    np.testing.assert_allclose(state_ours[key], state_theirs[key], rtol=TOL, atol=TOL,
                               err_msg=key)
  if name == "BatchNorm":  # evaluation with the running statistics
    ours.eval()
    theirs.eval()
    np.testing.assert_allclose(np.asarray(ours(x)), np.asarray(theirs(x)), rtol=TOL,
                               atol=TOL)


def _raised(make, x):
  with pytest.raises(Exception) as info:
    make()(x)
  return info.value


@pytest.mark.parametrize("make", [
    lambda lib: lib.InstanceNorm(4, feature_axes=0, rngs=nnx.Rngs(0)),
    lambda lib: lib.InstanceNorm(24, feature_axes=(0, -1), rngs=nnx.Rngs(0)),
    lambda lib: lib.GroupNorm(6, num_groups=None, group_size=None, rngs=nnx.Rngs(0)),
    lambda lib: lib.GroupNorm(6, num_groups=2, group_size=3, rngs=nnx.Rngs(0)),
    lambda lib: lib.GroupNorm(6, num_groups=None, group_size=4, rngs=nnx.Rngs(0)),
    lambda lib: lib.GroupNorm(6, num_groups=4, rngs=nnx.Rngs(0)),
    lambda lib: lib.GroupNorm(6, num_groups=0, rngs=nnx.Rngs(0)),
], ids=["instance-axis-0", "instance-axes-0-and-last", "group-neither", "group-both",
        "group-size", "group-count", "group-zero"])
def test_flax_error_messages_are_kept(make):
  x = _RNG.normal(size=(4, 3, 6)).astype(np.float32)
  theirs = _raised(lambda: make(nnx), x)
  ours = _raised(lambda: make(jnnx), x)
  assert type(ours) is type(theirs), (type(ours), type(theirs), str(ours))
  assert str(theirs) in str(ours), (str(theirs), str(ours))
  assert str(ours).startswith("jaxnorm."), str(ours)
