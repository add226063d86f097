"""Any finite input gives the right normalized output, whatever its magnitude.

Data with std 1e20 or 1e30 (squares beyond float32), 1e-11 with an epsilon as small as
allowed (1e-24: the variance matters), 1e-30 and subnormals (the output is tiny), data
far from zero, outliers that a subsample misses, constant data, float16 and bfloat16:
every normalization and ``moments`` are
compared with the float64 NumPy references of conftest.py (the same float32 input
values, two-pass float64 statistics). Gradients at these scales are compared with JAX's
derivative of the plain formula in float64.

Tolerances: float32 outputs within 1e-5 relative to max(1, |reference|) plus the same
relative per element (``FLOAT32_TOL``); half-precision outputs 2e-2 (``BF16_TOL``);
gradients 1e-4 (``GRAD_TOL``).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm import functional as F

_C = 6
_STATS = F.BatchStats(jnp.zeros(_C), jnp.ones(_C))
_RENORM = F.BatchRenormStats(jnp.zeros(_C), jnp.ones(_C), jnp.int32(0))
_V = np.linspace(0.5, 1.5, _C).astype(np.float32)
_W = np.array([0.3, -0.2, 1.0], np.float32)


def _scale_bias():
  rng = np.random.default_rng(5)
  return ((1 + 0.3 * rng.normal(size=_C)).astype(np.float32),
          (0.5 * rng.normal(size=_C)).astype(np.float32))


# name -> (jaxnorm call on (x, scale, bias, epsilon), float64 reference on the same).
def _layers(ref):
  return {
      "batch_norm": (
          lambda x, s, b, e: F.batch_norm(x, s, b, _STATS, train=True, epsilon=e)[0],
          lambda x, s, b, e: ref.batch_norm(x, s, b, _STATS, train=True, epsilon=e)[0]),
      "layer_norm": (
          lambda x, s, b, e: F.layer_norm(x, s, b, epsilon=e),
          lambda x, s, b, e: ref.layer_norm(x, s, b, epsilon=e)),
      "rms_norm": (
          lambda x, s, b, e: F.rms_norm(x, s, epsilon=e),
          lambda x, s, b, e: ref.rms_norm(x, s, epsilon=e)),
      "group_norm": (
          lambda x, s, b, e: F.group_norm(x, s, b, num_groups=2, epsilon=e),
          lambda x, s, b, e: ref.group_norm(x, s, b, num_groups=2, epsilon=e)),
      "instance_norm": (
          lambda x, s, b, e: F.instance_norm(x, s, b, epsilon=e),
          lambda x, s, b, e: ref.instance_norm(x, s, b, epsilon=e)),
      "batch_renorm": (
          lambda x, s, b, e: F.batch_renorm(x, s, b, _RENORM, train=True, epsilon=e)[0],
          lambda x, s, b, e: ref.batch_renorm(x, s, b, _RENORM, train=True, r_max=3.0,
                                              d_max=5.0, epsilon=e)[0]),
      "ghost_batch_norm": (
          lambda x, s, b, e: F.ghost_batch_norm(x, s, b, None, virtual_batch_size=4,
                                                train=True, epsilon=e)[0],
          lambda x, s, b, e: ref.ghost_batch_norm(x, s, b, None, virtual_batch_size=4,
                                                  train=True, epsilon=e)[0]),
      "switch_norm": (
          lambda x, s, b, e: F.switch_norm(x, s, b, _W, _W[::-1], _STATS, train=True,
                                           epsilon=e)[0],
          lambda x, s, b, e: ref.switch_norm(x, s, b, _W, _W[::-1], _STATS, train=True,
                                             epsilon=e)[0]),
      "evonorm_b0": (
          lambda x, s, b, e: F.evonorm_b0(x, s, b, _V, _STATS, train=True, epsilon=e)[0],
          lambda x, s, b, e: ref.evonorm_b0(x, s, b, _V, _STATS, train=True,
                                            epsilon=e)[0]),
      "evonorm_s0": (
          lambda x, s, b, e: F.evonorm_s0(x, s, b, _V, num_groups=2, epsilon=e),
          lambda x, s, b, e: ref.evonorm_s0(x, s, b, _V, num_groups=2, epsilon=e)),
  }


_NAMES = ["batch_norm", "layer_norm", "rms_norm", "group_norm", "instance_norm",
          "batch_renorm", "ghost_batch_norm", "switch_norm", "evonorm_b0", "evonorm_s0"]

# (label, std, mean in units of std, epsilon): data of every magnitude.
_SCALES = [
    ("std 1e20, mean 5e20", 1e20, 5.0, 1e-5),
    ("std 1e30, mean -3e30", 1e30, -3.0, 1e-5),
    ("std 1e37, near float32's max", 1e37, 2.0, 1e-5),
    ("std 1e-11, epsilon 1e-22", 1e-11, 0.0, 1e-22),
    ("std 1e-11, mean 4e-11, epsilon 1e-24", 1e-11, 4.0, 1e-24),
    ("std 1e-30", 1e-30, 0.0, 1e-5),
    ("subnormal", 1e-40, 1.0, 1e-5),
    ("mean 1e5, std 0.1", 0.1, 1e6, 1e-5),
]


def _data(shape, std, mean_in_std, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.normal(mean_in_std, 1.0, shape) * std).astype(np.float32)


@pytest.mark.parametrize("label,std,mean,epsilon", _SCALES, ids=[s[0] for s in _SCALES])
@pytest.mark.parametrize("name", _NAMES)
def test_output_at_every_scale(ref, name, label, std, mean, epsilon):
  fn, expected = _layers(ref)[name]
  x = _data((8, 2, 2, _C), std, mean)
  assert np.all(np.isfinite(x))
  scale, bias = _scale_bias()
  y = jax.jit(fn, static_argnums=3)(x, scale, bias, epsilon)
  ref.assert_close(y, expected(x, scale, bias, epsilon), ref.FLOAT32_TOL,
                   what=f"{name} {label}")


@pytest.mark.parametrize("name", ["batch_norm", "layer_norm", "rms_norm", "group_norm",
                                  "instance_norm", "switch_norm", "evonorm_b0",
                                  "evonorm_s0"])
def test_constant_data_of_any_magnitude(ref, name):
  """A constant group normalizes to exactly 0 (scale * 0 + bias), also at 1e30."""
  fn, expected = _layers(ref)[name]
  scale, bias = _scale_bias()
  for value in (1e30, -3.3e-20, 1.0000001, 7.0):
    x = np.full((8, 2, 2, _C), value, np.float32)
    y = jax.jit(fn, static_argnums=3)(x, scale, bias, 1e-5)
    ref.assert_close(y, expected(x, scale, bias, 1e-5), ref.FLOAT32_TOL,
                     what=f"{name} constant {value}")


@pytest.mark.parametrize("outlier", [1e25, -3e38])
@pytest.mark.parametrize("name", ["batch_norm", "layer_norm", "rms_norm", "instance_norm",
                                  "switch_norm", "evonorm_b0", "evonorm_s0"])
def test_outliers_the_subsample_misses(ref, name, outlier):
  """A value far beyond the rest, at a position no subsample looks at."""
  fn, expected = _layers(ref)[name]
  x = _data((8, 2, 2, _C), 1.0, 0.0, seed=1)
  x[7, 1, 1, 3] = outlier
  x[5, 1, 0, :] = -outlier / 3
  scale, bias = _scale_bias()
  y = jax.jit(fn, static_argnums=3)(x, scale, bias, 1e-5)
  ref.assert_close(y, expected(x, scale, bias, 1e-5), ref.FLOAT32_TOL,
                   what=f"{name} outlier {outlier}")


def test_outlier_beyond_a_large_subsample(ref):
  """A long row whose subsample (64 contiguous values) holds none of the outliers."""
  x = _data((3, 4096), 1.0, 0.0, seed=2)
  x[0, 4000] = 1e30
  x[1, 3000:3002] = [-2e37, 2e37]
  x[2, 100] = 1e-30 * 0 + 5e22
  y = jax.jit(lambda x: F.layer_norm(x, None, None))(x)
  ref.assert_close(y, ref.layer_norm(x, None, None), ref.FLOAT32_TOL)
  mean, var = jax.jit(lambda x: F.moments(x, 1))(x)
  ref_mean, ref_var = ref.moments(x, 1)
  ref.assert_close(mean, ref_mean, ref.FLOAT32_TOL)
  finite = ref_var < np.finfo(np.float32).max
  ref.assert_close(np.asarray(var)[finite], ref_var[finite], ref.FLOAT32_TOL)
  assert np.all(np.isinf(np.asarray(var)[~finite]))  # std 2e37: var beyond float32


@pytest.mark.parametrize("label,std,mean,epsilon", _SCALES[:5], ids=[s[0] for s in
                                                                    _SCALES[:5]])
def test_moments_at_every_scale(ref, label, std, mean, epsilon):
  x = _data((64, 3), std, mean)
  got_mean, got_var = F.moments(x, 0)
  ref_mean, ref_var = ref.moments(x, 0)
  np.testing.assert_allclose(np.asarray(got_mean, np.float64), ref_mean, rtol=1e-6,
                             atol=1e-6 * std)
  representable = ref_var < np.finfo(np.float32).max
  np.testing.assert_allclose(np.asarray(got_var, np.float64)[representable],
                             ref_var[representable], rtol=1e-5)
  assert np.all(np.isinf(np.asarray(got_var)[~representable]))


@pytest.mark.parametrize("dtype,std,mean", [
    ("float16", 1e4, 0.0), ("float16", 1e4, 3.0), ("float16", 1e-6, 1.0),
    ("bfloat16", 1e30, 1.0), ("bfloat16", 1e-30, -2.0), ("bfloat16", 1e-39, 0.0),
])
@pytest.mark.parametrize("name", ["batch_norm", "layer_norm"])
def test_half_precision_at_every_scale(ref, name, dtype, std, mean):
  fn, expected = _layers(ref)[name]
  x = jnp.asarray(_data((8, 2, 2, _C), std, mean)).astype(dtype)
  scale, bias = _scale_bias()
  y = jax.jit(fn, static_argnums=3)(x, scale, bias, 1e-5)
  assert y.dtype == jnp.dtype(dtype)
  ref.assert_close(y, expected(ref.to64(x), scale, bias, 1e-5), ref.BF16_TOL,
                   what=f"{name} {dtype} std {std}")


_PLAIN = {
    "batch_norm": lambda ref: (
        lambda x, s, b, e: F.batch_norm(x, s, b, None, train=True, epsilon=e)[0],
        lambda x, s, b, e: ref.plain_batch_norm(x, s, b, epsilon=e)),
    "layer_norm": lambda ref: (
        lambda x, s, b, e: F.layer_norm(x, s, b, epsilon=e),
        lambda x, s, b, e: ref.plain_layer_norm(x, s, b, epsilon=e)),
}


@pytest.mark.parametrize("case", ["std 1e30", "outlier 1e30", "std 1e-11, epsilon 1e-22",
                                  "mean 1e5, std 0.1"])
@pytest.mark.parametrize("name", list(_PLAIN))
def test_gradients_at_every_scale(ref, name, case):
  fn, plain = _PLAIN[name](ref)
  x = {"std 1e30": _data((16, _C), 1e30, 1.0),
       "outlier 1e30": _data((16, _C), 1.0, 0.0),
       "std 1e-11, epsilon 1e-22": _data((16, _C), 1e-11, 2.0),
       "mean 1e5, std 0.1": _data((16, _C), 0.1, 1e6)}[case]
  if case == "outlier 1e30":
    x[13, 2] = 1e30
  epsilon = 1e-22 if "1e-22" in case else 1e-5
  scale, bias = _scale_bias()
  w = _data((16, _C), 1.0, 0.0, seed=3)
  grads = jax.jit(jax.grad(lambda x, s, b: jnp.sum(w * jnp.sin(fn(x, s, b, epsilon))),
                           argnums=(0, 1, 2)))(x, scale, bias)
  expected = ref.grad64(lambda x, s, b: jnp.sum(w * jnp.sin(plain(x, s, b, epsilon))),
                        (x, scale, bias), argnums=(0, 1, 2))
  for label, g, e in zip("x scale bias".split(), grads, expected):
    assert np.all(np.isfinite(np.asarray(g))), (name, case, label)
    ref.assert_close(g, e, ref.GRAD_TOL, what=f"{name} {case} d{label}")
