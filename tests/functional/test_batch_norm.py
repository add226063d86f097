"""Tests of jaxnorm.functional.batch_norm.

Forward values and running statistics are compared with a float64 NumPy reference
(conftest.py); gradients with ``jax.grad`` of the plain-jnp formula below, evaluated in
float64 (x64 enabled locally), so the measured error is jaxnorm's alone.

Tolerances: float32 forward 1e-5 and gradients 1e-4, both relative to
max(1, max |reference|) plus 1e-5 / 1e-4 relative per element; bfloat16 2e-2 likewise;
shifted data (mean 1e4, std 1) 1e-3 absolute.
"""

import re

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

import jaxnorm
from jaxnorm import functional as F

HYPOTHESIS = hypothesis.settings(
    max_examples=25, deadline=None, database=None, derandomize=True,
    suppress_health_check=[hypothesis.HealthCheck.too_slow,
                           hypothesis.HealthCheck.data_too_large])

EPS = 1e-5


# --------------------------------------------------------------------------------------
# The plain formula (differentiated by JAX, not by jaxnorm's closed form).


def plain_batch_norm(x, scale, bias, mask, feature_axes, epsilon=EPS):
  """Batch norm written directly in jnp; masked positions use the valid statistics."""
  feature_axes = tuple(a % x.ndim for a in feature_axes)
  reduce_axes = tuple(a for a in range(x.ndim) if a not in feature_axes)
  pshape = tuple(d if a in feature_axes else 1 for a, d in enumerate(x.shape))
  if mask is None:
    w = jnp.ones(x.shape, x.dtype)
  else:
    w = jnp.broadcast_to(jnp.asarray(mask).reshape(
        (1,) * (x.ndim - jnp.ndim(mask)) + jnp.shape(mask)), x.shape).astype(x.dtype)
  n = jnp.maximum(jnp.sum(w, reduce_axes, keepdims=True), 1)
  mean = jnp.sum(w * x, reduce_axes, keepdims=True) / n
  var = jnp.sum(w * jnp.square(x - mean), reduce_axes, keepdims=True) / n
  y = (x - mean) / jnp.sqrt(var + epsilon)
  if scale is not None:
    y = y * scale.reshape(pshape)
  if bias is not None:
    y = y + bias.reshape(pshape)
  return y


def _normal(seed, shape, loc=0.0, scale=1.0):
  return np.random.default_rng(seed).normal(loc, scale, shape).astype(np.float32)


def _params(seed, feature_shape):
  rng = np.random.default_rng(seed)
  scale = (1.0 + 0.5 * rng.normal(size=feature_shape)).astype(np.float32)
  bias = rng.normal(size=feature_shape).astype(np.float32)
  stats = F.BatchStats(mean=rng.normal(size=feature_shape).astype(np.float32),
                       var=(0.5 + rng.random(feature_shape)).astype(np.float32))
  return scale, bias, stats


def _feature_shape(shape, axis):
  axes = (axis,) if isinstance(axis, int) else axis
  return tuple(shape[a % len(shape)] for a in sorted(a % len(shape) for a in axes))


SHAPES_AXES = [
    ((8, 3), -1),
    ((8, 3), 1),
    ((3, 8), 0),
    ((4, 3, 3, 5), -1),  # NHWC
    ((4, 3, 3, 5), (1, 3)),
    ((4, 3, 3, 5), (-3, -1)),
    ((5, 2, 3), (0, 2)),
]


# --------------------------------------------------------------------------------------
# Forward values and running statistics.


@pytest.mark.parametrize("shape,axis", SHAPES_AXES)
def test_train_matches_reference(ref, shape, axis):
  x = _normal(0, shape, loc=0.3, scale=1.7)
  scale, bias, stats = _params(1, _feature_shape(shape, axis))
  y, new = F.batch_norm(x, scale, bias, stats, train=True, momentum=0.9, axis=axis)
  ref_y, (ref_mean, ref_var) = ref.batch_norm(x, scale, bias, stats, train=True,
                                              momentum=0.9, axis=axis)
  assert isinstance(new, jaxnorm.BatchStats)
  assert y.dtype == jnp.float32 and y.shape == shape
  assert new.mean.dtype == jnp.float32 and new.var.dtype == jnp.float32
  ref.assert_close(y, ref_y, ref.FLOAT32_TOL, what="y")
  ref.assert_close(new.mean, ref_mean, ref.FLOAT32_TOL, what="new mean")
  ref.assert_close(new.var, ref_var, ref.FLOAT32_TOL, what="new var")


def test_running_update_uses_biased_variance_and_flax_momentum(ref):
  # Hand-checkable numbers: batch [1, 3] -> mean 2, biased var 1 (unbiased would be 2).
  x = jnp.array([[1.0], [3.0]])
  stats = F.BatchStats(mean=jnp.array([10.0]), var=jnp.array([5.0]))
  _, new = F.batch_norm(x, None, None, stats, train=True, momentum=0.75)
  np.testing.assert_allclose(np.asarray(new.mean, np.float64), [0.75 * 10 + 0.25 * 2])
  np.testing.assert_allclose(np.asarray(new.var, np.float64), [0.75 * 5 + 0.25 * 1])


@pytest.mark.parametrize("momentum", [0.0, 1.0])
def test_momentum_extremes(ref, momentum):
  x = _normal(2, (6, 3))
  _, _, stats = _params(2, (3,))
  _, new = F.batch_norm(x, None, None, stats, train=True, momentum=momentum)
  _, (ref_mean, ref_var) = ref.batch_norm(x, None, None, stats, train=True,
                                          momentum=momentum)
  ref.assert_close(new.mean, ref_mean, ref.FLOAT32_TOL)
  ref.assert_close(new.var, ref_var, ref.FLOAT32_TOL)


@pytest.mark.parametrize("shape,axis", SHAPES_AXES[::2])
def test_eval_uses_running_stats_and_returns_them_unchanged(ref, shape, axis):
  x = _normal(3, shape, loc=1.0)
  scale, bias, stats = _params(4, _feature_shape(shape, axis))
  y, new = F.batch_norm(x, scale, bias, stats, train=False, axis=axis)
  ref_y, _ = ref.batch_norm(x, scale, bias, stats, train=False, axis=axis)
  ref.assert_close(y, ref_y, ref.FLOAT32_TOL, what="y")
  # Batch statistics would give a different output: the test can tell them apart.
  batch_y, _ = ref.batch_norm(x, scale, bias, stats, train=True, axis=axis)
  assert ref.max_scaled_error(y, batch_y) > 1e-2
  np.testing.assert_array_equal(np.asarray(new.mean), stats.mean)
  np.testing.assert_array_equal(np.asarray(new.var), stats.var)
  assert new.mean.dtype == jnp.float32 and new.var.dtype == jnp.float32


@pytest.mark.parametrize("use_scale,use_bias", [(False, False), (True, False),
                                                (False, True)])
@pytest.mark.parametrize("train", [True, False])
def test_scale_bias_none(ref, use_scale, use_bias, train):
  x = _normal(5, (7, 4), loc=-2.0)
  scale, bias, stats = _params(6, (4,))
  scale = scale if use_scale else None
  bias = bias if use_bias else None
  y, _ = F.batch_norm(x, scale, bias, stats, train=train)
  ref_y, _ = ref.batch_norm(x, scale, bias, stats, train=train)
  ref.assert_close(y, ref_y, ref.FLOAT32_TOL)


def test_stats_none_in_training(ref):
  x = _normal(7, (5, 3))
  y, new = F.batch_norm(x, None, None, None, train=True)
  assert new is None
  ref_y, _ = ref.batch_norm(x, None, None, None, train=True)
  ref.assert_close(y, ref_y, ref.FLOAT32_TOL)


def test_shifted_data(ref):
  x = _normal(8, (128, 4), loc=1e4, scale=1.0)
  scale, bias, stats = _params(9, (4,))
  y, new = F.batch_norm(x, scale, bias, stats, train=True, momentum=0.0)
  ref_y, (ref_mean, ref_var) = ref.batch_norm(x, scale, bias, stats, train=True,
                                              momentum=0.0)
  y_err = np.max(np.abs(np.asarray(y, np.float64) - ref_y))
  var_err = np.max(np.abs(np.asarray(new.var, np.float64) - ref_var))
  assert y_err < ref.SHIFTED_VAR_TOL, y_err
  assert var_err < ref.SHIFTED_VAR_TOL, var_err


def test_shifted_data_naive_formula_fails(ref):
  # Control: the same check rejects batch norm built on E[x^2] - E[x]^2 in float32.
  x = jnp.asarray(_normal(8, (128, 4), loc=1e4, scale=1.0))
  mean = jnp.mean(x, 0)
  var = jnp.maximum(jnp.mean(x * x, 0) - mean * mean, 0)
  y = (x - mean) / jnp.sqrt(var + EPS)
  ref_y, _ = ref.batch_norm(x, None, None, None, train=True)
  assert np.max(np.abs(np.asarray(y, np.float64) - ref_y)) > 100 * ref.SHIFTED_VAR_TOL


@pytest.mark.parametrize("train", [True, False])
def test_bfloat16(ref, train):
  x = jnp.asarray(_normal(10, (16, 3, 4), loc=2.0, scale=3.0)).astype(jnp.bfloat16)
  scale, bias, stats = _params(11, (4,))
  y, new = F.batch_norm(x, scale, bias, stats, train=train, momentum=0.8)
  assert y.dtype == jnp.bfloat16
  assert new.mean.dtype == jnp.float32 and new.var.dtype == jnp.float32
  ref_y, (ref_mean, ref_var) = ref.batch_norm(ref.to64(x), scale, bias, stats,
                                              train=train, momentum=0.8)
  ref.assert_close(y, ref_y, ref.BF16_TOL, what="y")
  # Statistics are float32 computed from the rounded values: float32 accuracy.
  ref.assert_close(new.mean, ref_mean, ref.FLOAT32_TOL, what="mean")
  ref.assert_close(new.var, ref_var, ref.FLOAT32_TOL, what="var")


def test_float16(ref):
  x = jnp.asarray(_normal(12, (32, 3), loc=-1.0, scale=2.0)).astype(jnp.float16)
  y, new = F.batch_norm(x, None, None, F.BatchStats(jnp.zeros(3), jnp.ones(3)),
                        train=True)
  assert y.dtype == jnp.float16 and new.var.dtype == jnp.float32
  ref_y, (_, ref_var) = ref.batch_norm(ref.to64(x), None, None,
                                       (np.zeros(3), np.ones(3)), train=True)
  ref.assert_close(y, ref_y, ref.BF16_TOL)
  ref.assert_close(new.var, ref_var, ref.FLOAT32_TOL)


@pytest.mark.parametrize("mask_shape", [(12, 1), (12, 3), (1, 3), (3,)])
def test_mask_forward(ref, mask_shape):
  rng = np.random.default_rng(13)
  x = _normal(13, (12, 3), loc=1.0)
  mask = rng.random(mask_shape) < 0.6
  mask.flat[0] = True
  scale, bias, stats = _params(14, (3,))
  y, new = F.batch_norm(x, scale, bias, stats, train=True, mask=mask, momentum=0.5)
  ref_y, (ref_mean, ref_var) = ref.batch_norm(x, scale, bias, stats, train=True,
                                              momentum=0.5, mask=mask)
  ref.assert_close(y, ref_y, ref.FLOAT32_TOL, what="y")
  ref.assert_close(new.mean, ref_mean, ref.FLOAT32_TOL, what="mean")
  ref.assert_close(new.var, ref_var, ref.FLOAT32_TOL, what="var")


def test_mask_ignores_garbage_in_statistics(ref):
  x = _normal(15, (10, 2, 3))
  mask = np.ones((10, 2, 1), bool)
  mask[0] = False
  mask[7, 1] = False
  polluted = np.where(np.broadcast_to(mask, x.shape), x, np.float32(1e30))
  _, _, stats = _params(16, (3,))
  _, new = F.batch_norm(polluted, None, None, stats, train=True, mask=mask)
  _, (ref_mean, ref_var) = ref.batch_norm(x, None, None, stats, train=True, mask=mask)
  ref.assert_close(new.mean, ref_mean, ref.FLOAT32_TOL)
  ref.assert_close(new.var, ref_var, ref.FLOAT32_TOL)


# --------------------------------------------------------------------------------------
# chex variants: the same numbers with and without jit.


class BatchNormVariantsTest(chex.TestCase):

  @pytest.fixture(autouse=True)
  def _inject_reference(self, ref):
    self.ref = ref

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(
      ("nhwc", (4, 2, 3, 5), -1),
      ("two_feature_axes", (4, 2, 3, 5), (1, 3)),
      ("features_first", (3, 6), 0),
  )
  def test_train_and_eval(self, shape, axis):
    x = _normal(20, shape, loc=0.5)
    scale, bias, stats = _params(21, _feature_shape(shape, axis))
    mask = np.random.default_rng(22).random(shape[:1] + (1,) * (len(shape) - 1)) < 0.7
    mask[0] = True

    @self.variant
    def train(x, scale, bias, stats, mask):
      return F.batch_norm(x, scale, bias, stats, train=True, momentum=0.8, axis=axis,
                          mask=mask)

    @self.variant
    def evaluate(x, scale, bias, stats):
      return F.batch_norm(x, scale, bias, stats, train=False, axis=axis)

    y, new = train(x, scale, bias, stats, mask)
    ref_y, (ref_mean, ref_var) = self.ref.batch_norm(
        x, scale, bias, stats, train=True, momentum=0.8, axis=axis, mask=mask)
    self.ref.assert_close(y, ref_y, self.ref.FLOAT32_TOL, what="train y")
    self.ref.assert_close(new.mean, ref_mean, self.ref.FLOAT32_TOL, what="mean")
    self.ref.assert_close(new.var, ref_var, self.ref.FLOAT32_TOL, what="var")

    y, new = evaluate(x, scale, bias, stats)
    ref_y, _ = self.ref.batch_norm(x, scale, bias, stats, train=False, axis=axis)
    self.ref.assert_close(y, ref_y, self.ref.FLOAT32_TOL, what="eval y")
    np.testing.assert_array_equal(np.asarray(new.var), stats.var)

  @chex.variants(with_jit=True, without_jit=True)
  def test_gradients(self):
    x = _normal(23, (6, 2, 3), loc=-0.5)
    scale, bias, _ = _params(24, (3,))
    w = _normal(25, x.shape)

    def loss(x, scale, bias):
      y, _ = F.batch_norm(x, scale, bias, None, train=True)
      return jnp.sum(w * jnp.sin(y))

    def plain_loss(x, scale, bias):
      return jnp.sum(w * jnp.sin(plain_batch_norm(x, scale, bias, None, (2,))))

    grads = self.variant(jax.grad(loss, argnums=(0, 1, 2)))(x, scale, bias)
    expected = self.ref.grad64(plain_loss, (x, scale, bias), argnums=(0, 1, 2))
    for name, g, e in zip("x scale bias".split(), grads, expected):
      self.ref.assert_close(g, e, self.ref.GRAD_TOL, what=f"d{name}")


# --------------------------------------------------------------------------------------
# Gradients against jax.grad of the plain formula (evaluated in float64).


def _grads(ref, x, scale, bias, axis, mask=None, epsilon=EPS):
  """(jaxnorm grads, float64 plain grads) of sum(w * sin(y)) w.r.t. x, scale, bias."""
  w = _normal(99, x.shape)
  feature_axes = (axis,) if isinstance(axis, int) else tuple(axis)
  argnums = tuple(i for i, a in enumerate((x, scale, bias)) if a is not None)

  def loss(x, scale, bias):
    y, _ = F.batch_norm(x, scale, bias, None, train=True, axis=axis, mask=mask,
                        epsilon=epsilon)
    return jnp.sum(w * jnp.sin(y))

  def plain_loss(x, scale, bias):
    y = plain_batch_norm(x, scale, bias, mask, feature_axes, epsilon)
    return jnp.sum(w * jnp.sin(y))

  got = jax.jit(jax.grad(loss, argnums=argnums))(x, scale, bias)
  expected = ref.grad64(plain_loss, (x, scale, bias), argnums=argnums)
  return got, expected


@pytest.mark.parametrize("shape,axis", SHAPES_AXES)
def test_gradients_match_plain_formula(ref, shape, axis):
  x = _normal(30, shape, loc=0.7, scale=1.3)
  scale, bias, _ = _params(31, _feature_shape(shape, axis))
  got, expected = _grads(ref, x, scale, bias, axis)
  for name, g, e in zip(["x", "scale", "bias"], got, expected):
    ref.assert_close(g, e, ref.GRAD_TOL, what=f"d{name}")
  # Control: the x-gradient that ignores the statistics terms (rstd * scale * dy) is
  # rejected by the same comparison, so the test can fail.
  w = _normal(99, x.shape)
  reduce_axes = tuple(a for a in range(x.ndim) if a not in ref.canonical_axes(axis, x.ndim))
  _, _, var = ref.normalize(x, None, None, reduce_axes, EPS)
  ref_y, _ = ref.batch_norm(x, scale, bias, None, train=True, axis=axis)
  naive = w * np.cos(ref_y) * scale.reshape(ref.param_shape(shape, axis)) / np.sqrt(
      var + EPS)
  assert ref.max_scaled_error(naive, expected[0]) > 10 * ref.GRAD_TOL


@pytest.mark.parametrize("use_scale,use_bias", [(False, False), (True, False),
                                                (False, True)])
def test_gradients_without_affine(ref, use_scale, use_bias):
  x = _normal(32, (9, 4))
  scale, bias, _ = _params(33, (4,))
  got, expected = _grads(ref, x, scale if use_scale else None,
                         bias if use_bias else None, -1)
  assert len(got) == 1 + use_scale + use_bias
  for g, e in zip(got, expected):
    ref.assert_close(g, e, ref.GRAD_TOL)


@pytest.mark.parametrize("x_shape,axis,mask_shape", [
    ((10, 3), -1, (10, 1)),
    ((10, 3), -1, (10, 3)),
    ((10, 3), 0, (1, 3)),  # features on axis 0; the mask varies along the reduced axis
    ((4, 3, 2, 5), -1, (4, 3, 2, 1)),  # varies along all reduced axes
    ((4, 3, 2, 5), (1, 3), (4, 1, 2, 5)),
])
def test_gradients_with_mask(ref, x_shape, axis, mask_shape):
  rng = np.random.default_rng(34)
  x = _normal(34, x_shape, loc=0.2)
  mask = rng.random(mask_shape) < 0.6
  mask.flat[0] = True
  # Masked positions hold padding-like small values; their outputs are still
  # normalized with the valid statistics and receive gradients.
  x = np.where(np.broadcast_to(mask, x_shape), x, np.float32(1e-2) * x)
  scale, bias, _ = _params(35, _feature_shape(x_shape, axis))
  got, expected = _grads(ref, x, scale, bias, axis, mask=mask)
  for name, g, e in zip(["x", "scale", "bias"], got, expected):
    ref.assert_close(g, e, ref.GRAD_TOL, what=f"d{name}")


def test_gradients_with_empty_feature_group(ref):
  # Feature 1 has no valid element: mean 0, var 0, y = x / sqrt(eps) * scale + bias.
  x = _normal(36, (6, 3)) * 1e-3
  mask = np.ones((6, 3), bool)
  mask[:, 1] = False
  scale, bias, _ = _params(37, (3,))
  got, expected = _grads(ref, x, scale, bias, -1, mask=mask)
  for g, e in zip(got, expected):
    assert np.all(np.isfinite(np.asarray(g)))
    ref.assert_close(g, e, ref.GRAD_TOL)


def test_eval_gradients_match_plain_formula(ref):
  x = _normal(38, (5, 3))
  scale, bias, stats = _params(39, (3,))
  w = _normal(40, x.shape)

  def loss(x, scale, bias):
    return jnp.sum(w * jnp.sin(F.batch_norm(x, scale, bias, stats, train=False)[0]))

  def plain(x, scale, bias):
    y = (x - stats.mean) / jnp.sqrt(stats.var + EPS) * scale + bias
    return jnp.sum(w * jnp.sin(y))

  got = jax.grad(loss, argnums=(0, 1, 2))(x, scale, bias)
  expected = ref.grad64(plain, (x, scale, bias), argnums=(0, 1, 2))
  for g, e in zip(got, expected):
    ref.assert_close(g, e, ref.GRAD_TOL)


# --------------------------------------------------------------------------------------
# Second order.


@pytest.mark.parametrize("mask", [None, np.array([[True], [True], [False], [True],
                                                  [True]])])
def test_grad_of_grad(ref, mask):
  x = _normal(41, (5, 3), loc=0.4)
  scale, bias, _ = _params(42, (3,))
  w, v = _normal(43, x.shape), _normal(44, x.shape)

  def make(normalize):
    def loss(x, scale, bias):
      return jnp.sum(w * jnp.sin(normalize(x, scale, bias)))

    def outer(x, scale, bias):
      gx = jax.grad(loss)(x, scale, bias)
      return jnp.sum(v * gx) + jnp.sum(jnp.cos(gx))

    return outer

  outer = make(lambda x, s, b: F.batch_norm(x, s, b, None, train=True, mask=mask)[0])
  plain_outer = make(lambda x, s, b: plain_batch_norm(x, s, b, mask, (1,)))
  got = jax.jit(jax.grad(outer, argnums=(0, 1, 2)))(x, scale, bias)
  expected = ref.grad64(plain_outer, (x, scale, bias), argnums=(0, 1, 2))
  for name, g, e in zip(["x", "scale", "bias"], got, expected):
    ref.assert_close(g, e, ref.GRAD_TOL, what=f"d{name}")


def test_hessian(ref):
  x = _normal(45, (4, 2), loc=-0.3)
  scale, bias, _ = _params(46, (2,))
  w = _normal(47, x.shape)

  def loss(x, scale):
    return jnp.sum(w * jnp.sin(F.batch_norm(x, scale, bias, None, train=True)[0]))

  def plain(x, scale):
    return jnp.sum(w * jnp.sin(plain_batch_norm(x, scale, bias, None, (1,))))

  got = jax.jit(jax.hessian(loss, argnums=(0, 1)))(x, scale)
  expected = ref.hessian64(plain, (x, scale), argnums=(0, 1))
  for i in range(2):
    for j in range(2):
      ref.assert_close(got[i][j], expected[i][j], ref.GRAD_TOL, what=f"H[{i}][{j}]")
  # Reverse-over-reverse gives the same Hessian block.
  hxx = jax.jit(jax.jacrev(jax.jacrev(loss)))(x, scale)
  ref.assert_close(hxx, expected[0][0], ref.GRAD_TOL, what="jacrev(jacrev)")


# --------------------------------------------------------------------------------------
# Transformations and state.


def test_vmap_equals_python_loop(ref):
  xs = _normal(50, (3, 6, 4), loc=2.0)
  scale, bias, stats = _params(51, (4,))

  def fn(x):
    return F.batch_norm(x, scale, bias, stats, train=True, momentum=0.7)

  ys, news = jax.vmap(fn)(xs)
  for i in range(xs.shape[0]):
    y_i, new_i = fn(xs[i])
    np.testing.assert_allclose(np.asarray(ys[i]), np.asarray(y_i), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(news.var[i]), np.asarray(new_i.var),
                               rtol=1e-6, atol=1e-6)
    # And each slice is the reference (so a consistently wrong vmap also fails).
    ref_y, (ref_mean, ref_var) = ref.batch_norm(xs[i], scale, bias, stats, train=True,
                                                momentum=0.7)
    ref.assert_close(ys[i], ref_y, ref.FLOAT32_TOL)
    ref.assert_close(news.mean[i], ref_mean, ref.FLOAT32_TOL)
    ref.assert_close(news.var[i], ref_var, ref.FLOAT32_TOL)


def test_vmap_of_grad(ref):
  xs = _normal(52, (3, 5, 2))
  scale, bias, _ = _params(53, (2,))
  w = _normal(54, (5, 2))

  def loss(x):
    return jnp.sum(w * jnp.sin(F.batch_norm(x, scale, bias, None, train=True)[0]))

  def plain(x):
    return jnp.sum(w * jnp.sin(plain_batch_norm(x, scale, bias, None, (1,))))

  got = jax.jit(jax.vmap(jax.grad(loss)))(xs)
  for i in range(xs.shape[0]):
    ref.assert_close(got[i], ref.grad64(plain, (xs[i],)), ref.GRAD_TOL)


def test_new_stats_carry_no_gradient():
  x = _normal(55, (6, 3))
  scale, bias, stats = _params(56, (3,))

  def through_stats(x, scale, bias):
    _, new = F.batch_norm(x, scale, bias, stats, train=True, momentum=0.5)
    return jnp.sum(new.mean * 3.0 + new.var ** 2)

  grads = jax.grad(through_stats, argnums=(0, 1, 2))(x, scale, bias)
  for g in grads:
    np.testing.assert_array_equal(np.asarray(g), 0.0)
  # Control: the plain statistics do depend on x.
  plain_grad = jax.grad(lambda x: jnp.sum(0.5 * jnp.mean(x, 0) * 3.0
                                          + (0.5 * jnp.var(x, 0)) ** 2))(x)
  assert np.max(np.abs(np.asarray(plain_grad))) > 1e-2


# --------------------------------------------------------------------------------------
# Bad input: the message names the function, the argument and the received value.


_FN = re.escape("jaxnorm.functional.batch_norm")


def _stats(c=3):
  return F.BatchStats(jnp.zeros(c), jnp.ones(c))


def test_error_integer_x():
  with pytest.raises(TypeError, match=_FN + r": x must be a floating-point.*int32"):
    F.batch_norm(jnp.ones((4, 3), jnp.int32), None, None, _stats(), train=True)


@pytest.mark.parametrize("momentum", [-0.1, 1.5])
def test_error_momentum(momentum):
  with pytest.raises(ValueError, match=_FN + r": momentum must be in \[0, 1\]; got "
                     + re.escape(repr(momentum))):
    F.batch_norm(jnp.ones((4, 3)), None, None, _stats(), train=True, momentum=momentum)


@pytest.mark.parametrize("epsilon", [0.0, -1])
def test_error_epsilon(epsilon):
  with pytest.raises(ValueError, match=_FN + r": epsilon must be > 0; got "
                     + re.escape(repr(float(epsilon)))):
    F.batch_norm(jnp.ones((4, 3)), None, None, _stats(), train=True, epsilon=epsilon)


@pytest.mark.parametrize("axis", [2, -3, (0, 5)])
def test_error_axis_out_of_range(axis):
  with pytest.raises(ValueError, match=_FN + re.escape(
      f": axis={axis!r} is out of range for x.shape=(4, 3)")):
    F.batch_norm(jnp.ones((4, 3)), None, None, None, train=True, axis=axis)


def test_error_stats_shape():
  bad = F.BatchStats(jnp.zeros(4), jnp.ones(3))
  with pytest.raises(ValueError, match=re.escape(
      "stats.mean has shape (4,) but must have shape (3,)") + r".*x\.shape=\(4, 3\)"):
    F.batch_norm(jnp.ones((4, 3)), None, None, bad, train=True)
  bad = F.BatchStats(jnp.zeros(3), jnp.ones((1, 3)))
  with pytest.raises(ValueError, match=re.escape(
      "stats.var has shape (1, 3) but must have shape (3,)")):
    F.batch_norm(jnp.ones((4, 3)), None, None, bad, train=False)


def test_error_scale_and_bias_shape():
  with pytest.raises(ValueError, match=re.escape(
      "scale has shape (4,) but must have shape (3,)") + r".*x\.shape=\(4, 3\)"):
    F.batch_norm(jnp.ones((4, 3)), jnp.ones(4), None, _stats(), train=True)
  with pytest.raises(ValueError, match=re.escape(
      "bias has shape (2, 3) but must have shape (3,)")):
    F.batch_norm(jnp.ones((4, 3)), None, jnp.ones((2, 3)), _stats(), train=True)


def test_error_mask_shape():
  with pytest.raises(ValueError, match=_FN + re.escape(
      ": mask.shape=(3, 4) does not broadcast to x.shape=(4, 3)")):
    F.batch_norm(jnp.ones((4, 3)), None, None, _stats(), train=True,
                 mask=jnp.ones((3, 4), bool))


def test_error_float_mask():
  with pytest.raises(TypeError, match=_FN + r": mask must be a boolean.*got dtype "
                     r"float32"):
    F.batch_norm(jnp.ones((4, 3)), None, None, _stats(), train=True,
                 mask=jnp.ones((4, 1), jnp.float32))


@pytest.mark.parametrize("train,shown", [(1, "1"), ("yes", "'yes'"),
                                         (jnp.array(True), "Array")])
def test_error_train_not_bool(train, shown):
  with pytest.raises(TypeError, match=_FN + r": train must be a Python bool.*got "
                     + re.escape(shown)):
    F.batch_norm(jnp.ones((4, 3)), None, None, _stats(), train=train)


def test_error_eval_without_stats():
  with pytest.raises(ValueError, match=_FN + r": stats is None but train=False"):
    F.batch_norm(jnp.ones((4, 3)), None, None, None, train=False)


@pytest.mark.parametrize("shape,axis", [((1, 4), -1), ((2, 3), (0, 1)),
                                        ((1, 1, 5), -1)])
def test_error_one_value_per_feature(shape, axis):
  with pytest.raises(ValueError, match=_FN + r": training needs more than one value per "
                     r"feature.*x\.shape=" + re.escape(str(shape)) +
                     r".*gives 1 value per feature.*train=False.*more than one example"):
    F.batch_norm(jnp.ones(shape), None, None, None, train=True, axis=axis)
  # The same input is fine in evaluation, the documented fix.
  feature_shape = _feature_shape(shape, axis)
  y, _ = F.batch_norm(jnp.ones(shape), None, None,
                      F.BatchStats(jnp.zeros(feature_shape), jnp.ones(feature_shape)),
                      train=False, axis=axis)
  assert y.shape == shape


# --------------------------------------------------------------------------------------
# Property test over shapes, feature axes, masks and dtypes.


@st.composite
def _bn_case(draw):
  ndim = draw(st.integers(2, 4))
  shape = list(draw(st.lists(st.integers(1, 4), min_size=ndim, max_size=ndim)))
  n_features = draw(st.integers(1, ndim - 1))
  feature_axes = draw(st.permutations(range(ndim)))[:n_features]
  reduce_axes = [a for a in range(ndim) if a not in feature_axes]
  if np.prod([shape[a] for a in reduce_axes]) < 2:
    shape[reduce_axes[0]] = 2
  # Spell the axes as int / negative int / tuple.
  spelled = [a - ndim if draw(st.booleans()) else a for a in feature_axes]
  axis = spelled[0] if len(spelled) == 1 and draw(st.booleans()) else tuple(spelled)
  mask_shape = None
  if draw(st.booleans()):
    mask_shape = tuple(d if draw(st.booleans()) else 1 for d in shape)
  return dict(
      shape=tuple(shape), axis=axis, mask_shape=mask_shape,
      dtype=draw(st.sampled_from(["float32", "bfloat16"])),
      use_scale=draw(st.booleans()), use_bias=draw(st.booleans()),
      momentum=draw(st.floats(0.0, 1.0)), loc=draw(st.sampled_from([0.0, 3.0, -50.0])),
      p_valid=draw(st.sampled_from([0.3, 0.7, 1.0])),
      seed=draw(st.integers(0, 2**31 - 1)))


@hypothesis.given(case=_bn_case())
@HYPOTHESIS
def test_property_forward_stats_and_gradients(ref, case):
  rng = np.random.default_rng(case["seed"])
  shape, axis = case["shape"], case["axis"]
  dtype = jnp.dtype(case["dtype"])
  tol = ref.FLOAT32_TOL if dtype == jnp.float32 else ref.BF16_TOL
  grad_tol = ref.GRAD_TOL if dtype == jnp.float32 else ref.BF16_TOL
  x = jnp.asarray((case["loc"] + rng.normal(size=shape)).astype(np.float32)).astype(dtype)
  fshape = _feature_shape(shape, axis)
  scale = (1 + 0.3 * rng.normal(size=fshape)).astype(np.float32) \
      if case["use_scale"] else None
  bias = rng.normal(size=fshape).astype(np.float32) if case["use_bias"] else None
  stats = F.BatchStats(rng.normal(size=fshape).astype(np.float32),
                       (0.1 + rng.random(fshape)).astype(np.float32))
  mask = None if case["mask_shape"] is None else \
      rng.random(case["mask_shape"]) < case["p_valid"]
  cotangent = jnp.asarray(rng.normal(size=shape).astype(np.float32)).astype(dtype)

  @jax.jit
  def run(x, scale, bias, stats, mask, cotangent):
    (y, new), vjp = jax.vjp(
        lambda x, s, b: F.batch_norm(x, s, b, stats, train=True,
                                     momentum=case["momentum"], axis=axis, mask=mask),
        x, scale, bias)
    zero = jax.tree.map(jnp.zeros_like, new)
    return y, new, vjp((cotangent, zero))

  y, new, grads = run(x, scale, bias, stats, mask, cotangent)
  assert y.dtype == dtype and new.mean.dtype == jnp.float32
  x64 = ref.to64(x)
  ref_y, (ref_mean, ref_var) = ref.batch_norm(
      x64, scale, bias, stats, train=True, momentum=case["momentum"], axis=axis,
      mask=mask)
  ref.assert_close(y, ref_y, tol, what="y")
  # Statistics accumulate in float32 whatever the input dtype.
  ref.assert_close(new.mean, ref_mean, ref.FLOAT32_TOL, what="mean")
  ref.assert_close(new.var, ref_var, ref.FLOAT32_TOL, what="var")

  feature_axes = (axis,) if isinstance(axis, int) else axis

  def plain(x, scale, bias):
    return jnp.sum(ref_cotangent * plain_batch_norm(x, scale, bias, mask, feature_axes))

  ref_cotangent = ref.to64(cotangent)
  expected = ref.grad64(plain, (x64, scale, bias), argnums=(0, 1, 2))
  names = ["x", "scale", "bias"]
  for name, g, e, arg in zip(names, grads, expected, (x, scale, bias)):
    if arg is None:
      assert g is None
      continue
    ref.assert_close(g, e, grad_tol, what=f"d{name}")


def test_shifted_data_outputs_keep_float32_precision():
  """(x - shift) - delta keeps the rounding of a mean near 1e4 out of the outputs."""
  x = _normal(90, (256, 8), loc=1e4, scale=1.0)
  y, _ = F.batch_norm(x, None, None, F.BatchStats(jnp.zeros(8), jnp.ones(8)), train=True)
  x64 = np.asarray(x, np.float64)
  expected = (x64 - x64.mean(0)) / np.sqrt(x64.var(0) + 1e-5)
  # 1e-5 is 50x tighter than half a float32 step at 1e4 (4.9e-4).
  assert np.abs(np.asarray(y, np.float64) - expected).max() < 1e-5


@pytest.mark.parametrize("epsilon, error, match", [
    ("abc", TypeError, r"epsilon must be a positive number such as 1e-5; got 'abc'"),
    (np.array([1e-5, 1e-5]), TypeError, r"epsilon must be a positive number"),
])
def test_epsilon_of_the_wrong_kind(epsilon, error, match):
  x = _normal(91, (4, 3))
  with pytest.raises(error, match=match):
    F.batch_norm(x, None, None, None, train=True, epsilon=epsilon)


def test_traced_epsilon_is_rejected_with_the_fix():
  x = _normal(92, (4, 3))
  with pytest.raises(TypeError, match="not a value traced under a transform"):
    jax.jit(lambda e: F.batch_norm(x, None, None, None, train=True, epsilon=e)[0])(1e-5)
