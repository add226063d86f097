"""The kernels' operations in plain JAX, on the same (B, S, G, K) arrays.

They define what each kernel computes (up to float rounding), run wherever the kernels
do not (GPU, TPU, or no library) and give the kernels their derivatives: each kernel
operation is differentiated through its reference here (second-order derivatives of the
fused layers therefore stay available).

Conventions (see ``_geometry`` and csrc/norm_kernels.cc): ``x`` has runs of axes
``layout = (nb, ns, ng, nk)`` viewed as (B, S, G, K); statistics are float32 with
``x``'s rank and size 1 on S and K; parameters have a leading row axis P in {1, I}
(I = ``instances``: problems folded into B, each with its own parameter row) and then
``x``'s rank, size 1 on B and S, and Ks in {1, K} elements on K; parameter cotangents
have I rows; a mask is bool with G and K each full or 1. Each function views its
operands as 4-D (reshapes only) and returns results in the operands' shapes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxnorm.kernels._geometry import stats_shape

_SHIFT_SAMPLES = 16
f32 = jnp.float32


def _dims(shape, layout):
  bounds = np.cumsum((0,) + tuple(layout))
  return tuple(int(np.prod(shape[bounds[r]:bounds[r + 1]])) for r in range(4))


def _view(x, layout):
  """``x`` (or a mask) as 4-D (B, S, G or 1, K or 1)."""
  return x.reshape(_dims(x.shape, layout))


def _stats_view(v, x_shape, layout):
  b, _, g, _ = _dims(x_shape, layout)
  return v.reshape(b, g)


def _param_view(p, x_shape, layout):
  """(P, ...) parameters as (P, G, Ks)."""
  _, _, g, _ = _dims(x_shape, layout)
  return p.reshape(p.shape[0], g, -1)


def _by_instance(t: jax.Array, instances: int) -> jax.Array:
  """(B, ...) -> (I, B / I, ...)."""
  return t.reshape((instances, t.shape[0] // instances) + t.shape[1:])


def _params(p: jax.Array, instances: int) -> jax.Array:
  """(P, G, Ks) -> broadcastable against (I, B/I, S, G, K)."""
  p = p.astype(f32)
  rows = p.shape[0]
  p = p.reshape((rows, 1, 1) + p.shape[1:])
  return jnp.broadcast_to(p, (instances,) + p.shape[1:])


def _expand(v: jax.Array) -> jax.Array:
  """(B, G) -> (B, 1, G, 1)."""
  return v[:, None, :, None]


def _full_mask(mask, shape):
  return None if mask is None else jnp.broadcast_to(mask, shape)


def _moments_4d(x, mask, *, center: bool):
  """``(shift, delta, var, count)``: per-group shift (the mean of the first 16 valid
  elements in (s, k) order, 0 if none), ``delta = mean - shift``, biased variance, valid
  count."""
  b, s, g, k = x.shape
  xf = x.astype(f32)
  m = _full_mask(mask, x.shape)
  count = (jnp.full((b, g), s * k, f32) if m is None
           else jnp.sum(m, axis=(1, 3), dtype=f32))
  if center:
    # (B, G, S*K): rank of each valid element within its group.
    flat_x = jnp.moveaxis(xf, 2, 1).reshape(b, g, s * k)
    if m is None:
      first = flat_x[:, :, :_SHIFT_SAMPLES]
      shift = jnp.mean(first, axis=-1)
    else:
      flat_m = jnp.moveaxis(m, 2, 1).reshape(b, g, s * k)
      take = flat_m & (jnp.cumsum(flat_m, axis=-1) <= _SHIFT_SAMPLES)
      taken = jnp.sum(take, axis=-1, dtype=f32)
      shift = jnp.where(taken > 0, jnp.sum(jnp.where(take, flat_x, 0), axis=-1)
                        / jnp.maximum(taken, 1), 0.0)
    shift = lax.stop_gradient(shift)
  else:
    shift = jnp.zeros((b, g), f32)
  c = xf - _expand(shift)
  if m is not None:
    c = jnp.where(m, c, 0.0)
  s1 = jnp.sum(c, axis=(1, 3))
  s2 = jnp.sum(c * c, axis=(1, 3))
  safe = jnp.maximum(count, 1)
  if center:
    delta = s1 / safe
    var = jnp.maximum(s2 - s1 * delta, 0) / safe
  else:
    delta = jnp.zeros_like(s1)
    var = s2 / safe
  return shift, delta, var, count


def _apply_4d(x, shift, delta, rstd, scale, bias, *, instances: int):
  """``y = ((x - shift) - delta) * (rstd * scale) + bias`` in x's dtype."""
  xi = _by_instance(x.astype(f32), instances)
  sh, de, rs = (_by_instance(_expand(v), instances) for v in (shift, delta, rstd))
  y = ((xi - sh) - de) * (rs * _params(scale, instances)) + _params(bias, instances)
  return y.reshape(x.shape).astype(x.dtype)


def _forward_4d(x, mask, scale, bias, *, epsilon: float, center: bool, instances: int):
  """``(y, shift, delta, var, count)``: statistics, then the normalized output."""
  shift, delta, var, count = _moments_4d(x, mask, center=center)
  rstd = lax.rsqrt(var + epsilon)
  y = _apply_4d(x, shift, delta, rstd, scale, bias, instances=instances)
  return y, shift, delta, var, count


def _backward_sums_4d(x, dy, shift, delta, rstd, scale, *, center: bool, instances: int):
  """``(sum_g, sum_gx, dscale, dbias)`` with ``g = dy * scale``, over all positions.

  ``sum_g``, ``sum_gx`` (= sum of ``g * xhat``) are per group (B, G); ``dscale``
  (= sum of ``dy * xhat``) and ``dbias`` (= sum of ``dy``) per instance (I, G, Ks).
  """
  del center
  ks = scale.shape[-1]
  xi = _by_instance(x.astype(f32), instances)
  dyi = _by_instance(dy.astype(f32), instances)
  sh, de, rs = (_by_instance(_expand(v), instances) for v in (shift, delta, rstd))
  g = dyi * _params(scale, instances)
  xhat = ((xi - sh) - de) * rs
  b = x.shape[0]
  sum_g = jnp.sum(g, axis=(2, 4)).reshape(b, -1)
  sum_gx = jnp.sum(g * xhat, axis=(2, 4)).reshape(b, -1)
  param_axes = (1, 2) if ks != 1 else (1, 2, 4)
  dscale = jnp.sum(dyi * xhat, axis=param_axes, keepdims=ks == 1)
  dbias = jnp.sum(dyi, axis=param_axes, keepdims=ks == 1)
  if ks == 1:
    dscale, dbias = dscale[:, 0, 0], dbias[:, 0, 0]
  return sum_g, sum_gx, dscale, dbias


def _backward_dx_4d(x, dy, mask, shift, delta, rstd, count, scale, sum_g, sum_gx, *,
                center: bool, instances: int):
  r"""``dx = rstd * g - [valid] rstd / n * ((center ? sum_g : 0) + xhat * sum_gx)``."""
  xi = _by_instance(x.astype(f32), instances)
  dyi = _by_instance(dy.astype(f32), instances)
  sh, de, rs, n, sg, sgx = (_by_instance(_expand(v), instances)
                            for v in (shift, delta, rstd, count, sum_g, sum_gx))
  g = dyi * _params(scale, instances)
  xhat = ((xi - sh) - de) * rs
  correction = -rs / jnp.maximum(n, 1) * ((sg if center else 0.0) + xhat * sgx)
  if mask is not None:
    correction = jnp.where(_by_instance(_full_mask(mask, x.shape), instances), correction, 0)
  return (rs * g + correction).reshape(x.shape).astype(x.dtype)


def _backward_4d(x, dy, mask, shift, delta, rstd, count, scale, *, center: bool, instances: int):
  """``(dx, dscale, dbias)``: :func:`backward_sums` then :func:`backward_dx`."""
  sum_g, sum_gx, dscale, dbias = _backward_sums_4d(x, dy, shift, delta, rstd, scale,
                                                   center=center, instances=instances)
  dx = _backward_dx_4d(x, dy, mask, shift, delta, rstd, count, scale, sum_g, sum_gx,
                       center=center, instances=instances)
  return dx, dscale, dbias


# --- the operations on operands in the kernels' shapes ------------------------------


def moments(x, mask, *, layout, center: bool):
  """See :func:`_moments_4d`; statistics in the keep-dims shape."""
  shape = stats_shape(x.shape, layout)
  outs = _moments_4d(_view(x, layout), None if mask is None else _view(mask, layout),
                     center=center)
  return tuple(v.reshape(shape) for v in outs)


def apply(x, shift, delta, rstd, scale, bias, *, layout, instances: int):
  s = [_stats_view(v, x.shape, layout) for v in (shift, delta, rstd)]
  y = _apply_4d(_view(x, layout), *s, _param_view(scale, x.shape, layout),
                _param_view(bias, x.shape, layout), instances=instances)
  return y.reshape(x.shape)


def forward(x, mask, scale, bias, *, layout, epsilon: float, center: bool, instances: int):
  shape = stats_shape(x.shape, layout)
  y, *stats = _forward_4d(_view(x, layout), None if mask is None else _view(mask, layout),
                          _param_view(scale, x.shape, layout),
                          _param_view(bias, x.shape, layout), epsilon=epsilon,
                          center=center, instances=instances)
  return (y.reshape(x.shape),) + tuple(v.reshape(shape) for v in stats)


def backward_sums(x, dy, shift, delta, rstd, scale, *, layout, center: bool, instances: int):
  shape = stats_shape(x.shape, layout)
  s = [_stats_view(v, x.shape, layout) for v in (shift, delta, rstd)]
  sum_g, sum_gx, dscale, dbias = _backward_sums_4d(
      _view(x, layout), _view(dy, layout), *s, _param_view(scale, x.shape, layout),
      center=center, instances=instances)
  param_shape = (instances,) + scale.shape[1:]
  return (sum_g.reshape(shape), sum_gx.reshape(shape), dscale.reshape(param_shape),
          dbias.reshape(param_shape))


def backward_dx(x, dy, mask, shift, delta, rstd, count, scale, sum_g, sum_gx, *, layout,
                center: bool, instances: int):
  s = [_stats_view(v, x.shape, layout) for v in (shift, delta, rstd, count)]
  dx = _backward_dx_4d(_view(x, layout), _view(dy, layout),
                       None if mask is None else _view(mask, layout), *s,
                       _param_view(scale, x.shape, layout),
                       _stats_view(sum_g, x.shape, layout),
                       _stats_view(sum_gx, x.shape, layout), center=center,
                       instances=instances)
  return dx.reshape(x.shape)


def backward(x, dy, mask, shift, delta, rstd, count, scale, *, layout, center: bool,
             instances: int):
  s = [_stats_view(v, x.shape, layout) for v in (shift, delta, rstd, count)]
  dx, dscale, dbias = _backward_4d(_view(x, layout), _view(dy, layout),
                                   None if mask is None else _view(mask, layout), *s,
                                   _param_view(scale, x.shape, layout), center=center,
                                   instances=instances)
  param_shape = (instances,) + scale.shape[1:]
  return dx.reshape(x.shape), dscale.reshape(param_shape), dbias.reshape(param_shape)
