"""Masked positions influence nothing, forward or backward, in every masked function.

NaN, +inf, -inf or a huge finite value at masked positions must not reach the outputs
at valid positions, the statistics, or any gradient (input, scale, bias and the other
parameters), whether the loss ignores masked outputs with ``jnp.where`` or not at all.
Forward values are compared with the float64 references of conftest.py (which never
look at masked values); gradients of the five core normalizations with JAX's gradient
of the plain formula in float64 with the padding replaced by 0, and gradients of the
rest with the same call on zero padding (the property itself: nothing changes).
Tolerances: ``FLOAT32_TOL`` for values, ``GRAD_TOL`` for gradients.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm import functional as F

_C = 4
_X = np.random.default_rng(11).normal(1.0, 2.0, (6, 3, _C)).astype(np.float32)
_MASK = np.random.default_rng(12).random((6, 3, 1)) < 0.6
_MASK[0, 0], _MASK[1, 2], _MASK[5, 1] = False, True, True  # the first position is padding
_SCALE = np.linspace(0.5, 1.5, _C).astype(np.float32)
_BIAS = np.linspace(-0.3, 0.3, _C).astype(np.float32)
_W = np.random.default_rng(13).normal(size=_X.shape).astype(np.float32)
_STATS = F.BatchStats(jnp.full(_C, 0.5), jnp.full(_C, 2.0))
_RENORM = F.BatchRenormStats(jnp.full(_C, 0.5), jnp.full(_C, 2.0), jnp.int32(0))
_WHITENING = F.WhiteningStats(  # a mean and a whitening matrix that are not trivial
    jnp.full(_C, 0.5), jnp.asarray(np.eye(_C, dtype=np.float32)[None] * 0.7 + 0.1))
_PADDING = [np.nan, np.inf, -np.inf, 3e38]


def _padded(value):
  return np.where(np.broadcast_to(_MASK, _X.shape), _X, np.float32(value))


# name -> (call on (x, scale, bias, mask), float64 reference or None, plain formula or
#          None). Every call returns the output (the statistics are checked apart).
def _calls(ref):
  v = np.full(_C, 0.7, np.float32)
  weights = np.array([0.2, -0.1, 0.4], np.float32)
  return {
      "batch_norm": (
          lambda x, s, b, m: F.batch_norm(x, s, b, _STATS, train=True, mask=m)[0],
          lambda x, s, b, m: ref.batch_norm(x, s, b, _STATS, train=True, mask=m)[0],
          lambda x, s, b, m: ref.plain_batch_norm(x, s, b, mask=m)),
      "batch_norm_eval": (
          lambda x, s, b, m: F.batch_norm(x, s, b, _STATS, train=False, mask=m)[0],
          lambda x, s, b, m: ref.batch_norm(x, s, b, _STATS, train=False)[0], None),
      "layer_norm": (
          lambda x, s, b, m: F.layer_norm(x, jnp.broadcast_to(s, (3, _C)),
                                          jnp.broadcast_to(b, (3, _C)), axis=(1, 2),
                                          mask=m),
          lambda x, s, b, m: ref.layer_norm(
              x, np.broadcast_to(s, (3, _C)), np.broadcast_to(b, (3, _C)), axis=(1, 2),
              mask=m),
          lambda x, s, b, m: ref.plain_layer_norm(
              x, jnp.broadcast_to(s, (3, _C)), jnp.broadcast_to(b, (3, _C)), axis=(1, 2),
              mask=m)),
      "group_norm": (
          lambda x, s, b, m: F.group_norm(x, s, b, num_groups=2, mask=m),
          lambda x, s, b, m: ref.group_norm(x, s, b, num_groups=2, mask=m),
          lambda x, s, b, m: ref.plain_group_norm(x, s, b, num_groups=2, mask=m)),
      "instance_norm": (
          lambda x, s, b, m: F.instance_norm(x, s, b, mask=m),
          lambda x, s, b, m: ref.instance_norm(x, s, b, mask=m),
          lambda x, s, b, m: ref.plain_instance_norm(x, s, b, mask=m)),
      "rms_norm": (
          lambda x, s, b, m: F.rms_norm(x, s, mask=m) + b,
          lambda x, s, b, m: ref.rms_norm(x, s, mask=m) + b,
          lambda x, s, b, m: ref.plain_rms_norm(x, s, mask=m) + b),
      "batch_renorm": (
          lambda x, s, b, m: F.batch_renorm(x, s, b, _RENORM, train=True, mask=m)[0],
          lambda x, s, b, m: ref.batch_renorm(x, s, b, _RENORM, train=True, r_max=3.0,
                                              d_max=5.0, mask=m)[0], None),
      "batch_renorm_eval": (
          lambda x, s, b, m: F.batch_renorm(x, s, b, _RENORM, train=False, mask=m)[0],
          None, None),
      "ghost_batch_norm": (
          lambda x, s, b, m: F.ghost_batch_norm(x, s, b, _STATS, virtual_batch_size=3,
                                                train=True, mask=m)[0],
          lambda x, s, b, m: ref.ghost_batch_norm(x, s, b, _STATS, virtual_batch_size=3,
                                                  train=True, mask=m)[0], None),
      "switch_norm": (
          lambda x, s, b, m: F.switch_norm(x, s, b, weights, weights[::-1], _STATS,
                                           train=True, mask=m)[0],
          lambda x, s, b, m: ref.switch_norm(x, s, b, weights, weights[::-1], _STATS,
                                             train=True, mask=m)[0], None),
      "switch_norm_eval": (
          lambda x, s, b, m: F.switch_norm(x, s, b, weights, weights[::-1], _STATS,
                                           train=False, mask=m)[0], None, None),
      "evonorm_b0": (
          lambda x, s, b, m: F.evonorm_b0(x, s, b, v, _STATS, train=True, mask=m)[0],
          lambda x, s, b, m: ref.evonorm_b0(x, s, b, v, _STATS, train=True, mask=m)[0],
          None),
      "evonorm_s0": (
          lambda x, s, b, m: F.evonorm_s0(x, s, b, v, num_groups=2, mask=m),
          lambda x, s, b, m: ref.evonorm_s0(x, s, b, v, num_groups=2, mask=m), None),
      "revin_normalize": (
          lambda x, s, b, m: F.revin_normalize(x, s, b, mask=m)[0], None, None),
      "decorrelated_batch_norm": (
          lambda x, s, b, m: F.decorrelated_batch_norm(
              x, s, b, _WHITENING, train=True, group_size=_C, mask=m)[0], None, None),
      "decorrelated_batch_norm_eval": (
          lambda x, s, b, m: F.decorrelated_batch_norm(
              x, s, b, _WHITENING, train=False, group_size=_C, mask=m)[0], None, None),
      "iter_norm": (
          lambda x, s, b, m: F.iter_norm(x, s, b, _WHITENING, train=True, group_size=_C,
                                         mask=m)[0], None, None),
  }


_NAMES = ["batch_norm", "batch_norm_eval", "layer_norm", "group_norm", "instance_norm",
          "rms_norm", "batch_renorm", "batch_renorm_eval", "ghost_batch_norm",
          "switch_norm", "switch_norm_eval", "evonorm_b0", "evonorm_s0", "revin_normalize",
          "decorrelated_batch_norm", "decorrelated_batch_norm_eval", "iter_norm"]


def _valid(y):
  return np.where(np.broadcast_to(_MASK, _X.shape), np.asarray(y, np.float64), 0.0)


@pytest.mark.parametrize("name", _NAMES)
def test_padding_reaches_no_valid_output_and_no_gradient(ref, name):
  call, expected, plain = _calls(ref)[name]

  def loss(x, s, b):  # the usual masked loss: masked outputs selected away
    return jnp.sum(jnp.where(_MASK, _W * call(x, s, b, _MASK), 0.0))

  run = jax.jit(lambda x, s, b: (call(x, s, b, _MASK),
                                 jax.grad(loss, argnums=(0, 1, 2))(x, s, b)))
  y0, grads0 = run(_padded(0.0), _SCALE, _BIAS)
  for value in _PADDING:
    y, grads = run(_padded(value), _SCALE, _BIAS)
    if expected is not None:
      ref.assert_close(_valid(y), _valid(expected(_X, _SCALE, _BIAS, _MASK)),
                       ref.FLOAT32_TOL, what=f"{name} y, padding {value}")
    ref.assert_close(_valid(y), _valid(y0), ref.FLOAT32_TOL, what=f"{name} {value}")
    for label, g, g0 in zip(("x", "scale", "bias"), grads, grads0):
      assert np.all(np.isfinite(np.asarray(g))), (name, value, label)
      ref.assert_close(g, g0, ref.GRAD_TOL, what=f"{name} d{label}, padding {value}")
    # The gradient at masked positions is exactly 0: they influence nothing.
    assert np.all(np.asarray(grads[0])[~np.broadcast_to(_MASK, _X.shape)] == 0)
  if plain is not None:
    expected_grads = ref.grad64(
        lambda x, s, b: jnp.sum(jnp.where(_MASK, _W * plain(x, s, b, _MASK), 0.0)),
        (_padded(0.0), _SCALE, _BIAS), argnums=(0, 1, 2))
    for label, g, e in zip(("x", "scale", "bias"), grads0, expected_grads):
      ref.assert_close(g, e, ref.GRAD_TOL, what=f"{name} d{label} vs plain formula")


@pytest.mark.parametrize("name", ["batch_norm", "layer_norm", "switch_norm", "evonorm_s0"])
def test_masked_outputs_used_by_the_loss(ref, name):
  """A loss that multiplies by the mask (0 * output) instead of selecting: finite
  padding gives the exact gradient, and masked outputs stay what flax computes."""
  call, _, plain = _calls(ref)[name]
  mask_f = _MASK.astype(np.float32)

  def loss(x, s, b):
    return jnp.sum(mask_f * _W * call(x, s, b, _MASK))

  x = _padded(5.0)
  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(x, _SCALE, _BIAS)
  for g in grads:
    assert np.all(np.isfinite(np.asarray(g)))
  if plain is not None:
    expected = ref.grad64(lambda x, s, b: jnp.sum(mask_f * _W * plain(x, s, b, _MASK)),
                          (x, _SCALE, _BIAS), argnums=(0, 1, 2))
    for g, e in zip(grads, expected):
      ref.assert_close(g, e, ref.GRAD_TOL)


@pytest.mark.parametrize("value", _PADDING)
def test_statistics_ignore_the_padding(ref, value):
  x = _padded(value)
  reduce = (0, 1)
  _, stats = jax.jit(lambda x: F.batch_norm(x, None, None, _STATS, train=True,
                                            mask=_MASK))(x)
  _, expected = ref.batch_norm(_X, None, None, _STATS, train=True, mask=_MASK)
  ref.assert_close(stats.mean, expected[0], ref.FLOAT32_TOL)
  ref.assert_close(stats.var, expected[1], ref.FLOAT32_TOL)
  for name in ("switch_norm", "evonorm_b0"):
    call = {"switch_norm": lambda x: F.switch_norm(
                x, None, None, np.zeros(3), np.zeros(3), _STATS, train=True, mask=_MASK),
            "evonorm_b0": lambda x: F.evonorm_b0(
                x, None, None, np.ones(_C), _STATS, train=True, mask=_MASK)}[name]
    _, new = jax.jit(call)(x)
    ref.assert_close(new.mean, expected[0], ref.FLOAT32_TOL, what=name)
    ref.assert_close(new.var, expected[1], ref.FLOAT32_TOL, what=name)
  mean_grad = jax.jit(jax.grad(lambda x: jnp.sum(F.moments(x, reduce, mask=_MASK)[1])))(x)
  assert np.all(np.isfinite(np.asarray(mean_grad)))


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_forward_mode_ignores_the_padding(ref, value):
  tangent = np.random.default_rng(14).normal(size=_X.shape).astype(np.float32)
  for name in ("batch_norm", "layer_norm", "group_norm", "rms_norm"):
    call, _, plain = _calls(ref)[name]
    _, dy = jax.jit(lambda x, t: jax.jvp(lambda x: call(x, _SCALE, _BIAS, _MASK), (x,),
                                         (t,)))(_padded(value), tangent)
    _, expected = ref.jvp64(lambda x: plain(x, _SCALE, _BIAS, _MASK), (_padded(0.0),),
                            (tangent,))
    ref.assert_close(_valid(dy), _valid(expected), ref.GRAD_TOL, what=name)


def test_padded_outputs_are_nan_where_the_padding_is_not_finite():
  """The output at a masked NaN/inf position is NaN (no made-up number); finite padding
  is normalized with the valid statistics, as in flax."""
  y = np.asarray(F.batch_norm(_padded(np.inf), None, None, None, train=True,
                              mask=_MASK)[0])
  padding = ~np.broadcast_to(_MASK, _X.shape)
  assert np.all(np.isnan(y[padding])) and np.all(np.isfinite(y[~padding]))
  y = np.asarray(F.batch_norm(_padded(2.0), None, None, None, train=True, mask=_MASK)[0])
  assert np.all(np.isfinite(y))
