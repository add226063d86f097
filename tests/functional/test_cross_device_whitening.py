"""Whitening across devices: exact covariance merges on 8 simulated CPU devices.

References: float64 NumPy over the global (unsharded) valid rows for values and
statistics; the same function on one device, over the whole batch, for gradients.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxnorm import functional as F

N_DEV = 8
PER_DEVICE = 6

pytestmark = pytest.mark.skipif(
    jax.device_count() < N_DEV, reason="needs 8 (simulated) devices; see conftest.py")


@pytest.fixture(scope="module")
def mesh():
  return Mesh(np.array(jax.devices()[:N_DEV]), ("d",))


def _uneven_mask(valid_counts):
  mask = np.zeros((N_DEV * PER_DEVICE, 1), bool)
  for d, c in enumerate(valid_counts):
    mask[d * PER_DEVICE:d * PER_DEVICE + c] = True
  return mask


def _data(seed, loc=0.0, channels=8):
  rng = np.random.default_rng(seed)
  mix = np.eye(channels) + 0.5 * rng.normal(size=(channels, channels))
  return (loc + rng.normal(size=(N_DEV * PER_DEVICE, channels)) @ mix).astype(np.float32)


def _ref(x, mask, group_size, epsilon=1e-5, iterations=None):
  """Float64 ``(y, mean, whitening)`` from the global valid rows."""
  x = x.astype(np.float64)
  valid = x[mask[:, 0]]
  mean = valid.mean(0)
  groups = x.shape[1] // group_size
  dev = (valid - mean).reshape(-1, groups, group_size)
  sigma = np.einsum("mgi,mgj->gij", dev, dev) / len(valid) + epsilon * np.eye(group_size)
  if iterations is None:
    w, v = np.linalg.eigh(sigma)
    whitening = (v / np.sqrt(w)[:, None, :]) @ np.swapaxes(v, -1, -2)
  else:
    trace = np.trace(sigma, axis1=-2, axis2=-1)[:, None, None]
    p = np.broadcast_to(np.eye(group_size), sigma.shape)
    for _ in range(iterations):
      p = 1.5 * p - 0.5 * p @ p @ p @ (sigma / trace)
    whitening = p / np.sqrt(trace)
  y = np.einsum("gji,mgi->mgj", whitening,
                (x - mean).reshape(-1, groups, group_size)).reshape(x.shape)
  return y, mean, whitening


def _whiten(iterations):
  if iterations is None:
    return F.decorrelated_batch_norm
  return functools.partial(F.iter_norm, iterations=iterations)


@pytest.mark.parametrize("iterations", [None, 4])
@pytest.mark.parametrize("loc", [0.0, 1e4])
def test_outputs_and_stats_merge_exactly_with_uneven_and_empty_devices(mesh, iterations,
                                                                        loc):
  x = _data(0, loc)
  mask = _uneven_mask([0, 1, 2, 6, 6, 3, 5, 4])
  stats = F.init_whitening_stats(8, group_size=4)
  fn = _whiten(iterations)

  def local(xs, ms):
    y, new = fn(xs, None, None, stats, train=True, group_size=4, momentum=0.0,
                axis_name="d", mask=ms)
    return y, jax.tree.map(lambda t: t[None], new)

  y, new = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P("d"), P("d")),
                                 out_specs=(P("d"), P("d"))))(x, mask)
  ref_y, ref_mean, ref_w = _ref(x, mask, 4, iterations=iterations)
  valid = mask[:, 0]
  # Data at 1e4 in float32: x itself is only known to ~5e-4, outputs to ~1e-3.
  tol = 1e-5 if loc == 0 else 2e-3
  np.testing.assert_allclose(np.asarray(y, np.float64)[valid], ref_y[valid], atol=tol,
                             rtol=tol)
  for d in range(N_DEV):  # every device ends with identical running statistics
    np.testing.assert_array_equal(np.asarray(new.mean[d]), np.asarray(new.mean[0]))
    np.testing.assert_array_equal(np.asarray(new.whitening[d]),
                                  np.asarray(new.whitening[0]))
  np.testing.assert_allclose(np.asarray(new.mean[0], np.float64), ref_mean,
                             rtol=1e-6, atol=1e-5)
  np.testing.assert_allclose(np.asarray(new.whitening[0], np.float64), ref_w,
                             rtol=tol, atol=tol * np.abs(ref_w).max())


def test_merge_is_not_an_average_of_device_covariances(mesh):
  """Devices with shifted means: the between-device spread belongs in the covariance."""
  x = _data(1)
  x[:N_DEV * PER_DEVICE // 2] += 5.0  # the first four devices are shifted
  mask = np.ones((N_DEV * PER_DEVICE, 1), bool)

  def local(xs):
    _, new = F.decorrelated_batch_norm(xs, None, None, F.init_whitening_stats(
        8, group_size=8), train=True, group_size=8, momentum=0.0, axis_name="d")
    return jax.tree.map(lambda t: t[None], new)

  new = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=P("d"), out_specs=P("d")))(x)
  _, _, ref_w = _ref(x, mask, 8)
  np.testing.assert_allclose(np.asarray(new.whitening[0], np.float64), ref_w, atol=1e-5)


@pytest.mark.parametrize("iterations", [None, 4])
def test_shard_map_gradients_match_single_device(mesh, iterations):
  x = _data(2, loc=1.0)
  rng = np.random.default_rng(3)
  w = rng.normal(size=x.shape).astype(np.float32)
  scale = rng.uniform(0.5, 1.5, 8).astype(np.float32)
  bias = rng.normal(size=8).astype(np.float32)
  mask = _uneven_mask([6, 1, 2, 3, 6, 5, 0, 4])
  fn = _whiten(iterations)

  def local(xs, ws, ms, s, b):
    y, _ = fn(xs, s, b, None, train=True, group_size=4, axis_name="d", mask=ms)
    return jnp.sum(ws * jnp.sin(y))[None]

  sharded = jax.shard_map(local, mesh=mesh, in_specs=(P("d"), P("d"), P("d"), P(), P()),
                          out_specs=P("d"))
  got = jax.jit(jax.grad(lambda x, s, b: sharded(x, w, mask, s, b).sum(), (0, 1, 2)))(
      x, scale, bias)

  def single(x, s, b):
    y, _ = fn(x, s, b, None, train=True, group_size=4, mask=mask)
    return jnp.sum(w * jnp.sin(y))

  expected = jax.jit(jax.grad(single, (0, 1, 2)))(x, scale, bias)
  for name, g, e in zip(("x", "scale", "bias"), got, expected):
    e = np.asarray(e, np.float64)
    np.testing.assert_allclose(np.asarray(g, np.float64), e, rtol=1e-4,
                               atol=1e-4 * max(1.0, np.abs(e).max()), err_msg=name)


def test_axis_index_groups_under_pmap():
  x = _data(4).reshape(N_DEV, PER_DEVICE, 8)
  groups = [[0, 1, 2, 3], [4, 5, 6, 7]]
  stats = F.init_whitening_stats(8, group_size=4)
  _, new = jax.pmap(lambda xs: F.decorrelated_batch_norm(
      xs, None, None, stats, train=True, group_size=4, momentum=0.0, axis_name="d",
      axis_index_groups=groups), axis_name="d")(x)
  for group in groups:
    data = x[group].reshape(-1, 8)
    _, mean, whitening = _ref(data, np.ones((len(data), 1), bool), 4)
    for d in group:
      np.testing.assert_allclose(np.asarray(new.mean[d], np.float64), mean, atol=1e-5)
      np.testing.assert_allclose(np.asarray(new.whitening[d], np.float64), whitening,
                                 atol=1e-4)


def test_batch_size_check_counts_all_devices(mesh):
  """6 rows per device cannot whiten groups of 8 alone; 48 rows across devices can."""
  x = _data(5)
  run = jax.shard_map(
      lambda xs: F.decorrelated_batch_norm(xs, None, None, None, train=True,
                                           group_size=8, axis_name="d")[0],
      mesh=mesh, in_specs=P("d"), out_specs=P("d"))
  assert np.all(np.isfinite(np.asarray(run(x))))
  with pytest.raises(ValueError, match=r"gives 1 samples per device, 8 across 8 devices"):
    jax.shard_map(
        lambda xs: F.decorrelated_batch_norm(xs, None, None, None, train=True,
                                             group_size=8, axis_name="d")[0],
        mesh=mesh, in_specs=P("d"), out_specs=P("d"))(x[:N_DEV])


def test_unbound_axis_name_says_which_transform_is_missing():
  with pytest.raises(ValueError, match="axis_name='batch' is not bound"):
    F.decorrelated_batch_norm(_data(6), None, None, None, train=True, group_size=4,
                              axis_name="batch")
