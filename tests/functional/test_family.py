"""Tests of the normalization family built on the one statistics path.

group_norm, instance_norm, rms_norm (normalization.py), batch_renorm and
ghost_batch_norm (batch_variants.py), switch_norm, evonorm_b0 and evonorm_s0
(composite.py).

Forward values and running statistics are compared with the float64 NumPy references
of conftest.py (fixture ``ref``); gradients with ``jax.grad`` of the plain-jnp formulas
below, evaluated in float64 (x64 enabled locally), with a random cotangent
(loss = sum(w * sin(y))). Batch renorm's r and d are constants of the backward pass
(``stop_gradient`` in the plain formula).

Tolerances (conftest.py): float32 forward 1e-5 and gradients 1e-4, relative to
max(1, max|reference|) plus the same relative per element; bfloat16 outputs 2e-2
likewise; running statistics from bfloat16 input 1e-5 (they accumulate in float32).

Set JAXNORM_FAMILY_ERRORS=path to write the largest measured error per layer and
quantity (JSON) when the module finishes.
"""

import json
import os
import re
from typing import Any, Callable, NamedTuple

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized
from jax import lax

from jaxnorm import functional as F

HYPOTHESIS = hypothesis.settings(
    max_examples=15, deadline=None, database=None, derandomize=True,
    suppress_health_check=[hypothesis.HealthCheck.too_slow,
                           hypothesis.HealthCheck.data_too_large])

EPS_GROUP = 1e-6  # group_norm, instance_norm, rms_norm defaults
EPS_BATCH = 1e-5  # batch_renorm, ghost_batch_norm, switch_norm, evonorm defaults

# --------------------------------------------------------------------------------------
# Largest measured errors, per (layer, quantity), for the report.

_MEASURED: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def _error_table():
  yield
  path = os.environ.get("JAXNORM_FAMILY_ERRORS")
  if path:
    with open(path, "w") as f:
      json.dump(dict(sorted(_MEASURED.items())), f, indent=1)


def _close(ref, actual, expected, tol, *, layer, kind, what=""):
  """``ref.assert_close`` that also records the error under ``layer/kind``."""
  ref.assert_close(actual, expected, tol, what=f"{layer} {kind} {what}")
  key = f"{layer}/{kind}"
  _MEASURED[key] = max(_MEASURED.get(key, 0.0), ref.max_scaled_error(actual, expected))


def _close_stats(ref, new, expected, tol, *, layer, kind="stats"):
  """Running (mean, var[, step]) against the reference's; statistics are float32."""
  assert new.mean.dtype == jnp.float32 and new.var.dtype == jnp.float32
  _close(ref, new.mean, expected[0], tol, layer=layer, kind=kind, what="mean")
  _close(ref, new.var, expected[1], tol, layer=layer, kind=kind, what="var")
  if len(expected) > 2:
    assert new.step.dtype == jnp.int32
    assert int(new.step) == expected[2]


# --------------------------------------------------------------------------------------
# Data.


def _normal(seed, shape, loc=0.0, scale=1.0):
  return np.random.default_rng(seed).normal(loc, scale, shape).astype(np.float32)


def _param(seed, shape, loc=0.0):
  return (loc + 0.5 * np.random.default_rng(seed).normal(size=shape)).astype(np.float32)


def _running(seed, channels, mean_loc=0.0, var_scale=1.0):
  rng = np.random.default_rng(seed)
  return F.BatchStats(
      mean=(mean_loc + rng.normal(size=channels)).astype(np.float32),
      var=(var_scale * (0.5 + rng.random(channels))).astype(np.float32))


def _renorm_stats(seed, channels, step=0, mean_loc=0.0, var_scale=1.0):
  s = _running(seed, channels, mean_loc, var_scale)
  return F.BatchRenormStats(s.mean, s.var, np.int32(step))


def _seq_mask(lengths, steps):
  """(N, T, 1) mask of variable-length sequences (padding at the end)."""
  return (np.arange(steps)[None, :] < np.asarray(lengths)[:, None])[..., None]


def _random_mask(seed, shape, p=0.6):
  mask = np.random.default_rng(seed).random(shape) < p
  mask.flat[0] = True
  return mask


LENGTHS = [5, 3, 1, 0]  # a full, a partial, a length-1 and an empty sequence
SEQ_MASK = _seq_mask(LENGTHS, 5)  # for x of shape (4, 5, C)
GRAD_SEQ_MASK = _seq_mask([5, 3, 2, 0], 5)


def _fill_masked(x, mask, value):
  return np.where(np.broadcast_to(mask, x.shape), x, np.float32(value))


def _group_size(channels, num_groups=None, group_size=None):
  return group_size if group_size is not None else channels // num_groups


# --------------------------------------------------------------------------------------
# Plain formulas in jnp (differentiated by JAX, not by jaxnorm's closed forms).


def _weights(mask, x):
  """The mask as 0/1 weights of x's shape and dtype."""
  if mask is None:
    return jnp.ones(x.shape, x.dtype)
  m = jnp.asarray(mask)
  m = m.reshape((1,) * (x.ndim - m.ndim) + m.shape)
  return jnp.broadcast_to(m, x.shape).astype(x.dtype)


def _mean_var(x, w, axes):
  """Two-pass weighted mean and biased variance over ``axes`` (kept)."""
  n = jnp.maximum(jnp.sum(w, axes, keepdims=True), 1)
  mean = jnp.sum(w * x, axes, keepdims=True) / n
  var = jnp.sum(w * jnp.square(x - mean), axes, keepdims=True) / n
  return mean, var


def _kept_shape(shape, axes):
  axes = tuple(a % len(shape) for a in ((axes,) if isinstance(axes, int) else axes))
  return tuple(d if a in axes else 1 for a, d in enumerate(shape)), axes


def _affine(y, scale, bias, pshape):
  if scale is not None:
    y = y * scale.reshape(pshape)
  if bias is not None:
    y = y + bias.reshape(pshape)
  return y


def _channels_last(x):
  return (1,) * (x.ndim - 1) + (x.shape[-1],)


def plain_group_norm(x, scale, bias, mask, groups, reduction_axes=None, eps=EPS_GROUP):
  c = x.shape[-1]
  axes = (tuple(range(1, x.ndim)) if reduction_axes is None
          else tuple(sorted(a % x.ndim for a in reduction_axes)))
  xg = x.reshape(x.shape[:-1] + (groups, c // groups))
  wg = _weights(mask, x).reshape(xg.shape)
  mean, var = _mean_var(xg, wg, tuple(a for a in axes if a != x.ndim - 1) + (x.ndim,))
  y = ((xg - mean) / jnp.sqrt(var + eps)).reshape(x.shape)
  return _affine(y, scale, bias, _channels_last(x))


def plain_instance_norm(x, scale, bias, mask, axis, eps=EPS_GROUP):
  pshape, feature_axes = _kept_shape(x.shape, axis)
  axes = tuple(a for a in range(1, x.ndim) if a not in feature_axes)
  mean, var = _mean_var(x, _weights(mask, x), axes)
  return _affine((x - mean) / jnp.sqrt(var + eps), scale, bias, pshape)


def plain_rms_norm(x, scale, mask, axis, eps=EPS_GROUP):
  pshape, axes = _kept_shape(x.shape, axis)
  w = _weights(mask, x)
  n = jnp.maximum(jnp.sum(w, axes, keepdims=True), 1)
  mean_square = jnp.sum(w * jnp.square(x), axes, keepdims=True) / n
  return _affine(x / jnp.sqrt(mean_square + eps), scale, None, pshape)


def plain_batch_renorm(x, scale, bias, mask, run_mean, run_var, r_max, d_max,
                       eps=EPS_BATCH, stop_gradient=True):
  """Batch renorm, features last; r and d are constants (stop_gradient)."""
  mean, var = _mean_var(x, _weights(mask, x), tuple(range(x.ndim - 1)))
  sigma_batch = jnp.sqrt(var + eps)
  sigma = jnp.sqrt(run_var + eps)
  sg = lax.stop_gradient if stop_gradient else (lambda t: t)
  r = sg(jnp.clip(sigma_batch / sigma, 1.0 / r_max, r_max))
  d = sg(jnp.clip((mean - run_mean) / sigma, -d_max, d_max))
  return _affine((x - mean) / sigma_batch * r + d, scale, bias, _channels_last(x))


def plain_ghost_batch_norm(x, scale, bias, mask, virtual_batch_size, eps=EPS_BATCH):
  """Ghost batch norm, features last: batch norm of each block of V examples."""
  lead = (x.shape[0] // virtual_batch_size, virtual_batch_size)
  xg = x.reshape(lead + x.shape[1:])
  wg = _weights(mask, x).reshape(xg.shape)
  mean, var = _mean_var(xg, wg, tuple(range(1, xg.ndim - 1)))
  y = ((xg - mean) / jnp.sqrt(var + eps)).reshape(x.shape)
  return _affine(y, scale, bias, _channels_last(x))


def _softmax(logits):
  e = jnp.exp(logits - jnp.max(logits))
  return e / jnp.sum(e)


def plain_switch_norm(x, scale, bias, mean_weights, var_weights, mask, running=None,
                      eps=EPS_BATCH):
  """Switchable norm; ``running=(mean, var)`` in evaluation, None in training."""
  w = _weights(mask, x)
  in_mean, in_var = _mean_var(x, w, tuple(range(1, x.ndim - 1)))
  ln_mean, ln_var = _mean_var(x, w, tuple(range(1, x.ndim)))
  if running is None:
    bn_mean, bn_var = _mean_var(x, w, tuple(range(x.ndim - 1)))
  else:
    bn_mean, bn_var = running
  a, b = _softmax(mean_weights), _softmax(var_weights)
  mean = a[0] * in_mean + a[1] * ln_mean + a[2] * bn_mean
  var = b[0] * in_var + b[1] * ln_var + b[2] * bn_var
  return _affine((x - mean) / jnp.sqrt(var + eps), scale, bias, _channels_last(x))


def plain_evonorm_b0(x, scale, bias, v, mask, running_var=None, eps=EPS_BATCH):
  w = _weights(mask, x)
  _, in_var = _mean_var(x, w, tuple(range(1, x.ndim - 1)))
  if running_var is None:
    _, bn_var = _mean_var(x, w, tuple(range(x.ndim - 1)))
  else:
    bn_var = running_var
  denominator = jnp.maximum(jnp.sqrt(bn_var + eps), v * x + jnp.sqrt(in_var + eps))
  return _affine(x / denominator, scale, bias, _channels_last(x))


def plain_evonorm_s0(x, scale, bias, v, mask, groups, eps=EPS_BATCH):
  c = x.shape[-1]
  xg = x.reshape(x.shape[:-1] + (groups, c // groups))
  wg = _weights(mask, x).reshape(xg.shape)
  _, var = _mean_var(xg, wg, tuple(range(1, x.ndim - 1)) + (x.ndim,))
  std = jnp.broadcast_to(jnp.sqrt(var + eps), xg.shape).reshape(x.shape)
  y = x * (1.0 / (1.0 + jnp.exp(-v * x))) / std
  return _affine(y, scale, bias, _channels_last(x))


# --------------------------------------------------------------------------------------
# Forward cases: one table drives the reference, mask and bfloat16 tests.


class Case(NamedTuple):
  layer: str
  shape: tuple
  mask: Any  # the mask the mask tests use (None: the layer ignores masks here)
  fn: Callable  # (x, mask) -> (y, new_stats or None)
  reference: Callable  # (ref, x, mask) -> (y, (mean, var[, step]) or None)


def _group_norm_case(shape, mask, **kw):
  c = shape[-1]
  scale, bias = _param(1, (c,), loc=1.0), _param(2, (c,))
  return Case(
      "group_norm", shape, mask,
      lambda x, m: (F.group_norm(x, scale, bias, mask=m, **kw), None),
      lambda ref, x, m: (ref.group_norm(x, scale, bias, mask=m, **kw), None))


def _instance_norm_case(shape, mask, axis):
  fshape = tuple(shape[a] for a in sorted(a % len(shape) for a in (
      (axis,) if isinstance(axis, int) else axis)))
  scale, bias = _param(3, fshape, loc=1.0), _param(4, fshape)
  return Case(
      "instance_norm", shape, mask,
      lambda x, m: (F.instance_norm(x, scale, bias, axis=axis, mask=m), None),
      lambda ref, x, m: (ref.instance_norm(x, scale, bias, axis=axis, mask=m), None))


def _rms_norm_case(shape, mask, axis):
  fshape = tuple(shape[a] for a in sorted(a % len(shape) for a in (
      (axis,) if isinstance(axis, int) else axis)))
  scale = _param(5, fshape, loc=1.0)
  return Case(
      "rms_norm", shape, mask,
      lambda x, m: (F.rms_norm(x, scale, axis=axis, mask=m), None),
      lambda ref, x, m: (ref.rms_norm(x, scale, axis=axis, mask=m), None))


def _batch_renorm_case(shape, mask, train, step=7, **kw):
  c = shape[-1]
  scale, bias = _param(6, (c,), loc=1.0), _param(7, (c,))
  # Running statistics far from the batch's: with the default data (seed 40) r is
  # clipped for 2 of the 6 features and d for 4 (test_batch_renorm_clipping_is_active
  # asserts clipping on its own data).
  stats = _renorm_stats(8, c, step=step, mean_loc=0.5, var_scale=6.0)
  kw = dict(r_max=1.5, d_max=0.4, momentum=0.8, **kw)
  return Case(
      "batch_renorm", shape, mask,
      lambda x, m: F.batch_renorm(x, scale, bias, stats, train=train, mask=m, **kw),
      lambda ref, x, m: ref.batch_renorm(x, scale, bias, stats, train=train, mask=m,
                                         **kw)[:2])


def _ghost_case(shape, mask, train, virtual_batch_size):
  c = shape[-1]
  scale, bias = _param(9, (c,), loc=1.0), _param(10, (c,))
  stats = _running(11, c)
  kw = dict(virtual_batch_size=virtual_batch_size, train=train, momentum=0.7)
  return Case(
      "ghost_batch_norm", shape, mask,
      lambda x, m: F.ghost_batch_norm(x, scale, bias, stats, mask=m, **kw),
      lambda ref, x, m: ref.ghost_batch_norm(x, scale, bias, stats, mask=m, **kw))


SWITCH_LOGITS = (np.array([0.3, -0.8, 0.5], np.float32), np.array([-0.2, 0.6, 0.1],
                                                                  np.float32))


def _switch_case(shape, mask, train):
  c = shape[-1]
  scale, bias = _param(12, (c,), loc=1.0), _param(13, (c,))
  stats = _running(14, c, mean_loc=0.3)
  mw, vw = SWITCH_LOGITS
  return Case(
      "switch_norm", shape, mask,
      lambda x, m: F.switch_norm(x, scale, bias, mw, vw, stats, train=train,
                                 momentum=0.9, mask=m),
      lambda ref, x, m: ref.switch_norm(x, scale, bias, mw, vw, stats, train=train,
                                        momentum=0.9, mask=m))


def _evonorm_v(seed, c):
  """v with both signs, so that both branches of EvoNorm-B0's max are taken."""
  return (np.where(np.arange(c) % 2, 1.0, -0.5) * (0.5 + np.random.default_rng(seed)
                                                   .random(c))).astype(np.float32)


def _evonorm_b0_case(shape, mask, train):
  c = shape[-1]
  scale, bias, v = _param(15, (c,), loc=1.0), _param(16, (c,)), _evonorm_v(17, c)
  stats = _running(18, c)
  return Case(
      "evonorm_b0", shape, mask,
      lambda x, m: F.evonorm_b0(x, scale, bias, v, stats, train=train, momentum=0.9,
                                mask=m),
      lambda ref, x, m: ref.evonorm_b0(x, scale, bias, v, stats, train=train,
                                       momentum=0.9, mask=m))


def _evonorm_s0_case(shape, mask, **kw):
  c = shape[-1]
  scale, bias, v = _param(19, (c,), loc=1.0), _param(20, (c,)), _evonorm_v(21, c)
  return Case(
      "evonorm_s0", shape, mask,
      lambda x, m: (F.evonorm_s0(x, scale, bias, v, mask=m, **kw), None),
      lambda ref, x, m: (ref.evonorm_s0(x, scale, bias, v, mask=m, **kw), None))


GHOST_MASK = np.array([1, 1, 1, 0, 0, 0, 0, 1], bool)[:, None]  # ghost 3 is empty

CASES = {
    "group_norm-num_groups": _group_norm_case((4, 5, 6), SEQ_MASK, num_groups=3),
    "group_norm-group_size-reduction_axes": _group_norm_case(
        (3, 2, 3, 8), _random_mask(30, (3, 2, 3, 8)), num_groups=None, group_size=2,
        reduction_axes=(2, 3)),
    "instance_norm-int_axis": _instance_norm_case((4, 5, 6), SEQ_MASK, -1),
    "instance_norm-tuple_axis": _instance_norm_case((3, 2, 4, 5),
                                                    _random_mask(31, (3, 1, 4, 1)), (1, 3)),
    "rms_norm-last_axis": _rms_norm_case((4, 5, 6), _random_mask(32, (1, 1, 6)), -1),
    "rms_norm-sequence": _rms_norm_case((4, 5, 6), SEQ_MASK, (1, 2)),
    "batch_renorm-train": _batch_renorm_case((4, 5, 6), SEQ_MASK, train=True),
    "batch_renorm-eval": _batch_renorm_case((4, 5, 6), None, train=False),
    "ghost_batch_norm-train": _ghost_case((8, 6), GHOST_MASK, True, 2),
    "ghost_batch_norm-train-nhwc": _ghost_case((6, 2, 2, 3), _random_mask(33, (6, 2, 2, 1)),
                                               True, 3),
    "ghost_batch_norm-eval": _ghost_case((8, 6), None, False, 2),
    "switch_norm-train": _switch_case((4, 5, 6), SEQ_MASK, True),
    "switch_norm-eval": _switch_case((4, 5, 6), SEQ_MASK, False),
    "switch_norm-train-no_spatial": _switch_case((6, 4), np.array(
        [1, 1, 0, 1, 0, 1], bool)[:, None], True),
    "evonorm_b0-train": _evonorm_b0_case((4, 5, 6), SEQ_MASK, True),
    "evonorm_b0-eval": _evonorm_b0_case((4, 5, 6), SEQ_MASK, False),
    "evonorm_s0-num_groups": _evonorm_s0_case((4, 5, 6), SEQ_MASK, num_groups=3),
    "evonorm_s0-group_size": _evonorm_s0_case((2, 3, 3, 8), _random_mask(34, (2, 3, 3, 8)),
                                              num_groups=None, group_size=4),
}
MASKED_CASES = [k for k, c in CASES.items() if c.mask is not None]


def _case_input(case, seed=40):
  return _normal(seed, case.shape, loc=0.7, scale=1.8)


def _check_stats(ref, case, new, expected, tol, kind="stats"):
  if expected is None:
    assert new is None
  else:
    _close_stats(ref, new, expected, tol, layer=case.layer, kind=kind)


@pytest.mark.parametrize("name", list(CASES))
def test_matches_float64_reference(ref, name):
  case = CASES[name]
  x = _case_input(case)
  y, new = case.fn(x, None)
  ref_y, ref_stats = case.reference(ref, x, None)
  assert y.dtype == jnp.float32 and y.shape == case.shape
  _close(ref, y, ref_y, ref.FLOAT32_TOL, layer=case.layer, kind="y")
  _check_stats(ref, case, new, ref_stats, ref.FLOAT32_TOL)


@pytest.mark.parametrize("name", MASKED_CASES)
def test_masked_elements_do_not_move_statistics(ref, name):
  # NaN at the masked positions: the valid outputs and the running statistics must
  # equal the reference computed from the valid elements only.
  case = CASES[name]
  x = _case_input(case, seed=41)
  valid = np.broadcast_to(case.mask, x.shape)
  assert 0 < valid.sum() < valid.size
  y, new = jax.jit(case.fn)(_fill_masked(x, case.mask, np.nan), case.mask)
  ref_y, ref_stats = case.reference(ref, x, case.mask)
  _close(ref, np.asarray(y)[valid], ref_y[valid], ref.FLOAT32_TOL, layer=case.layer,
         kind="y")
  _check_stats(ref, case, new, ref_stats, ref.FLOAT32_TOL)
  # Control: without the mask the same data give other statistics.
  y_unmasked, _ = case.fn(x, None)
  assert ref.max_scaled_error(np.asarray(y_unmasked)[valid], ref_y[valid]) > 1e-3


@pytest.mark.parametrize("name", MASKED_CASES)
def test_masked_outputs_are_finite_and_use_valid_statistics(ref, name):
  # Large finite padding: masked outputs are normalized with the valid statistics.
  case = CASES[name]
  x = _fill_masked(_case_input(case, seed=42), case.mask, 1e6)
  valid = np.broadcast_to(case.mask, x.shape)
  y, new = case.fn(x, case.mask)
  y = np.asarray(y, np.float64)
  assert np.all(np.isfinite(y))
  ref_y, ref_stats = case.reference(ref, x, case.mask)
  _close(ref, y[valid], ref_y[valid], ref.FLOAT32_TOL, layer=case.layer, kind="y")
  np.testing.assert_allclose(y[~valid], ref_y[~valid], rtol=1e-4, atol=1e-3)
  _check_stats(ref, case, new, ref_stats, ref.FLOAT32_TOL)


@pytest.mark.parametrize("name", list(CASES))
def test_bfloat16_input(ref, name):
  case = CASES[name]
  x = jnp.asarray(_case_input(case, seed=43)).astype(jnp.bfloat16)
  y, new = case.fn(x, case.mask)
  assert y.dtype == jnp.bfloat16 and y.shape == case.shape
  ref_y, ref_stats = case.reference(ref, ref.to64(x), case.mask)
  _close(ref, y, ref_y, ref.BF16_TOL, layer=case.layer, kind="y_bf16")
  # The statistics accumulate in float32 from the (exact) bfloat16 values.
  _check_stats(ref, case, new, ref_stats, ref.FLOAT32_TOL, kind="stats_bf16")


# --------------------------------------------------------------------------------------
# Gradients: one table of (jaxnorm function, plain formula, differentiated arguments).


class GradCase(NamedTuple):
  layer: str
  args: tuple  # differentiated arguments, x first
  names: tuple
  fn: Callable  # (*args) -> y
  plain: Callable  # (*args) -> y


def _grad_cases():
  cases = {}
  x = _normal(50, (2, 3, 6), loc=0.4, scale=1.3)
  s, b = _param(51, (6,), loc=1.0), _param(52, (6,))
  seq_x = _normal(53, (4, 5, 6), loc=-0.3, scale=1.2)
  # Padding holds small values, so fully masked groups (y = x / sqrt(eps)) keep sin(y)
  # well conditioned; no group has a single valid value (var 0, rstd = 1/sqrt(eps) would
  # make sin(y) at its padding ill-conditioned in float32 whatever the layer).
  seq_x = np.where(np.broadcast_to(GRAD_SEQ_MASK, seq_x.shape), seq_x, 1e-3 * seq_x)

  def gn(mask, groups, reduction_axes=None, **kw):
    return (lambda x, s, b: F.group_norm(x, s, b, mask=mask, reduction_axes=reduction_axes,
                                         **kw),
            lambda x, s, b: plain_group_norm(x, s, b, mask, groups, reduction_axes))

  names = ("x", "scale", "bias")
  cases["group_norm-num_groups"] = GradCase("group_norm", (x, s, b), names,
                                            *gn(None, 3, num_groups=3))
  x4 = _normal(54, (2, 2, 3, 4), loc=1.0)
  s4, b4 = _param(55, (4,), loc=1.0), _param(56, (4,))
  cases["group_norm-group_size-reduction_axes"] = GradCase(
      "group_norm", (x4, s4, b4), names,
      *gn(None, 2, (2, 3), num_groups=None, group_size=2))
  cases["group_norm-mask"] = GradCase("group_norm", (seq_x, s, b), names,
                                      *gn(GRAD_SEQ_MASK, 2, num_groups=2))

  for axis, xx, ss, bb, mask in [(-1, x, s, b, None),
                                 ((1, 3), x4, _param(57, (2, 4), loc=1.0),
                                  _param(58, (2, 4)), None),
                                 (-1, seq_x, s, b, GRAD_SEQ_MASK)]:
    cases[f"instance_norm-{axis}-{'mask' if mask is not None else 'plain'}"] = GradCase(
        "instance_norm", (xx, ss, bb), names,
        lambda x, s, b, axis=axis, mask=mask: F.instance_norm(x, s, b, axis=axis, mask=mask),
        lambda x, s, b, axis=axis, mask=mask: plain_instance_norm(x, s, b, mask, axis))

  for axis, xx, ss, mask in [(-1, x, s, None), ((1, 2), x, _param(59, (3, 6), loc=1.0), None),
                             ((1, 2), seq_x, _param(59, (5, 6), loc=1.0), GRAD_SEQ_MASK)]:
    cases[f"rms_norm-{axis}-{'mask' if mask is not None else 'plain'}"] = GradCase(
        "rms_norm", (xx, ss), ("x", "scale"),
        lambda x, s, axis=axis, mask=mask: F.rms_norm(x, s, axis=axis, mask=mask),
        lambda x, s, axis=axis, mask=mask: plain_rms_norm(x, s, mask, axis))

  for label, r_max, d_max, xx, mask in [("clipped", 1.5, 0.3, x, None),
                                        ("unclipped", 100.0, 100.0, x, None),
                                        ("mask", 1.5, 0.3, seq_x, GRAD_SEQ_MASK)]:
    stats = _renorm_stats(60, 6, step=3, mean_loc=0.5, var_scale=6.0)
    cases[f"batch_renorm-{label}"] = GradCase(
        "batch_renorm", (xx, s, b), names,
        lambda x, s, b, r_max=r_max, d_max=d_max, mask=mask, stats=stats: F.batch_renorm(
            x, s, b, stats, train=True, r_max=r_max, d_max=d_max, mask=mask)[0],
        lambda x, s, b, r_max=r_max, d_max=d_max, mask=mask, stats=stats:
            plain_batch_renorm(x, s, b, mask, stats.mean, stats.var, r_max, d_max))

  xg = _normal(61, (8, 3), loc=0.5, scale=2.0)
  sg, bg = _param(62, (3,), loc=1.0), _param(63, (3,))
  for label, xx, mask, vbs in [("v2", xg, None, 2), ("v4", xg, None, 4),
                               ("mask", xg, np.array([1, 1, 0, 1, 1, 0, 1, 1], bool)[:, None],
                                4)]:
    cases[f"ghost_batch_norm-{label}"] = GradCase(
        "ghost_batch_norm", (xx, sg, bg), names,
        lambda x, s, b, mask=mask, vbs=vbs: F.ghost_batch_norm(
            x, s, b, None, virtual_batch_size=vbs, train=True, mask=mask)[0],
        lambda x, s, b, mask=mask, vbs=vbs: plain_ghost_batch_norm(x, s, b, mask, vbs))

  mw, vw = SWITCH_LOGITS
  running = _running(64, 6, mean_loc=0.3)
  for label, xx, train, mask in [("train", x, True, None), ("eval", x, False, None),
                                 ("train-mask", seq_x, True, GRAD_SEQ_MASK)]:
    cases[f"switch_norm-{label}"] = GradCase(
        "switch_norm", (xx, s, b, mw, vw), names + ("mean_weights", "var_weights"),
        lambda x, s, b, mw, vw, train=train, mask=mask: F.switch_norm(
            x, s, b, mw, vw, running, train=train, mask=mask)[0],
        lambda x, s, b, mw, vw, train=train, mask=mask: plain_switch_norm(
            x, s, b, mw, vw, mask, None if train else running))

  v = _evonorm_v(65, 6)
  for label, xx, train, mask in [("train", x, True, None), ("eval", x, False, None),
                                 ("train-mask", seq_x, True, GRAD_SEQ_MASK)]:
    cases[f"evonorm_b0-{label}"] = GradCase(
        "evonorm_b0", (xx, s, b, v), names + ("v",),
        lambda x, s, b, v, train=train, mask=mask: F.evonorm_b0(
            x, s, b, v, running, train=train, mask=mask)[0],
        lambda x, s, b, v, train=train, mask=mask: plain_evonorm_b0(
            x, s, b, v, mask, None if train else running.var))

  for label, xx, mask, groups in [("num_groups", x, None, 3),
                                  ("mask", seq_x, GRAD_SEQ_MASK, 2)]:
    cases[f"evonorm_s0-{label}"] = GradCase(
        "evonorm_s0", (xx, s, b, v), names + ("v",),
        lambda x, s, b, v, mask=mask, groups=groups: F.evonorm_s0(
            x, s, b, v, num_groups=groups, mask=mask),
        lambda x, s, b, v, mask=mask, groups=groups: plain_evonorm_s0(
            x, s, b, v, mask, groups))
  return cases


GRAD_CASES = _grad_cases()


def _grads(ref, case, plain=None):
  """(jaxnorm's, float64 plain) gradients of sum(w * sin(y)) w.r.t. every argument."""
  w = _normal(99, case.args[0].shape)
  argnums = tuple(range(len(case.args)))
  plain = plain or case.plain

  def loss(*args):
    return jnp.sum(w * jnp.sin(case.fn(*args)))

  def plain_loss(*args):
    return jnp.sum(w * jnp.sin(plain(*args)))

  got = jax.jit(jax.grad(loss, argnums=argnums))(*case.args)
  expected = ref.grad64(plain_loss, case.args, argnums=argnums)
  return got, expected


@pytest.mark.parametrize("name", list(GRAD_CASES))
def test_gradients_match_plain_formula(ref, name):
  case = GRAD_CASES[name]
  got, expected = _grads(ref, case)
  for arg_name, arg, g, e in zip(case.names, case.args, got, expected):
    assert g.shape == arg.shape and g.dtype == jnp.float32, arg_name
    _close(ref, g, e, ref.GRAD_TOL, layer=case.layer, kind="grad", what=f"d{arg_name}")
    assert np.max(np.abs(e)) > 1e-3, f"d{arg_name} is trivially zero"


def test_batch_renorm_gradient_treats_r_and_d_as_constants(ref):
  # Control: with r and d inside their ranges they depend on x; differentiating through
  # them gives other gradients, which the comparison above would reject.
  case = GRAD_CASES["batch_renorm-unclipped"]
  stats = _renorm_stats(60, 6, step=3, mean_loc=0.5, var_scale=6.0)
  got, expected = _grads(ref, case)
  _, through = _grads(ref, case, plain=lambda x, s, b: plain_batch_renorm(
      x, s, b, None, stats.mean, stats.var, 100.0, 100.0, stop_gradient=False))
  _close(ref, got[0], expected[0], ref.GRAD_TOL, layer="batch_renorm", kind="grad")
  assert ref.max_scaled_error(got[0], through[0]) > 10 * ref.GRAD_TOL


# --------------------------------------------------------------------------------------
# group_norm, instance_norm, rms_norm specifics.


@pytest.mark.parametrize("shape,kwargs,same_as", [
    ((2, 3, 8), dict(num_groups=1), "layer_norm"),
    ((2, 3, 8), dict(num_groups=None, group_size=8), "layer_norm"),
    ((2, 3, 8), dict(num_groups=8), "instance_norm"),
    ((2, 3, 8), dict(num_groups=None, group_size=1), "instance_norm"),
])
def test_group_norm_extremes_are_layer_and_instance_norm(ref, shape, kwargs, same_as):
  x = _normal(70, shape, loc=1.0, scale=2.0)
  scale, bias = _param(71, (8,), loc=1.0), _param(72, (8,))
  y = F.group_norm(x, scale, bias, **kwargs)
  if same_as == "layer_norm":
    expected = ref.layer_norm(x, scale.reshape(1, 1, 8), bias.reshape(1, 1, 8),
                              axis=(1, 2), epsilon=EPS_GROUP)
  else:
    expected = ref.instance_norm(x, scale, bias)
  _close(ref, y, expected, ref.FLOAT32_TOL, layer="group_norm", kind="y")


@pytest.mark.parametrize("kwargs", [dict(num_groups=2), dict(num_groups=None, group_size=3)])
def test_group_norm_channels_are_grouped_consecutively(ref, kwargs):
  # Channels 0-2 and 3-5 live on very different scales; a strided grouping would mix
  # them and fail the reference.
  x = _normal(73, (3, 4, 6))
  x[..., 3:] = 50.0 + 10.0 * x[..., 3:]
  y = F.group_norm(x, None, None, **kwargs)
  _close(ref, y, ref.group_norm(x, None, None, num_groups=2), ref.FLOAT32_TOL,
         layer="group_norm", kind="y")
  interleaved = x.reshape(3, 4, 3, 2).transpose(0, 1, 3, 2).reshape(3, 4, 6)
  wrong = ref.group_norm(interleaved, None, None, num_groups=2)
  wrong = wrong.reshape(3, 4, 2, 3).transpose(0, 1, 3, 2).reshape(3, 4, 6)
  assert ref.max_scaled_error(y, wrong) > 0.1


@pytest.mark.parametrize("reduction_axes", [(1, 2, 3), (2, 3), (-1,), (0, 1, 2, 3), (1, -1)])
def test_group_norm_reduction_axes(ref, reduction_axes):
  x = _normal(74, (2, 3, 4, 6), loc=-0.5, scale=1.5)
  scale, bias = _param(75, (6,), loc=1.0), _param(76, (6,))
  y = F.group_norm(x, scale, bias, num_groups=3, reduction_axes=reduction_axes)
  _close(ref, y, ref.group_norm(x, scale, bias, num_groups=3, reduction_axes=reduction_axes),
         ref.FLOAT32_TOL, layer="group_norm", kind="y")


@pytest.mark.parametrize("axis", [-1, 3, (3,), (1, 3), (-3, -1)])
def test_instance_norm_axis_forms(ref, axis):
  x = _normal(77, (2, 3, 4, 5), loc=2.0, scale=0.7)
  axes = sorted(a % 4 for a in ((axis,) if isinstance(axis, int) else axis))
  fshape = tuple(x.shape[a] for a in axes)
  scale, bias = _param(78, fshape, loc=1.0), _param(79, fshape)
  y = F.instance_norm(x, scale, bias, axis=axis)
  _close(ref, y, ref.instance_norm(x, scale, bias, axis=axis), ref.FLOAT32_TOL,
         layer="instance_norm", kind="y")


def test_rms_norm_does_not_centre(ref):
  # Data with a large mean: RMS norm keeps the mean (layer norm would remove it).
  x = _normal(80, (3, 8), loc=4.0)
  scale = _param(81, (8,), loc=1.0)
  y = np.asarray(F.rms_norm(x, scale), np.float64)
  _close(ref, y, ref.rms_norm(x, scale), ref.FLOAT32_TOL, layer="rms_norm", kind="y")
  assert ref.max_scaled_error(y, ref.layer_norm(x, scale, None, epsilon=EPS_GROUP)) > 0.5
  # Hand-checkable: [3, 4] has mean square 12.5.
  y = F.rms_norm(np.array([[3.0, 4.0]], np.float32), None, epsilon=1e-6)
  np.testing.assert_allclose(np.asarray(y, np.float64),
                             [[3 / np.sqrt(12.5 + 1e-6), 4 / np.sqrt(12.5 + 1e-6)]],
                             rtol=1e-6)


@st.composite
def _group_norm_case_strategy(draw):
  ndim = draw(st.integers(2, 4))
  groups = draw(st.sampled_from([1, 2, 3]))
  per_group = draw(st.integers(1, 3))
  shape = tuple(draw(st.lists(st.integers(1, 3), min_size=ndim - 1, max_size=ndim - 1))
                ) + (groups * per_group,)
  others = [a for a in range(ndim - 1) if draw(st.booleans())]
  reduction_axes = None if draw(st.booleans()) else tuple(others) + (ndim - 1,)
  mask_shape = None
  if draw(st.booleans()):
    mask_shape = tuple(d if draw(st.booleans()) else 1 for d in shape)
  return dict(shape=shape, groups=groups, by_size=draw(st.booleans()),
              reduction_axes=reduction_axes, mask_shape=mask_shape,
              dtype=draw(st.sampled_from(["float32", "bfloat16"])),
              loc=draw(st.sampled_from([0.0, 3.0, -20.0])),
              seed=draw(st.integers(0, 2**31 - 1)))


@hypothesis.given(case=_group_norm_case_strategy())
@HYPOTHESIS
def test_group_norm_property_forward_and_vjp(ref, case):
  rng = np.random.default_rng(case["seed"])
  shape, groups, dtype = case["shape"], case["groups"], jnp.dtype(case["dtype"])
  channels = shape[-1]
  tol = ref.FLOAT32_TOL if dtype == jnp.float32 else ref.BF16_TOL
  grad_tol = ref.GRAD_TOL if dtype == jnp.float32 else ref.BF16_TOL
  x = jnp.asarray((case["loc"] + rng.normal(size=shape)).astype(np.float32)).astype(dtype)
  scale = (1.0 + 0.5 * rng.normal(size=channels)).astype(np.float32)
  bias = rng.normal(size=channels).astype(np.float32)
  mask = None if case["mask_shape"] is None else rng.random(case["mask_shape"]) < 0.7
  kw = (dict(num_groups=None, group_size=channels // groups) if case["by_size"]
        else dict(num_groups=groups))
  cotangent = jnp.asarray(rng.normal(size=shape).astype(np.float32)).astype(dtype)
  axes = (tuple(range(1, len(shape))) if case["reduction_axes"] is None
          else case["reduction_axes"])
  per_group = np.prod([shape[a] for a in axes if a % len(shape) != len(shape) - 1]) * (
      channels // groups)
  if mask is None and per_group == 1:
    # One value per group: each value is its own mean, the output would be the bias.
    with pytest.raises(ValueError, match="groups of one value"):
      F.group_norm(x, scale, bias, reduction_axes=case["reduction_axes"], **kw)
    return

  @jax.jit
  def run(x, scale, bias, mask, cotangent):
    y, vjp = jax.vjp(lambda x, s, b: F.group_norm(
        x, s, b, reduction_axes=case["reduction_axes"], mask=mask, **kw), x, scale, bias)
    return y, vjp(cotangent)

  y, grads = run(x, scale, bias, mask, cotangent)
  assert y.dtype == dtype and y.shape == shape
  x64 = ref.to64(x)
  _close(ref, y, ref.group_norm(x64, scale, bias, num_groups=groups,
                                reduction_axes=case["reduction_axes"], mask=mask),
         tol, layer="group_norm", kind="y" if dtype == jnp.float32 else "y_bf16")
  ct64 = ref.to64(cotangent)
  expected = ref.grad64(
      lambda x, s, b: jnp.sum(ct64 * plain_group_norm(x, s, b, mask, groups,
                                                      case["reduction_axes"])),
      (x64, scale, bias), argnums=(0, 1, 2))
  for name, g, e in zip(("x", "scale", "bias"), grads, expected):
    _close(ref, g, e, grad_tol, layer="group_norm",
           kind="grad" if dtype == jnp.float32 else "grad_bf16", what=f"d{name}")


@pytest.mark.parametrize("shape, groups", [((4, 5, 6, 8), 2), ((2, 3, 12), 4), ((3, 8), 2)])
def test_group_norm_gradients_with_and_without_folded_scale(ref, shape, groups):
  """Spatial inputs fold gamma into the per-group gain (no x-sized temporary); (N, C)
  inputs keep it outside. Both against the float64 reference, scale far from 1."""
  rng = np.random.default_rng(sum(shape))
  x = jnp.asarray((2.0 + rng.normal(size=shape)).astype(np.float32))
  scale = (1.0 + 2.0 * rng.normal(size=shape[-1])).astype(np.float32)
  bias = rng.normal(size=shape[-1]).astype(np.float32)
  cotangent = rng.normal(size=shape).astype(np.float32)
  grads = jax.jit(jax.grad(lambda x, s, b: jnp.sum(cotangent * F.group_norm(
      x, s, b, num_groups=groups)), argnums=(0, 1, 2)))(x, scale, bias)
  expected = ref.grad64(lambda x, s, b: jnp.sum(ref.to64(cotangent) * plain_group_norm(
      x, s, b, None, groups, None)), (ref.to64(x), scale, bias), argnums=(0, 1, 2))
  for name, g, e in zip(("x", "scale", "bias"), grads, expected):
    _close(ref, g, e, ref.GRAD_TOL, layer="group_norm", kind="grad", what=f"d{name}")


# --------------------------------------------------------------------------------------
# batch_renorm specifics.


def _renorm_data(seed=90, shape=(6, 2, 4)):
  x = _normal(seed, shape, loc=0.2, scale=1.0)
  c = shape[-1]
  scale, bias = _param(seed + 1, (c,), loc=1.0), _param(seed + 2, (c,))
  # Feature 0 matches the batch (r, d inside their ranges); features 1-3 do not.
  stats = _renorm_stats(seed + 3, c, step=0)
  mean = x.reshape(-1, c).mean(0)
  var = x.reshape(-1, c).var(0)
  stats = F.BatchRenormStats(
      mean=np.array([mean[0] + 0.05, mean[1] - 3.0, mean[2] + 10.0, mean[3]], np.float32),
      var=np.array([var[0] * 1.1, var[1], 20.0 * var[2], 0.02 * var[3]], np.float32),
      step=np.int32(0))
  return x, scale, bias, stats


def test_batch_renorm_clipping_is_active(ref):
  x, scale, bias, stats = _renorm_data()
  r_max, d_max = 2.0, 1.0
  y, new = F.batch_renorm(x, scale, bias, stats, train=True, r_max=r_max, d_max=d_max,
                          momentum=0.9)
  ref_y, ref_stats, (r_raw, d_raw) = ref.batch_renorm(
      x, scale, bias, stats, train=True, r_max=r_max, d_max=d_max, momentum=0.9)
  _close(ref, y, ref_y, ref.FLOAT32_TOL, layer="batch_renorm", kind="y")
  _close_stats(ref, new, ref_stats, ref.FLOAT32_TOL, layer="batch_renorm")
  # r and d: feature 0 inside the ranges, r clipped above (feature 3) and below
  # (feature 2), d clipped on both sides (features 1 and 2).
  assert 1 / r_max < r_raw[0] < r_max and abs(d_raw[0]) < d_max
  assert r_raw[3] > r_max and r_raw[2] < 1 / r_max
  assert d_raw[1] > d_max and d_raw[2] < -d_max
  # Controls: neither plain batch norm nor unclipped renorm gives these outputs.
  unclipped, _, _ = ref.batch_renorm(x, scale, bias, stats, train=True, r_max=1e9,
                                     d_max=1e9, momentum=0.9)
  plain_bn, _ = ref.batch_norm(x, scale, bias, stats[:2], train=True, momentum=0.9)
  assert ref.max_scaled_error(y, unclipped) > 0.1
  assert ref.max_scaled_error(y, plain_bn) > 0.1


def test_batch_renorm_hand_computed_single_feature(ref):
  # Batch [0, 2]: mean 1, var 1. Running mean 0, var 4 (sigma ~ 2): r = 0.5 -> clipped
  # to 1/r_max = 2/3, d = 0.5 -> clipped to d_max = 0.25.
  x = np.array([[0.0], [2.0]], np.float32)
  stats = F.BatchRenormStats(np.zeros(1, np.float32), np.full(1, 4.0, np.float32),
                             np.int32(0))
  y, new = F.batch_renorm(x, None, None, stats, train=True, r_max=1.5, d_max=0.25,
                          epsilon=1e-12, momentum=0.5)
  np.testing.assert_allclose(np.asarray(y, np.float64)[:, 0],
                             [-1 * 2 / 3 + 0.25, 1 * 2 / 3 + 0.25], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(new.mean, np.float64), [0.5], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(new.var, np.float64), [2.5], rtol=1e-6)
  assert int(new.step) == 1


@pytest.mark.parametrize("epsilon", [1e-5, 0.5])
def test_batch_renorm_unclipped_normalizes_with_running_statistics(ref, epsilon):
  # With r and d inside their ranges, (x - mu_B) / sigma_B * r + d = (x - mu) / sigma:
  # training output is the running-statistics normalization (epsilon inside sigma and
  # sigma_B alike), computed here without any batch statistic.
  x, scale, bias, stats = _renorm_data(seed=95)
  y, _ = F.batch_renorm(x, scale, bias, stats, train=True, r_max=1e3, d_max=1e3,
                        epsilon=epsilon)
  x64 = x.astype(np.float64)
  expected = ((x64 - stats.mean) / np.sqrt(stats.var.astype(np.float64) + epsilon)
              * scale + bias)
  _close(ref, y, expected, ref.FLOAT32_TOL, layer="batch_renorm", kind="y")


@pytest.mark.parametrize("step", [0, 3, 10, 25])
def test_batch_renorm_linear_schedules(ref, step):
  x, scale, bias, stats = _renorm_data(seed=91)
  stats = stats._replace(step=np.int32(step))
  r_sched = optax.linear_schedule(1.0, 3.0, transition_steps=10)
  d_sched = optax.linear_schedule(0.0, 2.0, transition_steps=10)
  y, new = F.batch_renorm(x, scale, bias, stats, train=True, r_max=r_sched,
                          d_max=d_sched, momentum=0.9)
  # The schedules evaluated independently, in float64.
  frac = min(step, 10) / 10
  ref_y, ref_stats, _ = ref.batch_renorm(x, scale, bias, stats, train=True,
                                         r_max=1.0 + 2.0 * frac, d_max=2.0 * frac,
                                         momentum=0.9)
  _close(ref, y, ref_y, ref.FLOAT32_TOL, layer="batch_renorm", kind="y")
  _close_stats(ref, new, ref_stats, ref.FLOAT32_TOL, layer="batch_renorm")
  if step == 0:  # r_max = 1 and d_max = 0: plain batch norm
    plain_bn, _ = ref.batch_norm(x, scale, bias, stats[:2], train=True, momentum=0.9)
    _close(ref, y, plain_bn, ref.FLOAT32_TOL, layer="batch_renorm", kind="y")
  else:  # the schedule moved: step 0's limits give other outputs
    at_zero, _, _ = ref.batch_renorm(x, scale, bias, stats, train=True, r_max=1.0,
                                     d_max=0.0, momentum=0.9)
    assert ref.max_scaled_error(y, at_zero) > 1e-2


def test_batch_renorm_schedule_under_jit_with_traced_step(ref):
  x, scale, bias, stats = _renorm_data(seed=92)
  r_sched = optax.linear_schedule(1.0, 3.0, transition_steps=8)
  d_sched = optax.linear_schedule(0.0, 2.0, transition_steps=8)
  train = jax.jit(lambda x, stats: F.batch_renorm(
      x, scale, bias, stats, train=True, r_max=r_sched, d_max=d_sched, momentum=0.9))
  expected_stats = (stats.mean, stats.var, 0)
  new = stats
  for step in range(4):
    xs = x + 0.3 * step
    y, new = train(xs, new)
    frac = min(step, 8) / 8
    ref_y, expected_stats, _ = ref.batch_renorm(
        xs, scale, bias, expected_stats, train=True, r_max=1.0 + 2.0 * frac,
        d_max=2.0 * frac, momentum=0.9)
    _close(ref, y, ref_y, ref.FLOAT32_TOL, layer="batch_renorm", kind="y",
           what=f"step {step}")
    _close_stats(ref, new, expected_stats, ref.FLOAT32_TOL, layer="batch_renorm")
    assert int(new.step) == step + 1


@pytest.mark.parametrize("step,warm", [(0, True), (4, True), (5, False), (9, False)])
def test_batch_renorm_warmup_is_plain_batch_norm(ref, step, warm):
  x, scale, bias, stats = _renorm_data(seed=93)
  stats = stats._replace(step=np.int32(step))
  y, new = F.batch_renorm(x, scale, bias, stats, train=True, r_max=2.0, d_max=1.0,
                          warmup_steps=5, momentum=0.9)
  plain_bn, bn_stats = ref.batch_norm(x, scale, bias, stats[:2], train=True, momentum=0.9)
  # The running statistics are updated during warmup too, and the step counts.
  _close_stats(ref, new, bn_stats + (step + 1,), ref.FLOAT32_TOL, layer="batch_renorm")
  if warm:
    _close(ref, y, plain_bn, ref.FLOAT32_TOL, layer="batch_renorm", kind="y")
  else:
    ref_y, _, _ = ref.batch_renorm(x, scale, bias, stats, train=True, r_max=2.0,
                                   d_max=1.0, warmup_steps=5, momentum=0.9)
    _close(ref, y, ref_y, ref.FLOAT32_TOL, layer="batch_renorm", kind="y")
    assert ref.max_scaled_error(y, plain_bn) > 0.1


def test_batch_renorm_eval_uses_running_statistics_and_keeps_step(ref):
  x, scale, bias, stats = _renorm_data(seed=94)
  stats = stats._replace(step=np.int32(12))
  y, new = F.batch_renorm(x, scale, bias, stats, train=False,
                          r_max=optax.linear_schedule(1.0, 3.0, 10), d_max=2.0)
  ref_y, _ = ref.batch_norm(x, scale, bias, stats[:2], train=False)
  _close(ref, y, ref_y, ref.FLOAT32_TOL, layer="batch_renorm", kind="y")
  np.testing.assert_array_equal(np.asarray(new.mean), stats.mean)
  np.testing.assert_array_equal(np.asarray(new.var), stats.var)
  assert int(new.step) == 12


# --------------------------------------------------------------------------------------
# ghost_batch_norm specifics.


def test_ghost_batch_norm_pooled_statistics_are_the_full_batch_moments(ref):
  # momentum = 0: the new running statistics are the pooled ones themselves. Virtual
  # batches with very different means make a mean of ghost variances visibly wrong.
  x = _normal(100, (8, 3, 4), loc=0.0, scale=1.0)
  x += 30.0 * np.arange(4).repeat(2).reshape(8, 1, 1)
  x += 1e3  # shifted data too
  stats = _running(101, 4)
  _, new = F.ghost_batch_norm(x, None, None, stats, virtual_batch_size=2, train=True,
                              momentum=0.0)
  x64 = x.astype(np.float64)
  full_mean, full_var = x64.mean(axis=(0, 1)), x64.var(axis=(0, 1))
  _close(ref, new.mean, full_mean, ref.FLOAT32_TOL, layer="ghost_batch_norm", kind="stats")
  _close(ref, new.var, full_var, ref.FLOAT32_TOL, layer="ghost_batch_norm", kind="stats")
  mean_of_ghost_vars = x64.reshape(4, 2, 3, 4).var(axis=(1, 2)).mean(0)
  assert np.max(np.abs(mean_of_ghost_vars - full_var)) > 10.0
  # With momentum, the same pooled statistics enter the EMA.
  _, new = F.ghost_batch_norm(x, None, None, stats, virtual_batch_size=4, train=True,
                              momentum=0.75)
  _close(ref, new.mean, 0.75 * stats.mean.astype(np.float64) + 0.25 * full_mean,
         ref.FLOAT32_TOL, layer="ghost_batch_norm", kind="stats")
  _close(ref, new.var, 0.75 * stats.var.astype(np.float64) + 0.25 * full_var,
         ref.FLOAT32_TOL, layer="ghost_batch_norm", kind="stats")


@pytest.mark.parametrize("virtual_batch_size", [2, 3, 6])
def test_ghost_batch_norm_normalizes_each_virtual_batch(ref, virtual_batch_size):
  x = _normal(102, (6, 2, 3), loc=1.0, scale=2.0)
  x[3:] += 5.0  # the two halves of the batch differ
  scale, bias = _param(103, (3,), loc=1.0), _param(104, (3,))
  y, new = F.ghost_batch_norm(x, scale, bias, None, virtual_batch_size=virtual_batch_size,
                              train=True)
  assert new is None
  x64 = x.astype(np.float64)
  expected = np.concatenate([
      (x64[i:i + virtual_batch_size] - x64[i:i + virtual_batch_size].mean((0, 1)))
      / np.sqrt(x64[i:i + virtual_batch_size].var((0, 1)) + EPS_BATCH)
      for i in range(0, 6, virtual_batch_size)]) * scale + bias
  _close(ref, y, expected, ref.FLOAT32_TOL, layer="ghost_batch_norm", kind="y")
  full_bn, _ = ref.batch_norm(x, scale, bias, None, train=True)
  if virtual_batch_size == 6:  # one virtual batch: plain batch norm
    _close(ref, y, full_bn, ref.FLOAT32_TOL, layer="ghost_batch_norm", kind="y")
  else:
    assert ref.max_scaled_error(y, full_bn) > 0.1


def test_ghost_batch_norm_eval_is_batch_norm_with_running_statistics(ref):
  x = _normal(105, (4, 3), loc=2.0)
  stats = _running(106, 3, mean_loc=1.0)
  scale, bias = _param(107, (3,), loc=1.0), _param(108, (3,))
  y, new = F.ghost_batch_norm(x, scale, bias, stats, virtual_batch_size=2, train=False)
  ref_y, _ = ref.batch_norm(x, scale, bias, stats, train=False)
  _close(ref, y, ref_y, ref.FLOAT32_TOL, layer="ghost_batch_norm", kind="y")
  np.testing.assert_array_equal(np.asarray(new.mean), stats.mean)
  np.testing.assert_array_equal(np.asarray(new.var), stats.var)


# --------------------------------------------------------------------------------------
# switch_norm specifics.

_BIG = 1e4  # softmax([0, -1e4, -1e4]) is exactly [1, 0, 0] in float32 and float64


def _one_hot_logits(k):
  logits = np.full(3, -_BIG, np.float32)
  logits[k] = 0.0
  return logits


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("kind", ["IN", "LN", "BN"])
def test_switch_norm_one_hot_is_in_ln_bn(ref, kind, train):
  x = _normal(110, (3, 2, 4, 5), loc=0.5, scale=1.5)
  scale, bias = _param(111, (5,), loc=1.0), _param(112, (5,))
  stats = _running(113, 5, mean_loc=0.4)
  logits = _one_hot_logits(["IN", "LN", "BN"].index(kind))
  y, new = F.switch_norm(x, scale, bias, logits, logits, stats, train=train, momentum=0.8)
  # The existing float64 references of the three normalizations.
  expected = {
      "IN": ref.instance_norm(x, scale, bias, epsilon=EPS_BATCH),
      "LN": ref.layer_norm(x, scale.reshape(1, 1, 1, 5), bias.reshape(1, 1, 1, 5),
                           axis=(1, 2, 3), epsilon=EPS_BATCH),
      "BN": ref.batch_norm(x, scale, bias, stats, train=train, momentum=0.8)[0],
  }
  _close(ref, y, expected[kind], ref.FLOAT32_TOL, layer="switch_norm", kind="y")
  for other in set(expected) - {kind}:  # control: they are different normalizations
    assert ref.max_scaled_error(y, expected[other]) > 1e-2, other
  # The BN running statistics follow batch norm's whatever the weighting.
  _, bn_stats = ref.batch_norm(x, None, None, stats, train=train, momentum=0.8)
  _close_stats(ref, new, bn_stats, ref.FLOAT32_TOL, layer="switch_norm")


def test_switch_norm_mixed_mean_and_variance_sources(ref):
  # Mean from IN and variance from BN (and the reverse): the weights act separately.
  x = _normal(114, (3, 4, 5), loc=-1.0, scale=2.0)
  stats = _running(115, 5)
  for mk, vk in [(0, 2), (2, 1), (1, 0)]:
    mw, vw = _one_hot_logits(mk), _one_hot_logits(vk)
    y, _ = F.switch_norm(x, None, None, mw, vw, stats, train=True)
    expected, _ = ref.switch_norm(x, None, None, mw, vw, stats, train=True)
    _close(ref, y, expected, ref.FLOAT32_TOL, layer="switch_norm", kind="y")
    x64 = x.astype(np.float64)
    means = [x64.mean(1, keepdims=True), x64.mean((1, 2), keepdims=True),
             x64.mean((0, 1), keepdims=True)]
    variances = [x64.var(1, keepdims=True), x64.var((1, 2), keepdims=True),
                 x64.var((0, 1), keepdims=True)]
    by_hand = (x64 - means[mk]) / np.sqrt(variances[vk] + EPS_BATCH)
    _close(ref, y, by_hand, ref.FLOAT32_TOL, layer="switch_norm", kind="y")


def test_switch_norm_eval_uses_running_batch_statistics(ref):
  x = _normal(116, (3, 4, 5), loc=0.5)
  mw, vw = SWITCH_LOGITS
  stats_a, stats_b = _running(117, 5), _running(118, 5, mean_loc=2.0, var_scale=3.0)
  y_a, new = F.switch_norm(x, None, None, mw, vw, stats_a, train=False)
  y_b, _ = F.switch_norm(x, None, None, mw, vw, stats_b, train=False)
  for y, s in ((y_a, stats_a), (y_b, stats_b)):
    expected, _ = ref.switch_norm(x, None, None, mw, vw, s, train=False)
    _close(ref, y, expected, ref.FLOAT32_TOL, layer="switch_norm", kind="y")
  assert ref.max_scaled_error(y_a, y_b) > 0.1
  np.testing.assert_array_equal(np.asarray(new.mean), stats_a.mean)
  np.testing.assert_array_equal(np.asarray(new.var), stats_a.var)


@hypothesis.given(logits=st.lists(st.floats(-4, 4), min_size=6, max_size=6),
                  train=st.booleans())
@HYPOTHESIS
def test_switch_norm_property_mixture(ref, logits, train):
  x = _normal(119, (2, 3, 4), loc=1.0, scale=1.5)
  scale, bias = _param(120, (4,), loc=1.0), _param(121, (4,))
  stats = _running(122, 4)
  mw, vw = np.asarray(logits[:3], np.float32), np.asarray(logits[3:], np.float32)
  y, new = F.switch_norm(x, scale, bias, mw, vw, stats, train=train)
  expected, expected_stats = ref.switch_norm(x, scale, bias, mw, vw, stats, train=train)
  _close(ref, y, expected, ref.FLOAT32_TOL, layer="switch_norm", kind="y")
  _close_stats(ref, new, expected_stats, ref.FLOAT32_TOL, layer="switch_norm")


# --------------------------------------------------------------------------------------
# EvoNorm specifics.


@pytest.mark.parametrize("train", [True, False])
def test_evonorm_b0_takes_both_branches_of_the_max(ref, train):
  x = _normal(130, (4, 3, 6), loc=0.3, scale=1.5)
  v = _evonorm_v(131, 6)
  stats = _running(132, 6)
  y, new = F.evonorm_b0(x, None, None, v, stats, train=train, momentum=0.9)
  expected, expected_stats = ref.evonorm_b0(x, None, None, v, stats, train=train,
                                            momentum=0.9)
  _close(ref, y, expected, ref.FLOAT32_TOL, layer="evonorm_b0", kind="y")
  _close_stats(ref, new, expected_stats, ref.FLOAT32_TOL, layer="evonorm_b0")
  x64 = x.astype(np.float64)
  bn_var = x64.var((0, 1)) if train else stats.var.astype(np.float64)
  instance_branch = v * x64 + np.sqrt(x64.var(1, keepdims=True) + EPS_BATCH)
  takes_instance = instance_branch > np.sqrt(bn_var + EPS_BATCH)
  assert 0.1 < takes_instance.mean() < 0.9


def test_evonorm_b0_eval_depends_on_running_variance_only(ref):
  x = _normal(133, (2, 3, 4))
  v = _evonorm_v(134, 4)
  a = F.BatchStats(np.zeros(4, np.float32), np.full(4, 0.5, np.float32))
  b = F.BatchStats(np.full(4, 9.0, np.float32), np.full(4, 0.5, np.float32))
  c = F.BatchStats(np.zeros(4, np.float32), np.full(4, 4.0, np.float32))
  ya, yb, yc = (F.evonorm_b0(x, None, None, v, s, train=False)[0] for s in (a, b, c))
  np.testing.assert_array_equal(np.asarray(ya), np.asarray(yb))  # mean is unused
  _close(ref, yc, ref.evonorm_b0(x, None, None, v, c, train=False)[0], ref.FLOAT32_TOL,
         layer="evonorm_b0", kind="y")
  assert ref.max_scaled_error(ya, yc) > 0.05


@pytest.mark.parametrize("kwargs", [dict(num_groups=1), dict(num_groups=2),
                                    dict(num_groups=6), dict(num_groups=None, group_size=3)])
def test_evonorm_s0_groups(ref, kwargs):
  x = _normal(135, (3, 2, 2, 6), loc=0.5, scale=1.5)
  x[..., 3:] *= 4.0  # groups with different scales
  scale, bias, v = _param(136, (6,), loc=1.0), _param(137, (6,)), _evonorm_v(138, 6)
  y = F.evonorm_s0(x, scale, bias, v, **kwargs)
  _close(ref, y, ref.evonorm_s0(x, scale, bias, v, **kwargs, epsilon=EPS_BATCH),
         ref.FLOAT32_TOL, layer="evonorm_s0", kind="y")


# --------------------------------------------------------------------------------------
# Running statistics of a feature without any valid value this batch are kept.

_STAT_LAYERS = {
    "batch_renorm": lambda x, m, s: F.batch_renorm(
        x, None, None, F.BatchRenormStats(s.mean, s.var, np.int32(0)), train=True,
        momentum=0.5, mask=m)[1],
    "ghost_batch_norm": lambda x, m, s: F.ghost_batch_norm(
        x, None, None, s, virtual_batch_size=2, train=True, momentum=0.5, mask=m)[1],
    "switch_norm": lambda x, m, s: F.switch_norm(
        x, None, None, *SWITCH_LOGITS, s, train=True, momentum=0.5, mask=m)[1],
    "evonorm_b0": lambda x, m, s: F.evonorm_b0(
        x, None, None, _evonorm_v(0, 6), s, train=True, momentum=0.5, mask=m)[1],
}


@pytest.mark.parametrize("name", list(_STAT_LAYERS))
def test_feature_without_valid_values_keeps_running_statistics(ref, name):
  x = _normal(145, (4, 5, 6), loc=1.0)
  mask = SEQ_MASK & (np.arange(6) != 2)  # channel 2 is never valid
  stats = _running(146, 6, mean_loc=3.0)
  new = _STAT_LAYERS[name](_fill_masked(x, mask, np.nan), mask, stats)
  _, expected = ref.batch_norm(x, None, None, stats, train=True, momentum=0.5, mask=mask)
  _close_stats(ref, new, expected, ref.FLOAT32_TOL, layer=name)
  assert new.mean[2] == stats.mean[2] and new.var[2] == stats.var[2]


# --------------------------------------------------------------------------------------
# chex variants: the layers with running statistics, with and without jit.


class FamilyVariantsTest(chex.TestCase):

  @pytest.fixture(autouse=True)
  def _inject_reference(self, ref):
    self.ref = ref

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(
      ("batch_renorm_train", "batch_renorm-train"),
      ("batch_renorm_eval", "batch_renorm-eval"),
      ("ghost_train", "ghost_batch_norm-train-nhwc"),
      ("ghost_eval", "ghost_batch_norm-eval"),
      ("switch_train", "switch_norm-train"),
      ("switch_eval", "switch_norm-eval"),
      ("evonorm_b0_train", "evonorm_b0-train"),
      ("evonorm_b0_eval", "evonorm_b0-eval"),
  )
  def test_masked_train_and_eval(self, name):
    case = CASES[name]
    x = _case_input(case, seed=140)
    y, new = self.variant(case.fn)(x, case.mask)
    ref_y, ref_stats = case.reference(self.ref, x, case.mask)
    _close(self.ref, y, ref_y, self.ref.FLOAT32_TOL, layer=case.layer, kind="y")
    _check_stats(self.ref, case, new, ref_stats, self.ref.FLOAT32_TOL)

  @chex.variants(with_jit=True, without_jit=True)
  def test_batch_renorm_steps_with_schedules_and_warmup(self):
    x, scale, bias, stats = _renorm_data(seed=141)
    stats = stats._replace(step=np.int32(1))
    r_sched = optax.linear_schedule(1.0, 2.5, transition_steps=6, transition_begin=2)

    @self.variant
    def train(x, stats):
      return F.batch_renorm(x, scale, bias, stats, train=True, r_max=r_sched, d_max=0.5,
                            warmup_steps=3, momentum=0.8)

    expected = (stats.mean, stats.var, 1)
    for step in range(1, 5):
      xs = x * (1.0 + 0.2 * step)
      y, stats = train(xs, stats)
      r_max = 1.0 + 1.5 * min(max(step - 2, 0), 6) / 6
      ref_y, expected, _ = self.ref.batch_renorm(
          xs, scale, bias, expected, train=True, r_max=r_max, d_max=0.5, warmup_steps=3,
          momentum=0.8)
      _close(self.ref, y, ref_y, self.ref.FLOAT32_TOL, layer="batch_renorm", kind="y",
             what=f"step {step}")
      _close_stats(self.ref, stats, expected, self.ref.FLOAT32_TOL, layer="batch_renorm")


# --------------------------------------------------------------------------------------
# Bad input.


def _fn_name(name):
  return re.escape(f"jaxnorm.functional.{name}")


_X = np.ones((4, 3, 6), np.float32)
_V6 = np.ones(6, np.float32)
_STATS6 = F.BatchStats(np.zeros(6, np.float32), np.ones(6, np.float32))
_RENORM6 = F.BatchRenormStats(np.zeros(6, np.float32), np.ones(6, np.float32), np.int32(0))

_GROUPED = {
    "group_norm": lambda **kw: F.group_norm(_X, None, None, **kw),
    "evonorm_s0": lambda **kw: F.evonorm_s0(_X, None, None, _V6, **kw),
}


@pytest.mark.parametrize("name", list(_GROUPED))
@pytest.mark.parametrize("kwargs,message", [
    (dict(num_groups=4), "num_groups=4 does not divide the 6 channels"),
    (dict(num_groups=12), "num_groups=12 does not divide the 6 channels"),
    (dict(num_groups=0), "num_groups=0 does not divide the 6 channels"),
    (dict(num_groups=None, group_size=4), "group_size=4 does not divide the 6 channels"),
    (dict(num_groups=2, group_size=3),
     "give exactly one of num_groups and group_size; got num_groups=2, group_size=3"),
    (dict(num_groups=None, group_size=None),
     "give exactly one of num_groups and group_size; got num_groups=None, group_size=None"),
])
def test_error_groups(name, kwargs, message):
  with pytest.raises(ValueError, match=_fn_name(name) + ": " + re.escape(message)):
    _GROUPED[name](**kwargs)


@pytest.mark.parametrize("reduction_axes", [(1,), (0, 1), (-2,)])
def test_error_group_norm_reduction_axes_without_channels(reduction_axes):
  with pytest.raises(ValueError, match=_fn_name("group_norm") + re.escape(
      f": reduction_axes={reduction_axes!r} must include the last (channel) axis 2 of "
      "x.shape=(4, 3, 6)")):
    F.group_norm(_X, None, None, num_groups=2, reduction_axes=reduction_axes)


@pytest.mark.parametrize("axis", [0, -3, (0, 2), (1, -3)])
def test_error_instance_norm_axis_includes_batch(axis):
  with pytest.raises(ValueError, match=_fn_name("instance_norm") + re.escape(
      f": axis={axis!r} includes axis 0, the batch axis of x.shape=(4, 3, 6)")):
    F.instance_norm(_X, None, None, axis=axis)


@pytest.mark.parametrize("virtual_batch_size", [3, 8, 1, 2.0])
def test_error_ghost_virtual_batch_size(virtual_batch_size):
  with pytest.raises(ValueError, match=_fn_name("ghost_batch_norm") + re.escape(
      f": virtual_batch_size={virtual_batch_size!r} must be an int >= 2 that divides the "
      "batch size 4 (x.shape=(4, 3, 6))")):
    F.ghost_batch_norm(_X, None, None, _STATS6, virtual_batch_size=virtual_batch_size,
                       train=True)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("kwargs,message", [
    (dict(r_max=0.5), "r_max must be >= 1; got 0.5."),
    (dict(r_max=0), "r_max must be >= 1; got 0.0."),
    (dict(d_max=-0.1), "d_max must be >= 0; got -0.1."),
    (dict(r_max=optax.linear_schedule(0.9, 3.0, 10)), "r_max must be >= 1; got 0.9"),
    (dict(d_max=optax.linear_schedule(-1.0, 3.0, 10)), "d_max must be >= 0; got -1.0"),
])
def test_error_batch_renorm_limits(kwargs, message, train):
  with pytest.raises(ValueError, match=_fn_name("batch_renorm") + ": " + re.escape(message)):
    F.batch_renorm(_X, None, None, _RENORM6, train=train, **kwargs)


@pytest.mark.parametrize("name,schedule,step,value", [
    ("r_max", optax.linear_schedule(1.0, 0.5, 10), 5, 0.75),
    ("r_max", optax.linear_schedule(0.9, 3.0, 10), 0, 0.9),
    ("d_max", optax.linear_schedule(0.0, -2.0, 4), 2, -1.0),
])
def test_error_batch_renorm_schedule_below_its_bound_at_the_current_step(
    name, schedule, step, value):
  # A schedule valid at step 0 but not at the (concrete) current step is rejected too:
  # r_max < 1 would make clip(r, 1/r_max, r_max) return r_max for every feature.
  stats = _RENORM6._replace(step=np.int32(step))
  bound = {"r_max": 1, "d_max": 0}[name]
  # (float32 schedules: 0.9 reads 0.9000000953674316)
  with pytest.raises(ValueError, match=_fn_name("batch_renorm") + re.escape(
      f": {name} must be >= {bound}; got {value!r}") + r"\d*" + re.escape(
          f" at step {step}.")):
    F.batch_renorm(_normal(150, (4, 3, 6)), None, None, stats, train=True,
                   **{name: schedule})


@pytest.mark.parametrize("which,shape", [("mean_weights", (2,)), ("mean_weights", (1, 3)),
                                         ("var_weights", (4,)), ("var_weights", ())])
def test_error_switch_norm_weights_shape(which, shape):
  weights = {"mean_weights": np.zeros(3, np.float32), "var_weights": np.zeros(3, np.float32)}
  weights[which] = np.zeros(shape, np.float32)
  with pytest.raises(ValueError, match=_fn_name("switch_norm") + re.escape(
      f": {which} must have shape (3,) (logits of IN, LN, BN); got {shape}")):
    F.switch_norm(_X, None, None, weights["mean_weights"], weights["var_weights"], _STATS6,
                  train=True)


_MASKED_CALLS = {
    "group_norm": lambda m: F.group_norm(_X, None, None, num_groups=2, mask=m),
    "instance_norm": lambda m: F.instance_norm(_X, None, None, mask=m),
    "rms_norm": lambda m: F.rms_norm(_X, None, mask=m),
    "batch_renorm": lambda m: F.batch_renorm(_X, None, None, _RENORM6, train=True, mask=m),
    "ghost_batch_norm": lambda m: F.ghost_batch_norm(_X, None, None, _STATS6,
                                                     virtual_batch_size=2, train=True,
                                                     mask=m),
    "switch_norm": lambda m: F.switch_norm(_X, None, None, np.zeros(3), np.zeros(3),
                                           _STATS6, train=True, mask=m),
    "evonorm_b0": lambda m: F.evonorm_b0(_X, None, None, _V6, _STATS6, train=True, mask=m),
    "evonorm_s0": lambda m: F.evonorm_s0(_X, None, None, _V6, num_groups=2, mask=m),
}


@pytest.mark.parametrize("mask_shape", [(3, 3, 6), (4, 3, 5), (4, 4, 1, 6)])
@pytest.mark.parametrize("name", list(_MASKED_CALLS))
def test_error_mask_shape(name, mask_shape):
  with pytest.raises(ValueError, match=_fn_name(name) + re.escape(
      f": mask.shape={mask_shape} does not broadcast to x.shape=(4, 3, 6)")):
    _MASKED_CALLS[name](np.ones(mask_shape, bool))


_AXIS_NAME_CALLS = {
    "group_norm": lambda x: F.group_norm(x, None, None, num_groups=2, axis_name="devices"),
    "instance_norm": lambda x: F.instance_norm(x, None, None, axis_name="devices"),
    "rms_norm": lambda x: F.rms_norm(x, None, axis_name="devices"),
    "batch_renorm": lambda x: F.batch_renorm(x, None, None, _RENORM6, train=True,
                                             axis_name="devices")[0],
    "evonorm_s0": lambda x: F.evonorm_s0(x, None, None, _V6, num_groups=2,
                                         axis_name="devices"),
}


@pytest.mark.parametrize("use_jit", [False, True])
@pytest.mark.parametrize("name", list(_AXIS_NAME_CALLS))
def test_error_unbound_axis_name(name, use_jit):
  fn = jax.jit(_AXIS_NAME_CALLS[name]) if use_jit else _AXIS_NAME_CALLS[name]
  with pytest.raises(ValueError, match=r"axis_name='devices' is not bound here.*"
                     r"jax\.shard_map.*jax\.pmap\(\.\.\., axis_name='devices'\)"):
    fn(_X)


# Bad-input rules of DESIGN.md ("messages name the function, the argument, the rule,
# the value received") for the evaluation paths and the less common arguments.


@pytest.mark.parametrize("name", ["batch_renorm", "ghost_batch_norm"])
def test_error_eval_path_names_the_function_called(name):
  mean, var = np.zeros(5, np.float32), np.ones(5, np.float32)
  calls = {
      "batch_renorm": lambda: F.batch_renorm(
          _X, None, None, F.BatchRenormStats(mean, var, np.int32(0)), train=False),
      "ghost_batch_norm": lambda: F.ghost_batch_norm(
          _X, None, None, F.BatchStats(mean, var), virtual_batch_size=2, train=False),
  }
  with pytest.raises(ValueError, match=_fn_name(name) + re.escape(
      ": stats.mean has shape (5,) but must have shape (6,)")):
    calls[name]()


def test_ghost_batch_norm_accepts_numpy_integer_virtual_batch_size(ref):
  x = _normal(160, (4, 3))
  y, _ = F.ghost_batch_norm(x, None, None, None, virtual_batch_size=np.int64(2),
                            train=True)
  _close(ref, y, ref.ghost_batch_norm(x, None, None, None, virtual_batch_size=2,
                                      train=True)[0], ref.FLOAT32_TOL,
         layer="ghost_batch_norm", kind="y")


@pytest.mark.parametrize("name", ["evonorm_b0", "evonorm_s0"])
def test_error_evonorm_v_shape(name):
  v = np.ones(5, np.float32)
  calls = {
      "evonorm_b0": lambda: F.evonorm_b0(_X, None, None, v, _STATS6, train=True),
      "evonorm_s0": lambda: F.evonorm_s0(_X, None, None, v, num_groups=2),
  }
  with pytest.raises(ValueError, match=_fn_name(name) + r": v .*\(5,\)"):
    calls[name]()
