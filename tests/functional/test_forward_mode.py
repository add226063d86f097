"""Forward-mode and higher-order derivatives of every normalization built on ``_normalize``.

``jax.jvp``, ``jax.jacfwd``, ``jax.jacrev``, forward-over-reverse Hessians
(``jax.hessian``), reverse-over-forward (``jax.jacrev(jax.jacfwd)``) and
reverse-over-reverse are compared with JAX's own derivatives of the plain jnp formulas
of conftest.py, evaluated in float64 (x64 enabled locally) -- never with jaxnorm.
Tolerances: float32 results within 1e-4 (``GRAD_TOL``) relative to max(1, |reference|).

The reverse-mode residuals are checked too: the VJP keeps one array of ``x``'s size
(the centred values) and per-group vectors, as the closed-form backward pass did.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm import functional as F

_RNG = np.random.default_rng(2024)


def _normal(shape, loc=0.0, scale=1.0):
  return _RNG.normal(loc, scale, shape).astype(np.float32)


# name -> (jaxnorm function of (x, scale, bias), plain formula of (x, scale, bias),
#          x shape, parameter shape). scale/bias may be None in the calls below.
def _cases(ref):
  stats = F.BatchStats(jnp.zeros(3), jnp.ones(3))
  return {
      "batch_norm": (
          lambda x, s, b: F.batch_norm(x, s, b, stats, train=True)[0],
          lambda x, s, b: ref.plain_batch_norm(x, s, b), (5, 3), (3,)),
      "batch_norm_nhwc_mask": (
          lambda x, s, b: F.batch_norm(x, s, b, None, train=True, mask=_MASK_4D)[0],
          lambda x, s, b: ref.plain_batch_norm(x, s, b, mask=_MASK_4D), (3, 2, 2, 3),
          (3,)),
      "layer_norm": (
          lambda x, s, b: F.layer_norm(x, s, b),
          lambda x, s, b: ref.plain_layer_norm(x, s, b), (3, 4), (4,)),
      "layer_norm_two_axes_mask": (
          lambda x, s, b: F.layer_norm(x, s, b, axis=(1, 2), mask=_MASK_LN),
          lambda x, s, b: ref.plain_layer_norm(x, s, b, axis=(1, 2), mask=_MASK_LN),
          (2, 3, 2), (3, 2)),
      "group_norm": (
          lambda x, s, b: F.group_norm(x, s, b, num_groups=2),
          lambda x, s, b: ref.plain_group_norm(x, s, b, num_groups=2), (2, 3, 4), (4,)),
      "instance_norm": (
          lambda x, s, b: F.instance_norm(x, s, b),
          lambda x, s, b: ref.plain_instance_norm(x, s, b), (2, 4, 3), (3,)),
      "rms_norm": (
          lambda x, s, b: F.rms_norm(x, s) + (0 if b is None else b),
          lambda x, s, b: ref.plain_rms_norm(x, s) + (0 if b is None else b), (3, 4),
          (4,)),
      "ghost_batch_norm": (
          lambda x, s, b: F.ghost_batch_norm(x, s, b, None, virtual_batch_size=2,
                                             train=True)[0],
          lambda x, s, b: jnp.concatenate([ref.plain_batch_norm(x[:2], s, b),
                                           ref.plain_batch_norm(x[2:], s, b)]),
          (4, 3), (3,)),
  }


_MASK_4D = np.array([True, True, False])[:, None, None, None]
_MASK_LN = np.array([[True, False, True], [True, True, True]])[:, :, None]

_NAMES = ["batch_norm", "batch_norm_nhwc_mask", "layer_norm", "layer_norm_two_axes_mask",
          "group_norm", "instance_norm", "rms_norm", "ghost_batch_norm"]


def _inputs(case):
  _, _, shape, pshape = case
  x = _normal(shape, loc=1.5, scale=2.0)
  scale = _normal(pshape, loc=1.0, scale=0.3)
  bias = _normal(pshape, scale=0.5)
  return x, scale, bias


@pytest.mark.parametrize("name", _NAMES)
def test_jvp_matches_the_plain_formula(ref, name):
  case = _cases(ref)[name]
  fn, plain = case[0], case[1]
  primals = _inputs(case)
  tangents = tuple(_normal(p.shape) for p in primals)
  y, dy = jax.jit(lambda p, t: jax.jvp(fn, p, t))(primals, tangents)
  y64, dy64 = ref.jvp64(plain, primals, tangents)
  ref.assert_close(y, y64, ref.FLOAT32_TOL, what=f"{name} y")
  ref.assert_close(dy, dy64, ref.GRAD_TOL, what=f"{name} dy")
  # Forward in x only (the parameters closed over: symbolic zero tangents).
  _, dy_x = jax.jit(lambda x, t: jax.jvp(lambda x: fn(x, *primals[1:]), (x,), (t,)))(
      primals[0], tangents[0])
  _, dy64_x = ref.jvp64(lambda x, s, b: plain(x, s, b), primals,
                        (tangents[0], np.zeros_like(tangents[1]),
                         np.zeros_like(tangents[2])))
  ref.assert_close(dy_x, dy64_x, ref.GRAD_TOL, what=f"{name} dy (x only)")


@pytest.mark.parametrize("name", ["batch_norm_nhwc_mask", "layer_norm_two_axes_mask",
                                  "group_norm", "rms_norm"])
def test_jacfwd_equals_jacrev_equals_plain_jacobian(ref, name):
  case = _cases(ref)[name]
  fn, plain = case[0], case[1]
  x, scale, bias = _inputs(case)
  fwd = jax.jit(jax.jacfwd(fn, argnums=(0, 1, 2)))(x, scale, bias)
  rev = jax.jit(jax.jacrev(fn, argnums=(0, 1, 2)))(x, scale, bias)
  with jax.enable_x64(True):
    expected = jax.jit(jax.jacfwd(plain, argnums=(0, 1, 2)))(
        *(jnp.asarray(a, jnp.float64) for a in (x, scale, bias)))
  for i in range(3):
    ref.assert_close(fwd[i], np.asarray(expected[i]), ref.GRAD_TOL, what=f"jacfwd[{i}]")
    ref.assert_close(rev[i], np.asarray(expected[i]), ref.GRAD_TOL, what=f"jacrev[{i}]")


@pytest.mark.parametrize("name,compositions", [
    ("batch_norm", ("fwd-over-rev", "rev-over-fwd", "rev-over-rev", "fwd-over-fwd")),
    ("layer_norm_two_axes_mask", ("fwd-over-rev", "rev-over-fwd")),
    ("rms_norm", ("fwd-over-rev",)),
])
def test_second_order_in_every_composition(ref, name, compositions):
  case = _cases(ref)[name]
  fn, plain = case[0], case[1]
  x, scale, bias = _inputs(case)
  w = _normal(x.shape)

  def loss(x, s):
    return jnp.sum(w * jnp.sin(fn(x, s, bias)))

  def plain_loss(x, s):
    return jnp.sum(w * jnp.sin(plain(x, s, bias)))

  expected = ref.hessian64(plain_loss, (x, scale), argnums=(0, 1))
  every = {
      "fwd-over-rev": jax.hessian(loss, argnums=(0, 1)),  # jacfwd(jacrev)
      "rev-over-fwd": jax.jacrev(jax.jacfwd(loss, argnums=(0, 1)), argnums=(0, 1)),
      "rev-over-rev": jax.jacrev(jax.jacrev(loss, argnums=(0, 1)), argnums=(0, 1)),
      "fwd-over-fwd": jax.jacfwd(jax.jacfwd(loss, argnums=(0, 1)), argnums=(0, 1)),
  }
  for label in compositions:
    got = jax.jit(every[label])(x, scale)
    for i in range(2):
      for j in range(2):
        ref.assert_close(got[i][j], expected[i][j], ref.GRAD_TOL,
                         what=f"{name} {label} H[{i}][{j}]")


def test_batch_renorm_forward_mode(ref):
  """r and d are constants of the derivative (stop_gradient), in both modes."""
  x = _normal((6, 3), loc=1.0, scale=2.0)
  stats = F.BatchRenormStats(jnp.full(3, 0.5), jnp.full(3, 2.0), jnp.int32(0))

  def fn(x):
    return F.batch_renorm(x, None, None, stats, train=True, r_max=1.5, d_max=0.5)[0]

  def plain(x):
    mean = jnp.mean(x, 0)
    var = jnp.mean(jnp.square(x - mean), 0)
    sigma = jnp.sqrt(stats.var + 1e-5)
    r = jax.lax.stop_gradient(jnp.clip(jnp.sqrt(var + 1e-5) / sigma, 1 / 1.5, 1.5))
    d = jax.lax.stop_gradient(jnp.clip((mean - stats.mean) / sigma, -0.5, 0.5))
    return (x - mean) / jnp.sqrt(var + 1e-5) * r + d

  t = _normal(x.shape)
  _, dy = jax.jit(lambda x, t: jax.jvp(fn, (x,), (t,)))(x, t)
  _, dy64 = ref.jvp64(plain, (x,), (t,))
  ref.assert_close(dy, dy64, ref.GRAD_TOL, what="batch_renorm jvp")
  ref.assert_close(jax.jit(jax.jacfwd(fn))(x), jax.jit(jax.jacrev(fn))(x), ref.GRAD_TOL,
                   what="fwd vs rev")


@pytest.mark.parametrize("name", ["switch_norm", "evonorm_b0", "evonorm_s0", "moments"])
def test_plain_jax_layers_agree_in_both_modes(ref, name):
  """Layers differentiated by JAX itself: forward and reverse Jacobians agree."""
  x = _normal((4, 2, 2, 4), loc=0.5)
  stats = F.BatchStats(jnp.zeros(4), jnp.ones(4))
  fns = {
      "switch_norm": lambda x: F.switch_norm(x, None, None, jnp.array([0.1, 0.2, 0.3]),
                                             jnp.array([0.3, 0.1, 0.2]), stats,
                                             train=True)[0],
      "evonorm_b0": lambda x: F.evonorm_b0(x, None, None, jnp.full(4, 0.5), stats,
                                           train=True)[0],
      "evonorm_s0": lambda x: F.evonorm_s0(x, None, None, jnp.full(4, 0.5), num_groups=2),
      "moments": lambda x: jnp.stack(F.moments(x, (0, 1, 2))),
  }
  fn = fns[name]
  ref.assert_close(jax.jit(jax.jacfwd(fn))(x), jax.jit(jax.jacrev(fn))(x), ref.GRAD_TOL,
                   what=name)


def test_forward_mode_under_vmap_and_jit(ref):
  """jvp of a vmapped, jitted layer norm equals the plain formula per example."""
  x = _normal((3, 2, 5), loc=2.0)
  t = _normal(x.shape)
  fn = jax.jit(jax.vmap(lambda x: F.layer_norm(x, None, None)))
  _, dy = jax.jvp(fn, (x,), (t,))
  _, dy64 = ref.jvp64(jax.vmap(lambda x: ref.plain_layer_norm(x, None, None)), (x,), (t,))
  ref.assert_close(dy, dy64, ref.GRAD_TOL)


def test_forward_mode_of_the_statistics_outputs(ref):
  """The mean and variance _normalize returns carry their true tangents (moments agree)."""
  x = _normal((6, 2), loc=3.0)
  t = _normal(x.shape)
  _, (dmean, dvar) = jax.jit(lambda x, t: jax.jvp(lambda x: F.moments(x, 0), (x,), (t,)))(
      x, t)

  def plain(x):
    mean = jnp.mean(x, 0)
    return mean, jnp.mean(jnp.square(x - mean), 0)

  _, (dmean64, dvar64) = ref.jvp64(plain, (x,), (t,))
  ref.assert_close(dmean, dmean64, ref.GRAD_TOL)
  ref.assert_close(dvar, dvar64, ref.GRAD_TOL)


@pytest.mark.parametrize("fn,shape,feature", [
    (lambda x, s, b: F.batch_norm(x, s, b, None, train=True)[0], (64, 16), (16,)),
    (lambda x, s, b: F.layer_norm(x, s, b), (16, 64), (64,)),
    (lambda x, s, b: F.group_norm(x, s, b, num_groups=4), (4, 8, 16), (16,)),
])
def test_reverse_mode_keeps_one_x_sized_residual(fn, shape, feature):
  """The closed-form VJP's memory: one array of x's size, the rest per-group vectors."""
  x = jnp.asarray(_normal(shape))
  scale, bias = jnp.ones(feature), jnp.zeros(feature)
  _, vjp = jax.vjp(jax.jit(fn), x, scale, bias)  # residuals: outputs of the jitted forward
  x_sized = [leaf for leaf in jax.tree.leaves(vjp)
             if hasattr(leaf, "size") and leaf.size >= x.size]
  assert len(x_sized) == 1, [(leaf.shape, leaf.dtype) for leaf in x_sized]
  small = [leaf for leaf in jax.tree.leaves(vjp)
           if hasattr(leaf, "size") and leaf.size < x.size]
  assert sum(leaf.size for leaf in small) <= 16 * max(feature[0], x.size // feature[0])
