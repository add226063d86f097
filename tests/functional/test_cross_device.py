"""Statistics across devices: exact merges on 8 simulated CPU devices (see conftest.py).

References are float64 NumPy over the global (unsharded) data, or the same function on
one device for gradients.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxnorm import functional as F

N_DEV = 8

pytestmark = pytest.mark.skipif(
    jax.device_count() < N_DEV, reason="needs 8 (simulated) devices; see conftest.py")


@pytest.fixture(scope="module")
def mesh():
  return Mesh(np.array(jax.devices()[:N_DEV]), ("d",))


def _uneven_mask(per_device, valid_counts):
  """(N_DEV * per_device, 1) mask: device d holds valid_counts[d] valid rows."""
  mask = np.zeros((N_DEV * per_device, 1), bool)
  for d, c in enumerate(valid_counts):
    mask[d * per_device:d * per_device + c] = True
  return mask


def _f64(a):
  return np.asarray(a, np.float64)


def test_moments_exact_merge_with_uneven_and_empty_devices(mesh):
  rng = np.random.default_rng(0)
  x = rng.normal(1e4, 1.0, (N_DEV * 16, 5)).astype(np.float32)
  mask = _uneven_mask(16, [0, 1, 2, 3, 16, 5, 9, 12])
  moments = jax.jit(jax.shard_map(
      lambda xs, ms: F.moments(xs, 0, mask=ms, axis_name="d"),
      mesh=mesh, in_specs=(P("d"), P("d")), out_specs=P()))
  mean, var = moments(x, mask)
  valid = x.astype(np.float64)[mask[:, 0]]
  # float32 cannot hold 1e4 to better than ~5e-4; the variance is exact to ~1e-4.
  np.testing.assert_allclose(_f64(mean), valid.mean(0), rtol=0, atol=1e-3)
  np.testing.assert_allclose(_f64(var), valid.var(0), rtol=0, atol=1e-3)


def test_moments_merge_is_not_a_mean_of_device_means(mesh):
  """With uneven counts, averaging per-device statistics (pmean) would be wrong."""
  rng = np.random.default_rng(1)
  x = rng.normal(0.0, 1.0, (N_DEV * 8, 3)).astype(np.float32)
  x[:8] += 10.0  # device 0 is shifted and holds few valid rows
  mask = _uneven_mask(8, [1, 8, 8, 8, 8, 8, 8, 8])
  mean, var = jax.jit(jax.shard_map(
      lambda xs, ms: F.moments(xs, 0, mask=ms, axis_name="d"),
      mesh=mesh, in_specs=(P("d"), P("d")), out_specs=P()))(x, mask)
  valid = x.astype(np.float64)[mask[:, 0]]
  np.testing.assert_allclose(_f64(mean), valid.mean(0), atol=1e-5)
  np.testing.assert_allclose(_f64(var), valid.var(0), rtol=1e-5, atol=1e-5)
  device_means = np.stack([x[d * 8:d * 8 + (1 if d == 0 else 8)].mean(0)
                           for d in range(N_DEV)])
  assert np.abs(device_means.mean(0) - valid.mean(0)).max() > 0.1


def test_moments_axis_index_groups_under_pmap():
  rng = np.random.default_rng(2)
  x = rng.normal(3.0, 2.0, (N_DEV, 6, 4)).astype(np.float32)
  groups = [[0, 1, 2, 3], [4, 5, 6, 7]]
  mean, var = jax.pmap(
      lambda xs: F.moments(xs, 0, axis_name="d", axis_index_groups=groups),
      axis_name="d")(x)
  for group in groups:
    data = x[group].reshape(-1, 4).astype(np.float64)
    for d in group:
      np.testing.assert_allclose(_f64(mean[d]), data.mean(0), atol=1e-5)
      np.testing.assert_allclose(_f64(var[d]), data.var(0), rtol=1e-5, atol=1e-5)


def _plain_batch_norm(x, scale, bias, mask, epsilon=1e-5):
  """Plain-jnp batch norm over axis 0 with a row mask: the autodiff reference."""
  w = mask.astype(x.dtype)
  n = w.sum()
  mean = (w * x).sum(0) / n
  var = (w * (x - mean) ** 2).sum(0) / n
  return (x - mean) / jnp.sqrt(var + epsilon) * scale + bias


def _problem(seed=3):
  rng = np.random.default_rng(seed)
  x = rng.normal(2.0, 3.0, (N_DEV * 8, 4)).astype(np.float32)
  w = rng.normal(size=x.shape).astype(np.float32)
  scale = rng.normal(size=4).astype(np.float32)
  bias = rng.normal(size=4).astype(np.float32)
  mask = _uneven_mask(8, [8, 1, 2, 3, 8, 5, 7, 6])
  return x, w, scale, bias, mask


def test_batch_norm_shard_map_outputs_stats_and_gradients(mesh):
  x, w, scale, bias, mask = _problem()
  stats = F.BatchStats(jnp.zeros(4), jnp.ones(4))

  def local(xs, ws, ms, s, b):
    y, new = F.batch_norm(xs, s, b, stats, train=True, momentum=0.5, axis_name="d",
                          mask=ms)
    return jnp.sum(ws * jnp.sin(y))[None], y, jax.tree.map(lambda t: t[None], new)

  sharded = jax.shard_map(local, mesh=mesh,
                          in_specs=(P("d"), P("d"), P("d"), P(), P()),
                          out_specs=(P("d"), P("d"), P("d")))

  def total_loss(x, s, b):
    losses, y, new = sharded(x, w, mask, s, b)
    return losses.sum(), (y, new)

  (_, (y, new)), grads = jax.jit(jax.value_and_grad(total_loss, (0, 1, 2), has_aux=True))(
      x, scale, bias)

  valid = x.astype(np.float64)[mask[:, 0]]
  ref_y = (x - valid.mean(0)) / np.sqrt(valid.var(0) + 1e-5) * scale + bias
  np.testing.assert_allclose(_f64(y), ref_y, rtol=1e-5, atol=1e-5)
  # Running statistics come out identical on every device.
  for d in range(N_DEV):
    np.testing.assert_array_equal(np.asarray(new.mean[d]), np.asarray(new.mean[0]))
    np.testing.assert_array_equal(np.asarray(new.var[d]), np.asarray(new.var[0]))
  np.testing.assert_allclose(_f64(new.mean[0]), 0.5 * valid.mean(0), atol=1e-5)
  np.testing.assert_allclose(_f64(new.var[0]), 0.5 + 0.5 * valid.var(0), rtol=1e-5)

  def global_loss(x, s, b):
    return jnp.sum(w * jnp.sin(_plain_batch_norm(x, s, b, mask)))

  expected = jax.grad(global_loss, (0, 1, 2))(x, scale, bias)
  for got, want in zip(grads, expected):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5)


def test_batch_norm_pmap_gradients_match_single_device():
  x, w, scale, bias, mask = _problem(seed=4)
  stats = F.BatchStats(jnp.zeros(4), jnp.ones(4))

  def per_device(xs, ws, ms, s, b):
    def loss(xs, s, b):
      y, _ = F.batch_norm(xs, s, b, stats, train=True, axis_name="d", mask=ms)
      return jnp.sum(ws * jnp.sin(y))
    return jax.grad(loss, (0, 1, 2))(xs, s, b)

  dx, ds, db = jax.pmap(per_device, axis_name="d", in_axes=(0, 0, 0, None, None))(
      x.reshape(N_DEV, 8, 4), w.reshape(N_DEV, 8, 4), mask.reshape(N_DEV, 8, 1),
      scale, bias)

  def global_loss(x, s, b):
    return jnp.sum(w * jnp.sin(_plain_batch_norm(x, s, b, mask)))

  ex, es, eb = jax.grad(global_loss, (0, 1, 2))(x, scale, bias)
  np.testing.assert_allclose(np.asarray(dx).reshape(-1, 4), ex, rtol=1e-4, atol=1e-5)
  # pmap convention: per-device parameter gradients, summed by the user.
  np.testing.assert_allclose(np.asarray(ds).sum(0), es, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(db).sum(0), eb, rtol=1e-4, atol=1e-5)


def test_layer_norm_features_sharded_across_devices(mesh):
  rng = np.random.default_rng(5)
  x = rng.normal(50.0, 2.0, (4, N_DEV * 3)).astype(np.float32)
  scale = rng.normal(size=x.shape[1]).astype(np.float32)
  sharded = jax.jit(jax.shard_map(
      lambda xs, s: F.layer_norm(xs, s, None, axis=-1, axis_name="d"),
      mesh=mesh, in_specs=(P(None, "d"), P("d")), out_specs=P(None, "d")))
  x64 = x.astype(np.float64)
  ref = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(_f64(sharded(x, scale)), ref * scale, rtol=1e-4, atol=1e-4)


def test_batch_norm_jit_with_named_sharding_equals_unsharded(mesh):
  """Data parallelism without axis_name: XLA's SPMD partitioner inserts the collectives."""
  x, w, scale, bias, _ = _problem(seed=6)
  stats = F.BatchStats(jnp.zeros(4), jnp.ones(4))

  def loss(x, s, b):
    y, new = F.batch_norm(x, s, b, stats, train=True)
    return jnp.sum(w * jnp.sin(y)), new

  step = jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))
  x_sharded = jax.device_put(x, NamedSharding(mesh, P("d")))
  assert len(x_sharded.sharding.device_set) == N_DEV
  (l_sh, new_sh), g_sh = step(x_sharded, scale, bias)
  (l_one, new_one), g_one = step(x, scale, bias)
  np.testing.assert_allclose(float(l_sh), float(l_one), rtol=1e-5)
  for a, b in zip(jax.tree.leaves((new_sh, g_sh)), jax.tree.leaves((new_one, g_one))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
