"""What code written against flax.linen expects after swapping the import.

Complex inputs: the same variables (names, shapes, dtypes: float32 parameters, float32
running statistics that become complex64 means after an update, as in flax's own
``test_batch_norm_complex``) and the same outputs as flax. Bad arguments: the same
exception type as flax, with flax's words inside jaxnorm's fuller message (each case
runs flax first to get its message). Forward-mode derivatives work as with flax.
Numbers are compared with flax, never with jaxnorm itself.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnorm.linen as jl

TOL = 1e-5
_RNG = np.random.default_rng(31)


def _complex(shape):
  return (_RNG.normal(size=shape) + 1j * _RNG.normal(size=shape) - 0.5j).astype(
      np.complex64)


def _dtypes(tree):
  return jax.tree.map(lambda a: (a.shape, jnp.dtype(a.dtype)), tree)


_MODULES = {  # batch norms take use_running_average at call time
    "BatchNorm": lambda lib: lib.BatchNorm(momentum=0.9, dtype=jnp.complex64),
    "BatchNorm_default_dtype": lambda lib: lib.BatchNorm(),
    "LayerNorm": lambda lib: lib.LayerNorm(),
    "GroupNorm": lambda lib: lib.GroupNorm(num_groups=2),
    "InstanceNorm": lambda lib: lib.InstanceNorm(),
    "RMSNorm": lambda lib: lib.RMSNorm(),
}


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("name", list(_MODULES))
def test_complex_inputs_like_flax(name, masked):
  x = _complex((4, 3, 4))
  mask = None
  if masked:
    if name in ("RMSNorm",):
      pytest.skip("flax.linen.RMSNorm has no mask")
    mask = _RNG.random((4, 3, 1)) < 0.7
    mask[0, 0] = True
    if name == "GroupNorm":  # flax.linen.GroupNorm needs a mask of x's full shape
      mask = np.broadcast_to(mask, x.shape)
    x = np.where(mask, x, np.complex64(np.nan))  # flax's own complex test pads with NaN
  kwargs = {} if mask is None else {"mask": mask}
  if name.startswith("BatchNorm"):
    kwargs["use_running_average"] = False
  ours, theirs = _MODULES[name](jl), _MODULES[name](nn)
  v_ours = ours.init(jax.random.key(0), x, **kwargs)
  v_theirs = theirs.init(jax.random.key(0), x, **kwargs)
  assert _dtypes(v_ours) == _dtypes(v_theirs)
  y_ours, s_ours = ours.apply(v_ours, x, mutable=["batch_stats"], **kwargs)
  y_theirs, s_theirs = theirs.apply(v_theirs, x, mutable=["batch_stats"], **kwargs)
  assert y_ours.dtype == y_theirs.dtype
  valid = np.ones(x.shape, bool) if mask is None else np.broadcast_to(mask, x.shape)
  np.testing.assert_allclose(np.asarray(y_ours)[valid], np.asarray(y_theirs)[valid],
                             rtol=TOL, atol=TOL)
  assert _dtypes(s_ours) == _dtypes(s_theirs)
  for a, b in zip(jax.tree.leaves(s_ours), jax.tree.leaves(s_theirs)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=TOL, atol=TOL)
  if "batch_stats" in s_ours:  # evaluation with the complex running mean
    y_eval = ours.apply({**v_ours, **s_ours}, x, use_running_average=True)
    y_flax = theirs.apply({**v_theirs, **s_theirs}, x, use_running_average=True)
    np.testing.assert_allclose(np.asarray(y_eval)[valid], np.asarray(y_flax)[valid],
                               rtol=TOL, atol=TOL)


def test_complex_batch_norm_as_in_flax_own_test():
  """flax's test_batch_norm_complex, run on jaxnorm: mean 0, var 1, EMA as there."""
  x = jax.random.normal(jax.random.key(1), (4, 3, 2), dtype=jnp.complex64)
  model = jl.BatchNorm(momentum=0.9, use_running_average=False, dtype=jnp.complex64)
  y, variables = model.init_with_output(jax.random.key(2), x)
  np.testing.assert_allclose(y.mean((0, 1)), [0.0, 0.0], atol=1e-4)
  np.testing.assert_allclose(y.var((0, 1)), [1.0, 1.0], rtol=1e-4)
  assert y.mean((0, 1)).dtype == jnp.complex64
  _, out = model.apply(variables, x, mutable=["batch_stats"])
  ema = out["batch_stats"]
  np.testing.assert_allclose(ema["mean"], 0.1 * x.mean((0, 1)), atol=1e-4)
  np.testing.assert_allclose(ema["var"], 0.9 + 0.1 * x.var((0, 1)), rtol=1e-4)


def _flax_message(module, x):
  with pytest.raises(Exception) as info:
    module.init(jax.random.key(0), x)
  return type(info.value), str(info.value)


@pytest.mark.parametrize("make,shape", [
    (lambda lib: lib.InstanceNorm(feature_axes=0), (4, 3, 6)),
    (lambda lib: lib.InstanceNorm(feature_axes=(0, -1)), (4, 3, 6)),
    (lambda lib: lib.GroupNorm(num_groups=2, reduction_axes=(1,)), (4, 3, 6)),
    (lambda lib: lib.GroupNorm(num_groups=None, group_size=None), (4, 3, 6)),
    (lambda lib: lib.GroupNorm(num_groups=2, group_size=3), (4, 3, 6)),
    (lambda lib: lib.GroupNorm(num_groups=None, group_size=4), (4, 3, 6)),
    (lambda lib: lib.GroupNorm(num_groups=4), (4, 3, 6)),
    (lambda lib: lib.GroupNorm(num_groups=0), (4, 3, 6)),
])
def test_flax_error_messages_are_kept(make, shape):
  x = _RNG.normal(size=shape).astype(np.float32)
  flax_type, flax_message = _flax_message(make(nn), x)
  with pytest.raises(Exception) as info:
    make(jl).init(jax.random.key(0), x)
  assert type(info.value) is flax_type, (type(info.value), flax_type)
  assert flax_message in str(info.value), (flax_message, str(info.value))
  assert str(info.value).startswith("jaxnorm."), str(info.value)


@pytest.mark.parametrize("make,x", [
    (lambda lib: lib.BatchNorm(use_running_average=False), np.zeros((8, 3), np.float32)),
    (lambda lib: lib.LayerNorm(), np.zeros((2, 5), np.float32)),
    (lambda lib: lib.GroupNorm(num_groups=2), np.zeros((2, 3, 4), np.float32)),
    (lambda lib: lib.RMSNorm(), np.zeros((2, 5), np.float32)),
])
def test_forward_mode_like_flax(make, x):
  x = x + _RNG.normal(size=x.shape).astype(np.float32)
  ours, theirs = make(jl), make(nn)
  variables = theirs.init(jax.random.key(0), x)

  def apply(module):
    def f(x):
      out = module.apply(variables, x, mutable=["batch_stats"])[0] \
          if "batch_stats" in variables else module.apply(variables, x)
      return out
    return f

  t = _RNG.normal(size=x.shape).astype(np.float32)
  _, dy_ours = jax.jit(lambda x, t: jax.jvp(apply(ours), (x,), (t,)))(x, t)
  _, dy_theirs = jax.jit(lambda x, t: jax.jvp(apply(theirs), (x,), (t,)))(x, t)
  np.testing.assert_allclose(dy_ours, dy_theirs, rtol=1e-4, atol=1e-4)
  h_ours = jax.jit(jax.hessian(lambda x: jnp.sum(jnp.sin(apply(ours)(x)))))(x)
  h_theirs = jax.jit(jax.hessian(lambda x: jnp.sum(jnp.sin(apply(theirs)(x)))))(x)
  np.testing.assert_allclose(h_ours, h_theirs, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("make,fragment", [
    (lambda: jl.BatchNorm(use_running_average=False, momentum="0.9"),
     "momentum must be a number, not a string"),
    (lambda: jl.BatchNorm(use_running_average=False, axis=1.0),
     "jaxnorm.linen.BatchNorm: axis must be an int or a tuple of ints"),
    (lambda: jl.LayerNorm(epsilon=float("inf")), "epsilon must be finite"),
    (lambda: jl.Dropout(rate="0.5", deterministic=False), "rate must be a number"),
    (lambda: jl.Dropout(rate=0.5, broadcast_dims=0, deterministic=False),
     "broadcast_dims must be a tuple"),
    (lambda: jl.SpatialDropout(rate=True, deterministic=True), "rate must be a number"),
    (lambda: jl.GroupNorm(num_groups=2.0), "num_groups must be an int or None"),
    (lambda: jl.BatchRenorm(use_running_average=False, r_max=float("nan")),
     "r_max must be >= 1; got nan"),
])
def test_wrong_kind_of_attribute(make, fragment):
  x = _RNG.normal(size=(4, 2, 2, 4)).astype(np.float32)
  module = make()
  with pytest.raises((TypeError, ValueError)) as info:
    module.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x)
  assert fragment in str(info.value), str(info.value)
