"""The kernel operations as JAX functions: jit, vmap, grad, CPU kernel or pure JAX.

Each operation is built the same way, from the outside in:

1. ``jax.custom_vjp`` whose backward pass is the VJP of the pure-JAX reference
   (``_reference``), so every operation is differentiable to any order;
2. ``jax.custom_batching.custom_vmap`` whose rule folds the vmapped axis into the
   kernels' B axis (one kernel call for the whole batch; per-example parameters become
   per-instance rows);
3. ``lax.platform_dependent``: the FFI kernel when lowered for the CPU, the reference
   elsewhere; only the reference when :func:`jaxnorm.kernels.enabled` is False.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxnorm.kernels import _library, _reference

f32 = jnp.float32

# Kinds of operands and results, for the vmap rule:
#   "data":  leading axis B (x, dy, masks, per-group statistics)
#   "param": leading axis P in {1, instances} (scale, bias)
#   "per_instance": leading axis = instances (parameter cotangents)
_DATA, _PARAM, _PER_INSTANCE = "data", "param", "per_instance"


class _Spec:
  """An operation: its FFI target, operand/result kinds and the two implementations."""

  def __init__(self, target: str, in_kinds: Sequence[str], out_kinds: Sequence[str],
               kernel: Callable, reference: Callable):
    self.target, self.in_kinds, self.out_kinds = target, tuple(in_kinds), tuple(out_kinds)
    self.kernel, self.reference = kernel, reference


def _fold(arg, batched: bool, kind: str, size: int, instances: int):
  """Moves a vmapped axis (leading, ``size``) into the operand's own leading axis."""
  if kind == _DATA:
    if not batched:
      arg = jnp.broadcast_to(arg, (size,) + arg.shape)
    return arg.reshape((size * arg.shape[1],) + arg.shape[2:])
  # Parameters: (P, G, Ks) with P in {1, instances}; the result has P in {1, size * I}.
  if not batched:
    if arg.shape[0] == 1:
      return arg
    arg = jnp.broadcast_to(arg, (size,) + arg.shape)
  elif arg.shape[1] == 1 and instances > 1:
    arg = jnp.broadcast_to(arg, (size, instances) + arg.shape[2:])
  return arg.reshape((-1,) + arg.shape[2:])


def _unfold(out, size: int):
  return out.reshape((size, out.shape[0] // size) + out.shape[1:])


@functools.cache
def _operation(spec: _Spec, statics: tuple, instances: int, use_kernel: bool) -> Callable:
  """The differentiable, batchable operation for fixed static arguments."""
  kwargs = dict(statics)

  def reference(*args):
    return spec.reference(*args, instances=instances, **kwargs)

  def kernel(*args):
    return spec.kernel(*args, instances=instances, **kwargs)

  def compute(*args):
    if not use_kernel:
      return tuple(reference(*args))
    return tuple(lax.platform_dependent(*args, cpu=kernel, default=reference))

  batched = jax.custom_batching.custom_vmap(compute)

  @batched.def_vmap
  def _rule(axis_size, in_batched, *args):
    folded = [_fold(a, b, kind, axis_size, instances)
              for a, b, kind in zip(args, in_batched, spec.in_kinds)]
    outs = _operation(spec, statics, axis_size * instances, use_kernel)(*folded)
    return tuple(_unfold(o, axis_size) for o in outs), (True,) * len(outs)

  differentiable = jax.custom_vjp(batched)

  def fwd(*args):
    return batched(*args), args

  def bwd(args, cotangents):
    _, vjp = jax.vjp(reference, *args)
    return tuple(None if not jnp.issubdtype(a.dtype, jnp.floating) else ct
                 for a, ct in zip(args, vjp(tuple(cotangents))))

  differentiable.defvjp(fwd, bwd)
  return differentiable


def call(spec: _Spec, *args, **statics):
  """Runs ``spec`` on ``args`` (one problem: instances = 1)."""
  use_kernel = _library.enabled()
  return _operation(spec, tuple(sorted(statics.items())), 1, use_kernel)(*args)


# --- the FFI calls -------------------------------------------------------------------

_NO_MASK = np.zeros((1, 1, 1, 1), np.bool_)


def _stat(x):
  return jax.ShapeDtypeStruct((x.shape[0], x.shape[2]), f32)


def _like(x):
  return jax.ShapeDtypeStruct(x.shape, x.dtype)


def _per_instance(param, instances):
  return jax.ShapeDtypeStruct((instances,) + param.shape[1:], f32)


def _ffi(target, results, *args, **attrs):
  attrs = {k: (np.int64(v) if isinstance(v, int) and not isinstance(v, bool) else
               np.float32(v) if isinstance(v, float) else v) for k, v in attrs.items()}
  return tuple(jax.ffi.ffi_call(target, results)(*args, **attrs))


def _split_mask(args, masked):
  """``(mask, rest)``: the mask operand when ``masked``, else the 'no mask' constant."""
  return (args[0], args[1:]) if masked else (_NO_MASK, args)


def _kernel_moments(x, *rest, center, masked, instances):
  mask, _ = _split_mask(rest, masked)
  return _ffi("jaxnorm_norm_moments", (_stat(x),) * 4, x, mask, instances=instances,
              center=center, masked=masked)


def _reference_moments(x, *rest, center, masked, instances):
  del instances
  mask, _ = _split_mask(rest, masked)
  return _reference.moments(x, mask if masked else None, center=center)


def _kernel_apply(x, shift, delta, rstd, scale, bias, *, instances):
  return _ffi("jaxnorm_norm_apply", (_like(x),), x, shift, delta, rstd, scale, bias,
              instances=instances)


def _reference_apply(x, shift, delta, rstd, scale, bias, *, instances):
  return (_reference.apply(x, shift, delta, rstd, scale, bias, instances=instances),)


def _kernel_forward(x, *rest, epsilon, center, masked, instances):
  mask, (scale, bias) = _split_mask(rest, masked)
  return _ffi("jaxnorm_norm_forward", (_like(x),) + (_stat(x),) * 4, x, mask, scale, bias,
              instances=instances, center=center, masked=masked, epsilon=epsilon)


def _reference_forward(x, *rest, epsilon, center, masked, instances):
  mask, (scale, bias) = _split_mask(rest, masked)
  return _reference.forward(x, mask if masked else None, scale, bias, epsilon=epsilon,
                            center=center, instances=instances)


def _kernel_backward_sums(x, dy, shift, delta, rstd, scale, *, center, instances):
  stat = _stat(x)
  param = _per_instance(scale, instances)
  return _ffi("jaxnorm_norm_backward_sums", (stat, stat, param, param), x, dy, shift, delta,
              rstd, scale, instances=instances, center=center)


def _reference_backward_sums(x, dy, shift, delta, rstd, scale, *, center, instances):
  return _reference.backward_sums(x, dy, shift, delta, rstd, scale, center=center,
                                  instances=instances)


def _kernel_backward_dx(x, dy, *rest, center, masked, instances):
  mask, rest = _split_mask(rest, masked)
  return _ffi("jaxnorm_norm_backward_dx", (_like(x),), x, dy, mask, *rest,
              instances=instances, center=center, masked=masked)


def _reference_backward_dx(x, dy, *rest, center, masked, instances):
  mask, rest = _split_mask(rest, masked)
  return (_reference.backward_dx(x, dy, mask if masked else None, *rest, center=center,
                                 instances=instances),)


def _kernel_backward(x, dy, *rest, center, masked, instances):
  mask, rest = _split_mask(rest, masked)
  scale = rest[-1]
  param = _per_instance(scale, instances)
  return _ffi("jaxnorm_norm_backward", (_like(x), param, param), x, dy, mask, *rest,
              instances=instances, center=center, masked=masked)


def _reference_backward(x, dy, *rest, center, masked, instances):
  mask, rest = _split_mask(rest, masked)
  return _reference.backward(x, dy, mask if masked else None, *rest, center=center,
                             instances=instances)


def _specs(masked: bool) -> dict[str, _Spec]:
  mask_kinds = (_DATA,) if masked else ()
  return {
      "moments": _Spec("jaxnorm_norm_moments", (_DATA,) + mask_kinds, (_DATA,) * 4,
                       _kernel_moments, _reference_moments),
      "apply": _Spec("jaxnorm_norm_apply", (_DATA,) * 4 + (_PARAM,) * 2, (_DATA,),
                     _kernel_apply, _reference_apply),
      "forward": _Spec("jaxnorm_norm_forward", (_DATA,) + mask_kinds + (_PARAM,) * 2,
                       (_DATA,) * 5, _kernel_forward, _reference_forward),
      "backward_sums": _Spec("jaxnorm_norm_backward_sums", (_DATA,) * 5 + (_PARAM,),
                             (_DATA, _DATA, _PER_INSTANCE, _PER_INSTANCE),
                             _kernel_backward_sums, _reference_backward_sums),
      "backward_dx": _Spec("jaxnorm_norm_backward_dx",
                           (_DATA, _DATA) + mask_kinds + (_DATA,) * 4 + (_PARAM,)
                           + (_DATA,) * 2, (_DATA,), _kernel_backward_dx,
                           _reference_backward_dx),
      "backward": _Spec("jaxnorm_norm_backward",
                        (_DATA, _DATA) + mask_kinds + (_DATA,) * 4 + (_PARAM,),
                        (_DATA, _PER_INSTANCE, _PER_INSTANCE), _kernel_backward,
                        _reference_backward),
  }


SPECS = {True: _specs(True), False: _specs(False)}
