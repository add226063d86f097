"""Float64 NumPy references and comparison helpers for the functional tests.

Everything is exposed through the session-scoped fixture ``ref`` (session scope so that
hypothesis tests may use it without the function-scoped-fixture health check). The
references are written independently of jaxnorm: plain NumPy in float64, two-pass
variance over the valid elements only.

JAX outputs are always converted with ``np.asarray(out, np.float64)`` before any
arithmetic with the references, so no float64 value is silently cast to float32.
"""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

# Tolerances used throughout the functional tests (stated once, here).
FLOAT32_TOL = 1e-5  # forward values in float32, relative to max(1, |reference|)
GRAD_TOL = 1e-4  # gradients in float32, relative to max(1, max |reference|)
BF16_TOL = 2e-2  # bfloat16 / float16 outputs, relative to max(1, |reference|)
SHIFTED_VAR_TOL = 1e-3  # absolute variance error on mean-1e4, std-1 float32 data


def to64(a):
  """Any array (JAX, NumPy, bfloat16) as a float64 (complex128 if complex) NumPy array."""
  a = np.asarray(np.asarray(a, np.float32) if _is_low_precision(a) else a)
  return a.astype(np.complex128 if np.iscomplexobj(a) else np.float64)


def _is_low_precision(a):
  dtype = getattr(a, "dtype", None)
  return dtype is not None and dtype in (jnp.bfloat16, np.dtype(jnp.bfloat16))


def canonical_axes(axes, ndim):
  axes = (axes,) if isinstance(axes, (int, np.integer)) else tuple(axes)
  return tuple(sorted(int(a) % ndim for a in axes))


def broadcast_mask(mask, shape):
  if mask is None:
    return np.ones(shape, bool)
  return np.broadcast_to(np.asarray(mask).astype(bool), shape)


def ref_moments(x, axes, mask=None, keepdims=False):
  """Mean and biased variance over ``axes`` of the valid elements, in float64.

  Two-pass: the mean first, then the mean of squared deviations. Groups without a
  valid element get mean 0 and variance 0. Invalid elements never enter any
  arithmetic (``np.where`` selects before multiplying), so NaN/inf there is harmless.
  """
  x = to64(x)
  axes = canonical_axes(axes, x.ndim)
  m = broadcast_mask(mask, x.shape)
  count = m.sum(axis=axes, keepdims=True).astype(np.float64)
  safe = np.maximum(count, 1.0)
  mean = np.where(m, x, 0.0).sum(axis=axes, keepdims=True) / safe
  dev = np.where(m, x - np.where(m, mean, 0.0), 0.0)
  var = (dev * np.conj(dev)).real.sum(axis=axes, keepdims=True) / safe
  if not keepdims:
    mean, var = np.squeeze(mean, axes), np.squeeze(var, axes)
  return mean, var


def ref_normalize(x, scale, bias, reduce_axes, epsilon, mask=None):
  """``(x - mean) / sqrt(var + eps) * scale + bias`` with float64 valid-element stats.

  ``scale``/``bias`` must already broadcast against ``x``.
  """
  x = to64(x)
  mean, var = ref_moments(x, reduce_axes, mask, keepdims=True)
  y = (x - mean) / np.sqrt(var + epsilon)
  if scale is not None:
    y = y * to64(scale)
  if bias is not None:
    y = y + to64(bias)
  return y, mean, var


def param_shape(x_shape, kept_axes):
  kept = canonical_axes(kept_axes, len(x_shape))
  return tuple(d if a in kept else 1 for a, d in enumerate(x_shape))


def ref_batch_norm(x, scale, bias, stats, *, train, momentum=0.99, epsilon=1e-5,
                   axis=-1, mask=None):
  """Float64 batch norm; returns ``(y, (new_mean, new_var))`` (stats may be None)."""
  x = to64(x)
  feature_axes = canonical_axes(axis, x.ndim)
  reduce_axes = tuple(a for a in range(x.ndim) if a not in feature_axes)
  pshape = param_shape(x.shape, feature_axes)
  fshape = tuple(x.shape[a] for a in feature_axes)
  s = None if scale is None else to64(scale).reshape(pshape)
  b = None if bias is None else to64(bias).reshape(pshape)
  if not train:
    mean = to64(stats[0]).reshape(pshape)
    var = to64(stats[1]).reshape(pshape)
    y = (x - mean) / np.sqrt(var + epsilon)
    y = y if s is None else y * s
    y = y if b is None else y + b
    return y, (to64(stats[0]), to64(stats[1]))
  y, mean, var = ref_normalize(x, s, b, reduce_axes, epsilon, mask)
  if stats is None:
    return y, None
  new_mean = momentum * to64(stats[0]) + (1 - momentum) * mean.reshape(fshape)
  new_var = momentum * to64(stats[1]) + (1 - momentum) * var.reshape(fshape)
  # A feature with no valid value this batch keeps its running statistics.
  seen = broadcast_mask(mask, x.shape).sum(axis=reduce_axes).reshape(fshape) > 0
  new_mean = np.where(seen, new_mean, to64(stats[0]))
  new_var = np.where(seen, new_var, to64(stats[1]))
  return y, (new_mean, new_var)


def ref_layer_norm(x, scale, bias, *, axis=-1, epsilon=1e-6, mask=None):
  """Float64 layer norm; ``scale``/``bias`` of the normalized shape or full rank."""
  x = to64(x)
  axes = canonical_axes(axis, x.ndim)
  pshape = param_shape(x.shape, axes)
  normalized_shape = tuple(x.shape[a] for a in axes)

  def as_param(p):
    if p is None:
      return None
    p = to64(p)
    return p.reshape(pshape) if p.shape == normalized_shape else p

  y, _, _ = ref_normalize(x, as_param(scale), as_param(bias), axes, epsilon, mask)
  return y


def max_scaled_error(actual, expected):
  """``max |actual - expected| / max(1, max |expected|)`` in float64."""
  actual, expected = to64(actual), to64(expected)
  scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
  return float(np.max(np.abs(actual - expected))) / scale if expected.size else 0.0


def assert_close(actual, expected, tol, *, what=""):
  """Asserts ``|actual - expected| <= tol * (max(1, max|expected|) + |expected|)``.

  Both are converted to float64 NumPy first. Shapes must match exactly and both must be
  finite where expected is finite.
  """
  actual, expected = to64(actual), to64(expected)
  assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
  assert np.all(np.isfinite(actual) == np.isfinite(expected)), (what, actual, expected)
  scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
  np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale,
                             err_msg=f"{what} (tol={tol}, scale={scale})")


def grad64(fn, args, argnums=0):
  """``jax.jit(jax.grad(fn, argnums))(*args)`` in float64 (x64 enabled locally).

  Floating-point arguments are converted to float64 JAX arrays; boolean or None
  arguments pass through. Returns NumPy float64 array(s).
  """
  with jax.enable_x64(True):
    args64 = tuple(_as_jax64(a) for a in args)
    out = jax.jit(jax.grad(fn, argnums=argnums))(*args64)
    return jax.tree.map(to64, out)


def hessian64(fn, args, argnums=0):
  """``jax.hessian(fn, argnums)(*args)`` in float64, as NumPy."""
  with jax.enable_x64(True):
    args64 = tuple(_as_jax64(a) for a in args)
    out = jax.jit(jax.hessian(fn, argnums=argnums))(*args64)
    return jax.tree.map(to64, out)


def call64(fn, args):
  """``fn(*args)`` in float64 (x64 enabled locally), outputs as NumPy float64."""
  with jax.enable_x64(True):
    args64 = tuple(_as_jax64(a) for a in args)
    return jax.tree.map(to64, jax.jit(fn)(*args64))


def _as_jax64(a):
  if a is None or isinstance(a, (bool, int, float, tuple)):
    return a
  arr = np.asarray(a) if not _is_low_precision(a) else np.asarray(a, np.float32)
  if arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer):
    return jnp.asarray(arr)
  if np.iscomplexobj(arr):
    return jnp.asarray(arr.astype(np.complex128))
  return jnp.asarray(arr.astype(np.float64))


# --------------------------------------------------------------------------------------
# References for the normalization family (group/instance/RMS norm, batch renorm, ghost
# batch norm, switchable norm, EvoNorm). Same rules as above: float64 NumPy, two-pass
# statistics over the valid elements only, written from the papers' formulas.


def _affine64(y, scale, bias, pshape):
  if scale is not None:
    s = to64(scale)
    y = y * (s.reshape(pshape) if s.ndim != y.ndim else s)
  if bias is not None:
    b = to64(bias)
    y = y + (b.reshape(pshape) if b.ndim != y.ndim else b)
  return y


def _ema64(stats, batch_mean, batch_var, seen, momentum):
  old_mean, old_var = to64(stats[0]), to64(stats[1])
  new_mean = np.where(seen, momentum * old_mean + (1 - momentum) * batch_mean, old_mean)
  new_var = np.where(seen, momentum * old_var + (1 - momentum) * batch_var, old_var)
  return new_mean, new_var


def ref_group_norm(x, scale, bias, *, num_groups=None, group_size=None,
                   reduction_axes=None, epsilon=1e-6, mask=None):
  """Float64 group norm, one channel group at a time (channels last)."""
  x = to64(x)
  channels = x.shape[-1]
  size = group_size if group_size is not None else channels // num_groups
  axes = (tuple(range(1, x.ndim)) if reduction_axes is None
          else canonical_axes(reduction_axes, x.ndim))
  assert x.ndim - 1 in axes
  m = broadcast_mask(mask, x.shape)
  y = np.empty_like(x)
  for start in range(0, channels, size):
    cols = (Ellipsis, slice(start, start + size))
    mean, var = ref_moments(x[cols], axes, m[cols], keepdims=True)
    y[cols] = (x[cols] - mean) / np.sqrt(var + epsilon)
  return _affine64(y, scale, bias, (1,) * (x.ndim - 1) + (channels,))


def ref_instance_norm(x, scale, bias, *, axis=-1, epsilon=1e-6, mask=None):
  """Float64 instance norm: per example and channel over every other axis."""
  x = to64(x)
  feature_axes = canonical_axes(axis, x.ndim)
  reduce_axes = tuple(a for a in range(1, x.ndim) if a not in feature_axes)
  mean, var = ref_moments(x, reduce_axes, mask, keepdims=True)
  y = (x - mean) / np.sqrt(var + epsilon)
  return _affine64(y, scale, bias, param_shape(x.shape, feature_axes))


def ref_rms_norm(x, scale, *, axis=-1, epsilon=1e-6, mask=None):
  """Float64 RMS norm: ``x / sqrt(mean of valid x^2 + eps) * scale``."""
  x = to64(x)
  axes = canonical_axes(axis, x.ndim)
  m = broadcast_mask(mask, x.shape)
  count = np.maximum(m.sum(axis=axes, keepdims=True), 1)
  mean_square = np.where(m, (x * np.conj(x)).real, 0.0).sum(axis=axes, keepdims=True) / count
  return _affine64(x / np.sqrt(mean_square + epsilon), scale, None,
                   param_shape(x.shape, axes))


def ref_batch_renorm(x, scale, bias, stats, *, train, r_max, d_max, warmup_steps=0,
                     momentum=0.99, epsilon=1e-5, axis=-1, mask=None):
  """Float64 batch renorm (Ioffe 2017); ``r_max``/``d_max`` are numbers at this step.

  Returns ``(y, (new_mean, new_var, new_step), (r_raw, d_raw))`` where ``r_raw`` and
  ``d_raw`` are the unclipped corrections (feature-shaped; None in evaluation).
  """
  x = to64(x)
  feature_axes = canonical_axes(axis, x.ndim)
  reduce_axes = tuple(a for a in range(x.ndim) if a not in feature_axes)
  pshape = param_shape(x.shape, feature_axes)
  fshape = tuple(x.shape[a] for a in feature_axes)
  run_mean, run_var, step = to64(stats[0]), to64(stats[1]), int(np.asarray(stats[2]))
  sigma = np.sqrt(run_var.reshape(pshape) + epsilon)
  if not train:
    y = (x - run_mean.reshape(pshape)) / sigma
    return _affine64(y, scale, bias, pshape), (run_mean, run_var, step), (None, None)
  mean, var = ref_moments(x, reduce_axes, mask, keepdims=True)
  sigma_batch = np.sqrt(var + epsilon)
  r_raw = sigma_batch / sigma
  d_raw = (mean - run_mean.reshape(pshape)) / sigma
  if step < warmup_steps:
    r, d = np.ones_like(r_raw), np.zeros_like(d_raw)
  else:
    r = np.clip(r_raw, 1.0 / r_max, r_max)
    d = np.clip(d_raw, -d_max, d_max)
  y = _affine64((x - mean) / sigma_batch * r + d, scale, bias, pshape)
  seen = broadcast_mask(mask, x.shape).sum(axis=reduce_axes).reshape(fshape) > 0
  new_mean, new_var = _ema64(stats, mean.reshape(fshape), var.reshape(fshape), seen,
                             momentum)
  return y, (new_mean, new_var, step + 1), (r_raw.reshape(fshape), d_raw.reshape(fshape))


def ref_ghost_batch_norm(x, scale, bias, stats, *, virtual_batch_size, train,
                         momentum=0.99, epsilon=1e-5, axis=-1, mask=None):
  """Float64 ghost batch norm: each virtual batch on its own, EMA with the full batch.

  The running statistics are updated with the mean and biased variance of all valid
  elements of the whole batch (computed directly, not merged from the ghosts).
  """
  x = to64(x)
  if not train:
    return ref_batch_norm(x, scale, bias, stats, train=False, epsilon=epsilon, axis=axis)
  feature_axes = canonical_axes(axis, x.ndim)
  reduce_axes = tuple(a for a in range(x.ndim) if a not in feature_axes)
  pshape = param_shape(x.shape, feature_axes)
  fshape = tuple(x.shape[a] for a in feature_axes)
  m = broadcast_mask(mask, x.shape)
  y = np.empty_like(x)
  for start in range(0, x.shape[0], virtual_batch_size):
    rows = slice(start, start + virtual_batch_size)
    mean, var = ref_moments(x[rows], reduce_axes, m[rows], keepdims=True)
    y[rows] = (x[rows] - mean) / np.sqrt(var + epsilon)
  y = _affine64(y, scale, bias, pshape)
  if stats is None:
    return y, None
  mean, var = ref_moments(x, reduce_axes, m)
  seen = m.sum(axis=reduce_axes) > 0
  return y, _ema64(stats, mean.reshape(fshape), var.reshape(fshape), seen.reshape(fshape),
                   momentum)


def softmax64(logits):
  logits = to64(logits)
  e = np.exp(logits - logits.max())
  return e / e.sum()


def ref_switch_norm(x, scale, bias, mean_weights, var_weights, stats, *, train,
                    momentum=0.99, epsilon=1e-5, mask=None):
  """Float64 switchable norm (N, ..., C): softmax mixture of IN, LN and BN statistics.

  Each statistic is computed directly from the valid elements of ``x``.
  """
  x = to64(x)
  spatial = tuple(range(1, x.ndim - 1))
  channels = x.shape[-1]
  m = broadcast_mask(mask, x.shape)
  in_mean, in_var = ref_moments(x, spatial, m, keepdims=True)
  ln_mean, ln_var = ref_moments(x, tuple(range(1, x.ndim)), m, keepdims=True)
  bn_axes = tuple(range(x.ndim - 1))
  if train:
    bn_mean, bn_var = ref_moments(x, bn_axes, m, keepdims=True)
    seen = m.sum(axis=bn_axes) > 0
    new_stats = _ema64(stats, bn_mean.reshape(channels), bn_var.reshape(channels), seen,
                       momentum)
  else:
    bn_mean = to64(stats[0]).reshape((1,) * (x.ndim - 1) + (channels,))
    bn_var = to64(stats[1]).reshape(bn_mean.shape)
    new_stats = (to64(stats[0]), to64(stats[1]))
  wm, wv = softmax64(mean_weights), softmax64(var_weights)
  mean = wm[0] * in_mean + wm[1] * ln_mean + wm[2] * bn_mean
  var = wv[0] * in_var + wv[1] * ln_var + wv[2] * bn_var
  y = (x - mean) / np.sqrt(var + epsilon)
  return _affine64(y, scale, bias, (1,) * (x.ndim - 1) + (channels,)), new_stats


def ref_evonorm_b0(x, scale, bias, v, stats, *, train, momentum=0.99, epsilon=1e-5,
                   mask=None):
  """Float64 EvoNorm-B0: ``x / max(sqrt(var_B + eps), v x + sqrt(var_I + eps))``."""
  x = to64(x)
  channels = x.shape[-1]
  m = broadcast_mask(mask, x.shape)
  _, in_var = ref_moments(x, tuple(range(1, x.ndim - 1)), m, keepdims=True)
  bn_axes = tuple(range(x.ndim - 1))
  if train:
    bn_mean, bn_var = ref_moments(x, bn_axes, m, keepdims=True)
    seen = m.sum(axis=bn_axes) > 0
    new_stats = _ema64(stats, bn_mean.reshape(channels), bn_var.reshape(channels), seen,
                       momentum)
  else:
    bn_var = to64(stats[1]).reshape((1,) * (x.ndim - 1) + (channels,))
    new_stats = (to64(stats[0]), to64(stats[1]))
  denominator = np.maximum(np.sqrt(bn_var + epsilon), to64(v) * x + np.sqrt(in_var + epsilon))
  return _affine64(x / denominator, scale, bias, (1,) * (x.ndim - 1) + (channels,)), \
      new_stats


def ref_evonorm_s0(x, scale, bias, v, *, num_groups=None, group_size=None, epsilon=1e-5,
                   mask=None):
  """Float64 EvoNorm-S0: ``x sigmoid(v x) / sqrt(var_G + eps)``, groups of channels."""
  x = to64(x)
  channels = x.shape[-1]
  size = group_size if group_size is not None else channels // num_groups
  m = broadcast_mask(mask, x.shape)
  std = np.empty_like(x)
  for start in range(0, channels, size):
    cols = (Ellipsis, slice(start, start + size))
    _, var = ref_moments(x[cols], tuple(range(1, x.ndim)), m[cols], keepdims=True)
    std[cols] = np.sqrt(var + epsilon)
  sigmoid = 0.5 * (1.0 + np.tanh(0.5 * to64(v) * x))  # no overflow for large |x|
  y = x * sigmoid / std
  return _affine64(y, scale, bias, (1,) * (x.ndim - 1) + (channels,))


# --------------------------------------------------------------------------------------
# Plain jnp formulas (differentiated by JAX itself, never by jaxnorm's closed form), for
# the derivative tests: run them in float64 with ``grad64``/``hessian64``/``jvp64``.
# Masked positions enter no statistic (``jnp.where`` selects before any arithmetic);
# feed them finite padding.


def plain_normalize(x, scale, bias, reduce_axes, epsilon, mask=None, center=True):
  """``(x - mean) / sqrt(E|x - mean|^2 + eps) * scale + bias`` over ``reduce_axes``."""
  reduce_axes = tuple(a % x.ndim for a in reduce_axes)
  if mask is None:
    m = jnp.ones(x.shape, bool)
  else:
    mask = jnp.asarray(mask)
    m = jnp.broadcast_to(mask.reshape((1,) * (x.ndim - mask.ndim) + mask.shape), x.shape)
  real = jnp.zeros((), x.dtype).real.dtype
  n = jnp.maximum(jnp.sum(m, reduce_axes, keepdims=True, dtype=real), 1)
  zero = jnp.zeros((), x.dtype)
  mean = (jnp.sum(jnp.where(m, x, zero), reduce_axes, keepdims=True) / n
          if center else zero)
  d = x - mean
  var = jnp.sum(jnp.where(m, (d * jnp.conj(d)).real, 0), reduce_axes, keepdims=True) / n
  y = d / jnp.sqrt(var + epsilon)
  if scale is not None:
    y = y * scale
  if bias is not None:
    y = y + bias
  return y


def _param_shape_for(x, axes):
  return tuple(d if a in axes else 1 for a, d in enumerate(x.shape))


def plain_batch_norm(x, scale, bias, *, axis=-1, epsilon=1e-5, mask=None):
  feature = canonical_axes(axis, x.ndim)
  pshape = _param_shape_for(x, feature)
  return plain_normalize(
      x, None if scale is None else scale.reshape(pshape),
      None if bias is None else bias.reshape(pshape),
      tuple(a for a in range(x.ndim) if a not in feature), epsilon, mask)


def plain_layer_norm(x, scale, bias, *, axis=-1, epsilon=1e-6, mask=None):
  axes = canonical_axes(axis, x.ndim)
  pshape = _param_shape_for(x, axes)
  return plain_normalize(
      x, None if scale is None else scale.reshape(pshape),
      None if bias is None else bias.reshape(pshape), axes, epsilon, mask)


def plain_rms_norm(x, scale, *, axis=-1, epsilon=1e-6, mask=None):
  axes = canonical_axes(axis, x.ndim)
  return plain_normalize(x, None if scale is None else scale.reshape(
      _param_shape_for(x, axes)), None, axes, epsilon, mask, center=False)


def plain_instance_norm(x, scale, bias, *, axis=-1, epsilon=1e-6, mask=None):
  feature = canonical_axes(axis, x.ndim)
  pshape = _param_shape_for(x, feature)
  return plain_normalize(
      x, None if scale is None else scale.reshape(pshape),
      None if bias is None else bias.reshape(pshape),
      tuple(a for a in range(1, x.ndim) if a not in feature), epsilon, mask)


def plain_group_norm(x, scale, bias, *, num_groups, epsilon=1e-6, mask=None):
  c = x.shape[-1]
  grouped = x.reshape(x.shape[:-1] + (num_groups, c // num_groups))
  if mask is not None:
    mask = jnp.asarray(mask)
    mask = jnp.broadcast_to(mask.reshape((1,) * (x.ndim - mask.ndim) + mask.shape),
                            x.shape).reshape(grouped.shape)
  y = plain_normalize(grouped, None, None, tuple(range(1, x.ndim - 1)) + (x.ndim,),
                      epsilon, mask).reshape(x.shape)
  if scale is not None:
    y = y * scale
  return y if bias is None else y + bias


def jvp64(fn, primals, tangents):
  """``jax.jvp(fn, primals, tangents)`` in float64, outputs as NumPy float64/complex128."""
  with jax.enable_x64(True):
    primals = tuple(_as_jax64(a) for a in primals)
    tangents = tuple(_as_jax64(a) for a in tangents)
    out = jax.jit(lambda p, t: jax.jvp(fn, p, t))(primals, tangents)
    return jax.tree.map(np.asarray, out)


@pytest.fixture(scope="session")
def ref():
  """The float64 references and comparison helpers, as one namespace."""
  return types.SimpleNamespace(
      FLOAT32_TOL=FLOAT32_TOL,
      GRAD_TOL=GRAD_TOL,
      BF16_TOL=BF16_TOL,
      SHIFTED_VAR_TOL=SHIFTED_VAR_TOL,
      to64=to64,
      canonical_axes=canonical_axes,
      broadcast_mask=broadcast_mask,
      param_shape=param_shape,
      moments=ref_moments,
      normalize=ref_normalize,
      batch_norm=ref_batch_norm,
      layer_norm=ref_layer_norm,
      assert_close=assert_close,
      max_scaled_error=max_scaled_error,
      grad64=grad64,
      hessian64=hessian64,
      call64=call64,
      group_norm=ref_group_norm,
      instance_norm=ref_instance_norm,
      rms_norm=ref_rms_norm,
      batch_renorm=ref_batch_renorm,
      ghost_batch_norm=ref_ghost_batch_norm,
      softmax=softmax64,
      switch_norm=ref_switch_norm,
      evonorm_b0=ref_evonorm_b0,
      evonorm_s0=ref_evonorm_s0,
      plain_normalize=plain_normalize,
      plain_batch_norm=plain_batch_norm,
      plain_layer_norm=plain_layer_norm,
      plain_rms_norm=plain_rms_norm,
      plain_instance_norm=plain_instance_norm,
      plain_group_norm=plain_group_norm,
      jvp64=jvp64,
  )
