"""Complex inputs, where flax supports them: batch, layer, group, instance, RMS norm.

The mean is complex, the variance real, :math:`E|x - \\mu|^2` (as in flax's
``test_batch_norm_complex``). Outputs and running statistics are compared with the
float64/complex128 NumPy references of conftest.py; gradients and forward-mode
derivatives with JAX's derivatives of the plain formula in complex128.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm import functional as F

_RNG = np.random.default_rng(21)


def _complex(shape, loc=0.0):
  return (_RNG.normal(size=shape) + 1j * _RNG.normal(size=shape) * 2 + loc).astype(
      np.complex64)


_X = _complex((6, 2, 4), loc=3 - 1j)
_SCALE = np.linspace(0.5, 1.5, 4).astype(np.float32)
_BIAS = np.linspace(-1, 1, 4).astype(np.float32)
_MASK = _RNG.random((6, 2, 1)) < 0.7
_MASK[0, 0] = True


def _calls(ref):
  stats = F.BatchStats(jnp.zeros(4), jnp.ones(4))
  return {
      "batch_norm": (
          lambda x, s, b: F.batch_norm(x, s, b, stats, train=True)[0],
          lambda x, s, b: ref.batch_norm(x, s, b, stats, train=True)[0],
          lambda x, s, b: ref.plain_batch_norm(x, s, b)),
      "batch_norm_masked": (
          lambda x, s, b: F.batch_norm(x, s, b, stats, train=True, mask=_MASK)[0],
          lambda x, s, b: ref.batch_norm(x, s, b, stats, train=True, mask=_MASK)[0],
          lambda x, s, b: ref.plain_batch_norm(x, s, b, mask=_MASK)),
      "layer_norm": (
          lambda x, s, b: F.layer_norm(x, s, b),
          lambda x, s, b: ref.layer_norm(x, s, b),
          lambda x, s, b: ref.plain_layer_norm(x, s, b)),
      "group_norm": (
          lambda x, s, b: F.group_norm(x, s, b, num_groups=2),
          lambda x, s, b: ref.group_norm(x, s, b, num_groups=2),
          lambda x, s, b: ref.plain_group_norm(x, s, b, num_groups=2)),
      "instance_norm": (
          lambda x, s, b: F.instance_norm(x, s, b),
          lambda x, s, b: ref.instance_norm(x, s, b),
          lambda x, s, b: ref.plain_instance_norm(x, s, b)),
      "rms_norm": (
          lambda x, s, b: F.rms_norm(x, s) + b,
          lambda x, s, b: ref.rms_norm(x, s) + b,
          lambda x, s, b: ref.plain_rms_norm(x, s) + b),
  }


_NAMES = ["batch_norm", "batch_norm_masked", "layer_norm", "group_norm", "instance_norm",
          "rms_norm"]


@pytest.mark.parametrize("name", _NAMES)
def test_complex_output_and_derivatives(ref, name):
  fn, expected, plain = _calls(ref)[name]
  y = jax.jit(fn)(_X, _SCALE, _BIAS)
  assert y.dtype == jnp.complex64
  ref.assert_close(y, expected(_X, _SCALE, _BIAS), ref.FLOAT32_TOL, what="y")
  w = _complex(_X.shape)

  def loss(fn):
    return lambda x, s, b: jnp.sum(jnp.real(jnp.conj(w) * fn(x, s, b)) + jnp.abs(
        fn(x, s, b)) ** 2)

  grads = jax.jit(jax.grad(loss(fn), argnums=(0, 1, 2)))(_X, _SCALE, _BIAS)
  expected_grads = ref.grad64(loss(plain), (_X, _SCALE, _BIAS), argnums=(0, 1, 2))
  for label, g, e in zip(("x", "scale", "bias"), grads, expected_grads):
    ref.assert_close(g, e, ref.GRAD_TOL, what=f"d{label}")
  tangents = (_complex(_X.shape), _RNG.normal(size=4).astype(np.float32),
              _RNG.normal(size=4).astype(np.float32))
  _, dy = jax.jit(lambda p, t: jax.jvp(fn, p, t))((_X, _SCALE, _BIAS), tangents)
  _, dy64 = ref.jvp64(plain, (_X, _SCALE, _BIAS), tangents)
  ref.assert_close(dy, dy64, ref.GRAD_TOL, what="jvp")


def test_complex_running_statistics(ref):
  stats = F.BatchStats(jnp.zeros(4), jnp.ones(4))  # float32, as flax initializes them
  _, new = F.batch_norm(_X, None, None, stats, train=True, momentum=0.9)
  assert new.mean.dtype == jnp.complex64 and new.var.dtype == jnp.float32
  _, (mean, var) = ref.batch_norm(_X, None, None, stats, train=True, momentum=0.9)
  ref.assert_close(new.mean, mean, ref.FLOAT32_TOL)
  ref.assert_close(new.var, var, ref.FLOAT32_TOL)
  y, _ = F.batch_norm(_X, None, None, new, train=False)
  ref.assert_close(y, ref.batch_norm(_X, None, None, (mean, var), train=False)[0],
                   ref.FLOAT32_TOL)
  with pytest.raises(TypeError, match="stats hold complex values"):
    F.batch_norm(_X.real, None, None, new, train=False)


def test_complex_moments_and_scale(ref):
  x = _complex((32, 3)) * np.float32(1e15)  # |x|^2 ~ 1e30: the variance fits float32
  mean, var = F.moments(x, 0)
  want_mean, want_var = ref.moments(x, 0)
  assert mean.dtype == jnp.complex64 and var.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(mean), want_mean, rtol=1e-5, atol=1e9)
  np.testing.assert_allclose(np.asarray(var, np.float64), want_var, rtol=1e-5)
  x = x * np.float32(1e20)  # |x|^2 ~ 1e70: beyond float32, the output is still right
  ref.assert_close(F.layer_norm(x, None, None), ref.layer_norm(x, None, None),
                   ref.FLOAT32_TOL)


def test_complex_dropout_as_flax():
  x = _complex((8, 4))
  y = np.asarray(F.dropout(jax.random.key(0), x, rate=0.5))
  kept = y != 0
  np.testing.assert_allclose(y[kept], 2 * x[kept], rtol=1e-6)
  assert 0 < kept.mean() < 1
