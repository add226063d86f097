"""jaxnorm.kernels: the fused CPU kernels against a float64 NumPy reference.

Every numerical test runs on both paths: the FFI kernels (when the library is built)
and the pure-JAX reference (``JAXNORM_KERNELS=0``). References are float64 NumPy
(closed-form statistics, outputs and gradients) or ``jax.grad`` of the plain formula,
never the code under test.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxnorm import kernels

PATHS = ["kernel", "reference"]


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
  if request.param == "kernel":
    if not kernels.status().loaded:
      pytest.skip(f"kernel library not built: {kernels.status().reason}")
    monkeypatch.setenv("JAXNORM_KERNELS", "1")
  else:
    monkeypatch.setenv("JAXNORM_KERNELS", "0")
  return request.param


def _np_normalize(x, scale, bias, mask, axes, eps, center, dy):
  """float64 (y, mean, var, count, dx, dscale, dbias), dy the output cotangent."""
  x = np.asarray(x, np.float64)
  dy = np.asarray(dy, np.float64)
  w = np.ones_like(x) if mask is None else np.broadcast_to(mask, x.shape).astype(np.float64)
  n = w.sum(axes, keepdims=True)
  safe = np.maximum(n, 1)
  mean = (w * x).sum(axes, keepdims=True) / safe if center else np.zeros_like(n)
  var = (w * (x - mean) ** 2).sum(axes, keepdims=True) / safe
  r = 1 / np.sqrt(var + eps)
  xhat = (x - mean) * r
  sc = 1.0 if scale is None else np.asarray(scale, np.float64)
  y = xhat * sc + (0.0 if bias is None else np.asarray(bias, np.float64))
  g = dy * sc
  sum_g = g.sum(axes, keepdims=True)
  sum_gx = (g * xhat).sum(axes, keepdims=True)
  dx = r * g - w * r / safe * ((sum_g if center else 0.0) + xhat * sum_gx)

  def reduce_to(t, like):
    if like is None:
      return None
    like_shape = (1,) * (x.ndim - np.ndim(like)) + np.shape(like)
    red = tuple(a for a in range(x.ndim) if like_shape[a] == 1)
    return t.sum(red, keepdims=True).reshape(np.shape(like))

  return y, mean, var, n, dx, reduce_to(dy * xhat, scale), reduce_to(dy, bias)


def _run(x, scale, bias, mask, axes, eps, center, dy):
  def f(x, scale, bias):
    return kernels.normalize(x, scale, bias, reduce_axes=axes, epsilon=eps, center=center,
                             mask=mask)

  outs, vjp = jax.vjp(f, x, scale, bias)
  zeros = [jnp.zeros_like(o) for o in outs[1:]]
  dx, dscale, dbias = vjp((dy.astype(outs[0].dtype), *zeros))
  return outs, (dx, dscale, dbias)


def _check(x, scale, bias, mask, axes, eps, center, tol, seed=0):
  rng = np.random.default_rng(seed)
  dy = jnp.asarray(rng.normal(size=x.shape), jnp.float32).astype(x.dtype)
  (y, mean, var, count), (dx, dscale, dbias) = _run(x, scale, bias, mask, axes, eps, center,
                                                    dy)
  x64 = np.asarray(x.astype(jnp.float32))
  ref = _np_normalize(x64, None if scale is None else np.asarray(scale, np.float32),
                      None if bias is None else np.asarray(bias, np.float32), mask, axes,
                      eps, center, np.asarray(dy.astype(jnp.float32)))
  y_r, mean_r, var_r, n_r, dx_r, ds_r, db_r = ref
  assert y.dtype == x.dtype and dx.dtype == x.dtype
  assert mean.dtype == var.dtype == jnp.float32 and mean.shape == mean_r.shape

  def close(got, want, scale_of=None):
    got = np.asarray(jnp.asarray(got, jnp.float32), np.float64)
    size = max(1.0, float(np.abs(want).max())) if scale_of is None else scale_of
    np.testing.assert_allclose(got, want, rtol=0, atol=tol * size)

  close(y, y_r)
  close(var, var_r)
  np.testing.assert_array_equal(np.asarray(count), n_r)
  if center:
    # The mean of data near 1e4 is only representable to ~5e-4 in float32.
    close(mean, mean_r, scale_of=max(1.0, float(np.abs(mean_r).max()) * 1e-3 / tol))
  close(dx, dx_r)
  if scale is not None:
    close(dscale, ds_r)
  if bias is not None:
    close(dbias, db_r)


LAYOUTS = {
    # name: (x shape, reduced axes, parameter shape)
    "layer_norm": ((6, 5, 40), (2,), (40,)),
    "layer_norm_2axes": ((4, 6, 24), (1, 2), (6, 24)),
    "batch_norm_nhwc": ((4, 3, 5, 16), (0, 1, 2), (16,)),
    "batch_norm_nchw": ((4, 16, 3, 6), (0, 2, 3), (16, 1, 1)),
    "group_norm_nhwc": ((3, 4, 5, 4, 8), (1, 2, 4), (4, 8)),
    "group_norm_2d": ((12, 4, 20), (2,), (4, 20)),
    "instance_norm": ((3, 5, 6, 16), (1, 2), (16,)),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_matches_float64_reference(path, name):
  shape, axes, param_shape = LAYOUTS[name]
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(0.5, 2.0, shape), jnp.float32)
  scale = jnp.asarray(rng.normal(1.0, 0.3, param_shape), jnp.float32)
  bias = jnp.asarray(rng.normal(0.0, 0.3, param_shape), jnp.float32)
  _check(x, scale, bias, None, axes, 1e-5, True, tol=2e-5)


@pytest.mark.parametrize("name", ["layer_norm", "batch_norm_nhwc", "group_norm_nhwc"])
def test_rms_and_no_affine(path, name):
  shape, axes, param_shape = LAYOUTS[name]
  x = jnp.asarray(np.random.default_rng(2).normal(1.0, 2.0, shape), jnp.float32)
  scale = jnp.full(param_shape, 1.5, jnp.float32)
  _check(x, scale, None, None, axes, 1e-6, False, tol=2e-5)
  _check(x, None, None, None, axes, 1e-6, True, tol=2e-5)


@pytest.mark.parametrize("name", ["layer_norm", "batch_norm_nhwc", "batch_norm_nchw"])
def test_shifted_data_keeps_its_variance(path, name):
  """Mean 1e4, std 1: the shifted statistics stay exact (E[x^2] - E[x]^2 would not)."""
  shape, axes, param_shape = LAYOUTS[name]
  x = jnp.asarray(np.random.default_rng(3).normal(1e4, 1.0, shape), jnp.float32)
  scale = jnp.ones(param_shape, jnp.float32)
  _check(x, scale, None, None, axes, 1e-5, True, tol=2e-4)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("name", ["layer_norm", "batch_norm_nhwc", "group_norm_nhwc"])
def test_narrow_dtypes_in_float32_math(path, dtype, name):
  shape, axes, param_shape = LAYOUTS[name]
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.normal(3.0, 2.0, shape), jnp.float32).astype(dtype)
  scale = jnp.asarray(rng.normal(1.0, 0.3, param_shape), jnp.float32)
  bias = jnp.asarray(rng.normal(0.0, 0.3, param_shape), jnp.float32)
  # Outputs are rounded to 8 (bf16) or 11 (fp16) bits; statistics are float32.
  _check(x, scale, bias, None, axes, 1e-5, True, tol=2e-2 if dtype == jnp.bfloat16 else 3e-3)


@pytest.mark.parametrize("mask_shape", ["element", "row"])
@pytest.mark.parametrize("name", ["layer_norm", "batch_norm_nhwc", "group_norm_nhwc"])
def test_masks(path, name, mask_shape):
  shape, axes, param_shape = LAYOUTS[name]
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.normal(2.0, 1.5, shape), jnp.float32)
  if mask_shape == "element":
    mask = rng.random(shape) < 0.7
  else:  # one flag per leading index (e.g. padded sequence positions)
    mask = (rng.random(shape[:2]) < 0.7).reshape(shape[:2] + (1,) * (len(shape) - 2))
    mask[(0,) * mask.ndim] = True
  scale = jnp.asarray(rng.normal(1.0, 0.3, param_shape), jnp.float32)
  bias = jnp.asarray(rng.normal(0.0, 0.3, param_shape), jnp.float32)
  _check(x, scale, bias, mask, axes, 1e-5, True, tol=5e-5)


@settings(max_examples=10, deadline=None)
@given(rows=st.integers(1, 9), features=st.integers(1, 70), seed=st.integers(0, 999),
       offset=st.sampled_from([0.0, 100.0, -3e3]))
def test_layer_norm_property(rows, features, seed, offset):
  x = jnp.asarray(np.random.default_rng(seed).normal(offset, 1.0, (rows, features)),
                  jnp.float32)
  scale = jnp.linspace(0.5, 1.5, features, dtype=jnp.float32)
  _check(x, scale, None, None, (1,), 1e-5, True, tol=1e-3, seed=seed)


def _plain_layer_norm(x, scale, bias):
  mean = jnp.mean(x, -1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), -1, keepdims=True)
  return (x - mean) / jnp.sqrt(var + 1e-5) * scale + bias


def _kernel_layer_norm(x, scale, bias):
  return kernels.normalize(x, scale, bias, reduce_axes=(x.ndim - 1,), epsilon=1e-5)[0]


def test_vmap_with_batched_scale_and_jit(path):
  rng = np.random.default_rng(6)
  x = jnp.asarray(rng.normal(size=(3, 5, 24)), jnp.float32)
  scale = jnp.asarray(rng.normal(1.0, 0.2, (3, 24)), jnp.float32)
  bias = jnp.asarray(rng.normal(size=(24,)), jnp.float32)
  got = jax.jit(jax.vmap(_kernel_layer_norm, in_axes=(0, 0, None)))(x, scale, bias)
  want = jax.vmap(_plain_layer_norm, in_axes=(0, 0, None))(x, scale, bias)
  np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)
  # Nested vmap, the scale batched in the inner one only.
  x2 = x.reshape(3, 5, 1, 24)
  inner = jax.vmap(_kernel_layer_norm, in_axes=(0, None, None))
  got = jax.vmap(inner, in_axes=(0, None, None))(x2, scale[0], bias)
  np.testing.assert_allclose(got[:, :, 0], jax.vmap(_plain_layer_norm, in_axes=(0, None, None))(
      x, scale[0], bias), rtol=0, atol=2e-5)


def test_gradients_under_vmap_and_second_order(path):
  rng = np.random.default_rng(7)
  x = jnp.asarray(rng.normal(size=(2, 4, 16)), jnp.float32)
  scale = jnp.asarray(rng.normal(1.0, 0.2, (2, 16)), jnp.float32)
  bias = jnp.zeros((16,), jnp.float32)

  def loss(f):
    return lambda x, s, b: jnp.sum(jnp.sin(f(x, s, b)) * jnp.arange(16.0))

  grads = jax.vmap(jax.grad(loss(_kernel_layer_norm), argnums=(0, 1, 2)), in_axes=(0, 0, None))
  want = jax.vmap(jax.grad(loss(_plain_layer_norm), argnums=(0, 1, 2)), in_axes=(0, 0, None))
  for got, ref in zip(grads(x, scale, bias), want(x, scale, bias)):
    np.testing.assert_allclose(got, ref, rtol=0, atol=5e-5)

  def grad_norm(f):
    return lambda x: jnp.sum(jnp.square(jax.grad(loss(f))(x, scale[0], bias)))

  np.testing.assert_allclose(jax.grad(grad_norm(_kernel_layer_norm))(x[0]),
                             jax.grad(grad_norm(_plain_layer_norm))(x[0]), rtol=2e-4,
                             atol=2e-4)


def test_deterministic_bits(path):
  x = jnp.asarray(np.random.default_rng(8).normal(size=(64, 3, 40)), jnp.float32)
  f = jax.jit(jax.grad(lambda x: jnp.sum(jnp.cos(kernels.normalize(
      x, None, None, reduce_axes=(0, 1), epsilon=1e-5)[0]))))
  np.testing.assert_array_equal(np.asarray(f(x)), np.asarray(f(x)))


# --- the operations on their own --------------------------------------------------


def test_split_operations_equal_fused(path):
  """moments + apply and backward_sums + backward_dx give the fused results."""
  rng = np.random.default_rng(9)
  x = jnp.asarray(rng.normal(5.0, 2.0, (3, 7, 4, 6)), jnp.float32)
  dy = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  scale = jnp.asarray(rng.normal(1.0, 0.2, (1, 1, 4, 6)), jnp.float32)
  bias = jnp.asarray(rng.normal(size=(1, 1, 4, 6)), jnp.float32)
  y, stats = kernels.norm_forward(x, scale, bias, epsilon=1e-5)
  stats2 = kernels.norm_moments(x)
  rstd = jax.lax.rsqrt(stats.var + 1e-5)
  np.testing.assert_allclose(stats2.shift + stats2.delta, stats.shift + stats.delta, atol=1e-5)
  np.testing.assert_allclose(kernels.norm_apply(x, stats2.shift, stats2.delta, rstd, scale,
                                                bias), y, atol=1e-5)
  dx, dscale, dbias = kernels.norm_backward(x, dy, stats, rstd, scale)
  sum_g, sum_gx, dscale2, dbias2 = kernels.norm_backward_sums(x, dy, stats, rstd, scale)
  dx2 = kernels.norm_backward_dx(x, dy, stats, rstd, scale, sum_g, sum_gx)
  for a, b in ((dx, dx2), (dscale, dscale2), (dbias, dbias2)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # And all of them against float64 NumPy (x is (B, S, G, K): reduce S and K).
  ref = _np_normalize(np.asarray(x), np.asarray(scale), np.asarray(bias), None, (1, 3), 1e-5,
                      True, np.asarray(dy))
  np.testing.assert_allclose(y, ref[0], atol=2e-5)
  np.testing.assert_allclose(dx, ref[4], atol=2e-5)
  np.testing.assert_allclose(dscale, ref[5], atol=5e-5)


def test_empty_groups_give_zero_statistics(path):
  x = jnp.asarray(np.random.default_rng(10).normal(size=(4, 12)), jnp.float32)
  mask = np.ones((4, 12), bool)
  mask[1] = False
  y, mean, var, count = kernels.normalize(x, None, None, reduce_axes=(1,), epsilon=1e-5,
                                          mask=mask)
  assert float(count[1, 0]) == 0 and float(mean[1, 0]) == 0 and float(var[1, 0]) == 0
  assert np.all(np.isfinite(np.asarray(y)))


def test_bad_input_messages():
  with pytest.raises(TypeError, match="float32, bfloat16 or float16"):
    kernels.norm_moments(jnp.zeros((1, 2, 1, 3), jnp.int32))
  with pytest.raises(ValueError, match="must be 4-D"):
    kernels.norm_moments(jnp.zeros((2, 3)))
  with pytest.raises(ValueError, match="layout must be"):
    kernels.norm_moments(jnp.zeros((2, 3)), layout=(1, 0, 0, 2))
  with pytest.raises(ValueError, match="does not fit"):
    kernels.normalize(jnp.zeros((4, 5, 6)), jnp.ones((4, 1, 6)), None, reduce_axes=(1,),
                      epsilon=1e-5)
  with pytest.raises(ValueError, match="constant over the B and S"):
    kernels.norm_apply(jnp.zeros((2, 3, 1, 4)), *(jnp.zeros((2, 1, 1, 1)),) * 3,
                       jnp.ones((2, 1, 1, 4)), None)


def test_only_the_cpu_lowering_calls_the_kernel(path):
  x = jnp.ones((8, 16), jnp.float32)
  f = jax.jit(lambda x: kernels.normalize(x, None, None, reduce_axes=(1,), epsilon=1e-5)[0])
  cpu = f.trace(x).lower(lowering_platforms=("cpu",)).as_text()
  cuda = f.trace(x).lower(lowering_platforms=("cuda",)).as_text()
  assert ("jaxnorm_norm_forward" in cpu) == (path == "kernel")
  assert "jaxnorm_norm" not in cuda
