"""jaxnorm.nnx's BatchNorm, LayerNorm, RMSNorm, GroupNorm, InstanceNorm vs flax.nnx's.

Every number is compared with the flax.nnx layer being replaced, never with jaxnorm:
variable trees, initial values and Rngs consumption, outputs, gradients, running
statistics after several optimizer steps, masks, dtypes and train/eval switching.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxnorm import nnx as jnnx

TOL = 1e-5


def _x(shape, seed=0, loc=0.3, dtype=jnp.float32):
  """Test data from NumPy's generator (no per-shape compilation of a JAX sampler)."""
  return jnp.asarray(loc + np.random.default_rng(seed).normal(size=shape), dtype)


def _pair(name, *args, **kwargs):
  """The flax.nnx layer and the jaxnorm one, built from equal Rngs."""
  return (getattr(nnx, name)(*args, **kwargs, rngs=nnx.Rngs(0)),
          getattr(jnnx, name)(*args, **kwargs, rngs=nnx.Rngs(0)))


def _max_abs(a, b):
  return float(jnp.max(jnp.abs(jnp.asarray(a, jnp.float32) - jnp.asarray(b, jnp.float32))))


def _max_rel(a, b):
  """Max of |a - b| / max(1, |b|): absolute for small values, relative for large ones."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b) / np.maximum(1.0, np.abs(b))))


def _structure(tree):
  """Paths, variable types, shapes and dtypes of a state."""
  return [(path, type(v).__name__, v.shape, v.dtype) for path, v in nnx.to_flat_state(tree)]


# (layer, args, kwargs, input shape, call kwargs)
CASES = [
    ("BatchNorm", (6,), {}, (16, 6), {}),
    ("BatchNorm", (6,), {"momentum": 0.8, "epsilon": 1e-3}, (8, 5, 6), {}),
    ("BatchNorm", (4,), {"axis": 1}, (8, 4, 3, 3), {}),
    ("BatchNorm", (6,), {"use_bias": False, "use_scale": False}, (16, 6), {}),
    ("LayerNorm", (6,), {}, (4, 6), {}),
    ("LayerNorm", (6,), {"reduction_axes": (1, 2), "feature_axes": -1}, (4, 3, 5, 6), {}),
    ("LayerNorm", (90,), {"reduction_axes": (1, 2, 3), "feature_axes": (1, 2, 3)},
     (4, 3, 5, 6), {}),
    ("LayerNorm", (6,), {"use_bias": False, "epsilon": 1e-3}, (4, 6), {}),
    ("RMSNorm", (6,), {}, (4, 6), {}),
    ("RMSNorm", (6,), {"reduction_axes": (1, 2)}, (4, 3, 6), {}),
    ("GroupNorm", (6,), {"num_groups": 3}, (2, 4, 4, 6), {}),
    ("GroupNorm", (8,), {"num_groups": None, "group_size": 2}, (3, 5, 8), {}),
    ("GroupNorm", (8,), {"num_groups": 2, "reduction_axes": (1, 2, 3)}, (3, 2, 5, 8), {}),
    ("InstanceNorm", (5,), {}, (2, 3, 4, 5), {}),
    ("InstanceNorm", (3,), {"feature_axes": 1}, (2, 3, 4, 5), {}),
]
IDS = [f"{c[0]}-{i}" for i, c in enumerate(CASES)]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_variables_and_rngs_consumption_match_flax(case):
  name, args, kwargs, _, _ = case
  rngs_flax, rngs_ours = nnx.Rngs(params=3), nnx.Rngs(params=3)
  theirs = getattr(nnx, name)(*args, **kwargs, rngs=rngs_flax)
  ours = getattr(jnnx, name)(*args, **kwargs, rngs=rngs_ours)
  assert _structure(nnx.state(ours)) == _structure(nnx.state(theirs))
  for (_, a), (_, b) in zip(nnx.to_flat_state(nnx.state(ours)),
                            nnx.to_flat_state(nnx.state(theirs))):
    np.testing.assert_array_equal(a[...], b[...])
  # The same keys were drawn: the next key of the stream is the same.
  assert jnp.array_equal(jax.random.key_data(rngs_flax.params()),
                         jax.random.key_data(rngs_ours.params()))
  # nnx.split by variable type gives the same trees.
  _, *theirs_states = nnx.split(theirs, nnx.Param, nnx.BatchStat, ...)
  _, *ours_states = nnx.split(ours, nnx.Param, nnx.BatchStat, ...)
  for theirs_state, ours_state in zip(theirs_states, ours_states, strict=True):
    assert _structure(ours_state) == _structure(theirs_state)


def _perturb(layer, seed):
  """Non-trivial parameters (equal across the pair when ``seed`` is equal)."""
  state = nnx.state(layer, nnx.Param)
  rng = np.random.default_rng(seed)
  nnx.update(layer, jax.tree.map(
      lambda leaf: (leaf + 0.3 * rng.normal(size=leaf.shape)).astype(leaf.dtype), state))


@nnx.jit
def _outputs_and_grads(layer, x, cot):
  """The layer's output and the gradients of sum(output * cot) wrt layer and input."""
  def loss(layer, x):
    return jnp.sum(layer(x) * cot)

  grads = nnx.grad(loss, argnums=(0, 1))(nnx.clone(layer), x)
  return layer(x), grads


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_outputs_and_gradients_match_flax(case):
  name, args, kwargs, shape, _ = case
  theirs, ours = _pair(name, *args, **kwargs)
  _perturb(theirs, 1)
  _perturb(ours, 1)
  x, cot = _x(shape), _x(shape, seed=5, loc=0.0)
  y_theirs, (g_theirs, gx_theirs) = _outputs_and_grads(theirs, x, cot)
  y_ours, (g_ours, gx_ours) = _outputs_and_grads(ours, x, cot)
  assert y_ours.dtype == y_theirs.dtype and y_ours.shape == y_theirs.shape
  assert _max_abs(y_ours, y_theirs) < TOL
  assert _max_abs(gx_ours, gx_theirs) < 1e-4
  flat_t = dict(nnx.to_flat_state(nnx.state(g_theirs, nnx.Param)))
  flat_o = dict(nnx.to_flat_state(nnx.state(g_ours, nnx.Param)))
  assert flat_t.keys() == flat_o.keys()
  for path in flat_t:
    assert _max_abs(flat_o[path][...], flat_t[path][...]) < 1e-4, path
  for kind in (nnx.BatchStat,):  # the training call moved the statistics alike
    for (_, a), (_, b) in zip(nnx.to_flat_state(nnx.state(ours, kind)),
                              nnx.to_flat_state(nnx.state(theirs, kind)), strict=True):
      assert _max_abs(a[...], b[...]) < 1e-6


class _Net(nnx.Module):
  """Linear -> BatchNorm -> relu -> Linear, with the BatchNorm of ``lib``."""

  def __init__(self, lib, *, rngs):
    self.linear1 = nnx.Linear(5, 8, rngs=rngs)
    self.bn = lib.BatchNorm(8, momentum=0.8, rngs=rngs)
    self.linear2 = nnx.Linear(8, 3, rngs=rngs)

  def __call__(self, x):
    return self.linear2(nnx.relu(self.bn(self.linear1(x))))


@nnx.jit
def _sgd_step(model, optimizer, x, y):
  def loss(model):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

  value, grads = nnx.value_and_grad(loss)(model)
  optimizer.update(model, grads)
  return value


def test_training_steps_match_flax_statistics_params_and_eval_outputs():
  models = [_Net(lib, rngs=nnx.Rngs(0)) for lib in (nnx, jnnx)]
  optimizers = [nnx.Optimizer(m, optax.sgd(0.1, momentum=0.9), wrt=nnx.Param) for m in models]
  for step in range(6):
    x = _x((16, 5), seed=step, loc=1.0)
    y = jnp.asarray(np.random.default_rng(100 + step).integers(0, 3, 16))
    losses = [_sgd_step(m, o, x, y) for m, o in zip(models, optimizers)]
    assert abs(float(losses[0]) - float(losses[1])) < 1e-5
  flax_state, our_state = (dict(nnx.to_flat_state(nnx.state(m))) for m in models)
  assert flax_state.keys() == our_state.keys()
  for path in flax_state:
    assert _max_abs(our_state[path][...], flax_state[path][...]) < 1e-5, path
  for m in models:
    m.eval()
  x = _x((7, 5), seed=50)
  assert _max_abs(models[1](x), models[0](x)) < 1e-5


def test_swapped_model_accepts_flax_state_and_matches_outputs():
  flax_model, our_model = _Net(nnx, rngs=nnx.Rngs(0)), _Net(jnnx, rngs=nnx.Rngs(9))
  optimizer = nnx.Optimizer(flax_model, optax.sgd(0.1), wrt=nnx.Param)
  for step in range(3):
    _sgd_step(flax_model, optimizer, _x((16, 5), seed=step), jnp.arange(16) % 3)
  nnx.update(our_model, nnx.state(flax_model))
  for mode in ("eval", "train"):
    getattr(flax_model, mode)()
    getattr(our_model, mode)()
    x = _x((16, 5), seed=70)
    assert _max_abs(our_model(x), flax_model(x)) < 1e-5
  assert _max_abs(our_model.bn.mean[...], flax_model.bn.mean[...]) < 1e-6


@pytest.mark.parametrize("name,args,shape,mask_shape", [
    ("BatchNorm", (6,), (12, 6), (12, 1)),
    ("LayerNorm", (6,), (4, 6), (4, 6)),
    ("RMSNorm", (6,), (4, 6), (4, 6)),
    ("GroupNorm", (6,), (2, 5, 6), (2, 5, 6)),
    ("InstanceNorm", (6,), (2, 5, 6), (2, 5, 6)),
])
def test_masks_match_flax(name, args, shape, mask_shape):
  kwargs = {"num_groups": 3} if name == "GroupNorm" else {}
  theirs, ours = _pair(name, *args, **kwargs)
  x = _x(shape, seed=3)
  mask = np.random.default_rng(4).random(mask_shape) < 0.7
  mask.reshape(-1)[:2] = True  # every statistic has valid values
  if name == "BatchNorm":
    mask[:3] = True
  assert _max_rel(ours(x, mask=mask), theirs(x, mask=mask)) < 1e-4
  if name == "BatchNorm":
    assert _max_abs(ours.mean[...], theirs.mean[...]) < 1e-6
    assert _max_abs(ours.var[...], theirs.var[...]) < 1e-6


@pytest.mark.parametrize("name,args,shape", [
    ("BatchNorm", (6,), (16, 6)), ("LayerNorm", (6,), (4, 6)), ("RMSNorm", (6,), (4, 6)),
    ("GroupNorm", (6,), (2, 3, 6)), ("InstanceNorm", (6,), (2, 3, 6)),
])
@pytest.mark.parametrize("x_dtype,dtype,param_dtype", [
    (jnp.bfloat16, None, jnp.float32),      # inferred: promoted to float32
    (jnp.float32, jnp.bfloat16, jnp.float32),   # explicit narrower dtype
    (jnp.float16, jnp.float32, jnp.float16),    # explicit wider dtype, half parameters
])
def test_dtypes_match_flax(name, args, shape, x_dtype, dtype, param_dtype):
  kwargs = {"num_groups": 3} if name == "GroupNorm" else {}
  theirs, ours = _pair(name, *args, dtype=dtype, param_dtype=param_dtype, **kwargs)
  x = _x(shape, dtype=x_dtype)
  y_theirs, y_ours = theirs(x), ours(x)
  assert y_ours.dtype == y_theirs.dtype
  tol = 1e-5 if y_ours.dtype == jnp.float32 else 2e-2 * max(1.0, float(jnp.max(jnp.abs(
      y_theirs.astype(jnp.float32)))))
  assert _max_abs(y_ours, y_theirs) <= tol
  for kind in (nnx.Param, nnx.BatchStat):
    assert _structure(nnx.state(ours, kind)) == _structure(nnx.state(theirs, kind))


def test_batch_norm_without_affine_promotes_like_flax():
  # flax.nnx promotes over (x, mean, var, scale, bias): bfloat16 in, float32 out.
  theirs, ours = _pair("BatchNorm", 6, use_bias=False, use_scale=False)
  x = _x((8, 6), dtype=jnp.bfloat16)
  assert ours(x).dtype == theirs(x).dtype == jnp.float32


def test_custom_promote_dtype_is_called_like_flax():
  seen = []

  def promote(args, *, dtype=None):
    seen.append((len(args), dtype))
    return nnx.nn.dtypes.promote_dtype(args, dtype=jnp.float32)

  for name in ("BatchNorm", "LayerNorm", "RMSNorm"):
    theirs, ours = _pair(name, 6, promote_dtype=promote, dtype=jnp.bfloat16)
    x = _x((8, 6))
    y_theirs, y_ours = theirs(x), ours(x)
    assert y_ours.dtype == y_theirs.dtype == jnp.bfloat16
    assert seen[-1] == seen[-2]  # same arguments, same dtype
  assert [n for n, _ in seen] == [5, 5, 3, 3, 2, 2]


def test_train_eval_switching_matches_flax():
  theirs, ours = _pair("BatchNorm", 6, momentum=0.5)
  x1, x2 = _x((8, 6), seed=1), _x((8, 6), seed=2, loc=2.0)
  for layer in (theirs, ours):
    layer(x1)                     # training by default, statistics move
    layer.eval()
    layer(x2)                     # evaluation: no update
    layer.train()
    layer(x2, use_running_average=True)   # call-time flag wins over the attribute
  assert not ours.use_running_average and not theirs.use_running_average
  assert _max_abs(ours.mean[...], theirs.mean[...]) < 1e-6
  assert _max_abs(ours.var[...], theirs.var[...]) < 1e-6
  for layer in (theirs, ours):
    view = nnx.view(layer, use_running_average=True)
    assert view.use_running_average and not layer.use_running_average
    assert view.mean is layer.mean
  assert _max_abs(nnx.view(ours, use_running_average=True)(x2),
                  nnx.view(theirs, use_running_average=True)(x2)) < TOL


def test_mode_flag_set_nowhere_raises_like_flax():
  theirs, ours = _pair("BatchNorm", 6, use_running_average=None)
  x = _x((4, 6))
  with pytest.raises(ValueError) as flax_error:
    theirs(x)
  with pytest.raises(ValueError) as our_error:
    ours(x)
  for fragment in ("use_running_average", "constructor", "__call__", "nnx.view"):
    assert fragment in str(flax_error.value) and fragment in str(our_error.value)
  assert "jaxnorm.nnx.BatchNorm" in str(our_error.value)


def test_num_features_mismatch_names_the_fix():
  layer = jnnx.LayerNorm(5, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"num_features=5.*x.shape=\(2, 6\).*num_features=6"):
    layer(jnp.ones((2, 6)))


def test_group_norm_checks_groups_at_construction():
  with pytest.raises(ValueError, match="num_groups=4 does not divide the 6 channels"):
    jnnx.GroupNorm(6, num_groups=4, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="exactly one of num_groups and group_size"):
    jnnx.GroupNorm(6, num_groups=None, rngs=nnx.Rngs(0))
  layer = jnnx.GroupNorm(6, num_groups=None, group_size=3, rngs=nnx.Rngs(0))
  assert (layer.num_groups, layer.group_size) == (2, 3)


def test_batch_norm_is_stable_where_flax_fast_variance_is_not():
  # Mean 1e4, std 1: a float64 reference gives outputs of unit variance.
  theirs, ours = _pair("BatchNorm", 4)
  x = _x((256, 4), loc=1e4)
  reference = (np.asarray(x, np.float64) - np.asarray(x, np.float64).mean(0)) / np.sqrt(
      np.asarray(x, np.float64).var(0) + 1e-5)
  assert np.max(np.abs(np.asarray(ours(x)) - reference)) < 2e-3
  assert np.max(np.abs(np.asarray(theirs(x)) - reference)) > 0.1


def test_freeze_stats_and_eval_with_batch_stats():
  x = _x((16, 6), loc=3.0)
  frozen = jnnx.BatchNorm(6, freeze_stats=True, rngs=nnx.Rngs(0))
  y = frozen(x)
  np.testing.assert_array_equal(frozen.mean[...], np.zeros(6))
  np.testing.assert_allclose(y, x / np.sqrt(1 + 1e-5), rtol=1e-6)
  adabn = jnnx.BatchNorm(6, eval_with_batch_stats=True, use_running_average=True,
                         rngs=nnx.Rngs(0))
  y = np.asarray(adabn(x), np.float64)
  np.testing.assert_array_equal(adabn.mean[...], np.zeros(6))
  np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-5)
  np.testing.assert_allclose(y.var(0), 1.0, atol=1e-3)


def test_axis_name_merges_statistics_exactly_across_devices():
  # 8 simulated devices with different numbers of valid examples: the running
  # statistics equal the float64 statistics of all valid examples.
  from jax.sharding import Mesh, PartitionSpec as P
  mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
  layer = jnnx.BatchNorm(4, axis_name="data", momentum=0.0, rngs=nnx.Rngs(0))
  x = _x((32, 4), loc=2.0)
  mask = np.arange(32)[:, None] % 4 < np.repeat(np.arange(8) % 3 + 2, 4)[:, None]
  graphdef, state = nnx.split(layer)

  def local(state, x, mask):
    model = nnx.merge(graphdef, state)
    y = model(x, mask=mask)
    return y, nnx.state(model, nnx.BatchStat)

  y, stats = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P("data"), P("data")),
                                   out_specs=(P("data"), P())))(state, x, jnp.asarray(mask))
  valid = np.asarray(x, np.float64)[mask[:, 0]]
  np.testing.assert_allclose(stats["mean"][...], valid.mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats["var"][...], valid.var(0), rtol=1e-5, atol=1e-6)
  expected = (np.asarray(x, np.float64) - valid.mean(0)) / np.sqrt(valid.var(0) + 1e-5)
  np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
