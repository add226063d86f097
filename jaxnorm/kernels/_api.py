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
  """Per-group statistics, float32, with ``x``'s rank and size 1 on the S and K runs.

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


def _check_x(x, fn: str, layout) -> tuple[jax.Array, Geometry]:
  """``x`` as an array and its geometry for ``layout`` (4-D (1, 1, 1, 1) by default)."""
  x = jnp.asarray(x)
  if layout is None:
    if x.ndim != 4:
      raise ValueError(f"jaxnorm.kernels.{fn}: x must be 4-D (B, S, G, K) unless layout= "
                       f"names its runs; got shape {tuple(x.shape)}. Use "
                       "kernels.geometry(x.shape, reduce_axes).layout.")
    layout = (1, 1, 1, 1)
  layout = tuple(int(n) for n in layout)
  if len(layout) != 4 or min(layout) < 0 or sum(layout) != x.ndim:
    raise ValueError(f"jaxnorm.kernels.{fn}: layout must be (nb, ns, ng, nk), the number "
                     f"of axes of x in each of B, S, G, K, summing to x.ndim={x.ndim}; got "
                     f"{layout}.")
  if x.dtype not in SUPPORTED_DTYPES:
    raise TypeError(f"jaxnorm.kernels.{fn}: x must be float32, bfloat16 or float16; got "
                    f"{x.dtype}. Cast it, or use the pure-JAX path for float64.")
  nb, ns, ng, _ = layout
  reduce_axes = tuple(range(nb, nb + ns)) + tuple(range(nb + ns + ng, x.ndim))
  return x, Geometry(tuple(x.shape), reduce_axes, layout)


def _param(p, geo: Geometry, fn: str, name: str, fill: float, ks: int) -> jax.Array:
  """``p`` (broadcastable to x, constant over B and S) as float32 (1, kernels' shape)."""
  if p is None:
    return jnp.full((1,) + geo.param_shape(ks), fill, f32)
  p = jnp.asarray(p)
  try:
    jnp.broadcast_shapes(p.shape, geo.shape)
  except ValueError:
    p = None
  if p is None or geo.param_ks(p) is None:
    raise ValueError(f"jaxnorm.kernels.{fn}: {name} must broadcast to x.shape={geo.shape} "
                     f"and be constant over the B and S axes of layout={geo.layout}.")
  return geo.param(p, ks)[None]


def _ks(geo: Geometry, *params, per_k: bool = False) -> int:
  ks = geo.param_ks(*(p for p in params if p is not None and jnp.ndim(p) <= len(geo.shape)))
  return geo.dims[3] if per_k or ks not in (None, 1) else 1


def _mask(mask, geo: Geometry, fn: str) -> jax.Array | None:
  if mask is None:
    return None
  mask = jnp.asarray(mask)
  try:
    jnp.broadcast_shapes(mask.shape, geo.shape)
  except ValueError:
    raise ValueError(f"jaxnorm.kernels.{fn}: mask.shape={tuple(mask.shape)} does not "
                     f"broadcast to x.shape={geo.shape}.") from None
  return geo.mask(mask)


def _masked(mask):
  return () if mask is None else (mask,)


def _stat_arrays(geo: Geometry, *values) -> list[jax.Array]:
  return [jnp.broadcast_to(jnp.asarray(v, f32), geo.stats_shape) for v in values]


def norm_moments(x: jax.Array, mask: jax.Array | None = None, *, layout=None,
                 center: bool = True) -> NormStats:
  r"""Per-group statistics of ``x`` over the S and K runs, valid elements only.

  .. math::
    n = \sum_{s,k} w, \quad \mu = \frac{1}{n}\sum_{s,k} w\,x, \quad
    \sigma^2 = \frac{1}{n}\sum_{s,k} w\,(x - \mu)^2

  with :math:`w` = ``mask`` (1 when None); with ``center=False``, :math:`\mu = 0`
  (RMS norm: :math:`\sigma^2 = \frac{1}{n}\sum w x^2`). Groups without a valid element
  get mean 0 and variance 0. ``layout=(nb, ns, ng, nk)`` names the runs of ``x``'s axes
  (default: ``x`` is 4-D (B, S, G, K)); the statistics have ``x``'s rank with size 1 on
  S and K.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxnorm import kernels
    >>> x = jnp.arange(12.0).reshape(1, 3, 1, 4)
    >>> stats = kernels.norm_moments(x)
    >>> float((stats.shift + stats.delta)[0, 0, 0, 0]), float(stats.var[0, 0, 0, 0])
    (5.5, 11.916666984558105)
  """
  x, geo = _check_x(x, "norm_moments", layout)
  mask = _mask(mask, geo, "norm_moments")
  spec = _ops.SPECS[mask is not None]["moments"]
  return NormStats(*_ops.call(spec, x, *_masked(mask), layout=geo.layout,
                              center=bool(center), masked=mask is not None))


def norm_apply(x: jax.Array, shift: jax.Array, delta: jax.Array, rstd: jax.Array,
               scale: jax.Array | None, bias: jax.Array | None, *, layout=None) -> jax.Array:
  r"""``y = ((x - shift) - delta) * rstd * scale + bias`` in ``x``'s dtype.

  ``shift``, ``delta``, ``rstd`` are per-group statistics (keep-dims shape);
  ``scale``, ``bias`` broadcast to ``x`` and are constant over the B and S runs, or None.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxnorm import kernels
    >>> x = jnp.arange(8.0).reshape(2, 1, 1, 4)
    >>> s = kernels.norm_moments(x)
    >>> y = kernels.norm_apply(x, s.shift, s.delta, 1 / jnp.sqrt(s.var), None, None)
    >>> [round(float(v), 4) for v in y[0, 0, 0]]
    [-1.3416, -0.4472, 0.4472, 1.3416]
  """
  x, geo = _check_x(x, "norm_apply", layout)
  ks = _ks(geo, scale, bias)
  scale = _param(scale, geo, "norm_apply", "scale", 1.0, ks)
  bias = _param(bias, geo, "norm_apply", "bias", 0.0, ks)
  return _ops.call(_ops.SPECS[False]["apply"], x, *_stat_arrays(geo, shift, delta, rstd),
                   scale, bias, layout=geo.layout)[0]


def norm_forward(x: jax.Array, scale: jax.Array | None, bias: jax.Array | None,
                 mask: jax.Array | None = None, *, epsilon: float, layout=None,
                 center: bool = True) -> tuple[jax.Array, NormStats]:
  r"""Statistics and normalized output in one call (one read of ``x`` when a group fits
  in cache).

  .. math::
    y = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}}\,\gamma + \beta

  with the statistics of :func:`norm_moments`, :math:`\gamma` = ``scale``,
  :math:`\beta` = ``bias`` (as in :func:`norm_apply`), :math:`\epsilon` = ``epsilon``.
  Masked positions are normalized too, with the statistics of the valid ones.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxnorm import kernels
    >>> x = jnp.arange(8.0).reshape(2, 4)                   # layer norm: B = 2, K = 4
    >>> y, stats = kernels.norm_forward(x, None, None, epsilon=1e-5, layout=(1, 0, 0, 1))
    >>> y.shape, stats.var.shape
    ((2, 4), (2, 1))
  """
  x, geo = _check_x(x, "norm_forward", layout)
  ks = _ks(geo, scale, bias)
  scale = _param(scale, geo, "norm_forward", "scale", 1.0, ks)
  bias = _param(bias, geo, "norm_forward", "bias", 0.0, ks)
  mask = _mask(mask, geo, "norm_forward")
  spec = _ops.SPECS[mask is not None]["forward"]
  y, *stats = _ops.call(spec, x, *_masked(mask), scale, bias, layout=geo.layout,
                        epsilon=float(epsilon), center=bool(center),
                        masked=mask is not None)
  return y, NormStats(*stats)


def norm_backward_sums(x, dy, stats: NormStats, rstd, scale, *, layout=None,
                       center: bool = True, per_k: bool = False):
  r"""The reductions of the backward pass, over all positions (masked ones included).

  With :math:`g = dy\,\gamma` and :math:`\hat x = (x - \mu)\,r`: per group
  ``sum_g`` :math:`= \sum g` and ``sum_gx`` :math:`= \sum g \hat x`; per parameter
  entry ``dscale`` :math:`= \sum dy\,\hat x` and ``dbias`` :math:`= \sum dy` (in the
  kernels' parameter shape: varying along K as ``scale`` does, or when ``per_k``).
  Across devices, ``psum`` the first two before :func:`norm_backward_dx`.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxnorm import kernels
    >>> x = jnp.arange(8.0).reshape(1, 8, 1, 1)
    >>> s = kernels.norm_moments(x)
    >>> sums = kernels.norm_backward_sums(x, jnp.ones_like(x), s, 1 / jnp.sqrt(s.var), None)
    >>> float(sums[0].ravel()[0]), float(sums[3].ravel()[0])
    (8.0, 8.0)
  """
  x, geo = _check_x(x, "norm_backward_sums", layout)
  dy = _check_like(dy, x, "norm_backward_sums")
  scale = _param(scale, geo, "norm_backward_sums", "scale", 1.0, _ks(geo, scale, per_k=per_k))
  shift, delta, rstd = _stat_arrays(geo, stats.shift, stats.delta, rstd)
  sum_g, sum_gx, dscale, dbias = _ops.call(
      _ops.SPECS[False]["backward_sums"], x, dy, shift, delta, rstd, scale,
      layout=geo.layout, center=bool(center))
  return sum_g, sum_gx, dscale[0], dbias[0]


def norm_backward_dx(x, dy, stats: NormStats, rstd, scale, sum_g, sum_gx,
                     mask: jax.Array | None = None, *, layout=None,
                     center: bool = True) -> jax.Array:
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
  x, geo = _check_x(x, "norm_backward_dx", layout)
  dy = _check_like(dy, x, "norm_backward_dx")
  scale = _param(scale, geo, "norm_backward_dx", "scale", 1.0, _ks(geo, scale))
  mask = _mask(mask, geo, "norm_backward_dx")
  spec = _ops.SPECS[mask is not None]["backward_dx"]
  stat_values = _stat_arrays(geo, stats.shift, stats.delta, rstd, stats.count, sum_g, sum_gx)
  return _ops.call(spec, x, dy, *_masked(mask), *stat_values[:4], scale, *stat_values[4:],
                   layout=geo.layout, center=bool(center), masked=mask is not None)[0]


def norm_backward(x, dy, stats: NormStats, rstd, scale, mask: jax.Array | None = None, *,
                  layout=None, center: bool = True, per_k: bool = False):
  r"""``(dx, dscale, dbias)`` in one call: :func:`norm_backward_sums` then
  :func:`norm_backward_dx` (reading ``x`` and ``dy`` once when a group fits in cache).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxnorm import kernels
    >>> x = jax.random.normal(jax.random.key(0), (4, 16))
    >>> y, s = kernels.norm_forward(x, None, None, epsilon=1e-5, layout=(1, 0, 0, 1))
    >>> dx, dscale, dbias = kernels.norm_backward(
    ...     x, jnp.ones_like(x), s, 1 / jnp.sqrt(s.var + 1e-5), None, layout=(1, 0, 0, 1),
    ...     per_k=True)
    >>> dx.shape, dscale.shape
    ((4, 16), (1, 16))
  """
  x, geo = _check_x(x, "norm_backward", layout)
  dy = _check_like(dy, x, "norm_backward")
  scale = _param(scale, geo, "norm_backward", "scale", 1.0, _ks(geo, scale, per_k=per_k))
  mask = _mask(mask, geo, "norm_backward")
  spec = _ops.SPECS[mask is not None]["backward"]
  dx, dscale, dbias = _ops.call(
      spec, x, dy, *_masked(mask), *_stat_arrays(geo, stats.shift, stats.delta, rstd,
                                                  stats.count),
      scale, layout=geo.layout, center=bool(center), masked=mask is not None)
  return dx, dscale[0], dbias[0]


def _check_like(dy, x, fn):
  dy = jnp.asarray(dy)
  if dy.shape != x.shape:
    raise ValueError(f"jaxnorm.kernels.{fn}: dy must have x's shape {tuple(x.shape)}; got "
                     f"{tuple(dy.shape)}.")
  return dy.astype(x.dtype)


# --- normalize: any layout, with a closed-form backward through the kernels ----------


def supports(x_shape: Sequence[int], reduce_axes: Sequence[int], scale=None, bias=None,
             dtype=jnp.float32) -> Geometry | None:
  """The geometry :func:`normalize` uses for these arguments, or None if it cannot.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxnorm import kernels
    >>> kernels.supports((32, 64), (1,), jnp.ones((1, 64))) is not None
    True
    >>> kernels.supports((8, 4, 16), (1,), jnp.ones((8, 1, 16))) is None  # varies over B
    True
  """
  if jnp.dtype(dtype) not in SUPPORTED_DTYPES:
    return None
  geo = geometry(x_shape, reduce_axes, params=(scale, bias))
  if geo is None or geo.param_ks(scale, bias) is None:
    return None
  return geo


def normalize(x: jax.Array, scale: jax.Array | None, bias: jax.Array | None, *,
              reduce_axes: Sequence[int], epsilon: float, center: bool = True,
              mask: jax.Array | None = None):
  r"""``(y, mean, var, count)``: normalization over ``reduce_axes`` through the kernels.

  .. math::
    y = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}}\,\gamma + \beta

  The contract of jaxnorm's functional core: ``scale``/``bias`` broadcast against ``x``
  (constant over the reduced axes before a kept axis, see :func:`supports`), ``mask``
  broadcasts to ``x``; ``mean``, ``var`` (float32) and ``count`` have ``x``'s rank
  with size-1 reduced axes and carry no gradient; ``center=False`` gives RMS
  normalization (mean 0, ``var`` the mean square). The backward pass is closed-form
  (``jax.custom_vjp``) through :func:`norm_backward`; derivatives of higher order
  differentiate the pure-JAX reference.

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
        f"over {reduce_axes} does not fit the kernels' B, S, G, K runs with these "
        "parameters; check with kernels.supports(...) and use the pure-JAX path.")
  ks = geo.param_ks(scale, bias)
  mask = geo.mask(None if mask is None else jnp.asarray(mask))
  y, mean, var, count = _normalize_core(geo, float(epsilon), bool(center), ks)(
      x, scale, bias, mask)
  return y, lax.stop_gradient(mean), lax.stop_gradient(var), count


@functools.cache
def _normalize_core(geo: Geometry, epsilon: float, center: bool, ks: int):
  """The custom-VJP normalization for one geometry and set of options."""

  def params(scale, bias):
    scale = geo.param(scale, ks)
    bias = geo.param(bias, ks)
    shape = (1,) + geo.param_shape(ks)
    return (jnp.ones(shape, f32) if scale is None else scale[None],
            jnp.zeros(shape, f32) if bias is None else bias[None])

  def forward(x, scale, bias, mask):
    scale_k, bias_k = params(scale, bias)
    spec = _ops.SPECS[mask is not None]["forward"]
    y, shift, delta, var, count = _ops.call(
        spec, x, *_masked(mask), scale_k, bias_k, layout=geo.layout, epsilon=epsilon,
        center=center, masked=mask is not None)
    rstd = lax.rsqrt(var + epsilon)
    return (y, shift + delta, var, count), (x, scale, bias, mask, shift, delta, rstd, count,
                                            scale_k)

  @jax.custom_vjp
  def core(x, scale, bias, mask):
    return forward(x, scale, bias, mask)[0]

  def backward(residuals, cotangents):
    x, scale, bias, mask, shift, delta, rstd, count, scale_k = residuals
    dy = cotangents[0].astype(x.dtype)
    spec = _ops.SPECS[mask is not None]["backward"]
    dx, dscale, dbias = _ops.call(spec, x, dy, *_masked(mask), shift, delta, rstd, count,
                                  scale_k, layout=geo.layout, center=center,
                                  masked=mask is not None)
    return (dx,
            None if scale is None else geo.param_cotangent(dscale[0], scale),
            None if bias is None else geo.param_cotangent(dbias[0], bias),
            None)

  core.defvjp(forward, backward)
  return core
