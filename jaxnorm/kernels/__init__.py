"""Fused CPU kernels for the normalizations, through the XLA FFI, with a pure-JAX path.

The kernels (C++, ``csrc/``) are built when jaxnorm is installed and loaded with
ctypes; :func:`enabled` is the one place that decides whether they are used
(``JAXNORM_KERNELS=auto|1|0``, see :func:`status`). Each operation runs the kernel when
lowered for the CPU and its pure-JAX reference elsewhere (``lax.platform_dependent``),
batches under ``jax.vmap`` into one kernel call, and is differentiable (to any order,
through the reference).

The kernels see ``x`` as (B, S, G, K) with statistics per (b, g) over (s, k)
(:func:`geometry`). :func:`normalize` takes any layout that fits and returns
``(y, mean, var, count)`` with a closed-form backward pass; the operations
:func:`norm_moments`, :func:`norm_apply`, :func:`norm_forward`,
:func:`norm_backward_sums`, :func:`norm_backward_dx` and :func:`norm_backward` are its
parts, for callers that merge statistics across devices in between.

Plugging into the functional core (``_normalize(x, scale, bias, mask, reduce_axes,
epsilon, axis_name, axis_index_groups, center) -> (y, mean, var, count)``):

- ``geo = kernels.supports(x.shape, reduce_axes, scale, bias, x.dtype)``; use the kernels
  when ``kernels.enabled() and geo is not None``, else the pure-JAX path.
- Without ``axis_name``: ``kernels.normalize(x, scale, bias, reduce_axes=reduce_axes,
  epsilon=epsilon, center=center, mask=mask)`` returns exactly ``_normalize``'s outputs
  (keep-dims statistics, no gradient through them) with its own closed-form VJP.
- With ``axis_name`` (``shard_map``/``pmap``), per shard, with ``layout = geo.layout``,
  ``ks = geo.param_ks(scale, bias)``, parameters as ``geo.param(p, ks)`` and the mask as
  ``geo.mask(mask)``: forward ``norm_moments`` -> merge (count, shift + delta, var *
  count) exactly across ``axis_name`` (a common shift, as ``_sharding.merge_moments``)
  -> ``rstd = rsqrt(var + epsilon)`` -> ``norm_apply``; residuals ``(x, mask, shift,
  delta, rstd, count)``; backward ``norm_backward_sums`` -> ``psum`` of ``sum_g`` and
  ``sum_gx`` over ``axis_name`` -> ``norm_backward_dx``; ``dscale``, ``dbias`` back to
  the parameters' shapes with ``geo.param_cotangent``.
"""

from jaxnorm.kernels._api import (
    SUPPORTED_DTYPES, NormStats, norm_apply, norm_backward, norm_backward_dx,
    norm_backward_sums, norm_forward, norm_moments, normalize, supports)
from jaxnorm.kernels._geometry import Geometry, geometry
from jaxnorm.kernels._library import Status, enabled, status

__all__ = [
    "Geometry", "NormStats", "SUPPORTED_DTYPES", "Status", "enabled", "geometry",
    "norm_apply", "norm_backward", "norm_backward_dx", "norm_backward_sums",
    "norm_forward", "norm_moments", "normalize", "status", "supports",
]
