"""The rest of the linen family: GroupNorm / InstanceNorm / RMSNorm as drop-ins for
flax.linen's, BatchNorm's ``freeze_stats`` / ``eval_with_batch_stats``, and the
variant modules (BatchRenorm, GhostBatchNorm, SwitchNorm, EvoNormB0, EvoNormS0).

Every number is compared with flax.linen (the module being replaced) or with a float64
NumPy reference written here from the papers' formulas, never with jaxnorm itself.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

import jaxnorm.linen as jl

TOL = 1e-5  # float32 values and gradients (relative to the reference's magnitude)
LOW_TOL = 2e-2  # bfloat16 outputs


# ---------------------------------------------------------------------------- helpers


def _flat(tree):
  return traverse_util.flatten_dict(jax.device_get(dict(tree)), sep="/")


def _f64(a):
  return np.asarray(np.asarray(a, np.float32) if a.dtype == jnp.bfloat16 else a,
                    np.float64)


def _data(shape, seed=0, loc=0.3, std=1.0):
  return loc + std * jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def _max_abs(a, b):
  return float(np.max(np.abs(_f64(a) - _f64(b))))


def _rel_err(actual, expected):
  """max |actual - expected| / max(1e-30, max |expected|), in float64."""
  expected = _f64(expected)
  return float(np.max(np.abs(_f64(actual) - expected)) / max(np.max(np.abs(expected)),
                                                              1e-30))


def _assert_close(actual, expected, tol=TOL, what=""):
  actual, expected = _f64(actual), _f64(expected)
  assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
  np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol, err_msg=what)


def _assert_trees_identical(ours, theirs):
  """Same names, shapes, dtypes and values (same rng paths give the same values)."""
  fo, ft = _flat(ours), _flat(theirs)
  assert sorted(fo) == sorted(ft)
  for k, v in ft.items():
    assert fo[k].shape == v.shape, k
    assert fo[k].dtype == v.dtype, k
    np.testing.assert_array_equal(np.asarray(fo[k]), np.asarray(v), err_msg=k)


def _randomize(variables, seed=1):
  """Non-trivial values for every normalization variable so that each one matters."""
  key = jax.random.key(seed)
  out = {}
  for i, (path, v) in enumerate(sorted(_flat(variables).items())):
    k = jax.random.fold_in(key, i)
    leaf = path.rsplit("/", 1)[-1]
    if "Dense" in path or "Conv" in path:
      pass
    elif leaf in ("scale", "v"):
      v = jax.random.uniform(k, v.shape, jnp.float32, 0.5, 1.5).astype(v.dtype)
    elif leaf == "bias":
      v = (0.2 * jax.random.normal(k, v.shape, jnp.float32)).astype(v.dtype)
    elif leaf == "mean":
      v = 0.3 * jax.random.normal(k, v.shape, v.dtype)
    elif leaf == "var":
      v = jax.random.uniform(k, v.shape, v.dtype, 0.5, 2.0)
    elif leaf in ("mean_weights", "var_weights"):
      v = jax.random.normal(k, v.shape, jnp.float32).astype(v.dtype)
    out[path] = v
  return traverse_util.unflatten_dict(out, sep="/")


def _moments64(x, axes, mask=None):
  """Float64 two-pass mean and biased variance over ``axes`` (kept), valid elements."""
  x = _f64(x)
  m = np.ones(x.shape, bool) if mask is None else np.broadcast_to(np.asarray(mask),
                                                                   x.shape)
  n = np.maximum(m.sum(axis=axes, keepdims=True), 1)
  mean = np.where(m, x, 0).sum(axis=axes, keepdims=True) / n
  var = np.where(m, (x - mean) ** 2, 0).sum(axis=axes, keepdims=True) / n
  return mean, var


# ------------------------------------------------ GroupNorm / InstanceNorm / RMSNorm


DROP_IN = {
    "group_num_groups": ("GroupNorm", dict(num_groups=4), (4, 5, 6, 8)),
    "group_group_size": ("GroupNorm", dict(
        num_groups=None, group_size=4, scale_init=nn.initializers.normal(0.5),
        bias_init=nn.initializers.uniform(0.3)), (4, 5, 6, 8)),
    "group_reduction_axes": ("GroupNorm", dict(num_groups=2, reduction_axes=(2, 3),
                                               epsilon=1e-3), (4, 3, 6, 8)),
    "instance_default": ("InstanceNorm", dict(), (4, 5, 6, 3)),
    "instance_feature_axes": ("InstanceNorm", dict(
        feature_axes=(1, -1), scale_init=nn.initializers.normal(0.7)), (4, 3, 10, 5)),
    "rms_reduce_hw": ("RMSNorm", dict(reduction_axes=(1, 2), feature_axes=-1),
                      (4, 5, 6, 3)),
    "rms_reduce_all": ("RMSNorm", dict(reduction_axes=(1, 2, 3), feature_axes=(1, 2, 3),
                                       scale_init=nn.initializers.normal(0.7)),
                       (4, 3, 5, 6)),
}


def _pair(config):
  module, kwargs, shape = DROP_IN[config]
  return getattr(nn, module)(**kwargs), getattr(jl, module)(**kwargs), shape


@pytest.mark.parametrize("config", list(DROP_IN))
def test_drop_in_variables_outputs_and_gradients_match_flax(config):
  f_mod, o_mod, shape = _pair(config)
  x = _data(shape, seed=3)
  w = jax.random.normal(jax.random.key(4), shape)
  f_vars = jax.jit(f_mod.init)(jax.random.key(5), x)
  o_vars = jax.jit(o_mod.init)(jax.random.key(5), x)
  _assert_trees_identical(o_vars, f_vars)
  assert set(o_vars) == {"params"}

  def value_and_grads(module):
    def loss(params, x):
      y = module.apply({"params": params}, x)
      return jnp.sum(w * jnp.sin(y)), y
    return jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))

  f_fn, o_fn = value_and_grads(f_mod), value_and_grads(o_mod)
  # Both directions: each module gets variables created by the other one.
  for source, init_vars, seed in (("flax_vars", f_vars, 6), ("jaxnorm_vars", o_vars, 7)):
    variables = _randomize(init_vars, seed=seed)
    (g_f, gx_f), y_f = f_fn(variables["params"], x)
    (g_o, gx_o), y_o = o_fn(variables["params"], x)
    assert y_o.dtype == y_f.dtype == jnp.float32
    _assert_close(y_o, y_f, what="y")
    grads_o, grads_f = _flat({"p": g_o, "x": gx_o}), _flat({"p": g_f, "x": gx_f})
    assert grads_o.keys() == grads_f.keys()
    worst = {k: _rel_err(grads_o[k], grads_f[k]) for k in grads_f}
    print(f"\n[{config}/{source}] max |y - y_flax| = {_max_abs(y_o, y_f):.3g}; "
          f"grad max rel diff {max(worst.values()):.3g}")
    for k, err in worst.items():
      assert err < TOL, (k, err)


DTYPE_CASES = [(m, d, p) for m in ("GroupNorm", "InstanceNorm", "RMSNorm")
               for d in (None, jnp.bfloat16) for p in (jnp.float32, jnp.bfloat16)]


@pytest.mark.parametrize(
    "module,dtype,param_dtype", DTYPE_CASES,
    ids=[f"{m}-{jnp.dtype(d).name if d else 'None'}-{jnp.dtype(p).name}"
         for m, d, p in DTYPE_CASES])
def test_bf16_input_dtype_rules_match_flax(module, dtype, param_dtype):
  kwargs = dict(dtype=dtype, param_dtype=param_dtype)
  if module == "GroupNorm":
    kwargs["num_groups"] = 2
  x = _data((4, 3, 5, 6), seed=7).astype(jnp.bfloat16)
  f_mod, o_mod = getattr(nn, module)(**kwargs), getattr(jl, module)(**kwargs)
  f_vars = f_mod.init(jax.random.key(0), x)
  _assert_trees_identical(o_mod.init(jax.random.key(0), x), f_vars)
  variables = _randomize(f_vars, seed=8)
  y_f, y_o = f_mod.apply(variables, x), o_mod.apply(variables, x)
  assert y_o.dtype == y_f.dtype, (y_o.dtype, y_f.dtype)
  expected = jnp.bfloat16 if dtype is not None or param_dtype == jnp.bfloat16 else (
      jnp.float32)
  assert y_o.dtype == expected
  _assert_close(y_o, y_f, tol=LOW_TOL)


@pytest.mark.parametrize("module", ["GroupNorm", "InstanceNorm", "RMSNorm"])
def test_no_affine_bf16_keeps_input_dtype_like_flax(module):
  kwargs = dict(use_scale=False) | ({} if module == "RMSNorm" else dict(use_bias=False))
  if module == "GroupNorm":
    kwargs["num_groups"] = 2
  x = _data((4, 3, 5, 6), seed=9).astype(jnp.bfloat16)
  f_mod, o_mod = getattr(nn, module)(**kwargs), getattr(jl, module)(**kwargs)
  assert not _flat(o_mod.init(jax.random.key(0), x))
  assert not _flat(f_mod.init(jax.random.key(0), x))
  y_f, y_o = f_mod.apply({}, x), o_mod.apply({}, x)
  assert y_o.dtype == y_f.dtype == jnp.bfloat16
  _assert_close(y_o, y_f, tol=LOW_TOL)


MASK_CASES = {
    "GroupNorm": (dict(num_groups=4), (4, 5, 6, 8)),
    "InstanceNorm": (dict(), (4, 5, 6, 3)),
    "RMSNorm": (dict(), (6, 12)),
}


@pytest.mark.parametrize("module", list(MASK_CASES))
def test_mask_matches_flax(module):
  kwargs, shape = MASK_CASES[module]
  x = _data(shape, seed=10)
  mask = np.array(jax.random.bernoulli(jax.random.key(11), 0.6, shape))
  mask[(slice(None),) + (slice(0, 2),) * (len(shape) - 1)] = True  # valid in every group
  mask = jnp.asarray(mask)
  # Masked-out elements get large values: they must not enter the statistics.
  x = jnp.where(mask, x, 20.0)
  f_mod, o_mod = getattr(nn, module)(**kwargs), getattr(jl, module)(**kwargs)
  variables = _randomize(jax.jit(f_mod.init)(jax.random.key(0), x), seed=12)
  y_f = jax.jit(lambda v, x, m: f_mod.apply(v, x, mask=m))(variables, x, mask)
  y_o = jax.jit(lambda v, x, m: o_mod.apply(v, x, mask=m))(variables, x, mask)
  y_unmasked = jax.jit(o_mod.apply)(variables, x)
  m = np.asarray(mask)
  print(f"\n[{module}] masked max |y - y_flax| = {_max_abs(y_o, y_f):.3g}")
  _assert_close(np.asarray(y_o)[m], np.asarray(y_f)[m], what="valid")
  _assert_close(y_o, y_f, tol=1e-4, what="all")
  assert _max_abs(y_unmasked, y_f) > 0.1  # the mask mattered


# ------------------------------------------------- BatchNorm: freeze / batch-stat eval


def _bn_variables(x, seed=1):
  variables = nn.BatchNorm(use_running_average=False).init(jax.random.key(0), x)
  return _randomize(variables, seed=seed)


def _bn64(x, variables, mean=None, var=None, epsilon=1e-5):
  """Float64 batch norm over every axis but the last, with given or batch statistics."""
  axes = tuple(range(x.ndim - 1))
  if mean is None:
    mean, var = _moments64(x, axes)
  p = variables["params"]
  return (_f64(x) - _f64(mean)) / np.sqrt(_f64(var) + epsilon) * _f64(p["scale"]) + _f64(
      p["bias"])


def test_freeze_stats_never_updates_and_normalizes_like_eval():
  x = _data((8, 3, 3, 6), seed=20, loc=2.0, std=3.0)  # far from the running stats
  module = jl.BatchNorm(use_running_average=False, freeze_stats=True, momentum=0.5)
  init = module.init(jax.random.key(0), x)
  np.testing.assert_array_equal(np.asarray(init["batch_stats"]["mean"]), np.zeros(6))
  np.testing.assert_array_equal(np.asarray(init["batch_stats"]["var"]), np.ones(6))
  variables = _bn_variables(x)
  stats = variables["batch_stats"]
  w = jax.random.normal(jax.random.key(21), x.shape)

  def loss(lib_module, **kwargs):
    def fn(params, x):
      y, upd = lib_module.apply({"params": params, "batch_stats": stats}, x,
                                mutable=["batch_stats"], **kwargs)
      return jnp.sum(w * jnp.sin(y)), (y, upd)
    return jax.jit(jax.grad(fn, argnums=(0, 1), has_aux=True))

  (g_o, gx_o), (y_o, upd_o) = loss(module)(variables["params"], x)
  # Flax's evaluation mode is the reference: same output and same gradients.
  (g_f, gx_f), (y_f, _) = loss(nn.BatchNorm(use_running_average=True))(
      variables["params"], x)
  for stat in ("mean", "var"):
    np.testing.assert_array_equal(np.asarray(upd_o["batch_stats"][stat]),
                                  np.asarray(stats[stat]))
  _assert_close(y_o, _bn64(x, variables, stats["mean"], stats["var"]), what="y vs f64")
  _assert_close(y_o, y_f, what="y vs flax eval")
  for k in ("scale", "bias"):
    assert np.max(np.abs(np.asarray(g_o[k]))) > 1e-2, k  # affine part stays trainable
    assert _rel_err(g_o[k], g_f[k]) < TOL, k
  # d/dx has no batch-statistics terms: exactly w cos(y) * scale / sqrt(var + eps).
  gx_ref = _f64(w) * np.cos(_f64(y_o)) * _f64(variables["params"]["scale"]) / np.sqrt(
      _f64(stats["var"]) + 1e-5)
  assert _rel_err(gx_o, gx_ref) < TOL
  assert _rel_err(gx_o, gx_f) < TOL


def test_freeze_stats_through_jitted_sgd_steps():
  x0 = _data((16, 5), seed=22)
  model = jl.BatchNorm(freeze_stats=True, momentum=0.0)
  variables = _randomize(model.init(jax.random.key(0), x0, use_running_average=False))
  tx = optax.sgd(0.1)

  @jax.jit
  def step(params, stats, opt_state, x):
    def loss(params):
      y, upd = model.apply({"params": params, "batch_stats": stats}, x,
                           use_running_average=False, mutable=["batch_stats"])
      return jnp.mean(jnp.square(y - 1.0)), upd["batch_stats"]
    (_, new_stats), grads = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_stats, opt_state

  params, stats = variables["params"], variables["batch_stats"]
  opt_state = tx.init(params)
  for i in range(3):
    params, stats, opt_state = step(params, stats, opt_state,
                                    _data((16, 5), seed=23 + i, loc=3.0))
  for k in ("mean", "var"):
    np.testing.assert_array_equal(np.asarray(stats[k]),
                                  np.asarray(variables["batch_stats"][k]))
  for k in ("scale", "bias"):
    assert _max_abs(params[k], variables["params"][k]) > 1e-3, k


@pytest.mark.parametrize("jit", [False, True])
def test_eval_with_batch_stats_uses_batch_statistics_without_updating(jit):
  x = _data((8, 3, 3, 6), seed=24, loc=-1.5, std=2.5)
  variables = _bn_variables(x, seed=2)
  stats = variables["batch_stats"]
  module = jl.BatchNorm(eval_with_batch_stats=True, momentum=0.5)

  def apply(**kwargs):
    fn = lambda v, x: module.apply(v, x, use_running_average=True, **kwargs)  # noqa: E731
    return (jax.jit(fn) if jit else fn)(variables, x)

  y, upd = apply(mutable=["batch_stats"])
  ref = _bn64(x, variables)
  print(f"\n[eval_with_batch_stats jit={jit}] max |y - ref64| = {_max_abs(y, ref):.3g}")
  _assert_close(y, ref, what="y vs batch-statistics reference")
  for stat in ("mean", "var"):
    np.testing.assert_array_equal(np.asarray(upd["batch_stats"][stat]),
                                  np.asarray(stats[stat]))
  # Not a request to mutate: works without a mutable collection, same output.
  _assert_close(apply(), y)
  # The running statistics would have given something else.
  assert _max_abs(y, _bn64(x, variables, stats["mean"], stats["var"])) > 0.1


def test_eval_with_batch_stats_leaves_training_mode_as_flax():
  x = _data((16, 4), seed=25, loc=1.0)
  variables = _bn_variables(x, seed=3)
  kwargs = dict(use_running_average=False, mutable=["batch_stats"])
  y_o, upd_o = jl.BatchNorm(eval_with_batch_stats=True, momentum=0.7).apply(
      variables, x, **kwargs)
  y_f, upd_f = nn.BatchNorm(momentum=0.7).apply(variables, x, **kwargs)
  _assert_close(y_o, y_f)
  for stat in ("mean", "var"):
    _assert_close(upd_o["batch_stats"][stat], upd_f["batch_stats"][stat], what=stat)
    assert _max_abs(upd_o["batch_stats"][stat], variables["batch_stats"][stat]) > 1e-3


# ------------------------------------------------------------------ variant modules

SHAPE = (8, 3, 3, 6)  # (N, H, W, C)
SPATIAL = (1, 2)
BATCH_AXES = (0, 1, 2)
EPS = 1e-5


def _variant(name, **kwargs):
  defaults = {
      "BatchRenorm": dict(r_max=1.5, d_max=0.5),
      "GhostBatchNorm": dict(virtual_batch_size=4),
      "EvoNormS0": dict(num_groups=2),
  }
  return getattr(jl, name)(**{**defaults.get(name, {}), **kwargs})


def _varied_data(seed, dtype=jnp.float32):
  """Channels with different means and spreads, so renorm's r and d clip on some."""
  loc = jnp.linspace(-1.5, 1.5, SHAPE[-1])
  std = jnp.linspace(0.3, 3.0, SHAPE[-1])
  return (loc + std * jax.random.normal(jax.random.key(seed), SHAPE)).astype(dtype)


def _ref_train(name, x, variables, *, momentum, virtual_batch_size=4, r_max=1.5,
               d_max=0.5):
  """Float64 (y, new_mean, new_var) of one training step, from the papers' formulas."""
  x = _f64(x)
  p = {k: _f64(v) for k, v in variables["params"].items()}
  rm, rv = (_f64(variables["batch_stats"][k]) for k in ("mean", "var"))
  bm, bv = _moments64(x, BATCH_AXES)
  if name == "BatchRenorm":
    sigma = np.sqrt(rv + EPS)
    r = np.clip(np.sqrt(bv + EPS) / sigma, 1 / r_max, r_max)
    d = np.clip((bm - rm) / sigma, -d_max, d_max)
    # The data are chosen so that both limits are active on some channels only.
    assert 0 < np.sum((r == r_max) | (r == 1 / r_max)) < r.size
    assert 0 < np.sum(np.abs(d) == d_max) < d.size
    y = ((x - bm) / np.sqrt(bv + EPS) * r + d) * p["scale"] + p["bias"]
  elif name == "GhostBatchNorm":
    ghosts = x.reshape((-1, virtual_batch_size) + x.shape[1:])
    gm, gv = _moments64(ghosts, (1, 2, 3))
    y = ((ghosts - gm) / np.sqrt(gv + EPS)).reshape(x.shape) * p["scale"] + p["bias"]
  elif name == "SwitchNorm":
    im, iv = _moments64(x, SPATIAL)
    lm, lv = _moments64(x, (1, 2, 3))
    wm, wv = (np.exp(p[k]) / np.exp(p[k]).sum() for k in ("mean_weights", "var_weights"))
    mean = wm[0] * im + wm[1] * lm + wm[2] * bm
    var = wv[0] * iv + wv[1] * lv + wv[2] * bv
    y = (x - mean) / np.sqrt(var + EPS) * p["scale"] + p["bias"]
  elif name == "EvoNormB0":
    _, iv = _moments64(x, SPATIAL)
    den = np.maximum(np.sqrt(bv + EPS), p["v"] * x + np.sqrt(iv + EPS))
    y = x / den * p["scale"] + p["bias"]
  new_mean = momentum * rm + (1 - momentum) * bm.reshape(-1)
  new_var = momentum * rv + (1 - momentum) * bv.reshape(-1)
  return y, new_mean, new_var


def _ref_eval(name, x, variables):
  x = _f64(x)
  p = {k: _f64(v) for k, v in variables["params"].items()}
  rm, rv = (_f64(variables["batch_stats"][k]) for k in ("mean", "var"))
  if name == "SwitchNorm":
    im, iv = _moments64(x, SPATIAL)
    lm, lv = _moments64(x, (1, 2, 3))
    wm, wv = (np.exp(p[k]) / np.exp(p[k]).sum() for k in ("mean_weights", "var_weights"))
    mean = wm[0] * im + wm[1] * lm + wm[2] * rm
    var = wv[0] * iv + wv[1] * lv + wv[2] * rv
    return (x - mean) / np.sqrt(var + EPS) * p["scale"] + p["bias"]
  if name == "EvoNormB0":
    _, iv = _moments64(x, SPATIAL)
    den = np.maximum(np.sqrt(rv + EPS), p["v"] * x + np.sqrt(iv + EPS))
    return x / den * p["scale"] + p["bias"]
  return (x - rm) / np.sqrt(rv + EPS) * p["scale"] + p["bias"]


STATEFUL = ["BatchRenorm", "GhostBatchNorm", "SwitchNorm", "EvoNormB0"]
ALL_VARIANTS = STATEFUL + ["EvoNormS0"]


def _expected_tree(name, x):
  """Shapes/dtypes from flax's BatchNorm (or GroupNorm) plus each variant's extras."""
  if name == "EvoNormS0":
    base = nn.GroupNorm(num_groups=2).init(jax.random.key(0), x)
  else:
    base = nn.BatchNorm(use_running_average=False).init(jax.random.key(0), x)
  tree = {k: (v.shape, v.dtype) for k, v in _flat(base).items()}
  c = x.shape[-1]
  extras = {
      "BatchRenorm": {"batch_stats/step": ((), jnp.int32)},
      "SwitchNorm": {"params/mean_weights": ((3,), jnp.float32),
                     "params/var_weights": ((3,), jnp.float32)},
      "EvoNormB0": {"params/v": ((c,), jnp.float32)},
      "EvoNormS0": {"params/v": ((c,), jnp.float32)},
  }
  return tree | extras.get(name, {})


@pytest.mark.parametrize("name,use_running_average",
                         [(n, u) for n in STATEFUL for u in (False, True)]
                         + [("EvoNormS0", None)])
def test_variant_variable_trees_and_init_leaves_stats(name, use_running_average):
  x = _varied_data(30) + 4.0  # a stats update during init would show
  kwargs = {} if name == "EvoNormS0" else dict(use_running_average=use_running_average,
                                                momentum=0.0)
  variables = _variant(name, **kwargs).init(jax.random.key(0), x)
  flat = _flat(variables)
  got = {k: (v.shape, v.dtype) for k, v in flat.items()}
  assert got == _expected_tree(name, x)
  fill = {"mean": 0, "var": 1, "step": 0, "scale": 1, "bias": 0, "v": 1,
          "mean_weights": 1, "var_weights": 1}
  for k, v in flat.items():
    np.testing.assert_array_equal(np.asarray(v), np.full(v.shape, fill[k.split("/")[-1]]),
                                  err_msg=k)


@pytest.mark.parametrize("momentum", [0.0, 0.6])
@pytest.mark.parametrize("name", STATEFUL)
def test_variant_train_step_matches_float64(name, momentum):
  x = _varied_data(31)
  module = _variant(name, use_running_average=False, momentum=momentum)
  variables = _randomize(module.init(jax.random.key(0), x), seed=32)
  y, upd = jax.jit(lambda v, x: module.apply(v, x, mutable=["batch_stats"]))(variables, x)
  ref_y, ref_mean, ref_var = _ref_train(name, x, variables, momentum=momentum)
  new = upd["batch_stats"]
  stats_err = max(_max_abs(new["mean"], ref_mean), _max_abs(new["var"], ref_var))
  print(f"\n[{name} momentum={momentum}] max |y - ref64| = {_max_abs(y, ref_y):.3g}, "
        f"stats {stats_err:.3g}")
  _assert_close(y, ref_y, what="y")
  _assert_close(new["mean"], ref_mean, what="mean")
  _assert_close(new["var"], ref_var, what="var")
  assert new["mean"].dtype == new["var"].dtype == jnp.float32
  if name == "BatchRenorm":
    assert new["step"].dtype == jnp.int32 and int(new["step"]) == 1
  assert _max_abs(new["var"], variables["batch_stats"]["var"]) > 1e-2


@pytest.mark.parametrize("name", STATEFUL)
def test_variant_eval_uses_running_stats(name):
  x = _varied_data(33)
  module = _variant(name, use_running_average=True, momentum=0.5)
  variables = _randomize(module.init(jax.random.key(0), x), seed=34)
  if name == "BatchRenorm":
    variables["batch_stats"]["step"] = jnp.asarray(7, jnp.int32)
  y, upd = jax.jit(lambda v, x: module.apply(v, x, mutable=["batch_stats"]))(variables, x)
  ref = _ref_eval(name, x, variables)
  _assert_close(y, ref, what="y")
  for k, v in _flat(variables["batch_stats"]).items():
    np.testing.assert_array_equal(np.asarray(_flat(upd["batch_stats"])[k]), np.asarray(v))
  if name in ("BatchRenorm", "GhostBatchNorm"):  # evaluation is plain batch norm
    bn_vars = {"params": variables["params"],
               "batch_stats": {k: variables["batch_stats"][k] for k in ("mean", "var")}}
    _assert_close(y, nn.BatchNorm(use_running_average=True).apply(bn_vars, x),
                  what="vs flax BatchNorm eval")


def test_evonorm_s0_matches_float64():
  x = _varied_data(35)
  module = jl.EvoNormS0(num_groups=2, epsilon=1e-3)
  variables = _randomize(module.init(jax.random.key(0), x), seed=36)
  y = jax.jit(module.apply)(variables, x)
  p = {k: _f64(v) for k, v in variables["params"].items()}
  x64 = _f64(x)
  grouped = x64.reshape(SHAPE[:-1] + (2, 3))
  _, gv = _moments64(grouped, (1, 2, 4))
  std = np.broadcast_to(np.sqrt(gv + 1e-3), grouped.shape).reshape(SHAPE)
  ref = x64 / (1 + np.exp(-p["v"] * x64)) / std * p["scale"] + p["bias"]
  _assert_close(y, ref)


def test_batch_renorm_warmup_then_renorm():
  """Before warmup_steps, plain batch norm (as flax's); after, r and d apply."""
  x = _varied_data(37)
  module = jl.BatchRenorm(use_running_average=False, warmup_steps=1, r_max=1.5,
                          d_max=0.5, momentum=0.6)
  variables = _randomize(module.init(jax.random.key(0), x), seed=38)
  apply = jax.jit(lambda v, x: module.apply(v, x, mutable=["batch_stats"]))
  y0, upd = apply(variables, x)
  bn_vars = {"params": variables["params"],
             "batch_stats": {k: variables["batch_stats"][k] for k in ("mean", "var")}}
  y_bn, upd_bn = nn.BatchNorm(use_running_average=False, momentum=0.6).apply(
      bn_vars, x, mutable=["batch_stats"])
  _assert_close(y0, y_bn, what="warm-up step")
  for k in ("mean", "var"):
    _assert_close(upd["batch_stats"][k], upd_bn["batch_stats"][k], what=k)
  assert int(upd["batch_stats"]["step"]) == 1
  v1 = {"params": variables["params"], **upd}
  y1, upd1 = apply(v1, x)
  ref_y, ref_mean, ref_var = _ref_train("BatchRenorm", x, v1, momentum=0.6)
  _assert_close(y1, ref_y, what="after warm-up")
  _assert_close(upd1["batch_stats"]["mean"], ref_mean)
  assert int(upd1["batch_stats"]["step"]) == 2


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_variant_bf16_input_float32_stats(name):
  x = _varied_data(39, jnp.bfloat16)
  kwargs = {} if name == "EvoNormS0" else dict(use_running_average=False, momentum=0.0)
  module = _variant(name, **kwargs)
  variables = module.init(jax.random.key(0), x)
  for k, v in _flat(variables).items():
    want = jnp.int32 if k.endswith("step") else jnp.float32
    assert v.dtype == want, k
  low = _variant(name, dtype=jnp.bfloat16, **kwargs)
  if name == "EvoNormS0":
    assert module.apply(variables, x).dtype == jnp.float32  # flax's rule: x and params
    assert low.apply(variables, x).dtype == jnp.bfloat16
    return
  bm, bv = _moments64(x, BATCH_AXES)
  for mod, out_dtype in ((module, jnp.float32), (low, jnp.bfloat16)):
    y, upd = mod.apply(variables, x, mutable=["batch_stats"])
    assert y.dtype == out_dtype
    assert np.all(np.isfinite(_f64(y)))
    new = upd["batch_stats"]
    assert new["mean"].dtype == new["var"].dtype == jnp.float32
    # Statistics of the bfloat16 values, accumulated in float32.
    _assert_close(new["mean"], bm.reshape(-1), what="mean")
    _assert_close(new["var"], bv.reshape(-1), what="var")


class _ConvNet(nn.Module):
  norm: str

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(6, (3, 3))(x)
    kwargs = {} if self.norm == "EvoNormS0" else dict(use_running_average=not train,
                                                      momentum=0.8)
    x = _variant(self.norm, **kwargs)(x)
    x = nn.relu(x)
    return nn.Dense(3)(jnp.mean(x, axis=(1, 2)))


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_variant_jitted_optax_training_stays_finite(name):
  model = _ConvNet(name)
  x0 = _data((8, 5, 5, 3), seed=40)
  variables = model.init(jax.random.key(0), x0, train=False)
  tx = optax.adam(1e-2)
  stateful = name != "EvoNormS0"

  @jax.jit
  def step(params, stats, opt_state, x, target):
    def loss(params):
      out, upd = model.apply({"params": params, **stats}, x, train=True,
                             mutable=["batch_stats"])
      return jnp.mean(jnp.square(out - target)), upd
    (l, upd), grads = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), upd, opt_state, l

  params = variables["params"]
  stats = {k: v for k, v in variables.items() if k != "params"}
  opt_state = tx.init(params)
  for i in range(3):
    x = _data((8, 5, 5, 3), seed=41 + i, loc=1.0)
    target = jax.random.normal(jax.random.key(50 + i), (8, 3))
    params, stats, opt_state, l = step(params, stats, opt_state, x, target)
    assert np.isfinite(float(l)), (i, float(l))
  for k, v in _flat({"params": params, **stats}).items():
    assert np.all(np.isfinite(np.asarray(v, np.float64))), k
  norm_key = f"{name}_0"
  moved = _flat(params)
  init = _flat(variables["params"])
  assert all(_max_abs(moved[k], init[k]) > 1e-4 for k in moved), name
  if stateful:
    assert _max_abs(stats["batch_stats"][norm_key]["mean"],
                    variables["batch_stats"][norm_key]["mean"]) > 1e-3
    if name == "BatchRenorm":
      assert int(stats["batch_stats"][norm_key]["step"]) == 3
  else:
    assert not stats.get("batch_stats")
