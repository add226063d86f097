"""Public kernel operations on (B, S, G, K) arrays, and :func:`normalize` on any layout."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxnorm.kernels import _ops
from jaxnorm.kernels._geometry import Geometry, geometry

SUPPORTED_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
f32 = jnp.float32


class NormStats(NamedTuple):
  """Per-group statistics of a (B, S, G, K) array, float32 (B, G) each.

  ``mean = shift + delta``: ``shift`` is a value near the group's mean taken from the
  data (the mean of its first valid elements) and ``delta`` the small rest, so that
  ``(x - shift) - delta`` keeps its precision when the mean is large.

  Attributes:
    shift: the per-group shift (no gradient flows through it).
    delta: ``mean - shift``.
    var: the biased variance of the valid elements (``mean(x^2)`` without centring).
    count: the number of valid elements.
  """

  shift: jax.Array
  delta: jax.Array
  var: jax.Array
  count: jax.Array


def _check_x(x, fn: str, name: str = "x") -> jax.Array:
  x = jnp.asarray(x)
  if x.ndim != 4:
    raise ValueError(f"jaxnorm.kernels.{fn}: {name} must be 4-D (B, S, G, K); got shape "
                     f"{tuple(x.shape)}. Use kernels.geometry(shape, reduce_axes) to find "
                     "the view of another layout.")
  if x.dtype not in SUPPORTED_DTYPES:
    raise TypeError(f"jaxnorm.kernels.{fn}: {name} must be float32, bfloat16 or float16; "
                    f"got {x.dtype}. Cast it, or use the pure-JAX path for float64.")
  return x


def _param(p, x, fn: str, name: str, fill: float, ks: int | None) -> jax.Array:
  """``p`` of shape (G, Ks) as float32 (1, G, Ks); None gives a constant ``fill``."""
  g, k = x.shape[2], x.shape[3]
  if p is None:
    return jnp.full((1, g, ks or 1), fill, f32)
  p = jnp.asarray(p)
  if p.ndim != 2 or p.shape[0] != g or p.shape[1] not in (1, k):
    raise ValueError(f"jaxnorm.kernels.{fn}: {name} must have shape (G, 1) or (G, K) = "
                     f"({g}, 1) or ({g}, {k}) for x of shape {tuple(x.shape)}; got "
                     f"{tuple(p.shape)}.")
  return p.astype(f32)[None]


def _mask(mask, x, fn: str) -> jax.Array | None:
  if mask is None:
    return None
  mask = jnp.asarray(mask)
  b, s, g, k = x.shape
  if (mask.ndim != 4 or mask.shape[:2] != (b, s) or mask.shape[2] not in (1, g)
      or mask.shape[3] not in (1, k)):
    raise ValueError(f"jaxnorm.kernels.{fn}: mask must have shape (B, S, 1 or G, 1 or K) "
                     f"for x of shape {tuple(x.shape)}; got {tuple(mask.shape)}.")
  return mask.astype(jnp.bool_)


def _masked(mask):
  return () if mask is None else (mask,)


def norm_moments(x: jax.Array, mask: jax.Array | None = None, *,
                 center: bool = True) -> NormStats:
  r"""Per-group statistics of ``x`` (B, S, G, K) over (S, K), valid elements only.

  .. math::
    n = \sum_{s,k} w, \quad \mu = \frac{1}{n}\sum_{s,k} w\,x, \quad
    \sigma^2 = \frac{1}{n}\sum_{s,k} w\,(x - \mu)^2

  with :math:`w` = ``mask`` (1 when None); with ``center=False``, :math:`\mu = 0`
  (RMS norm: :math:`\sigma^2 = \frac{1}{n}\sum w x^2`). Groups without a valid element
  get mean 0 and variance 0.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxnorm import kernels
    >>> x = jnp.arange(12.0).reshape(1, 3, 1, 4)
    >>> stats = kernels.norm_moments(x)
    >>> float((stats.shift + stats.delta)[0, 0]), float(stats.var[0, 0])
    (5.5, 11.916666984558105)
  """
  x = _check_x(x, "norm_moments")
  mask = _mask(mask, x, "norm_moments")
  spec = _ops.SPECS[mask is not None]["moments"]
  return NormStats(*_ops.call(spec, x, *_masked(mask), center=bool(center),
                              masked=mask is not None))


def norm_apply(x: jax.Array, shift: jax.Array, delta: jax.Array, rstd: jax.Array,
               scale: jax.Array | None, bias: jax.Array | None) -> jax.Array:
  r"""``y = ((x - shift) - delta) * rstd * scale + bias`` in ``x``'s dtype.

  ``shift``, ``delta``, ``rstd`` are float32 (B, G); ``scale``, ``bias`` (G, 1) or
  (G, K), or None.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxnorm import kernels
    >>> x = jnp.arange(8.0).reshape(2, 1, 1, 4)
    >>> s = kernels.norm_moments(x)
    >>> y = kernels.norm_apply(x, s.shift, s.delta, 1 / jnp.sqrt(s.var), None, None)
    >>> [round(float(v), 4) for v in y[0, 0, 0]]
    [-1.3416, -0.4472, 0.4472, 1.3416]
  """
  x = _check_x(x, "norm_apply")
  ks = next((p.shape[-1] for p in (scale, bias) if p is not None), 1)
  scale = _param(scale, x, "norm_apply", "scale", 1.0, ks)
  bias = _param(bias, x, "norm_apply", "bias", 0.0, ks)
  stats = [jnp.asarray(v, f32) for v in (shift, delta, rstd)]
  return _ops.call(_ops.SPECS[False]["apply"], x, *stats, scale, bias)[0]


def norm_forward(x: jax.Array, scale: jax.Array | None, bias: jax.Array | None,
                 mask: jax.Array | None = None, *, epsilon: float,
                 center: bool = True) -> tuple[jax.Array, NormStats]:
  r"""Statistics and normalized output in one call (one read of ``x`` when a group fits
  in cache).

  .. math::
    y = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}}\,\gamma + \beta

  with the statistics of :func:`norm_moments`, :math:`\gamma` = ``scale``,
  :math:`\beta` = ``bias`` ((G, 1) or (G, K), or None), :math:`\epsilon` = ``epsilon``.
  Masked positions are normalized too, with the statistics of the valid ones.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxnorm import kernels
    >>> x = jnp.arange(8.0).reshape(2, 1, 1, 4)
    >>> y, stats = kernels.norm_forward(x, None, None, epsilon=1e-5)
    >>> y.shape, stats.var.shape
    ((2, 1, 1, 4), (2, 1))
  """
  x = _check_x(x, "norm_forward")
  ks = next((p.shape[-1] for p in (scale, bias) if p is not None), 1)
  scale = _param(scale, x, "norm_forward", "scale", 1.0, ks)
  bias = _param(bias, x, "norm_forward", "bias", 0.0, ks)
  mask = _mask(mask, x, "norm_forward")
  spec = _ops.SPECS[mask is not None]["forward"]
  y, *stats = _ops.call(spec, x, *_masked(mask), scale, bias, epsilon=float(epsilon),
                        center=bool(center), masked=mask is not None)
  return y, NormStats(*stats)


def norm_backward_sums(x, dy, stats: NormStats, rstd, scale, *, center: bool = True,
                       ks: int = 1):
  r"""The reductions of the backward pass, over all positions (masked ones included).

  With :math:`g = dy\,\gamma` and :math:`\hat x = (x - \mu)\,r`: per group
  ``sum_g`` :math:`= \sum g` and ``sum_gx`` :math:`= \sum g \hat x`; per parameter
  entry ``dscale`` :math:`= \sum dy\,\hat x` and ``dbias`` :math:`= \sum dy` ((G, Ks),
  Ks from ``scale`` or ``ks``). Across devices, ``psum`` the first two before
  :func:`norm_backward_dx`.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxnorm import kernels
    >>> x = jnp.arange(8.0).reshape(1, 8, 1, 1)
    >>> s = kernels.norm_moments(x)
    >>> sums = kernels.norm_backward_sums(x, jnp.ones_like(x), s, 1 / jnp.sqrt(s.var), None)
    >>> float(sums[0][0, 0]), float(sums[3][0, 0])
    (8.0, 8.0)
  """
  x = _check_x(x, "norm_backward_sums")
  dy = _check_like(dy, x, "norm_backward_sums")
  scale = _param(scale, x, "norm_backward_sums", "scale", 1.0, ks)
  outs = _ops.call(_ops.SPECS[False]["backward_sums"], x, dy, *_stats(stats, rstd)[:3],
                   scale, center=bool(center))
  sum_g, sum_gx, dscale, dbias = outs
  return sum_g, sum_gx, dscale[0], dbias[0]


def norm_backward_dx(x, dy, stats: NormStats, rstd, scale, sum_g, sum_gx,
                     mask: jax.Array | None = None, *, center: bool = True) -> jax.Array:
  r"""``dx`` from the backward sums (:func:`norm_backward_sums`, merged across devices).

  .. math::
    dx = r\,g - w\,\frac{r}{n}\big([\text{center}] \textstyle\sum g
         + \hat x \sum g \hat x\big)

  with :math:`w` = ``mask``, :math:`n` = ``stats.count``, :math:`r` = ``rstd``.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxnorm import kernels
    >>> x = jnp.arange(8.0).reshape(1, 8, 1, 1)
    >>> s = kernels.norm_moments(x); r = 1 / jnp.sqrt(s.var)
    >>> sums = kernels.norm_backward_sums(x, jnp.ones_like(x), s, r, None)
    >>> float(abs(kernels.norm_backward_dx(x, jnp.ones_like(x), s, r, None, *sums[:2])).max())
    0.0
  """
  x = _check_x(x, "norm_backward_dx")
  dy = _check_like(dy, x, "norm_backward_dx")
  scale = _param(scale, x, "norm_backward_dx", "scale", 1.0, None)
  mask = _mask(mask, x, "norm_backward_dx")
  spec = _ops.SPECS[mask is not None]["backward_dx"]
  return _ops.call(spec, x, dy, *_masked(mask), *_stats(stats, rstd), scale,
                   jnp.asarray(sum_g, f32), jnp.asarray(sum_gx, f32), center=bool(center),
                   masked=mask is not None)[0]


def norm_backward(x, dy, stats: NormStats, rstd, scale, mask: jax.Array | None = None, *,
                  center: bool = True, ks: int = 1):
  r"""``(dx, dscale, dbias)`` in one call: :func:`norm_backward_sums` then
  :func:`norm_backward_dx` (reading ``x`` and ``dy`` once when a group fits in cache).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxnorm import kernels
    >>> x = jax.random.normal(jax.random.key(0), (4, 1, 1, 16))
    >>> y, s = kernels.norm_forward(x, None, None, epsilon=1e-5)
    >>> dx, dscale, dbias = kernels.norm_backward(x, jnp.ones_like(x), s,
    ...                                           1 / jnp.sqrt(s.var + 1e-5), None)
    >>> dx.shape, dscale.shape
    ((4, 1, 1, 16), (1, 1))
  """
  x = _check_x(x, "norm_backward")
  dy = _check_like(dy, x, "norm_backward")
  scale = _param(scale, x, "norm_backward", "scale", 1.0, ks)
  mask = _mask(mask, x, "norm_backward")
  spec = _ops.SPECS[mask is not None]["backward"]
  dx, dscale, dbias = _ops.call(spec, x, dy, *_masked(mask), *_stats(stats, rstd), scale,
                                center=bool(center), masked=mask is not None)
  return dx, dscale[0], dbias[0]


def _check_like(dy, x, fn):
  dy = jnp.asarray(dy)
  if dy.shape != x.shape:
    raise ValueError(f"jaxnorm.kernels.{fn}: dy must have x's shape {tuple(x.shape)}; got "
                     f"{tuple(dy.shape)}.")
  return dy.astype(x.dtype)


def _stats(stats: NormStats, rstd) -> tuple[jax.Array, ...]:
  """(shift, delta, rstd, count) as float32 arrays."""
  return tuple(jnp.asarray(v, f32) for v in (stats.shift, stats.delta, rstd, stats.count))


# --- normalize: any layout, with a closed-form backward through the kernels ----------


def supports(x_shape: Sequence[int], reduce_axes: Sequence[int], scale=None, bias=None,
             dtype=jnp.float32) -> Geometry | None:
  """The geometry :func:`normalize` uses for these arguments, or None if it cannot.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxnorm import kernels
    >>> kernels.supports((32, 64), (1,), jnp.ones((1, 64))) is not None
    True
    >>> kernels.supports((32, 64), (1,), jnp.ones((32, 1))) is None   # varies over B
    True
  """
  if jnp.dtype(dtype) not in SUPPORTED_DTYPES:
    return None
  geo = geometry(x_shape, reduce_axes)
  if geo is None or geo.param_layout(scale, bias) is None:
    return None
  return geo


def normalize(x: jax.Array, scale: jax.Array | None, bias: jax.Array | None, *,
              reduce_axes: Sequence[int], epsilon: float, center: bool = True,
              mask: jax.Array | None = None):
  r"""``(y, mean, var, count)``: normalization over ``reduce_axes`` through the kernels.

  .. math::
    y = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}}\,\gamma + \beta

  The same contract as jaxnorm's functional core: ``scale``/``bias`` broadcast against
  ``x`` (constant over the reduced axes that come before a kept axis), ``mask``
  broadcasts to ``x``; ``mean``, ``var`` (float32) and ``count`` have ``x``'s rank with
  size-1 reduced axes and carry no gradient; ``center=False`` gives RMS normalization.
  The backward pass is closed-form (``jax.custom_vjp``) through :func:`norm_backward`;
  derivatives of higher order differentiate the pure-JAX reference.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxnorm import kernels
    >>> x = jax.random.normal(jax.random.key(0), (8, 32))
    >>> y, mean, var, count = kernels.normalize(x, jnp.ones(32), jnp.zeros(32),
    ...                                         reduce_axes=(1,), epsilon=1e-6)
    >>> y.shape, mean.shape, float(count[0, 0])
    ((8, 32), (8, 1), 32.0)
  """
  x = jnp.asarray(x)
  reduce_axes = tuple(sorted(int(a) % x.ndim for a in reduce_axes))
  geo = supports(x.shape, reduce_axes, scale, bias, x.dtype)
  if geo is None:
    raise ValueError(
        f"jaxnorm.kernels.normalize: x.shape={tuple(x.shape)} (dtype {x.dtype}) reduced "
        f"over {reduce_axes} does not fit the kernels' (B, S, G, K) view with these "
        "parameters; check with kernels.supports(...) and use the pure-JAX path.")
  _, ks = geo.param_layout(scale, bias)
  mask4 = geo.mask_to_4d(None if mask is None else jnp.asarray(mask))
  y, mean, var, count = _normalize(x, scale, bias, mask4, geo, float(epsilon), bool(center),
                                   ks)
  return y, lax.stop_gradient(mean), lax.stop_gradient(var), count


def _normalize(x, scale, bias, mask4, geo, epsilon, center, ks):
  return _normalize_core(geo, epsilon, center, ks)(x, scale, bias, mask4)


@functools.cache
def _normalize_core(geo: Geometry, epsilon: float, center: bool, ks: int):
  """The custom-VJP function for one geometry and set of options."""

  @jax.custom_vjp
  def core(x, scale, bias, mask4):
    return forward(x, scale, bias, mask4)[0]

  def forward(x, scale, bias, mask4):
    x4 = geo.to_4d(x)
    scale3, bias3 = geo.param_to_3d(scale, ks), geo.param_to_3d(bias, ks)
    y4, stats = _forward_3d(x4, scale3, bias3, mask4, epsilon, center)
    rstd = lax.rsqrt(stats.var + epsilon)
    outputs = (geo.from_4d(y4), geo.stats_from_2d(stats.shift + stats.delta),
               geo.stats_from_2d(stats.var), geo.stats_from_2d(stats.count))
    return outputs, (x4, scale, bias, mask4, stats, rstd, scale3)

  def backward(residuals, cotangents):
    x4, scale, bias, mask4, stats, rstd, scale3 = residuals
    dy4 = geo.to_4d(cotangents[0]).astype(x4.dtype)
    spec = _ops.SPECS[mask4 is not None]["backward"]
    if scale3 is None:
      scale3 = jnp.ones((1, x4.shape[2], ks), f32)
    dx4, dscale, dbias = _ops.call(spec, x4, dy4, *_masked(mask4), *_stats(stats, rstd),
                                   scale3, center=center, masked=mask4 is not None)
    return (geo.from_4d(dx4),
            None if scale is None else geo.param_from_3d(dscale, scale),
            None if bias is None else geo.param_from_3d(dbias, bias),
            None)

  core.defvjp(forward, backward)
  return core


def _forward_3d(x4, scale3, bias3, mask4, epsilon, center):
  g, ks = x4.shape[2], (scale3 if scale3 is not None else bias3)
  ks = 1 if ks is None else ks.shape[-1]
  scale3 = jnp.ones((1, g, ks), f32) if scale3 is None else scale3
  bias3 = jnp.zeros((1, g, ks), f32) if bias3 is None else bias3
  spec = _ops.SPECS[mask4 is not None]["forward"]
  y, *stats = _ops.call(spec, x4, *_masked(mask4), scale3, bias3, epsilon=epsilon,
                        center=center, masked=mask4 is not None)
  return y, NormStats(*stats)
