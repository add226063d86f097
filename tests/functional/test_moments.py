"""Tests of jaxnorm.functional.moments against a float64 NumPy reference.

Tolerances (see conftest.py): float32 statistics within 1e-5 relative to
max(1, |reference|); shifted data (mean 1e4, std 1) variance within 1e-3 absolute;
bfloat16 / float16 inputs within 1e-5 of the float64 statistics of the rounded values
(the statistics are float32, so rounding of the input is the only low-precision step).
"""

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm import functional as F

HYPOTHESIS = hypothesis.settings(
    max_examples=25, deadline=None, database=None, derandomize=True,
    suppress_health_check=[hypothesis.HealthCheck.too_slow,
                           hypothesis.HealthCheck.data_too_large])


# Jitted once per (shape, axes): one compilation instead of many eager ones per example.
_jit_moments = jax.jit(F.moments, static_argnames=("axes", "keepdims"))


def _normal(seed, shape, loc=0.0, scale=1.0, dtype=np.float32):
  return (np.random.default_rng(seed).normal(loc, scale, shape)).astype(dtype)


@pytest.mark.parametrize("shape,axes", [
    ((7,), (0,)),
    ((5, 3), (0,)),
    ((5, 3), (1,)),
    ((5, 3), (0, 1)),
    ((2, 3, 4, 5), (0, 1, 2)),
    ((2, 3, 4, 5), (1, 3)),
    ((2, 3, 4, 5), (-1,)),
    ((2, 3, 4, 5), (-3, -1)),
    ((2, 3, 4, 5), 0),
    ((2, 3, 4, 5), -2),
    ((4, 1, 3), (1,)),
])
def test_matches_float64_reference(ref, shape, axes):
  x = _normal(0, shape, loc=0.5, scale=2.0)
  for keepdims in (False, True):
    mean, var = F.moments(x, axes, keepdims=keepdims)
    ref_mean, ref_var = ref.moments(x, axes, keepdims=keepdims)
    assert mean.dtype == jnp.float32 and var.dtype == jnp.float32
    ref.assert_close(mean, ref_mean, ref.FLOAT32_TOL, what=f"mean keepdims={keepdims}")
    ref.assert_close(var, ref_var, ref.FLOAT32_TOL, what=f"var keepdims={keepdims}")


def test_keepdims_shapes():
  x = jnp.zeros((2, 3, 4, 5))
  mean, var = F.moments(x, (-3, -1), keepdims=True)
  assert mean.shape == var.shape == (2, 1, 4, 1)
  mean, var = F.moments(x, (-3, -1))
  assert mean.shape == var.shape == (2, 4)


def test_empty_axes_is_identity_with_zero_variance(ref):
  x = _normal(15, (3, 2), loc=4.0)
  mean, var = F.moments(x, ())
  np.testing.assert_array_equal(np.asarray(mean), x)
  np.testing.assert_array_equal(np.asarray(var), 0.0)
  mask = np.array([[True, False], [False, True], [True, True]])
  mean, var = F.moments(x, (), mask=mask)
  np.testing.assert_array_equal(np.asarray(mean), np.where(mask, x, 0.0))
  np.testing.assert_array_equal(np.asarray(var), 0.0)


def test_shifted_data_variance_is_stable(ref):
  # mean 1e4, std 1 in float32: the spacing of float32 near 1e4 is ~1e-3, so E[x^2]
  # (~1e8, spacing 8) loses the variance entirely; a stable method keeps it to ~1e-3.
  x = _normal(1, (256, 6), loc=1e4, scale=1.0)
  mean, var = F.moments(x, (0,))
  ref_mean, ref_var = ref.moments(x, (0,))
  var_err = np.max(np.abs(np.asarray(var, np.float64) - ref_var))
  assert var_err < ref.SHIFTED_VAR_TOL, var_err
  assert np.max(np.abs(np.asarray(mean, np.float64) - ref_mean)) < 1e-2


def test_shifted_data_with_mask_and_two_axes(ref):
  rng = np.random.default_rng(2)
  x = _normal(2, (16, 8, 3), loc=-1e4, scale=1.0)
  mask = rng.random((16, 8, 1)) < 0.7
  _, var = F.moments(x, (0, 1), mask=mask)
  _, ref_var = ref.moments(x, (0, 1), mask=mask)
  assert np.max(np.abs(np.asarray(var, np.float64) - ref_var)) < ref.SHIFTED_VAR_TOL


def test_shifted_data_with_outlier_as_first_sample(ref):
  # Mean 1e4, std 1 data (the DESIGN.md case) whose first sample is 0, e.g. an
  # unmasked padding value; n = 65536 values per feature (batch 64 of 32x32 maps).
  x = _normal(20, (65536, 2), loc=1e4, scale=1.0)
  x[0] = 0.0
  _, ref_var = ref.moments(x, 0)
  # Control: the same values in another order are handled to float32 accuracy.
  _, var_rolled = F.moments(np.roll(x, 7, axis=0), 0)
  ref.assert_close(var_rolled, ref_var, 1e-5, what="outlier not first")
  _, var = F.moments(x, 0)
  ref.assert_close(var, ref_var, 1e-5, what="outlier first")


def test_naive_float32_formula_fails_on_shifted_data(ref):
  # Control experiment: the same data and tolerance reject E[x^2] - E[x]^2 in float32,
  # so test_shifted_data_variance_is_stable can fail.
  x = jnp.asarray(_normal(1, (256, 6), loc=1e4, scale=1.0))
  naive = jnp.mean(x * x, axis=0) - jnp.square(jnp.mean(x, axis=0))
  _, ref_var = ref.moments(x, (0,))
  err = np.max(np.abs(np.asarray(naive, np.float64) - ref_var))
  assert err > 100 * ref.SHIFTED_VAR_TOL, err


@pytest.mark.parametrize("mask_shape", [
    (12, 1),  # one flag per example
    (12, 4),  # full shape
    (1, 4),  # one flag per feature (constant along the reduced axis)
    (4,),  # lower rank, aligned from the right
])
def test_mask_2d(ref, mask_shape):
  rng = np.random.default_rng(3)
  x = _normal(3, (12, 4))
  mask = rng.random(mask_shape) < 0.6
  mask.flat[0] = True
  mean, var = F.moments(x, (0,), mask=mask)
  ref_mean, ref_var = ref.moments(x, (0,), mask=mask)
  ref.assert_close(mean, ref_mean, ref.FLOAT32_TOL, what="mean")
  ref.assert_close(var, ref_var, ref.FLOAT32_TOL, what="var")


@pytest.mark.parametrize("axes,mask_shape", [
    ((0, 1), (3, 5, 1, 1)),  # varies along both reduced axes
    ((0, 1), (3, 5, 4, 2)),  # full shape
    ((0, 1), (3, 1, 4, 1)),  # varies along one reduced and one kept axis
    ((1, 3), (3, 5, 1, 2)),  # varies along both reduced axes and a kept one
    ((0, 2, 3), (1, 5, 4, 2)),
    ((-1, -3), (5, 1, 2)),  # negative axes, lower-rank mask
])
def test_mask_4d(ref, axes, mask_shape):
  rng = np.random.default_rng(4)
  x = _normal(4, (3, 5, 4, 2), loc=3.0)
  mask = rng.random(mask_shape) < 0.5
  for keepdims in (False, True):
    mean, var = _jit_moments(x, axes=axes, mask=mask, keepdims=keepdims)
    ref_mean, ref_var = ref.moments(x, axes, mask=mask, keepdims=keepdims)
    ref.assert_close(mean, ref_mean, ref.FLOAT32_TOL, what="mean")
    ref.assert_close(var, ref_var, ref.FLOAT32_TOL, what="var")


def test_mask_reference_uses_valid_subset_only(ref):
  # Independent check of the reference and the function on an explicit subset.
  x = _normal(5, (10, 3))
  mask = np.zeros((10, 1), bool)
  mask[[1, 4, 7, 8]] = True
  mean, var = F.moments(x, 0, mask=mask)
  subset = x[[1, 4, 7, 8]].astype(np.float64)
  ref.assert_close(mean, subset.mean(0), ref.FLOAT32_TOL)
  ref.assert_close(var, subset.var(0), ref.FLOAT32_TOL)


def test_integer_mask_is_accepted(ref):
  x = _normal(6, (9, 2))
  mask = (np.arange(9) % 3 != 0).astype(np.int32)[:, None]
  mean, var = F.moments(x, 0, mask=mask)
  ref_mean, ref_var = ref.moments(x, 0, mask=mask.astype(bool))
  ref.assert_close(mean, ref_mean, ref.FLOAT32_TOL)
  ref.assert_close(var, ref_var, ref.FLOAT32_TOL)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 3e38, -3e38])
@pytest.mark.parametrize("mask_shape", [(8, 1, 1), (8, 3, 1), (8, 3, 2)])
def test_masked_values_do_not_leak(ref, bad, mask_shape):
  rng = np.random.default_rng(7)
  x = _normal(7, (8, 3, 2))
  mask = np.broadcast_to(rng.random(mask_shape) < 0.5, mask_shape).copy()
  # The very first position (the natural choice of a shift) is masked out.
  mask.flat[0], mask.flat[1] = False, True
  polluted = np.where(np.broadcast_to(mask, x.shape), x, np.float32(bad))
  mean, var = F.moments(polluted, (0, 1), mask=mask)
  ref_mean, ref_var = ref.moments(x, (0, 1), mask=mask)
  assert np.all(np.isfinite(np.asarray(mean))) and np.all(np.isfinite(np.asarray(var)))
  ref.assert_close(mean, ref_mean, ref.FLOAT32_TOL, what="mean")
  ref.assert_close(var, ref_var, ref.FLOAT32_TOL, what="var")


@pytest.mark.parametrize("mask_shape", [(6, 1), (6, 3), (1, 3)])
def test_group_without_valid_elements(ref, mask_shape):
  x = _normal(8, (6, 3)) + 5.0
  mask = np.ones(mask_shape, bool)
  if mask_shape == (6, 1):
    mask[:] = False  # every group is empty
  else:
    mask[..., 1] = False  # feature 1 has no valid element...
    x[:, 1] = np.nan  # ...and only garbage
  mean, var = F.moments(x, 0, mask=mask)
  mean, var = np.asarray(mean, np.float64), np.asarray(var, np.float64)
  assert np.all(np.isfinite(mean)) and np.all(np.isfinite(var))
  ref_mean, ref_var = ref.moments(x, 0, mask=mask)
  ref.assert_close(mean, ref_mean, ref.FLOAT32_TOL)
  ref.assert_close(var, ref_var, ref.FLOAT32_TOL)
  if mask_shape == (6, 1):
    np.testing.assert_array_equal(mean, 0.0)
    np.testing.assert_array_equal(var, 0.0)
  else:
    assert mean[1] == 0.0 and var[1] == 0.0
    assert np.all(var[[0, 2]] > 0.1)


def test_all_masked_in_two_varying_axes(ref):
  x = _normal(9, (4, 5, 2))
  mask = np.ones((4, 5, 2), bool)
  mask[:, :, 0] = False
  mean, var = F.moments(x, (0, 1), mask=mask)
  assert float(mean[0]) == 0.0 and float(var[0]) == 0.0
  ref_mean, ref_var = ref.moments(x, (0, 1), mask=mask)
  ref.assert_close(mean, ref_mean, ref.FLOAT32_TOL)
  ref.assert_close(var, ref_var, ref.FLOAT32_TOL)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_inputs_give_float32_stats(ref, dtype):
  x = jnp.asarray(_normal(10, (64, 5), loc=2.0, scale=3.0)).astype(dtype)
  mean, var = F.moments(x, 0)
  assert mean.dtype == jnp.float32 and var.dtype == jnp.float32
  # The reference sees exactly the rounded values that jaxnorm sees.
  ref_mean, ref_var = ref.moments(ref.to64(x), 0)
  ref.assert_close(mean, ref_mean, ref.FLOAT32_TOL, what="mean")
  ref.assert_close(var, ref_var, ref.FLOAT32_TOL, what="var")
  # Accumulating in the input dtype would be off by far more than the tolerance.
  naive = jnp.mean(jnp.square(x - jnp.mean(x, 0, dtype=dtype)), 0, dtype=dtype)
  if dtype == jnp.bfloat16:
    assert ref.max_scaled_error(naive, ref_var) > 10 * ref.FLOAT32_TOL


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_shifted_data(ref, dtype):
  # Rounded values of a shifted distribution; the statistics must be those of the
  # rounded values (float32 accumulation), not of the bf16 grid.
  x = jnp.asarray(_normal(11, (128, 3), loc=300.0, scale=4.0)).astype(dtype)
  mean, var = F.moments(x, 0)
  ref_mean, ref_var = ref.moments(ref.to64(x), 0)
  ref.assert_close(mean, ref_mean, ref.FLOAT32_TOL, what="mean")
  ref.assert_close(var, ref_var, 1e-4, what="var")


def test_constant_input_gives_exactly_zero_variance():
  for value in (0.1, 1e4, -7.3e5, 3.3e-3):
    x = jnp.full((17, 3), value, jnp.float32)
    mean, var = F.moments(x, 0)
    np.testing.assert_array_equal(np.asarray(var), 0.0)
    np.testing.assert_array_equal(np.asarray(mean), np.float32(value))


def test_variance_never_negative():
  # Nearly constant data with a huge offset: cancellation would produce tiny negative
  # values in a naive formula.
  rng = np.random.default_rng(12)
  base = np.float32(1e6)
  x = base + np.float32(0.0625) * rng.integers(-1, 2, size=(50, 20)).astype(np.float32)
  mask = rng.random((50, 20)) < 0.5
  for m in (None, mask):
    _, var = F.moments(x, 0, mask=m)
    assert np.all(np.asarray(var) >= 0.0)


def test_under_jit(ref):
  x = _normal(13, (6, 4, 3))
  mask = np.random.default_rng(13).random((6, 4, 1)) < 0.6
  fn = jax.jit(lambda x, m: F.moments(x, (0, 1), mask=m))
  mean, var = fn(x, mask)
  ref_mean, ref_var = ref.moments(x, (0, 1), mask=mask)
  ref.assert_close(mean, ref_mean, ref.FLOAT32_TOL)
  ref.assert_close(var, ref_var, ref.FLOAT32_TOL)


def test_gradient_of_variance(ref):
  # moments is plain JAX (no custom_vjp): its gradient must be the analytic one,
  # d var / d x_i = 2 (x_i - mean) / n on valid elements and 0 elsewhere.
  x = _normal(14, (7, 2))
  mask = np.ones((7, 1), bool)
  mask[[2, 5]] = False
  g = jax.grad(lambda x: jnp.sum(F.moments(x, 0, mask=mask)[1]))(jnp.asarray(x))
  ref_mean, _ = ref.moments(x, 0, mask=mask)
  m = np.broadcast_to(mask, x.shape)
  expected = np.where(m, 2 * (x.astype(np.float64) - ref_mean) / m.sum(0), 0.0)
  ref.assert_close(g, expected, ref.GRAD_TOL)


def test_errors():
  with pytest.raises(TypeError, match=r"moments: x must be a floating-point.*int32"):
    F.moments(jnp.arange(6).reshape(2, 3), 0)
  with pytest.raises(ValueError, match=r"axes=5 is out of range for x\.shape=\(2, 3\)"):
    F.moments(jnp.ones((2, 3)), 5)
  with pytest.raises(ValueError, match=r"mask\.shape=\(3, 2\) does not broadcast to "
                     r"x\.shape=\(2, 3\)"):
    F.moments(jnp.ones((2, 3)), 0, mask=jnp.ones((3, 2), bool))
  with pytest.raises(TypeError, match=r"mask must be a boolean.*float32"):
    F.moments(jnp.ones((2, 3)), 0, mask=jnp.ones((2, 3)))


@st.composite
def _moments_case(draw):
  ndim = draw(st.integers(1, 4))
  shape = tuple(draw(st.lists(st.integers(1, 5), min_size=ndim, max_size=ndim)))
  axes = draw(st.lists(st.integers(-ndim, ndim - 1), min_size=1, max_size=ndim,
                       unique_by=lambda a: a % ndim))
  # Each axis of the mask is either 1 or the size of x; the mask may have lower rank.
  mask_rank = draw(st.integers(0, ndim))
  use_mask = draw(st.booleans())
  mask_shape = tuple(d if draw(st.booleans()) else 1 for d in shape[ndim - mask_rank:])
  seed = draw(st.integers(0, 2**31 - 1))
  loc = draw(st.sampled_from([0.0, 5.0, -1e3]))
  keepdims = draw(st.booleans())
  p_valid = draw(st.sampled_from([0.0, 0.3, 0.8, 1.0]))
  return shape, tuple(axes), (mask_shape if use_mask else None), seed, loc, keepdims, \
      p_valid


@hypothesis.given(case=_moments_case())
@HYPOTHESIS
def test_property_random_shapes_axes_masks(ref, case):
  shape, axes, mask_shape, seed, loc, keepdims, p_valid = case
  rng = np.random.default_rng(seed)
  x = (loc + rng.normal(size=shape)).astype(np.float32)
  mask = None if mask_shape is None else rng.random(mask_shape) < p_valid
  mean, var = _jit_moments(x, axes=axes, mask=mask, keepdims=keepdims)
  ref_mean, ref_var = ref.moments(x, axes, mask=mask, keepdims=keepdims)
  assert np.all(np.asarray(var) >= 0)
  # |loc| up to 1e3: float32 spacing of the data limits the mean to ~1e-7 * 1e3.
  ref.assert_close(mean, ref_mean, ref.FLOAT32_TOL, what="mean")
  ref.assert_close(var, ref_var, ref.FLOAT32_TOL, what="var")
