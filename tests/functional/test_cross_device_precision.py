"""Sharded statistics keep the single-device precision (8 simulated CPU devices).

With ``axis_name``, the devices agree on one power-of-two scale and one shift (a value
of the data) before summing, so shifted data (mean 1e5 and std 0.1, mean 1e4 and std 1)
normalizes as precisely sharded as on one device. Each case measures the largest error
against a float64 NumPy reference of the whole (unsharded) batch, sharded and on one
device, and requires ``sharded <= 2 * single + 1e-6`` (merging in absolute terms gave
errors of 6e-2 and 3e-4 here, against about 2e-7 and 4e-7 on one device).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxnorm import functional as F

N_DEV = 8

pytestmark = pytest.mark.skipif(
    jax.device_count() < N_DEV, reason="needs 8 (simulated) devices; see conftest.py")

_SHIFTED = [(1e5, 0.1), (1e4, 1.0), (-3e4, 0.5), (0.0, 1e30), (7.0, 1e-30)]


@pytest.fixture(scope="module")
def mesh():
  return Mesh(np.array(jax.devices()[:N_DEV]), ("d",))


def _data(seed, shape, loc, std):
  return (np.random.default_rng(seed).normal(0.0, 1.0, shape) * std + loc).astype(
      np.float32)


def _error(actual, expected):
  return float(np.max(np.abs(np.asarray(actual, np.float64) - expected)))


@pytest.mark.parametrize("loc,std", _SHIFTED)
def test_batch_norm_sharded_over_the_batch(ref, mesh, loc, std):
  x = _data(0, (N_DEV * 32, 5), loc, std)
  stats = F.BatchStats(jnp.zeros(5), jnp.ones(5))
  sharded = jax.jit(jax.shard_map(
      lambda xs: F.batch_norm(xs, None, None, stats, train=True, axis_name="d"),
      mesh=mesh, in_specs=P("d"), out_specs=(P("d"), P())))
  y, new = sharded(x)
  y1, new1 = jax.jit(lambda x: F.batch_norm(x, None, None, stats, train=True))(x)
  expected, (mean, var) = ref.batch_norm(x, None, None, stats, train=True)
  assert _error(y, expected) <= 2 * _error(y1, expected) + 1e-6, (
      _error(y, expected), _error(y1, expected))
  for got, one, want in ((new.mean, new1.mean, mean), (new.var, new1.var, var)):
    finite = np.isfinite(np.asarray(one))  # std 1e30: the variance is beyond float32
    np.testing.assert_array_equal(np.isfinite(np.asarray(got)), finite)
    if finite.any():
      scale = np.maximum(np.abs(want), 1e-30)
      err = np.max(np.abs(np.asarray(got, np.float64) - want)[finite] / scale[finite])
      err1 = np.max(np.abs(np.asarray(one, np.float64) - want)[finite] / scale[finite])
      assert err <= 2 * err1 + 1e-6, (err, err1)


@pytest.mark.parametrize("loc,std", _SHIFTED[:3])
@pytest.mark.parametrize("layer", ["layer_norm", "rms_norm", "group_norm"])
def test_normalized_axis_sharded(ref, mesh, layer, loc, std):
  """The normalized (feature) axis itself is split over the devices."""
  x = _data(1, (4, N_DEV * 8), loc, std)
  calls = {
      "layer_norm": (lambda x, **kw: F.layer_norm(x, None, None, **kw),
                     lambda x: ref.layer_norm(x, None, None)),
      "rms_norm": (lambda x, **kw: F.rms_norm(x, None, **kw),
                   lambda x: ref.rms_norm(x, None)),
      "group_norm": (lambda x, **kw: F.group_norm(x, None, None, num_groups=1, **kw),
                     lambda x: ref.group_norm(x, None, None, num_groups=1)),
  }
  fn, expected = calls[layer]
  y = jax.jit(jax.shard_map(lambda xs: fn(xs, axis_name="d"), mesh=mesh,
                            in_specs=P(None, "d"), out_specs=P(None, "d")))(x)
  y1 = jax.jit(fn)(x)
  want = expected(x)
  assert _error(y, want) <= 2 * _error(y1, want) + 1e-6, (_error(y, want),
                                                          _error(y1, want))


@pytest.mark.parametrize("loc,std", _SHIFTED[:2])
def test_uneven_masks_and_empty_devices(ref, mesh, loc, std):
  x = _data(2, (N_DEV * 16, 3), loc, std)
  counts = [0, 1, 16, 3, 0, 9, 16, 5]
  mask = np.zeros((N_DEV * 16, 1), bool)
  for d, c in enumerate(counts):
    mask[d * 16:d * 16 + c] = True
  x[~mask[:, 0]] = np.nan  # padding, which must change nothing
  stats = F.BatchStats(jnp.zeros(3), jnp.ones(3))
  y, new = jax.jit(jax.shard_map(
      lambda xs, ms: F.batch_norm(xs, None, None, stats, train=True, axis_name="d",
                                  mask=ms),
      mesh=mesh, in_specs=(P("d"), P("d")), out_specs=(P("d"), P())))(x, mask)
  y1, new1 = F.batch_norm(x, None, None, stats, train=True, mask=mask)
  expected, (mean, var) = ref.batch_norm(x, None, None, stats, train=True, mask=mask)
  valid = np.broadcast_to(mask, x.shape)
  assert _error(np.asarray(y)[valid], expected[valid]) <= 2 * _error(
      np.asarray(y1)[valid], expected[valid]) + 1e-6
  assert _error(new.var, var) <= 2 * _error(new1.var, var) + 1e-9
  assert _error(new.mean, mean) <= 2 * _error(new1.mean, mean) + 1e-6


def test_constant_feature_over_all_devices_normalizes_to_zero(mesh):
  """Every device holds the same value: the common shift is that value, exactly."""
  x = np.full((N_DEV * 4, 3), 10000.2998, np.float32)
  y = jax.jit(jax.shard_map(
      lambda xs: F.batch_norm(xs, None, None, None, train=True, axis_name="d")[0],
      mesh=mesh, in_specs=P("d"), out_specs=P("d")))(x)
  np.testing.assert_array_equal(np.asarray(y), 0.0)


def test_outlier_on_one_device_beyond_every_subsample(ref, mesh):
  """The overflow repair (a second, rescaled sum) runs on every device alike."""
  x = _data(3, (N_DEV * 128, 2), 0.0, 1.0)
  x[5 * 128 + 100, 1] = 1e35
  y = jax.jit(jax.shard_map(
      lambda xs: F.batch_norm(xs, None, None, None, train=True, axis_name="d")[0],
      mesh=mesh, in_specs=P("d"), out_specs=P("d")))(x)
  ref.assert_close(y, ref.batch_norm(x, None, None, None, train=True)[0],
                   ref.FLOAT32_TOL)


@pytest.mark.parametrize("loc,std", _SHIFTED[:2])
def test_sharded_gradients_match_one_device(ref, mesh, loc, std):
  x = _data(4, (N_DEV * 8, 4), loc, std)
  scale, bias = np.linspace(0.5, 2, 4).astype(np.float32), np.zeros(4, np.float32)
  w = _data(5, x.shape, 0.0, 1.0)

  def loss(x, s, b, **kw):
    return jnp.sum(w_local(kw) * F.batch_norm(x, s, b, None, train=True, **kw)[0])

  def w_local(kw):
    return w if not kw else jax.lax.dynamic_slice_in_dim(
        w, jax.lax.axis_index("d") * 8, 8)

  def sharded(x, s, b):  # replicated parameters get the total over devices (as in JAX)
    return jax.grad(lambda x, s, b: loss(x, s, b, axis_name="d"), argnums=(0, 1, 2))(
        x, s, b)

  grads = jax.jit(jax.shard_map(sharded, mesh=mesh, in_specs=(P("d"), P(), P()),
                                out_specs=(P("d"), P(), P())))(x, scale, bias)
  expected = ref.grad64(lambda x, s, b: jnp.sum(w * ref.plain_batch_norm(x, s, b)),
                        (x, scale, bias), argnums=(0, 1, 2))
  single = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(x, scale, bias)
  for g, g1, e in zip(grads, single, expected):
    assert _error(g, e) <= 2 * _error(g1, e) + 1e-5, (_error(g, e), _error(g1, e))


def test_moments_across_devices_with_pmap_groups(ref):
  x = _data(6, (N_DEV, 16, 3), 2e4, 0.3)
  groups = [[0, 1, 2, 3], [4, 5, 6, 7]]
  mean, var = jax.pmap(lambda xs: F.moments(xs, 0, axis_name="d",
                                            axis_index_groups=groups), axis_name="d")(x)
  for group in groups:
    data = x[group].reshape(-1, 3)
    one_mean, one_var = F.moments(data, 0)
    want_mean, want_var = ref.moments(data, 0)
    for d in group:
      assert _error(var[d], want_var) <= 2 * _error(one_var, want_var) + 1e-9
      assert _error(mean[d], want_mean) <= 2 * _error(one_mean, want_mean) + 1e-6
