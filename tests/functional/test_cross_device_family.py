"""The normalization family across 8 simulated CPU devices (see tests/conftest.py).

- Data parallelism under ``jax.jit`` with a NamedSharding (``axis_name=None``): the
  sharded batch gives what the unsharded single-device computation gives.
- ``shard_map`` with ``axis_name``: the exact merge of statistics when devices hold
  different numbers of valid elements (one device none), compared with float64 NumPy
  over the global data, and gradients compared with single-device ``jax.grad`` of the
  plain formula.
- ``pmap`` with ``axis_index_groups``; an unbound ``axis_name`` is a clear ValueError.
"""

import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxnorm
from jaxnorm import functional as F

N_DEV = 8
TOL = 1e-5  # float32 values, sharded vs unsharded or vs float64
GRAD_TOL = 1e-4  # gradients vs jax.grad of the plain float32 formula, relative to max

pytestmark = pytest.mark.skipif(
    jax.device_count() < N_DEV, reason="needs 8 (simulated) devices; see conftest.py")


@pytest.fixture(scope="module")
def mesh():
  return Mesh(np.array(jax.devices()[:N_DEV]), ("d",))


def _f64(a):
  return np.asarray(a, np.float64)


def _max_abs(a, b):
  return float(np.max(np.abs(_f64(a) - _f64(b))))


def _rel_err(actual, expected):
  expected = _f64(expected)
  return float(np.max(np.abs(_f64(actual) - expected)) / max(np.max(np.abs(expected)),
                                                              1e-30))


def _moments64(x, axes, mask=None):
  """Float64 two-pass mean and biased variance of the valid elements (dims kept)."""
  x = _f64(x)
  m = np.ones(x.shape, bool) if mask is None else np.broadcast_to(np.asarray(mask),
                                                                   x.shape)
  n = np.maximum(m.sum(axis=axes, keepdims=True), 1)
  mean = np.where(m, x, 0).sum(axis=axes, keepdims=True) / n
  var = np.where(m, (x - mean) ** 2, 0).sum(axis=axes, keepdims=True) / n
  return mean, var


def _block_mask(shape, axis, counts):
  """Boolean mask of ``shape`` (broadcast dims 1): along ``axis``, split into N_DEV
  equal blocks, block d has its first ``counts[d]`` positions valid."""
  mask = np.zeros(shape, bool)
  block = shape[axis] // N_DEV
  for d, c in enumerate(counts):
    index = [slice(None)] * len(shape)
    index[axis] = slice(d * block, d * block + c)
    mask[tuple(index)] = True
  return mask


# -------------------------------------------------- data parallelism: jit + sharding


def _problem(seed, shape):
  rng = np.random.default_rng(seed)
  c = shape[-1]
  x = (rng.normal(size=shape) * np.linspace(0.5, 3.0, c) + np.linspace(-2, 2, c))
  return types.SimpleNamespace(
      x=x.astype(np.float32),
      w=rng.normal(size=shape).astype(np.float32),
      scale=rng.uniform(0.5, 1.5, c).astype(np.float32),
      bias=(0.2 * rng.normal(size=c)).astype(np.float32),
      mean=(0.3 * rng.normal(size=c)).astype(np.float32),
      var=rng.uniform(0.5, 2.0, c).astype(np.float32),
      v=rng.uniform(0.5, 1.5, c).astype(np.float32),
      logits=rng.normal(size=(2, 3)).astype(np.float32))


def _layer(name, p):
  """``fn(x, scale, bias) -> (y, new_stats or None)`` for one functional layer."""
  stats = F.BatchStats(jnp.asarray(p.mean), jnp.asarray(p.var))
  return {
      "batch_norm": lambda x, s, b: F.batch_norm(x, s, b, stats, train=True,
                                                 momentum=0.5),
      "batch_renorm": lambda x, s, b: F.batch_renorm(
          x, s, b, F.BatchRenormStats(stats.mean, stats.var, jnp.asarray(3, jnp.int32)),
          train=True, r_max=1.5, d_max=0.5, momentum=0.5),
      "switch_norm": lambda x, s, b: F.switch_norm(
          x, s, b, jnp.asarray(p.logits[0]), jnp.asarray(p.logits[1]), stats,
          train=True, momentum=0.5),
      "evonorm_b0": lambda x, s, b: F.evonorm_b0(x, s, b, jnp.asarray(p.v), stats,
                                                 train=True, momentum=0.5),
      "group_norm": lambda x, s, b: (F.group_norm(x, s, b, num_groups=2), None),
      "instance_norm": lambda x, s, b: (F.instance_norm(x, s, b), None),
      "layer_norm": lambda x, s, b: (F.layer_norm(x, s, b), None),
      "rms_norm": lambda x, s, b: (F.rms_norm(x, s) + 0 * b, None),
      "evonorm_s0": lambda x, s, b: (F.evonorm_s0(x, s, b, jnp.asarray(p.v),
                                                  num_groups=2), None),
  }[name]


DATA_PARALLEL = {
    "batch_norm": (32, 6),
    "batch_renorm": (32, 6),
    "switch_norm": (16, 3, 3, 4),
    "evonorm_b0": (16, 3, 3, 4),
    "group_norm": (16, 3, 3, 4),
    "instance_norm": (16, 3, 3, 4),
    "layer_norm": (32, 6),
    "rms_norm": (32, 6),
    "evonorm_s0": (16, 3, 3, 4),
}


@pytest.mark.parametrize("name", list(DATA_PARALLEL))
def test_jit_named_sharding_equals_unsharded(mesh, name):
  """axis_name=None under jit: XLA's partitioner inserts the collectives."""
  p = _problem(list(DATA_PARALLEL).index(name), DATA_PARALLEL[name])
  fn = _layer(name, p)

  def loss(x, s, b):
    y, new = fn(x, s, b)
    return jnp.sum(p.w * jnp.sin(y)), (y, new)

  step = jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))
  x_sharded = jax.device_put(p.x, NamedSharding(mesh, P("d")))
  assert len(x_sharded.sharding.device_set) == N_DEV
  x_one = jax.device_put(p.x, jax.devices()[0])
  (_, (y_sh, new_sh)), g_sh = step(x_sharded, p.scale, p.bias)
  (_, (y_one, new_one)), g_one = step(x_one, p.scale, p.bias)
  assert len(y_sh.sharding.device_set) == N_DEV  # really computed data-parallel
  sharded = {"y": y_sh, "dx": g_sh[0], "dscale": g_sh[1], "dbias": g_sh[2]}
  single = {"y": y_one, "dx": g_one[0], "dscale": g_one[1], "dbias": g_one[2]}
  if new_one is not None:
    for field in new_one._fields:
      sharded[field], single[field] = getattr(new_sh, field), getattr(new_one, field)
    # The running statistics moved, so their agreement is not the initial state's.
    assert _max_abs(new_one.var, p.var) > 1e-2
  diffs = {k: _max_abs(sharded[k], single[k]) for k in single}
  print(f"\n[{name}] sharded vs unsharded max abs diff: "
        + ", ".join(f"{k} {v:.2g}" for k, v in diffs.items()))
  margin = max(float(np.max(np.abs(_f64(sharded[k]) - _f64(single[k]))
                             / (TOL + TOL * np.abs(_f64(single[k]))))) for k in single)
  print(f"  worst diff / allowed = {margin:.2g}")
  for k in single:
    np.testing.assert_allclose(_f64(sharded[k]), _f64(single[k]), rtol=TOL, atol=TOL,
                               err_msg=k)


class _Net(nn.Module):

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(16)(x)
    x = jaxnorm.BatchNorm(use_running_average=not train, momentum=0.8)(x)
    x = nn.relu(x)
    return nn.Dense(3)(x)


def test_linen_training_with_sharded_batch_equals_unsharded(mesh):
  model = _Net()
  rng = np.random.default_rng(10)
  batches = [(rng.normal(1.0, 2.0, (64, 10)).astype(np.float32),
              rng.normal(size=(64, 3)).astype(np.float32)) for _ in range(3)]
  variables = model.init(jax.random.key(0), batches[0][0], train=False)
  tx = optax.sgd(0.1, momentum=0.9)

  @jax.jit
  def step(params, stats, opt_state, x, y):
    def loss(params):
      out, upd = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                             mutable=["batch_stats"])
      return jnp.mean(jnp.square(out - y)), upd["batch_stats"]
    (_, new_stats), grads = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_stats, opt_state

  def train(data_sharding, state_sharding):
    params, stats = jax.device_put((variables["params"], variables["batch_stats"]),
                                   state_sharding)
    opt_state = jax.device_put(tx.init(params), state_sharding)
    for x, y in batches:
      x, y = jax.device_put((x, y), data_sharding)
      params, stats, opt_state = step(params, stats, opt_state, x, y)
    return {"params": params, "batch_stats": stats}

  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  single = train(one, one)
  sharded = train(NamedSharding(mesh, P("d")), NamedSharding(mesh, P()))
  flat_single = jax.tree_util.tree_leaves_with_path(single)
  flat_sharded = jax.tree.leaves(sharded)
  worst = max(_max_abs(a, b) for (_, b), a in zip(flat_single, flat_sharded))
  print(f"\n[linen Dense-BatchNorm-Dense, 3 SGD steps] max abs diff {worst:.2g}")
  for (path, b), a in zip(flat_single, flat_sharded):
    np.testing.assert_allclose(_f64(a), _f64(b), rtol=TOL, atol=TOL,
                               err_msg=jax.tree_util.keystr(path))
  # Training moved the statistics.
  assert _max_abs(single["batch_stats"]["BatchNorm_0"]["mean"],
                  variables["batch_stats"]["BatchNorm_0"]["mean"]) > 1e-2


# ------------------------------------------ shard_map + axis_name, uneven valid counts

UNEVEN = [0, 1, 3, 8, 5, 8, 2, 7]  # valid rows per device out of 8; device 0 has none


def test_batch_renorm_shard_map_uneven_counts(mesh):
  rng = np.random.default_rng(20)
  c = 5
  x = (rng.normal(size=(N_DEV * 8, c)) * np.linspace(0.3, 3.0, c)
       + np.linspace(-1.5, 1.5, c)).astype(np.float32)
  mask = _block_mask((N_DEV * 8, 1), 0, UNEVEN)
  x = np.where(mask, x, 40.0).astype(np.float32)  # invalid rows must not count
  scale = rng.uniform(0.5, 1.5, c).astype(np.float32)
  bias = (0.2 * rng.normal(size=c)).astype(np.float32)
  stats = F.BatchRenormStats(jnp.asarray(0.3 * rng.normal(size=c), jnp.float32),
                             jnp.asarray(rng.uniform(0.5, 2.0, c), jnp.float32),
                             jnp.asarray(5, jnp.int32))
  r_max, d_max, momentum, eps = 1.5, 0.5, 0.6, 1e-5

  def local(xs, ms, s, b, st):
    y, new = F.batch_renorm(xs, s, b, st, train=True, r_max=r_max, d_max=d_max,
                            momentum=momentum, axis_name="d", mask=ms)
    return y, jax.tree.map(lambda t: t[None], new)

  y, new = jax.jit(jax.shard_map(
      local, mesh=mesh, in_specs=(P("d"), P("d"), P(), P(), P()),
      out_specs=(P("d"), P("d"))))(x, mask, scale, bias, stats)

  valid = _f64(x)[mask[:, 0]]
  bm, bv = valid.mean(0), valid.var(0)
  rm, rv = _f64(stats.mean), _f64(stats.var)
  sigma = np.sqrt(rv + eps)
  r = np.clip(np.sqrt(bv + eps) / sigma, 1 / r_max, r_max)
  d = np.clip((bm - rm) / sigma, -d_max, d_max)
  assert 0 < np.sum(np.isclose(r, r_max) | np.isclose(r, 1 / r_max)) < c  # limits bite
  assert 0 < np.sum(np.isclose(np.abs(d), d_max)) < c
  ref_y = ((_f64(x) - bm) / np.sqrt(bv + eps) * r + d) * scale + bias
  ref_mean, ref_var = momentum * rm + (1 - momentum) * bm, momentum * rv + (
      1 - momentum) * bv
  m = mask[:, 0]
  print(f"\n[batch_renorm shard_map uneven] max |y - ref64| (valid rows) "
        f"{_max_abs(_f64(y)[m], ref_y[m]):.2g}, "
        f"mean {_max_abs(new.mean[0], ref_mean):.2g}, "
        f"var {_max_abs(new.var[0], ref_var):.2g}")
  np.testing.assert_allclose(_f64(y)[m], ref_y[m], rtol=TOL, atol=TOL)
  np.testing.assert_allclose(_f64(y), ref_y, rtol=TOL, atol=1e-3)  # large x=40 rows
  for dev in range(N_DEV):  # identical on every device
    for field in ("mean", "var", "step"):
      np.testing.assert_array_equal(np.asarray(getattr(new, field)[dev]),
                                    np.asarray(getattr(new, field)[0]))
  np.testing.assert_allclose(_f64(new.mean[0]), ref_mean, rtol=TOL, atol=TOL)
  np.testing.assert_allclose(_f64(new.var[0]), ref_var, rtol=TOL, atol=TOL)
  assert int(new.step[0]) == 6


def _plain_group_norm(x, scale, bias, mask, groups, eps):
  """Plain-jnp group norm over (H, W, channels of the group) with a mask."""
  shape = x.shape[:-1] + (groups, x.shape[-1] // groups)
  xg, w = x.reshape(shape), jnp.broadcast_to(mask[..., None], shape).astype(x.dtype)
  axes = (1, 2, 4)
  n = w.sum(axes, keepdims=True)
  mean = (w * xg).sum(axes, keepdims=True) / n
  var = (w * (xg - mean) ** 2).sum(axes, keepdims=True) / n
  return ((xg - mean) / jnp.sqrt(var + eps)).reshape(x.shape) * scale + bias


def test_group_norm_spatial_axis_sharded_uneven_counts_and_gradients(mesh):
  """H sharded across devices; a mask of valid rows, device 0 holds none."""
  rng = np.random.default_rng(21)
  n, h, wd, c, groups, eps = 3, N_DEV * 2, 3, 6, 3, 1e-6
  x = rng.normal(0.5, 2.0, (n, h, wd, c)).astype(np.float32)
  counts = [[0, 1, 2, 2, 1, 0, 2, 1], [0, 2, 2, 0, 1, 1, 2, 2], [0, 0, 1, 2, 2, 1, 0, 1]]
  mask = np.concatenate([_block_mask((1, h, 1, 1), 1, cs) for cs in counts])
  w = rng.normal(size=x.shape).astype(np.float32)
  scale = rng.uniform(0.5, 1.5, c).astype(np.float32)
  bias = (0.2 * rng.normal(size=c)).astype(np.float32)

  sharded = jax.shard_map(
      lambda xs, ms, s, b: F.group_norm(xs, s, b, num_groups=groups, epsilon=eps,
                                        mask=ms, axis_name="d"),
      mesh=mesh, in_specs=(P(None, "d"), P(None, "d"), P(), P()),
      out_specs=P(None, "d"))

  def loss(x, s, b):
    y = sharded(x, mask, s, b)
    return jnp.sum(w * jnp.sin(y)), y

  (grads, y) = jax.jit(jax.grad(loss, (0, 1, 2), has_aux=True))(x, scale, bias)

  xg = _f64(x).reshape(n, h, wd, groups, c // groups)
  mean, var = _moments64(xg, (1, 2, 4), mask[..., None])
  ref = ((xg - mean) / np.sqrt(var + eps)).reshape(x.shape) * scale + bias
  print(f"\n[group_norm H-sharded uneven] max |y - ref64| {_max_abs(y, ref):.2g}")
  np.testing.assert_allclose(_f64(y), ref, rtol=TOL, atol=TOL)

  expected = jax.jit(jax.grad(
      lambda x, s, b: jnp.sum(w * jnp.sin(_plain_group_norm(x, s, b, mask, groups, eps))),
      (0, 1, 2)))(x, scale, bias)
  for k, got, want in zip(("dx", "dscale", "dbias"), grads, expected):
    err = _rel_err(got, want)
    print(f"  {k} rel err vs jax.grad(plain) {err:.2g}")
    assert err < GRAD_TOL, (k, err)


def test_group_norm_channels_sharded_gives_global_statistics(mesh):
  """Channels sharded, one group per device: the global num_groups=1 statistics."""
  rng = np.random.default_rng(22)
  x = rng.normal(3.0, 2.0, (4, 3, 3, N_DEV * 2)).astype(np.float32)
  scale = rng.uniform(0.5, 1.5, N_DEV * 2).astype(np.float32)
  y = jax.jit(jax.shard_map(
      lambda xs, s: F.group_norm(xs, s, None, num_groups=1, axis_name="d"),
      mesh=mesh, in_specs=(P(None, None, None, "d"), P("d")),
      out_specs=P(None, None, None, "d")))(x, scale)
  mean, var = _moments64(x, (1, 2, 3))
  ref = (_f64(x) - mean) / np.sqrt(var + 1e-6) * scale
  np.testing.assert_allclose(_f64(y), ref, rtol=TOL, atol=TOL)


def _plain_rms_norm(x, scale, mask, eps):
  w = jnp.broadcast_to(mask, x.shape).astype(x.dtype)
  ms = (w * x * x).sum(-1, keepdims=True) / w.sum(-1, keepdims=True)
  return x / jnp.sqrt(ms + eps) * scale


def test_rms_norm_features_sharded_uneven_counts_and_gradients(mesh):
  """Features sharded (tensor parallelism); a feature mask, device 0 holds none valid."""
  rng = np.random.default_rng(23)
  d, eps = N_DEV * 4, 1e-6
  x = rng.normal(0.5, 2.0, (5, 3, d)).astype(np.float32)
  mask = np.concatenate([_block_mask((1, 1, d), 2, [0, 1, 4, 2, 3, 4, 1, 2]),
                         _block_mask((1, 1, d), 2, [0, 4, 4, 4, 4, 4, 4, 4])])
  mask = np.concatenate([mask, mask[:1], mask[1:], mask[:1]])  # (5, 1, d)
  x = np.where(mask, x, 30.0).astype(np.float32)
  w = rng.normal(size=x.shape).astype(np.float32)
  scale = rng.uniform(0.5, 1.5, d).astype(np.float32)

  sharded = jax.shard_map(
      lambda xs, ms, s: F.rms_norm(xs, s, epsilon=eps, mask=ms, axis_name="d"),
      mesh=mesh, in_specs=(P(None, None, "d"), P(None, None, "d"), P("d")),
      out_specs=P(None, None, "d"))

  def loss(x, s):
    y = sharded(x, mask, s)
    return jnp.sum(w * jnp.sin(y)), y

  grads, y = jax.jit(jax.grad(loss, (0, 1), has_aux=True))(x, scale)
  x64 = _f64(x)
  m = np.broadcast_to(mask, x.shape)
  ms = np.where(m, x64 ** 2, 0).sum(-1, keepdims=True) / m.sum(-1, keepdims=True)
  ref = x64 / np.sqrt(ms + eps) * scale
  print(f"\n[rms_norm features-sharded uneven] max |y - ref64| "
        f"{_max_abs(np.where(m, y, 0), np.where(m, ref, 0)):.2g}")
  np.testing.assert_allclose(_f64(y)[m], ref[m], rtol=TOL, atol=TOL)
  np.testing.assert_allclose(_f64(y), ref, rtol=TOL, atol=1e-4)

  expected = jax.jit(jax.grad(
      lambda x, s: jnp.sum(w * jnp.sin(_plain_rms_norm(x, s, mask, eps))), (0, 1)))(
          x, scale)
  for k, got, want in zip(("dx", "dscale"), grads, expected):
    err = _rel_err(got, want)
    print(f"  {k} rel err vs jax.grad(plain) {err:.2g}")
    assert err < GRAD_TOL, (k, err)


def test_layer_norm_sequence_sharded_uneven_counts(mesh):
  """layer_norm over (sequence, features) with the sequence sharded and padded."""
  rng = np.random.default_rng(24)
  t, c, eps = N_DEV * 3, 5, 1e-6
  x = rng.normal(2.0, 1.5, (4, t, c)).astype(np.float32)
  mask = np.concatenate([_block_mask((1, t, 1), 1, cs) for cs in (
      [0, 1, 2, 3, 3, 0, 1, 2], [0, 3, 3, 3, 3, 3, 3, 3], [0, 0, 0, 0, 0, 0, 0, 2],
      [0, 3, 0, 1, 0, 2, 0, 1])])
  scale = rng.uniform(0.5, 1.5, (1, 1, c)).astype(np.float32)
  bias = (0.2 * rng.normal(size=(1, 1, c))).astype(np.float32)
  y = jax.jit(jax.shard_map(
      lambda xs, ms, s, b: F.layer_norm(xs, s, b, axis=(1, 2), mask=ms, axis_name="d"),
      mesh=mesh, in_specs=(P(None, "d"), P(None, "d"), P(), P()),
      out_specs=P(None, "d")))(x, mask, scale, bias)
  mean, var = _moments64(x, (1, 2), mask)
  ref = (_f64(x) - mean) / np.sqrt(var + eps) * scale + bias
  print(f"\n[layer_norm sequence-sharded uneven] max |y - ref64| {_max_abs(y, ref):.2g}")
  np.testing.assert_allclose(_f64(y), ref, rtol=TOL, atol=TOL)


# ---------------------------------------------------------- pmap, axis_index_groups


def test_batch_norm_pmap_axis_index_groups():
  rng = np.random.default_rng(30)
  x = rng.normal(size=(N_DEV, 6, 4)).astype(np.float32)
  x += np.arange(N_DEV, dtype=np.float32)[:, None, None]  # each device differs
  groups = [[0, 2, 5, 7], [1, 3, 4, 6]]
  stats = F.BatchStats(jnp.asarray(0.3 * rng.normal(size=4), jnp.float32),
                       jnp.asarray(rng.uniform(0.5, 2.0, 4), jnp.float32))
  scale = rng.uniform(0.5, 1.5, 4).astype(np.float32)
  bias = (0.2 * rng.normal(size=4)).astype(np.float32)
  y, new = jax.pmap(
      lambda xs: F.batch_norm(xs, scale, bias, stats, train=True, momentum=0.5,
                              axis_name="d", axis_index_groups=groups),
      axis_name="d")(x)
  for group in groups:
    data = _f64(x[group]).reshape(-1, 4)
    mean, var = data.mean(0), data.var(0)
    for dev in group:
      np.testing.assert_allclose(_f64(new.mean[dev]), 0.5 * _f64(stats.mean) + 0.5 * mean,
                                 rtol=TOL, atol=TOL)
      np.testing.assert_allclose(_f64(new.var[dev]), 0.5 * _f64(stats.var) + 0.5 * var,
                                 rtol=TOL, atol=TOL)
      ref = (_f64(x[dev]) - mean) / np.sqrt(var + 1e-5) * scale + bias
      np.testing.assert_allclose(_f64(y[dev]), ref, rtol=TOL, atol=TOL)


# ------------------------------------------------------------------ unbound axis_name


UNBOUND = {
    "batch_norm": lambda x: F.batch_norm(x, None, None, F.BatchStats(
        jnp.zeros(4), jnp.ones(4)), train=True, axis_name="d"),
    "batch_renorm": lambda x: F.batch_renorm(x, None, None, F.BatchRenormStats(
        jnp.zeros(4), jnp.ones(4), jnp.zeros((), jnp.int32)), train=True, axis_name="d"),
    "layer_norm": lambda x: F.layer_norm(x, None, None, axis_name="d"),
    "rms_norm": lambda x: F.rms_norm(x, None, axis_name="d"),
    "group_norm": lambda x: F.group_norm(x, None, None, num_groups=2, axis_name="d"),
    "instance_norm": lambda x: F.instance_norm(x[:, :, None], None, None,
                                               axis_name="d"),
    "evonorm_s0": lambda x: F.evonorm_s0(x, None, None, jnp.ones(4), num_groups=2,
                                         axis_name="d"),
    "moments": lambda x: F.moments(x, 0, axis_name="d"),
}


@pytest.mark.parametrize("name", list(UNBOUND))
def test_unbound_axis_name_raises_value_error(name):
  x = jnp.ones((8, 4))
  with pytest.raises(ValueError, match=r"axis_name='d'") as err:
    jax.jit(UNBOUND[name])(x)
  message = str(err.value)
  assert "not bound" in message
  assert "shard_map" in message and "pmap" in message
