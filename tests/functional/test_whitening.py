"""Tests for decorrelated batch norm (ZCA whitening) and IterNorm.

References are written here from the papers' formulas: float64 NumPy (two-pass mean and
covariance over the valid rows, ``numpy.linalg.eigh``, IterNorm's uncoupled iteration
as printed in the paper) for values, and ``jax.grad`` of a float64 ``jnp`` version (JAX's
own ``eigh`` derivative) or float64 central differences for gradients.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm import functional as F

TOL = 2e-5        # float32 outputs / statistics, relative to max(1, |reference|)
GRAD_TOL = 2e-4   # float32 gradients through an eigendecomposition


# ------------------------------------------------------------------------- references


def _f64(a):
  return np.asarray(np.asarray(a, np.float32) if a.dtype == jnp.bfloat16 else a,
                    np.float64)


def _zca64(cov, epsilon):
  w, v = np.linalg.eigh(cov + epsilon * np.eye(cov.shape[-1]))
  return (v / np.sqrt(w)[..., None, :]) @ np.swapaxes(v, -1, -2)


def _iternorm64(cov, epsilon, iterations):
  """The paper's (uncoupled) iteration, float64."""
  sigma = cov + epsilon * np.eye(cov.shape[-1])
  trace = np.trace(sigma, axis1=-2, axis2=-1)[..., None, None]
  sigma_n = sigma / trace
  p = np.broadcast_to(np.eye(cov.shape[-1]), cov.shape)
  for _ in range(iterations):
    p = 1.5 * p - 0.5 * p @ p @ p @ sigma_n
  return p / np.sqrt(trace)


def ref_whiten(x, scale, bias, stats, *, train, group_size, momentum=0.99, epsilon=1e-5,
               mask=None, iterations=None):
  """Float64 whitening of the last axis in groups; ``(y, (mean, whitening), cov)``."""
  x = _f64(x)
  channels = x.shape[-1]
  groups = channels // group_size
  rows = x.reshape(-1, channels)
  valid = (np.ones(rows.shape[0], bool) if mask is None else
           np.broadcast_to(np.asarray(mask, bool), x.shape[:-1] + (1,)).reshape(-1))
  if not train:
    mean, whitening = _f64(stats[0]), _f64(stats[1])
    cov = None
  else:
    data = rows[valid]
    mean = data.mean(0) if len(data) else np.zeros(channels)
    dev = (data - mean).reshape(-1, groups, group_size)
    cov = np.einsum("mgi,mgj->gij", dev, dev) / max(len(data), 1)
    whitening = (_zca64(cov, epsilon) if iterations is None
                 else _iternorm64(cov, epsilon, iterations))
  centred = (rows - mean).reshape(-1, groups, group_size)
  y = np.einsum("gji,mgi->mgj", whitening, centred).reshape(x.shape)
  if scale is not None:
    y = y * _f64(scale)
  if bias is not None:
    y = y + _f64(bias)
  if not train or stats is None:
    return y, (None if stats is None else (mean, whitening)), cov
  seen = valid.any()
  new = tuple(np.where(seen, momentum * _f64(old) + (1 - momentum) * batch, _f64(old))
              for old, batch in zip(stats, (mean, whitening)))
  return y, new, cov


def _whiten_jnp(x, scale, bias, group_size, epsilon, iterations=None):
  """Plain-jnp whitening (x of shape (m, C)), differentiated by JAX (eigh's rule)."""
  m, channels = x.shape
  mean = x.mean(0)
  dev = (x - mean).reshape(m, channels // group_size, group_size)
  cov = jnp.einsum("mgi,mgj->gij", dev, dev) / m
  sigma = cov + epsilon * jnp.eye(group_size)
  if iterations is None:
    w, v = jnp.linalg.eigh(sigma)
    whitening = (v / jnp.sqrt(w)[..., None, :]) @ jnp.swapaxes(v, -1, -2)
  else:
    trace = jnp.trace(sigma, axis1=-2, axis2=-1)[..., None, None]
    p = jnp.broadcast_to(jnp.eye(group_size), cov.shape)
    for _ in range(iterations):
      p = 1.5 * p - 0.5 * p @ p @ p @ (sigma / trace)
    whitening = p / jnp.sqrt(trace)
  y = jnp.einsum("gji,mgi->mgj", whitening, dev).reshape(m, channels)
  return y * scale + bias


def _assert_close(actual, expected, tol, what=""):
  actual, expected = _f64(actual), _f64(expected)
  assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
  scale = max(1.0, float(np.max(np.abs(expected))))
  np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale, err_msg=what)


def _correlated(shape, seed=0, loc=0.0):
  """Data with correlated features (a random mixing of the last axis)."""
  rng = np.random.default_rng(seed)
  z = rng.normal(size=shape)
  mix = np.eye(shape[-1]) + 0.5 * rng.normal(size=(shape[-1], shape[-1]))
  return (loc + z @ mix).astype(np.float32)


def _stats(channels, group_size, seed=1):
  rng = np.random.default_rng(seed)
  groups = channels // group_size
  a = rng.normal(size=(groups, group_size, group_size))
  whitening = np.eye(group_size) + 0.1 * (a + np.swapaxes(a, -1, -2))
  return F.WhiteningStats(jnp.asarray(rng.normal(size=channels), jnp.float32),
                          jnp.asarray(whitening, jnp.float32))


# Jitted entry points shared by the tests (one compilation per configuration).
_STATIC = ("train", "group_size", "momentum", "iterations")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _dbn(x, scale, bias, stats, mask=None, *, train, group_size, momentum=0.9,
         iterations=None):
  if iterations is None:
    return F.decorrelated_batch_norm(x, scale, bias, stats, train=train,
                                     group_size=group_size, momentum=momentum, mask=mask)
  return F.iter_norm(x, scale, bias, stats, train=train, group_size=group_size,
                     momentum=momentum, iterations=iterations, mask=mask)


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize("shape,group_size,iterations", [
    ((64, 8), 4, None),
    ((4, 5, 6, 8), 8, None),
    ((64, 8), 4, 5),
    ((4, 5, 6, 8), 8, 3),
])
@pytest.mark.parametrize("jit", [True, False])
def test_train_outputs_and_running_stats_match_float64(shape, group_size, iterations, jit):
  x = _correlated(shape, seed=2, loc=3.0)
  channels = shape[-1]
  rng = np.random.default_rng(3)
  scale = rng.uniform(0.5, 1.5, channels).astype(np.float32)
  bias = rng.normal(size=channels).astype(np.float32)
  stats = _stats(channels, group_size)
  if jit:
    y, new = _dbn(x, scale, bias, stats, train=True, group_size=group_size,
                  iterations=iterations)
  else:
    y, new = _dbn.__wrapped__(x, scale, bias, stats, train=True, group_size=group_size,
                              iterations=iterations)
  ref_y, (ref_mean, ref_w), _ = ref_whiten(x, scale, bias, stats, train=True,
                                           group_size=group_size, momentum=0.9,
                                           iterations=iterations)
  _assert_close(y, ref_y, TOL, "y")
  _assert_close(new.mean, ref_mean, TOL, "mean")
  _assert_close(new.whitening, ref_w, TOL, "whitening")
  assert y.dtype == jnp.float32
  assert new.mean.dtype == new.whitening.dtype == jnp.float32


@pytest.mark.parametrize("group_size", [4, 8])
def test_whitened_covariance_is_identity_per_group(group_size):
  x = _correlated((256, 8), seed=4, loc=-2.0)
  y, _ = _dbn(x, None, None, None, train=True, group_size=group_size)
  y = _f64(y)
  _, _, cov = ref_whiten(x, None, None, None, train=True, group_size=group_size)
  for g in range(8 // group_size):
    block = y[:, g * group_size:(g + 1) * group_size]
    out_cov = np.cov(block, rowvar=False, bias=True)
    # Exactly C (C + eps I)^-1 in exact arithmetic; the identity up to eps / lambda_min.
    expected = cov[g] @ np.linalg.inv(cov[g] + 1e-5 * np.eye(group_size))
    np.testing.assert_allclose(out_cov, expected, atol=2e-5)
    np.testing.assert_allclose(out_cov, np.eye(group_size), atol=1e-4)
    np.testing.assert_allclose(block.mean(0), 0.0, atol=1e-5)
  # Features of different groups are not decorrelated from each other (only within).
  if group_size == 4:
    assert np.abs(np.cov(y, rowvar=False, bias=True)[:4, 4:]).max() > 1e-2


def test_shifted_data_keeps_its_covariance():
  """Mean 1e4, std ~1: a raw E[xx^T] - E[x]E[x]^T in float32 would be garbage."""
  x = _correlated((128, 4), seed=5, loc=1e4)
  y, new = _dbn(x, None, None, F.init_whitening_stats(4, group_size=4), train=True,
                group_size=4, momentum=0.0)
  ref_y, (ref_mean, ref_w), _ = ref_whiten(x, None, None, F.init_whitening_stats(
      4, group_size=4), train=True, group_size=4, momentum=0.0)
  _assert_close(y, ref_y, 1e-3, "y")
  _assert_close(new.whitening, ref_w, 1e-3, "whitening")
  np.testing.assert_allclose(_f64(new.mean), ref_mean, rtol=1e-6)


@pytest.mark.parametrize("iterations", [1, 2, 5])
def test_iternorm_equals_the_papers_iteration(iterations):
  x = _correlated((64, 8), seed=6)
  y, new = _dbn(x, None, None, _stats(8, 8), train=True, group_size=8,
                iterations=iterations)
  ref_y, (_, ref_w), _ = ref_whiten(x, None, None, _stats(8, 8), train=True, group_size=8,
                                    momentum=0.9, iterations=iterations)
  _assert_close(y, ref_y, TOL, "y")
  _assert_close(new.whitening, ref_w, TOL, "whitening")


def test_iternorm_approaches_decorrelated_batch_norm_as_iterations_grow():
  x = _correlated((128, 8), seed=7)
  exact, _ = _dbn(x, None, None, None, train=True, group_size=8)
  errors = [float(np.abs(_f64(_dbn(x, None, None, None, train=True, group_size=8,
                                   iterations=t)[0]) - _f64(exact)).max())
            for t in (2, 8, 12, 16, 40)]
  # Condition number ~1.6e3: the small-variance directions need ~16 steps.
  assert all(b < a for a, b in zip(errors[:3], errors[1:4])), errors
  assert errors[0] > 0.1  # two steps are far from whitening
  # Converged (float32 rounding) and stable: no blow-up after convergence (the paper's
  # uncoupled form, run in float32 on this data, overflows to NaN within 15 steps).
  assert errors[3] < 1e-4 and errors[4] < 1e-4, errors


def test_evaluation_uses_running_stats_and_returns_them_unchanged():
  x = _correlated((6, 3, 8), seed=8)
  stats = _stats(8, 4)
  scale = np.linspace(0.5, 1.5, 8).astype(np.float32)
  for iterations in (None, 5):  # evaluation does not depend on the method
    y, out = _dbn(x, scale, None, stats, train=False, group_size=4, iterations=iterations)
    ref_y, _, _ = ref_whiten(x, scale, None, stats, train=False, group_size=4)
    _assert_close(y, ref_y, TOL, "eval y")
    assert out is stats or all(np.array_equal(a, b) for a, b in zip(out, stats))


def test_running_stats_converge_to_population_whitening():
  """EMA over batches of one distribution: the running matrix whitens that distribution."""
  x = _correlated((16 * 256, 4), seed=9)
  stats = F.init_whitening_stats(4, group_size=4)
  for batch in x.reshape(16, 256, 4):
    _, stats = _dbn(batch, None, None, stats, train=True, group_size=4, momentum=0.5)
  y, _ = _dbn(x, None, None, stats, train=False, group_size=4)
  np.testing.assert_allclose(np.cov(_f64(y), rowvar=False), np.eye(4), atol=0.1)


def test_stats_none_in_training_returns_none():
  x = _correlated((32, 4), seed=10)
  y, new = _dbn(x, None, None, None, train=True, group_size=4)
  assert new is None
  _assert_close(y, ref_whiten(x, None, None, None, train=True, group_size=4)[0], TOL)


# ------------------------------------------------------------------------------ masks


def test_masked_rows_do_not_enter_the_statistics():
  x = _correlated((48, 8), seed=11)
  mask = np.arange(48) % 3 != 0
  x_padded = np.where(mask[:, None], x, 1e6).astype(np.float32)  # garbage padding
  stats = _stats(8, 4)
  for iterations in (None, 5):
    y, new = _dbn(x_padded, None, None, stats, mask[:, None], train=True, group_size=4,
                  iterations=iterations)
    ref_y, (ref_mean, ref_w), _ = ref_whiten(x_padded, None, None, stats, train=True,
                                             group_size=4, momentum=0.9, mask=mask[:, None],
                                             iterations=iterations)
    _assert_close(y[mask], ref_y[mask], TOL, "valid outputs")
    assert np.all(np.isfinite(_f64(y)))
    _assert_close(new.mean, ref_mean, TOL)
    _assert_close(new.whitening, ref_w, TOL)
    # Same as whitening the valid rows alone.
    alone, _ = _dbn(x[mask], None, None, stats, train=True, group_size=4,
                    iterations=iterations)
    _assert_close(y[mask], alone, TOL, "valid rows alone")


def test_no_valid_sample_keeps_running_stats_and_stays_finite():
  x = _correlated((16, 4), seed=12)
  stats = _stats(4, 4)
  y, new = _dbn(x, None, None, stats, np.zeros((16, 1), bool), train=True, group_size=4)
  assert np.all(np.isfinite(_f64(y)))
  np.testing.assert_array_equal(np.asarray(new.mean), np.asarray(stats.mean))
  np.testing.assert_array_equal(np.asarray(new.whitening), np.asarray(stats.whitening))


# -------------------------------------------------------------------------- gradients


def _loss(fn, x, scale, bias, w):
  return jnp.sum(w * jnp.sin(fn(x, scale, bias)))


@pytest.mark.parametrize("iterations", [None, 5])
def test_gradients_match_float64_autodiff_reference(iterations):
  x = _correlated((40, 8), seed=13, loc=1.0)
  rng = np.random.default_rng(14)
  w = rng.normal(size=x.shape).astype(np.float32)
  scale = rng.uniform(0.5, 1.5, 8).astype(np.float32)
  bias = rng.normal(size=8).astype(np.float32)

  def ours(x, s, b):
    return _dbn(x, s, b, None, train=True, group_size=4, iterations=iterations)[0]

  got = jax.jit(jax.grad(functools.partial(_loss, ours), (0, 1, 2)))(x, scale, bias, w)
  with jax.enable_x64(True):
    reference = functools.partial(_whiten_jnp, group_size=4, epsilon=1e-5,
                                  iterations=iterations)
    args = [jnp.asarray(a, jnp.float64) for a in (x, scale, bias, w)]
    expected = jax.jit(jax.grad(functools.partial(_loss, reference), (0, 1, 2)))(*args)
    expected = [np.asarray(e, np.float64) for e in expected]
  for name, g, e in zip(("x", "scale", "bias"), got, expected):
    _assert_close(g, e, GRAD_TOL, f"d{name}")


def test_gradient_with_repeated_eigenvalues_is_finite_and_exact():
  """Dead (constant) features and a rank-deficient batch: eigenvalues repeat exactly.

  Differentiating eigh divides by lambda_i - lambda_j there; the closed-form VJP does
  not. Reference: float64 central differences of the float64 forward pass.
  """
  rng = np.random.default_rng(15)
  x = rng.normal(size=(24, 8))
  x[:, 1] = 0.0   # dead features: equal (zero) variance, zero covariance
  x[:, 2] = 0.0
  x[:, 4:] = 0.0  # a whole group dead: its covariance is 0, eigenvalues all equal
  w = rng.normal(size=x.shape)

  def loss(x):
    y, _ = F.decorrelated_batch_norm(x, None, None, None, train=True, group_size=4)
    return jnp.sum(w * jnp.sin(y))

  grad32 = jax.jit(jax.grad(loss))(x.astype(np.float32))
  assert np.all(np.isfinite(_f64(grad32)))
  with jax.enable_x64(True):
    x64 = jnp.asarray(x)
    grad64 = np.asarray(jax.jit(jax.grad(loss))(x64))
    loss64 = jax.jit(loss)
    for seed in range(3):
      v = np.random.default_rng(100 + seed).normal(size=x.shape)
      h = 1e-6
      fd = (float(loss64(x64 + h * v)) - float(loss64(x64 - h * v))) / (2 * h)
      np.testing.assert_allclose(np.sum(grad64 * v), fd, rtol=1e-5, atol=1e-6)
  # float32 against float64: same tolerance as the other gradients (eps = 1e-5 makes the
  # dead directions stiff, so the scale is large; compare relative to it).
  _assert_close(grad32, grad64, GRAD_TOL, "dx (float32 vs float64)")


# -------------------------------------------------------------------------- precision


def test_bfloat16_input_keeps_dtype_with_float32_statistics():
  x = _correlated((64, 8), seed=16)
  y, new = _dbn(x.astype(jnp.bfloat16), None, None, _stats(8, 4), train=True,
                group_size=4)
  assert y.dtype == jnp.bfloat16
  assert new.mean.dtype == new.whitening.dtype == jnp.float32
  ref_y, _, _ = ref_whiten(np.asarray(x.astype(jnp.bfloat16), np.float32), None, None,
                           None, train=True, group_size=4)
  _assert_close(y, ref_y, 2e-2, "bf16 y")


def test_float64_input_computes_in_float64():
  x = _correlated((64, 8), seed=17).astype(np.float64)
  with jax.enable_x64(True):
    y, _ = F.decorrelated_batch_norm(jnp.asarray(x), None, None, None, train=True,
                                     group_size=8)
    assert y.dtype == jnp.float64
    ref_y, _, _ = ref_whiten(x, None, None, None, train=True, group_size=8)
    np.testing.assert_allclose(np.asarray(y), ref_y, atol=1e-10)


# ----------------------------------------------------------------------------- errors


def _call(fn=F.decorrelated_batch_norm, x=None, stats=None, **kwargs):
  x = np.zeros((32, 8), np.float32) if x is None else x
  options = {"train": True, "group_size": 4, **kwargs}
  return fn(x, None, None, stats, **options)


@pytest.mark.parametrize("fn", [F.decorrelated_batch_norm, F.iter_norm])
def test_group_larger_than_the_batch_supports_raises(fn):
  with pytest.raises(ValueError, match=r"group of 8 features needs more than 8 samples.*"
                                       r"x.shape=\(2, 4, 8\) gives 8 samples"):
    _call(fn, x=np.zeros((2, 4, 8), np.float32), group_size=8)
  _call(fn, x=np.zeros((9, 8), np.float32), group_size=8)  # 9 samples: fine
  # Evaluation needs no batch statistics.
  _call(fn, x=np.zeros((1, 8), np.float32), group_size=8, train=False,
        stats=F.init_whitening_stats(8, group_size=8))


def test_argument_errors_name_the_argument_and_the_fix():
  fn_name = "jaxnorm.functional.decorrelated_batch_norm"
  with pytest.raises(ValueError, match="group_size=3 does not divide the 8 channels"):
    _call(group_size=3)
  with pytest.raises(ValueError, match="exactly one of num_groups and group_size"):
    _call(num_groups=2)
  with pytest.raises(ValueError, match=r"mask.shape=\(32, 8\) varies along the feature"):
    _call(mask=np.ones((32, 8), bool))
  with pytest.raises(ValueError, match=r"stats.whitening has shape \(4, 4\) but must have "
                                       r"shape \(2, 4, 4\)"):
    _call(stats=F.WhiteningStats(jnp.zeros(8), jnp.eye(4)))
  with pytest.raises(TypeError, match="stats must be a jaxnorm.functional.WhiteningStats"):
    _call(stats=(jnp.zeros(8), jnp.eye(4), 0))
  with pytest.raises(ValueError, match="stats is None but train=False"):
    _call(train=False)
  with pytest.raises(TypeError, match=f"{fn_name}: train must be a Python bool"):
    _call(train=jnp.asarray(True))
  with pytest.raises(ValueError, match=f"{fn_name}: momentum must be in"):
    _call(momentum=1.5)
  with pytest.raises(ValueError, match="epsilon must be > 0"):
    _call(epsilon=0.0)
  with pytest.raises(TypeError, match="x must be a floating-point array"):
    _call(x=np.zeros((32, 8), np.int32))
  with pytest.raises(ValueError, match="iterations must be a Python int >= 1"):
    _call(F.iter_norm, iterations=0)
  with pytest.raises(ValueError, match="iterations must be a Python int >= 1"):
    _call(F.iter_norm, iterations=2.5)


def test_init_whitening_stats():
  stats = F.init_whitening_stats(12, num_groups=3, group_size=None)
  assert stats.mean.shape == (12,) and stats.whitening.shape == (3, 4, 4)
  np.testing.assert_array_equal(np.asarray(stats.whitening), np.broadcast_to(np.eye(4),
                                                                             (3, 4, 4)))
  with pytest.raises(ValueError, match="init_whitening_stats: group_size=5 does not "
                                       "divide the 12 channels"):
    F.init_whitening_stats(12, group_size=5)
