"""Tests of jaxnorm.functional.layer_norm.

Forward values are compared with a float64 NumPy reference (conftest.py); gradients with
``jax.grad`` of the plain-jnp formula below, evaluated in float64 (x64 enabled locally).

Tolerances: float32 forward 1e-5 and gradients 1e-4, relative to max(1, max|reference|)
(plus the same relative per element); bfloat16 2e-2 likewise; shifted data (mean 1e4,
std 1) 1e-3 absolute.
"""

import re

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

EPS = 1e-6


def plain_layer_norm(x, scale, bias, mask, axes, epsilon=EPS):
  """Layer norm written directly in jnp; masked positions use the valid statistics."""
  axes = tuple(sorted(a % x.ndim for a in ((axes,) if isinstance(axes, int) else axes)))
  normalized_shape = tuple(x.shape[a] for a in axes)
  pshape = tuple(d if a in axes else 1 for a, d in enumerate(x.shape))
  if mask is None:
    w = jnp.ones(x.shape, x.dtype)
  else:
    w = jnp.broadcast_to(jnp.asarray(mask).reshape(
        (1,) * (x.ndim - jnp.ndim(mask)) + jnp.shape(mask)), x.shape).astype(x.dtype)
  n = jnp.maximum(jnp.sum(w, axes, keepdims=True), 1)
  mean = jnp.sum(w * x, axes, keepdims=True) / n
  var = jnp.sum(w * jnp.square(x - mean), axes, keepdims=True) / n
  y = (x - mean) / jnp.sqrt(var + epsilon)

  def as_param(p):
    return p.reshape(pshape) if tuple(p.shape) == normalized_shape else p

  if scale is not None:
    y = y * as_param(scale)
  if bias is not None:
    y = y + as_param(bias)
  return y


def _normal(seed, shape, loc=0.0, scale=1.0):
  return np.random.default_rng(seed).normal(loc, scale, shape).astype(np.float32)


def _param(seed, shape, loc=0.0):
  return (loc + 0.5 * np.random.default_rng(seed).normal(size=shape)).astype(np.float32)


SHAPES_AXES = [
    ((4, 6), -1),
    ((3, 4), 0),
    ((2, 3, 5), -1),
    ((2, 3, 5), (1, 2)),
    ((2, 3, 5), (-2,)),
    ((2, 3, 4, 5), (1, 3)),
    ((7,), 0),
]


def _normalized_shape(shape, axis):
  axes = (axis,) if isinstance(axis, int) else axis
  return tuple(shape[a] for a in sorted(a % len(shape) for a in axes))


# --------------------------------------------------------------------------------------
# Forward values.


@pytest.mark.parametrize("shape,axis", SHAPES_AXES)
def test_matches_reference(ref, shape, axis):
  x = _normal(0, shape, loc=-0.4, scale=2.5)
  nshape = _normalized_shape(shape, axis)
  scale, bias = _param(1, nshape, loc=1.0), _param(2, nshape)
  y = F.layer_norm(x, scale, bias, axis=axis)
  assert y.dtype == jnp.float32 and y.shape == shape
  ref.assert_close(y, ref.layer_norm(x, scale, bias, axis=axis), ref.FLOAT32_TOL)


def test_default_epsilon_is_1e_6(ref):
  # A tiny-variance row makes epsilon visible: 1e-5 instead of 1e-6 changes y by ~4%.
  x = np.array([[0.0, 1e-3, 2e-3, 3e-3]], np.float32)
  y = F.layer_norm(x, None, None)
  ref.assert_close(y, ref.layer_norm(x, None, None, epsilon=1e-6), ref.FLOAT32_TOL)
  assert ref.max_scaled_error(y, ref.layer_norm(x, None, None, epsilon=1e-5)) > 1e-2


@pytest.mark.parametrize("use_scale,use_bias", [(False, False), (True, False),
                                                (False, True)])
def test_scale_bias_none(ref, use_scale, use_bias):
  x = _normal(3, (3, 8), loc=5.0)
  scale = _param(4, (8,), loc=1.0) if use_scale else None
  bias = _param(5, (8,)) if use_bias else None
  y = F.layer_norm(x, scale, bias)
  ref.assert_close(y, ref.layer_norm(x, scale, bias), ref.FLOAT32_TOL)


@pytest.mark.parametrize("param_shape", [
    (1, 1, 5),  # the normalized shape as a full-rank array
    (1, 3, 5),  # varies along a non-normalized axis too
    (2, 3, 1),  # constant over the normalized axis, per example and position
    (2, 1, 5),
])
def test_full_rank_scale_and_bias(ref, param_shape):
  x = _normal(6, (2, 3, 5), loc=1.0)
  scale, bias = _param(7, param_shape, loc=1.0), _param(8, param_shape)
  y = F.layer_norm(x, scale, bias, axis=-1)
  ref.assert_close(y, ref.layer_norm(x, scale, bias, axis=-1), ref.FLOAT32_TOL)


def test_shifted_data(ref):
  x = _normal(9, (4, 256), loc=1e4, scale=1.0)
  scale, bias = _param(10, (256,), loc=1.0), _param(11, (256,))
  y = F.layer_norm(x, scale, bias)
  err = np.max(np.abs(np.asarray(y, np.float64) - ref.layer_norm(x, scale, bias)))
  assert err < ref.SHIFTED_VAR_TOL, err


def test_shifted_data_naive_formula_fails(ref):
  # Control: the same check rejects layer norm built on E[x^2] - E[x]^2 in float32.
  x = jnp.asarray(_normal(9, (4, 256), loc=1e4, scale=1.0))
  mean = jnp.mean(x, -1, keepdims=True)
  var = jnp.maximum(jnp.mean(x * x, -1, keepdims=True) - mean * mean, 0)
  y = (x - mean) / jnp.sqrt(var + EPS)
  err = np.max(np.abs(np.asarray(y, np.float64) - ref.layer_norm(x, None, None)))
  assert err > 100 * ref.SHIFTED_VAR_TOL, err


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision(ref, dtype):
  x = jnp.asarray(_normal(12, (6, 32), loc=3.0, scale=2.0)).astype(dtype)
  scale, bias = _param(13, (32,), loc=1.0), _param(14, (32,))
  y = F.layer_norm(x, scale, bias)
  assert y.dtype == dtype
  ref.assert_close(y, ref.layer_norm(ref.to64(x), scale, bias), ref.BF16_TOL)


@pytest.mark.parametrize("axis,mask_shape", [
    (-1, (3, 4, 1)),  # padding mask over tokens; some tokens fully masked
    (-1, (1, 1, 6)),  # feature mask, same for every token
    (-1, (3, 4, 6)),  # full mask
    ((1, 2), (3, 4, 1)),  # sequence-level norm over valid tokens only
    ((1, 2), (3, 4, 6)),  # mask varying along both normalized axes
    ((-3, -1), (4, 6)),  # lower-rank mask, negative axes
])
def test_mask(ref, axis, mask_shape):
  rng = np.random.default_rng(15)
  x = _normal(15, (3, 4, 6), loc=2.0)
  mask = rng.random(mask_shape) < 0.6
  mask.flat[-1] = True
  nshape = _normalized_shape(x.shape, axis)
  scale, bias = _param(16, nshape, loc=1.0), _param(17, nshape)
  polluted = np.where(np.broadcast_to(mask, x.shape), x, np.float32(np.nan))
  fn = jax.jit(lambda x, mask: F.layer_norm(x, scale, bias, axis=axis, mask=mask))
  y = fn(x, mask)
  ref_y = ref.layer_norm(x, scale, bias, axis=axis, mask=mask)
  ref.assert_close(y, ref_y, ref.FLOAT32_TOL)
  # Garbage at masked positions changes only those outputs.
  y_polluted = np.asarray(fn(polluted, mask))
  valid = np.broadcast_to(mask, x.shape)
  ref.assert_close(y_polluted[valid], ref_y[valid], ref.FLOAT32_TOL)


def test_mask_empty_group_gives_finite_output(ref):
  x = _normal(18, (2, 5), loc=1.0)
  mask = np.array([[True], [False]])
  y = np.asarray(F.layer_norm(x, None, None, mask=mask), np.float64)
  assert np.all(np.isfinite(y))
  # Row 1 has no valid element: mean 0, var 0, y = x / sqrt(eps).
  np.testing.assert_allclose(y[1], x[1] / np.sqrt(EPS), rtol=1e-5)
  ref.assert_close(y, ref.layer_norm(x, None, None, mask=mask), ref.FLOAT32_TOL)


def test_under_jit(ref):
  x = _normal(19, (3, 4, 6))
  scale, bias = _param(20, (4, 6), loc=1.0), _param(21, (4, 6))
  mask = np.random.default_rng(19).random((3, 4, 1)) < 0.7
  fn = jax.jit(lambda x, s, b, m: F.layer_norm(x, s, b, axis=(1, 2), mask=m))
  ref.assert_close(fn(x, scale, bias, mask),
                   ref.layer_norm(x, scale, bias, axis=(1, 2), mask=mask),
                   ref.FLOAT32_TOL)


def test_vmap_matches_reference(ref):
  xs = _normal(22, (3, 4, 5), loc=1.0)
  scale, bias = _param(23, (5,), loc=1.0), _param(24, (5,))
  ys = jax.vmap(lambda x: F.layer_norm(x, scale, bias))(xs)
  ref.assert_close(ys, ref.layer_norm(xs, scale, bias), ref.FLOAT32_TOL)


# --------------------------------------------------------------------------------------
# Gradients against jax.grad of the plain formula (evaluated in float64).


def _check_grads(ref, x, scale, bias, axis, mask=None, tol=None):
  w = _normal(99, x.shape)
  argnums = tuple(i for i, a in enumerate((x, scale, bias)) if a is not None)

  def loss(x, scale, bias):
    return jnp.sum(w * jnp.sin(F.layer_norm(x, scale, bias, axis=axis, mask=mask)))

  def plain(x, scale, bias):
    return jnp.sum(w * jnp.sin(plain_layer_norm(x, scale, bias, mask, axis)))

  got = jax.jit(jax.grad(loss, argnums=argnums))(x, scale, bias)
  expected = ref.grad64(plain, (x, scale, bias), argnums=argnums)
  for i, g, e in zip(argnums, got, expected):
    assert g.shape == (x, scale, bias)[i].shape
    ref.assert_close(g, e, tol or ref.GRAD_TOL, what=f"d{['x', 'scale', 'bias'][i]}")
  return got, expected


@pytest.mark.parametrize("shape,axis", SHAPES_AXES)
def test_gradients_match_plain_formula(ref, shape, axis):
  x = _normal(30, shape, loc=0.6, scale=1.5)
  nshape = _normalized_shape(shape, axis)
  _check_grads(ref, x, _param(31, nshape, loc=1.0), _param(32, nshape), axis)


@pytest.mark.parametrize("param_shape", [(1, 1, 5), (1, 3, 5), (2, 3, 1), (2, 1, 5)])
def test_gradients_full_rank_params(ref, param_shape):
  x = _normal(33, (2, 3, 5))
  _check_grads(ref, x, _param(34, param_shape, loc=1.0), _param(35, param_shape), -1)


@pytest.mark.parametrize("scale_shape,bias_shape", [
    (None, (5,)), ((5,), None), (None, None), ((2, 3, 1), (1, 3, 5)),
    ((1, 3, 5), (2, 3, 1)), (None, (2, 1, 5)),
])
def test_gradients_mixed_param_forms(ref, scale_shape, bias_shape):
  x = _normal(36, (2, 3, 5), loc=-1.0)
  scale = None if scale_shape is None else _param(37, scale_shape, loc=1.0)
  bias = None if bias_shape is None else _param(38, bias_shape)
  _check_grads(ref, x, scale, bias, -1)


@pytest.mark.parametrize("axis,mask_shape", [
    (-1, (3, 4, 1)),
    (-1, (3, 4, 6)),
    ((1, 2), (3, 4, 1)),
    ((1, 2), (1, 4, 6)),
])
def test_gradients_with_mask(ref, axis, mask_shape):
  rng = np.random.default_rng(39)
  x = _normal(39, (3, 4, 6), loc=0.5)
  mask = rng.random(mask_shape) < 0.6
  mask.flat[0] = True
  # Masked positions hold padding-like small values, so fully masked tokens
  # (mean 0, var 0, y = x / sqrt(eps)) keep |y| moderate and sin(y) well-conditioned.
  x = np.where(np.broadcast_to(mask, x.shape), x, np.float32(1e-3) * x)
  nshape = _normalized_shape(x.shape, axis)
  _check_grads(ref, x, _param(40, nshape, loc=1.0), _param(41, nshape), axis, mask)


def test_gradients_control_naive_backward_is_rejected(ref):
  # The comparison distinguishes the full gradient from rstd * scale * dy.
  x = _normal(42, (3, 6))
  scale, bias = _param(43, (6,), loc=1.0), _param(44, (6,))
  got, expected = _check_grads(ref, x, scale, bias, -1)
  w = _normal(99, x.shape)
  y = ref.layer_norm(x, scale, bias, epsilon=EPS)
  var = x.astype(np.float64).var(-1, keepdims=True)
  naive = w * np.cos(y) * scale / np.sqrt(var + EPS)
  assert ref.max_scaled_error(naive, expected[0]) > 10 * ref.GRAD_TOL


def test_grad_of_grad(ref):
  x = _normal(45, (3, 5), loc=0.3)
  scale, bias = _param(46, (5,), loc=1.0), _param(47, (5,))
  mask = np.array([[True, True, False, True, True]])
  w, v = _normal(48, x.shape), _normal(49, x.shape)

  def make(normalize):
    def loss(x, scale, bias):
      return jnp.sum(w * jnp.sin(normalize(x, scale, bias)))

    def outer(x, scale, bias):
      gx, gs = jax.grad(loss, argnums=(0, 1))(x, scale, bias)
      return jnp.sum(v * gx) + jnp.sum(jnp.cos(gx)) + jnp.sum(gs ** 2)

    return outer

  for m in (None, mask):
    outer = make(lambda x, s, b: F.layer_norm(x, s, b, mask=m))
    plain_outer = make(lambda x, s, b: plain_layer_norm(x, s, b, m, -1))
    got = jax.jit(jax.grad(outer, argnums=(0, 1, 2)))(x, scale, bias)
    expected = ref.grad64(plain_outer, (x, scale, bias), argnums=(0, 1, 2))
    for name, g, e in zip(["x", "scale", "bias"], got, expected):
      ref.assert_close(g, e, ref.GRAD_TOL, what=f"d{name} (mask={m is not None})")


def test_hessian(ref):
  x = _normal(50, (2, 4), loc=0.2)
  scale, bias = _param(51, (4,), loc=1.0), _param(52, (4,))
  w = _normal(53, x.shape)

  def loss(x, scale):
    return jnp.sum(w * jnp.sin(F.layer_norm(x, scale, bias)))

  def plain(x, scale):
    return jnp.sum(w * jnp.sin(plain_layer_norm(x, scale, bias, None, -1)))

  got = jax.jit(jax.hessian(loss, argnums=(0, 1)))(x, scale)
  expected = ref.hessian64(plain, (x, scale), argnums=(0, 1))
  for i in range(2):
    for j in range(2):
      ref.assert_close(got[i][j], expected[i][j], ref.GRAD_TOL, what=f"H[{i}][{j}]")


def test_bfloat16_gradients(ref):
  x = jnp.asarray(_normal(55, (4, 16), loc=1.0)).astype(jnp.bfloat16)
  scale, bias = _param(56, (16,), loc=1.0), _param(57, (16,))
  ct = jnp.asarray(_normal(58, x.shape)).astype(jnp.bfloat16)
  _, vjp = jax.vjp(lambda x, s, b: F.layer_norm(x, s, b), x, scale, bias)
  got = vjp(ct)
  assert got[0].dtype == jnp.bfloat16 and got[1].dtype == jnp.float32
  ct64 = ref.to64(ct)
  expected = ref.grad64(
      lambda x, s, b: jnp.sum(ct64 * plain_layer_norm(x, s, b, None, -1)),
      (ref.to64(x), scale, bias), argnums=(0, 1, 2))
  for g, e in zip(got, expected):
    ref.assert_close(g, e, ref.BF16_TOL)


# --------------------------------------------------------------------------------------
# Bad input.


_FN = re.escape("jaxnorm.functional.layer_norm")


@pytest.mark.parametrize("epsilon", [0.0, -1e-6])
def test_error_epsilon(epsilon):
  with pytest.raises(ValueError, match=_FN + r": epsilon must be > 0; got "
                     + re.escape(repr(epsilon))):
    F.layer_norm(jnp.ones((2, 3)), None, None, epsilon=epsilon)


@pytest.mark.parametrize("axis", [2, -3, (0, 2)])
def test_error_axis_out_of_range(axis):
  with pytest.raises(ValueError, match=_FN + re.escape(
      f": axis={axis!r} is out of range for x.shape=(2, 3)")):
    F.layer_norm(jnp.ones((2, 3)), None, None, axis=axis)


def test_error_axis_repeated():
  with pytest.raises(ValueError, match=_FN + r": axis=\(1, -1\) names the same axis "
                     r"twice for x\.shape=\(2, 3\)"):
    F.layer_norm(jnp.ones((2, 3)), None, None, axis=(1, -1))


@pytest.mark.parametrize("name,shape", [("scale", (2,)), ("scale", (3, 3)),
                                        ("bias", (1, 4)), ("bias", (2, 3, 1))])
def test_error_param_shape(name, shape):
  kwargs = {"scale": None, "bias": None, name: jnp.ones(shape)}
  with pytest.raises(ValueError, match=_FN + re.escape(
      f": {name} has shape {shape} but must have shape (3,)") + r".*x\.shape=\(2, 3\)"):
    F.layer_norm(jnp.ones((2, 3)), kwargs["scale"], kwargs["bias"])


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_])
def test_error_non_float_x(dtype):
  with pytest.raises(TypeError, match=_FN + r": x must be a floating-point.*got dtype "
                     + jnp.dtype(dtype).name):
    F.layer_norm(jnp.ones((2, 3), dtype), None, None)


def test_error_integer_scale():
  with pytest.raises(TypeError, match=_FN + r": scale must be a floating-point"):
    F.layer_norm(jnp.ones((2, 3)), jnp.ones(3, jnp.int32), None)


def test_error_mask():
  with pytest.raises(ValueError, match=re.escape(
      "mask.shape=(3,) does not broadcast to x.shape=(2, 4)")):
    F.layer_norm(jnp.ones((2, 4)), None, None, mask=jnp.ones(3, bool))
  with pytest.raises(TypeError, match=r"mask must be a boolean.*float32"):
    F.layer_norm(jnp.ones((2, 4)), None, None, mask=jnp.ones((2, 4), jnp.float32))


# --------------------------------------------------------------------------------------
# Property test over shapes, normalized axes, parameter forms, masks and dtypes.


@st.composite
def _ln_case(draw):
  ndim = draw(st.integers(1, 4))
  shape = tuple(draw(st.lists(st.integers(1, 4), min_size=ndim, max_size=ndim)))
  n_axes = draw(st.integers(1, ndim))
  axes = draw(st.permutations(range(ndim)))[:n_axes]
  spelled = [a - ndim if draw(st.booleans()) else a for a in axes]
  axis = spelled[0] if len(spelled) == 1 and draw(st.booleans()) else tuple(spelled)
  param_forms = st.sampled_from(["none", "normalized", "full"])
  mask_shape = None
  if draw(st.booleans()):
    mask_shape = tuple(d if draw(st.booleans()) else 1 for d in shape)
  return dict(
      shape=shape, axis=axis, mask_shape=mask_shape,
      scale_form=draw(param_forms), bias_form=draw(param_forms),
      full_shape=tuple(d if draw(st.booleans()) else 1 for d in shape),
      dtype=draw(st.sampled_from(["float32", "bfloat16"])),
      loc=draw(st.sampled_from([0.0, 2.0, -30.0])),
      p_valid=draw(st.sampled_from([0.3, 0.7, 1.0])),
      seed=draw(st.integers(0, 2**31 - 1)))


@hypothesis.given(case=_ln_case())
@HYPOTHESIS
def test_property_forward_and_gradients(ref, case):
  rng = np.random.default_rng(case["seed"])
  shape, axis = case["shape"], case["axis"]
  dtype = jnp.dtype(case["dtype"])
  tol = ref.FLOAT32_TOL if dtype == jnp.float32 else ref.BF16_TOL
  grad_tol = ref.GRAD_TOL if dtype == jnp.float32 else ref.BF16_TOL
  x = jnp.asarray((case["loc"] + rng.normal(size=shape)).astype(np.float32)).astype(dtype)

  def make_param(form, loc):
    if form == "none":
      return None
    pshape = _normalized_shape(shape, axis) if form == "normalized" else case["full_shape"]
    return (loc + 0.5 * rng.normal(size=pshape)).astype(np.float32)

  scale, bias = make_param(case["scale_form"], 1.0), make_param(case["bias_form"], 0.0)
  mask = None if case["mask_shape"] is None else \
      rng.random(case["mask_shape"]) < case["p_valid"]
  cotangent = jnp.asarray(rng.normal(size=shape).astype(np.float32)).astype(dtype)
  if mask is None and np.prod(_normalized_shape(shape, axis)) == 1:
    # One value per group: each value is its own mean, the output would be the bias.
    with pytest.raises(ValueError, match="groups of one value"):
      F.layer_norm(x, scale, bias, axis=axis)
    return

  @jax.jit
  def run(x, scale, bias, mask, cotangent):
    y, vjp = jax.vjp(lambda x, s, b: F.layer_norm(x, s, b, axis=axis, mask=mask),
                     x, scale, bias)
    return y, vjp(cotangent)

  y, grads = run(x, scale, bias, mask, cotangent)
  assert y.dtype == dtype and y.shape == shape
  x64 = ref.to64(x)
  ref.assert_close(y, ref.layer_norm(x64, scale, bias, axis=axis, mask=mask), tol,
                   what="y")
  ct64 = ref.to64(cotangent)
  expected = ref.grad64(
      lambda x, s, b: jnp.sum(ct64 * plain_layer_norm(x, s, b, mask, axis)),
      (x64, scale, bias), argnums=(0, 1, 2))
  for name, g, e, arg in zip(["x", "scale", "bias"], grads, expected, (x, scale, bias)):
    if arg is None:
      assert g is None
      continue
    assert g.shape == arg.shape
    ref.assert_close(g, e, grad_tol, what=f"d{name}")


def test_shifted_data_outputs_keep_float32_precision():
  x = np.random.default_rng(93).normal(1e4, 1.0, (8, 256)).astype(np.float32)
  y = F.layer_norm(x, None, None)
  x64 = x.astype(np.float64)
  expected = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-6)
  assert np.abs(np.asarray(y, np.float64) - expected).max() < 1e-5
