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
