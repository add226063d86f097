"""The kernel operations as JAX functions: jit, vmap, grad, sharding, kernel or pure JAX.

Each operation is built the same way, from the outside in:

1. ``jax.custom_vjp`` whose backward pass is the VJP of the pure-JAX reference
   (``_reference``), so every operation is differentiable to any order;
2. ``jax.custom_batching.custom_vmap`` whose rule makes the vmapped axis one more axis
   of the B run (one kernel call for the whole batch; per-example parameters become
   per-instance rows);
3. ``lax.platform_dependent``: the FFI kernel when lowered for the CPU, the reference
   elsewhere; only the reference when :func:`jaxnorm.kernels.enabled` is False;
4. ``custom_partitioning`` (``_sharding``): under ``jax.jit`` with sharded operands, one
   kernel call per shard, statistics merged across shards in JAX.

Operands are in the kernels' shapes (see ``_geometry``); ``layout`` and the options are
static.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxnorm.kernels import _library, _reference, _sharding
from jaxnorm.kernels._geometry import stats_shape

f32 = jnp.float32

# Kinds of operands and results, for the vmap rule:
#   "data":  x's rank, starting with the B run (x, dy, masks, per-group statistics)
#   "param": a row axis P in {1, instances}, then x's rank (scale, bias)
#   "per_instance": a row axis of size instances, then x's rank (parameter cotangents)
_DATA, _PARAM, _PER_INSTANCE = "data", "param", "per_instance"


class _Spec:
  """An operation: operand/result kinds, the kernel, its sharded form and the reference.

  ``sharded(reduced_axes, param_axes, *operands, **statics)`` is the per-shard
  computation (kernel calls and collectives) when S or K are split across the mesh
  axes ``reduced_axes`` and parameter cotangents must be summed over ``param_axes``.
  """

  def __init__(self, name: str, masked: bool, in_kinds: Sequence[str],
               out_kinds: Sequence[str], kernel: Callable, sharded: Callable,
               reference: Callable):
    self.name, self.masked = name, masked
    self.in_kinds, self.out_kinds = tuple(in_kinds), tuple(out_kinds)
    self.kernel, self.sharded, self.reference = kernel, sharded, reference


def _fold(arg, batched: bool, kind: str, size: int, instances: int):
  """Makes a vmapped axis (leading, ``size``) part of the operand for the batched call."""
  if kind == _DATA:  # the new axis becomes the first axis of the B run
    return arg if batched else jnp.broadcast_to(arg, (size,) + arg.shape)
  # Parameters (P, ...) with P in {1, I}: rows (P', 1, ...) with P' in {1, size * I}.
  if not batched:
    if arg.shape[0] == 1:
      return arg[:, None]
    arg = jnp.broadcast_to(arg, (size,) + arg.shape)
  elif arg.shape[1] == 1 and instances > 1:
    arg = jnp.broadcast_to(arg, (size, instances) + arg.shape[2:])
  return arg.reshape((-1, 1) + arg.shape[2:])


def _unfold(out, kind: str, size: int):
  if kind != _PER_INSTANCE:
    return out
  # (size * I, 1, ...) -> (size, I, ...)
  return out.reshape((size, out.shape[0] // size) + out.shape[2:])


@functools.cache
def _operation(spec: _Spec, statics: tuple, layout: tuple, instances: int,
               use_kernel: bool) -> Callable:
  """The differentiable, batchable operation for fixed static arguments."""
  kwargs = dict(statics, layout=layout, instances=instances)

  def reference(*args):
    return tuple(spec.reference(*args, **kwargs))

  def kernel(*args):
    return spec.kernel(*args, **kwargs)

  def sharded(reduced, param_axes, *args):
    return spec.sharded(reduced, param_axes, *args, **kwargs)

  partitioned = _sharding.partitioned(spec.name, spec.masked, layout, instances, kernel,
                                      sharded)

  def compute(*args):
    if not use_kernel or any(n == 0 for n in args[0].shape):
      return reference(*args)
    return tuple(lax.platform_dependent(*args, cpu=partitioned, default=reference))

  batched = jax.custom_batching.custom_vmap(compute)

  @batched.def_vmap
  def _rule(axis_size, in_batched, *args):
    folded = [_fold(a, b, kind, axis_size, instances)
              for a, b, kind in zip(args, in_batched, spec.in_kinds)]
    new_layout = (layout[0] + 1,) + tuple(layout[1:])
    outs = _operation(spec, statics, new_layout, axis_size * instances, use_kernel)(*folded)
    return (tuple(_unfold(o, kind, axis_size) for o, kind in zip(outs, spec.out_kinds)),
            (True,) * len(outs))

  differentiable = jax.custom_vjp(batched)

  def fwd(*args):
    return batched(*args), args

  def bwd(args, cotangents):
    _, vjp = jax.vjp(reference, *args)
    return tuple(None if not jnp.issubdtype(a.dtype, jnp.floating) else ct
                 for a, ct in zip(args, vjp(tuple(cotangents))))

  differentiable.defvjp(fwd, bwd)
  # One compiled program also when called outside jax.jit (not one per primitive).
  return jax.jit(differentiable)


def call(spec: _Spec, *args, layout: Sequence[int], **statics):
  """Runs ``spec`` on ``args`` (one problem: instances = 1)."""
  use_kernel = _library.enabled()
  return _operation(spec, tuple(sorted(statics.items())), tuple(layout), 1,
                    use_kernel)(*args)


# --- the FFI calls -------------------------------------------------------------------


def _stat(x, layout):
  return jax.ShapeDtypeStruct(stats_shape(x.shape, layout), f32)


def _like(x):
  return jax.ShapeDtypeStruct(x.shape, x.dtype)


def _per_instance(param, instances):
  return jax.ShapeDtypeStruct((instances,) + param.shape[1:], f32)


def _ffi(target, results, *args, layout, instances, **attrs):
  attrs = {k: (np.float32(v) if isinstance(v, float) else v) for k, v in attrs.items()}
  layout = np.asarray(tuple(layout) + (instances,), np.int64)
  return tuple(jax.ffi.ffi_call(target, results)(*args, layout=layout, **attrs))


def _split_mask(args, masked):
  """``(mask, rest)``: the mask operand when ``masked``, else a 'no mask' placeholder."""
  # Built inside the traced function (not a captured constant, which
  # custom_partitioning does not allow).
  return (args[0], args[1:]) if masked else (jnp.zeros((1,), jnp.bool_), args)


def _kernel_moments(x, *rest, layout, center, masked, instances):
  mask, _ = _split_mask(rest, masked)
  return _ffi("jaxnorm_norm_moments", (_stat(x, layout),) * 4, x, mask, layout=layout,
              instances=instances, center=center, masked=masked)


def _reference_moments(x, *rest, layout, center, masked, instances):
  del instances
  mask, _ = _split_mask(rest, masked)
  return _reference.moments(x, mask if masked else None, layout=layout, center=center)


def _kernel_apply(x, shift, delta, rstd, scale, bias, *, layout, instances):
  return _ffi("jaxnorm_norm_apply", (_like(x),), x, shift, delta, rstd, scale, bias,
              layout=layout, instances=instances)


def _reference_apply(x, shift, delta, rstd, scale, bias, *, layout, instances):
  return (_reference.apply(x, shift, delta, rstd, scale, bias, layout=layout,
                           instances=instances),)


def _kernel_forward(x, *rest, layout, epsilon, center, masked, instances):
  mask, (scale, bias) = _split_mask(rest, masked)
  return _ffi("jaxnorm_norm_forward", (_like(x),) + (_stat(x, layout),) * 4, x, mask, scale,
              bias, layout=layout, instances=instances, center=center, masked=masked,
              epsilon=epsilon)


def _reference_forward(x, *rest, layout, epsilon, center, masked, instances):
  mask, (scale, bias) = _split_mask(rest, masked)
  return _reference.forward(x, mask if masked else None, scale, bias, layout=layout,
                            epsilon=epsilon, center=center, instances=instances)


def _kernel_backward_sums(x, dy, shift, delta, rstd, scale, *, layout, center, instances):
  stat = _stat(x, layout)
  param = _per_instance(scale, instances)
  return _ffi("jaxnorm_norm_backward_sums", (stat, stat, param, param), x, dy, shift, delta,
              rstd, scale, layout=layout, instances=instances, center=center)


def _reference_backward_sums(x, dy, shift, delta, rstd, scale, *, layout, center, instances):
  return _reference.backward_sums(x, dy, shift, delta, rstd, scale, layout=layout,
                                  center=center, instances=instances)


def _kernel_backward_dx(x, dy, *rest, layout, center, masked, instances):
  mask, rest = _split_mask(rest, masked)
  return _ffi("jaxnorm_norm_backward_dx", (_like(x),), x, dy, mask, *rest, layout=layout,
              instances=instances, center=center, masked=masked)


def _reference_backward_dx(x, dy, *rest, layout, center, masked, instances):
  mask, rest = _split_mask(rest, masked)
  return (_reference.backward_dx(x, dy, mask if masked else None, *rest, layout=layout,
                                 center=center, instances=instances),)


def _kernel_backward(x, dy, *rest, layout, center, masked, instances):
  mask, rest = _split_mask(rest, masked)
  param = _per_instance(rest[-1], instances)
  return _ffi("jaxnorm_norm_backward", (_like(x), param, param), x, dy, mask, *rest,
              layout=layout, instances=instances, center=center, masked=masked)


def _reference_backward(x, dy, *rest, layout, center, masked, instances):
  mask, rest = _split_mask(rest, masked)
  return _reference.backward(x, dy, mask if masked else None, *rest, layout=layout,
                             center=center, instances=instances)


# --- per-shard computations under sharding (see _sharding) ----------------------------


def _psum(value, axes):
  return lax.psum(value, axes) if axes else value


def _sharded_moments(reduced, param_axes, x, *rest, layout, center, masked, instances):
  del param_axes
  outs = _kernel_moments(x, *rest, layout=layout, center=center, masked=masked,
                         instances=instances)
  return _sharding.merge_moments(*outs, reduced, center=center)


def _sharded_apply(reduced, param_axes, *args, layout, instances):
  del reduced, param_axes
  return _kernel_apply(*args, layout=layout, instances=instances)


def _sharded_forward(reduced, param_axes, x, *rest, layout, epsilon, center, masked,
                     instances):
  del param_axes
  if not reduced:
    return _kernel_forward(x, *rest, layout=layout, epsilon=epsilon, center=center,
                           masked=masked, instances=instances)
  mask, (scale, bias) = _split_mask(rest, masked)
  shift, delta, var, count = _sharded_moments(
      reduced, (), x, *((mask,) if masked else ()), layout=layout, center=center,
      masked=masked, instances=instances)
  y, = _kernel_apply(x, shift, delta, lax.rsqrt(var + epsilon), scale, bias,
                     layout=layout, instances=instances)
  return y, shift, delta, var, count


def _sharded_backward_sums(reduced, param_axes, *args, layout, center, instances):
  sum_g, sum_gx, dscale, dbias = _kernel_backward_sums(*args, layout=layout, center=center,
                                                       instances=instances)
  return (_psum(sum_g, reduced), _psum(sum_gx, reduced), _psum(dscale, param_axes),
          _psum(dbias, param_axes))


def _sharded_backward_dx(reduced, param_axes, *args, layout, center, masked, instances):
  del reduced, param_axes
  return _kernel_backward_dx(*args, layout=layout, center=center, masked=masked,
                             instances=instances)


def _sharded_backward(reduced, param_axes, x, dy, *rest, layout, center, masked, instances):
  if not reduced:
    dx, dscale, dbias = _kernel_backward(x, dy, *rest, layout=layout, center=center,
                                         masked=masked, instances=instances)
    return dx, _psum(dscale, param_axes), _psum(dbias, param_axes)
  mask, (shift, delta, rstd, count, scale) = _split_mask(rest, masked)
  sum_g, sum_gx, dscale, dbias = _sharded_backward_sums(
      reduced, param_axes, x, dy, shift, delta, rstd, scale, layout=layout, center=center,
      instances=instances)
  dx, = _kernel_backward_dx(x, dy, *((mask,) if masked else ()), shift, delta, rstd, count,
                            scale, sum_g, sum_gx, layout=layout, center=center,
                            masked=masked, instances=instances)
  return dx, dscale, dbias


def _specs(masked: bool) -> dict[str, _Spec]:
  mask_kinds = (_DATA,) if masked else ()
  return {
      "moments": _Spec("moments", masked, (_DATA,) + mask_kinds, (_DATA,) * 4,
                       _kernel_moments, _sharded_moments, _reference_moments),
      "apply": _Spec("apply", False, (_DATA,) * 4 + (_PARAM,) * 2, (_DATA,),
                     _kernel_apply, _sharded_apply, _reference_apply),
      "forward": _Spec("forward", masked, (_DATA,) + mask_kinds + (_PARAM,) * 2,
                       (_DATA,) * 5, _kernel_forward, _sharded_forward, _reference_forward),
      "backward_sums": _Spec("backward_sums", False, (_DATA,) * 5 + (_PARAM,),
                             (_DATA, _DATA, _PER_INSTANCE, _PER_INSTANCE),
                             _kernel_backward_sums, _sharded_backward_sums,
                             _reference_backward_sums),
      "backward_dx": _Spec("backward_dx", masked,
                           (_DATA, _DATA) + mask_kinds + (_DATA,) * 4 + (_PARAM,)
                           + (_DATA,) * 2, (_DATA,), _kernel_backward_dx,
                           _sharded_backward_dx, _reference_backward_dx),
      "backward": _Spec("backward", masked,
                        (_DATA, _DATA) + mask_kinds + (_DATA,) * 4 + (_PARAM,),
                        (_DATA, _PER_INSTANCE, _PER_INSTANCE), _kernel_backward,
                        _sharded_backward, _reference_backward),
  }


SPECS = {True: _specs(True), False: _specs(False)}
