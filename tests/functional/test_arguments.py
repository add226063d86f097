"""Arguments that used to be accepted and give a wrong answer, or fail deep inside JAX.

Each bad argument gets the project's kind of message: ``TypeError`` for the wrong kind
of value, ``ValueError`` for the wrong value, naming the function, the argument, the
rule and the value received. Where an answer exists (confident concrete-dropout logits,
empty batches with a mask), it is compared with a float64 NumPy reference instead.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxnorm import functional as F

_X = np.random.default_rng(0).normal(size=(4, 3, 6)).astype(np.float32)
_X2 = _X[:, 0]  # (4, 6)
_C = 6
_STATS = F.BatchStats(jnp.zeros(_C), jnp.ones(_C))
_RENORM = F.BatchRenormStats(jnp.zeros(_C), jnp.ones(_C), jnp.int32(0))
_V = np.ones(_C, np.float32)
_KEY = jax.random.key(0)

# Every public function with a hyperparameter, called with everything valid but the one
# argument under test (``**kw``).
_CALLS = {
    "batch_norm": lambda **kw: F.batch_norm(_X, None, None, _STATS, **{"train": True, **kw}),
    "layer_norm": lambda **kw: F.layer_norm(_X, None, None, **kw),
    "group_norm": lambda **kw: F.group_norm(_X, None, None, **{"num_groups": 2, **kw}),
    "instance_norm": lambda **kw: F.instance_norm(_X, None, None, **kw),
    "rms_norm": lambda **kw: F.rms_norm(_X, None, **kw),
    "batch_renorm": lambda **kw: F.batch_renorm(_X, None, None, _RENORM,
                                                **{"train": True, **kw}),
    "ghost_batch_norm": lambda **kw: F.ghost_batch_norm(
        _X, None, None, _STATS, **{"virtual_batch_size": 2, "train": True, **kw}),
    "switch_norm": lambda **kw: F.switch_norm(_X, None, None, np.zeros(3), np.zeros(3),
                                              _STATS, **{"train": True, **kw}),
    "evonorm_b0": lambda **kw: F.evonorm_b0(_X, None, None, _V, _STATS,
                                            **{"train": True, **kw}),
    "evonorm_s0": lambda **kw: F.evonorm_s0(_X, None, None, _V, **{"num_groups": 2, **kw}),
    "moments": lambda **kw: F.moments(_X, **{"axes": 0, **kw}),
    "dropout": lambda **kw: F.dropout(_KEY, _X, **{"rate": 0.5, **kw}),
    "spatial_dropout": lambda **kw: F.spatial_dropout(_KEY, _X, **{"rate": 0.5, **kw}),
    "drop_path": lambda **kw: F.drop_path(_KEY, _X, **{"rate": 0.5, **kw}),
    "alpha_dropout": lambda **kw: F.alpha_dropout(_KEY, _X, **{"rate": 0.5, **kw}),
    "gaussian_dropout": lambda **kw: F.gaussian_dropout(_KEY, _X, **{"rate": 0.5, **kw}),
    "classic_dropout": lambda **kw: F.classic_dropout(_KEY, _X,
                                                      **{"rate": 0.5, "train": True, **kw}),
    "concrete_dropout": lambda **kw: F.concrete_dropout(_KEY, _X, **{"logit": 0.0, **kw}),
    "concrete_dropout_regularizer": lambda **kw: F.concrete_dropout_regularizer(
        **{"logit": 0.0, "input_dim": 6, "weight_sq_norm": 1.0,
           "weight_regularizer": 1e-6, "dropout_regularizer": 1e-5, **kw}),
    "drop_path_rates": lambda **kw: F.drop_path_rates(**{"num_layers": 4, "max_rate": 0.2,
                                                         **kw}),
}

_EPSILON_USERS = ["batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm",
                  "batch_renorm", "ghost_batch_norm", "switch_norm", "evonorm_b0",
                  "evonorm_s0"]
_MOMENTUM_USERS = ["batch_norm", "batch_renorm", "ghost_batch_norm", "switch_norm",
                   "evonorm_b0"]
_RATE_USERS = ["dropout", "spatial_dropout", "drop_path", "alpha_dropout",
               "gaussian_dropout", "classic_dropout"]


def _raises(error, name, *fragments, **kw):
  with pytest.raises(error) as info:
    _CALLS[name](**kw)
  message = str(info.value)
  assert message.startswith(f"jaxnorm.functional.{name}: "), message
  for fragment in fragments:
    assert fragment in message, (fragment, message)
  return message


# ---------------------------------------------------------------------------------------
# Values of the right kind that used to pass and give a wrong answer.


@pytest.mark.parametrize("epsilon,error,fragment", [
    (float("inf"), ValueError, "epsilon must be finite; got inf"),
    (float("nan"), ValueError, "epsilon must be > 0; got nan"),
    (-1e-5, ValueError, "epsilon must be > 0; got -1e-05"),
    (0.0, ValueError, "epsilon must be > 0; got 0.0"),
    (1e-37, ValueError, "epsilon=1e-37 is outside"),
    (1e39, ValueError, "epsilon=1e+39 is outside"),
    (True, TypeError, "epsilon must be a positive number such as 1e-5; got True"),
    ("1e-5", TypeError, "epsilon must be a positive number such as 1e-5; got '1e-5'"),
])
@pytest.mark.parametrize("name", _EPSILON_USERS)
def test_bad_epsilon(name, epsilon, error, fragment):
  _raises(error, name, fragment, epsilon=epsilon)


@pytest.mark.parametrize("name", _MOMENTUM_USERS)
@pytest.mark.parametrize("momentum,error,fragment", [
    (float("nan"), ValueError, "momentum must be in [0, 1]; got nan"),
    (True, TypeError, "momentum must be a number, not a bool; got True"),
    ("0.9", TypeError, "momentum must be a number, not a string; got '0.9'. Write it "
                       "without quotes: momentum=0.9."),
    (np.ones(3, np.float32), TypeError, "momentum must be a single number (a scalar); "
                                        "got an array of shape (3,)"),
    (1 + 2j, TypeError, "momentum must be a number"),
    (None, TypeError, "momentum must be a number; got None"),
])
def test_bad_momentum(name, momentum, error, fragment):
  _raises(error, name, fragment, momentum=momentum)


@pytest.mark.parametrize("name", _RATE_USERS)
@pytest.mark.parametrize("rate,error,fragment", [
    ("0.5", TypeError, "rate must be a number, not a string; got '0.5'"),
    (True, TypeError, "rate must be a number, not a bool"),
    (float("nan"), ValueError, "rate must be in [0, 1]; got nan"),
    (np.full(2, 0.5), TypeError, "rate must be a single number (a scalar)"),
])
def test_bad_rate(name, rate, error, fragment):
  _raises(error, name, fragment, rate=rate)


@pytest.mark.parametrize("name,kw,fragment", [
    ("batch_renorm", dict(r_max=float("nan")), "r_max must be >= 1; got nan"),
    ("batch_renorm", dict(d_max=float("nan")), "d_max must be >= 0; got nan"),
    ("batch_renorm", dict(r_max=lambda step: jnp.float32(jnp.nan)),
     "r_max must be >= 1; got nan at step 0"),
    ("batch_renorm", dict(warmup_steps=-1), "warmup_steps must be a whole number >= 0"),
    ("concrete_dropout", dict(temperature=float("nan")), "temperature must be > 0; got nan"),
    ("concrete_dropout", dict(temperature=float("inf")), "temperature must be finite"),
    ("concrete_dropout_regularizer", dict(weight_regularizer=float("nan")),
     "weight_regularizer must be >= 0; got nan"),
    ("drop_path_rates", dict(max_rate=float("nan")), "max_rate must be in [0, 1]; got nan"),
])
def test_nan_and_out_of_range_hyperparameters(name, kw, fragment):
  _raises(ValueError, name, fragment, **kw)


def test_batch_renorm_accepts_infinite_limits(ref):
  """inf is a limit that never clips (r and d unclipped): a right answer, not an error."""
  y, _ = F.batch_renorm(_X, None, None, _RENORM, train=True, r_max=float("inf"),
                        d_max=float("inf"))
  expected, _, _ = ref.batch_renorm(_X, None, None, _RENORM, train=True, r_max=np.inf,
                                    d_max=np.inf)
  ref.assert_close(y, expected, ref.FLOAT32_TOL)


@pytest.mark.parametrize("name,kw,fragment", [
    ("layer_norm", dict(axis=()), "axis=() names no axis, so there is nothing to "
                                  "normalize over"),
    ("rms_norm", dict(axis=()), "axis=() names no axis"),
    ("layer_norm", dict(axis=1, mask=None), None),  # fine: 3 values per group
])
def test_empty_axes(name, kw, fragment):
  if fragment is None:
    _CALLS[name](**kw)
    return
  _raises(ValueError, name, fragment, **kw)


def test_instance_norm_with_nothing_to_reduce():
  message = _raises(ValueError, "instance_norm", "x.shape=(4, 3, 6) with axis=(1, 2) "
                    "leaves no axis to normalize over", axis=(1, 2))
  assert "spatial axes" in message
  with pytest.raises(ValueError, match=r"instance_norm: x\.shape=\(4, 6\) with axis=-1 "
                     "leaves no axis"):
    F.instance_norm(_X2, None, None)


@pytest.mark.parametrize("call,fragment", [
    (lambda: F.layer_norm(_X[..., :1], None, None),
     "layer_norm: normalizing over groups of one value gives 0 everywhere"),
    (lambda: F.instance_norm(_X[:, :1], None, None),
     "instance_norm: normalizing over groups of one value"),
    (lambda: F.group_norm(_X2, None, None, num_groups=6),
     "group_norm: normalizing over groups of one value"),
    (lambda: F.batch_renorm(_X[:1, :1], None, None, _RENORM, train=True),
     "batch_renorm: training needs more than one value per feature"),
    (lambda: F.switch_norm(_X[:1, :1], None, None, np.zeros(3), np.zeros(3), _STATS,
                           train=True),
     "switch_norm: training needs more than one value per feature"),
    (lambda: F.evonorm_b0(_X[:1, :1], None, None, _V, _STATS, train=True),
     "evonorm_b0: training needs more than one value per feature"),
])
def test_one_value_per_group(call, fragment):
  """Each value would be its own mean: the output would be the bias whatever x is."""
  with pytest.raises(ValueError) as info:
    call()
  assert fragment in str(info.value), str(info.value)


def test_one_value_per_group_is_fine_with_a_mask_or_in_evaluation(ref):
  one = _X[:1, :1]
  F.batch_renorm(one, None, None, _RENORM, train=False)
  F.switch_norm(one, None, None, np.zeros(3), np.zeros(3), _STATS, train=False)
  y = F.layer_norm(_X[..., :1], None, None, mask=np.ones((4, 3, 1), bool))
  np.testing.assert_array_equal(np.asarray(y), 0.0)


@pytest.mark.parametrize("logit", [17.0, -17.0, 40.0, -40.0, 88.0])
def test_concrete_dropout_at_confident_logits(logit):
  """1 - sigmoid(17) rounds to 0 in float32; the complementary forms stay exact."""
  x = np.random.default_rng(1).normal(size=(64,)).astype(np.float32)
  y = np.asarray(F.concrete_dropout(_KEY, x, logit=jnp.float32(logit)), np.float64)
  assert np.all(np.isfinite(y))
  u = np.asarray(jax.random.uniform(_KEY, x.shape, jnp.float32, minval=1e-7,
                                    maxval=1 - 1e-7), np.float64)
  a = (logit + np.log(u) - np.log1p(-u)) / 0.1
  keep = np.exp(-np.logaddexp(0, a) + np.logaddexp(0, logit))  # (1 - z) / (1 - p)
  np.testing.assert_allclose(y, x * keep, rtol=1e-4, atol=1e-30)
  grad = jax.grad(lambda l: jnp.sum(F.concrete_dropout(_KEY, x, logit=l)))(
      jnp.float32(logit))
  assert np.isfinite(float(grad))
  reg = F.concrete_dropout_regularizer(jnp.float32(logit), input_dim=6,
                                       weight_sq_norm=2.0, weight_regularizer=1e-6,
                                       dropout_regularizer=1e-5)
  p = 1 / (1 + np.exp(-logit))
  entropy_part = (p * -np.logaddexp(0, -logit) + (1 - p) * -np.logaddexp(0, logit))
  expected = 1e-6 * 2.0 * np.exp(np.logaddexp(0, logit)) + 1e-5 * 6 * entropy_part
  np.testing.assert_allclose(float(reg), expected, rtol=1e-5)


@pytest.mark.parametrize("shape,mask_shape", [((0, _C), (0, 1)), ((0, 3, _C), (0, 3, 1))])
def test_empty_batch_with_a_mask(ref, shape, mask_shape):
  """No example at all: an empty output, and the running statistics are kept."""
  x = np.zeros(shape, np.float32)
  mask = np.zeros(mask_shape, bool)
  stats = F.BatchStats(jnp.full(_C, 0.25), jnp.full(_C, 3.0))
  y, new = F.batch_norm(x, None, None, stats, train=True, mask=mask)
  assert y.shape == shape
  np.testing.assert_array_equal(np.asarray(new.mean), 0.25)
  np.testing.assert_array_equal(np.asarray(new.var), 3.0)
  assert F.layer_norm(x, None, None, mask=mask).shape == shape
  assert F.rms_norm(x, None, mask=mask).shape == shape
  mean, var = F.moments(x, 0, mask=mask)
  np.testing.assert_array_equal(np.asarray(mean), 0.0)
  np.testing.assert_array_equal(np.asarray(var), 0.0)
  y, new = F.switch_norm(x.reshape((0, 1, _C)), None, None, np.zeros(3), np.zeros(3),
                         stats, train=True, mask=mask.reshape((0, 1, 1)))
  assert y.shape == (0, 1, _C)
  np.testing.assert_array_equal(np.asarray(new.var), 3.0)
  with pytest.raises(ValueError, match="gives 0 value per feature"):
    F.batch_norm(x, None, None, stats, train=True)  # no mask: the usual rule


# ---------------------------------------------------------------------------------------
# Arguments of the wrong kind.


@pytest.mark.parametrize("name,kw,error,fragments", [
    ("batch_norm", dict(axis=1.0), TypeError,
     ["axis must be an int or a tuple of ints", "got 1.0 (float). Write axis=1."]),
    ("layer_norm", dict(axis="last"), TypeError, ["axis must be an int or a tuple of ints"]),
    ("layer_norm", dict(axis=None), TypeError, ["got None"]),
    ("layer_norm", dict(axis=[1.0, 2]), TypeError, ["axis must be an int or a tuple"]),
    ("layer_norm", dict(axis=True), TypeError, ["axis must be an int"]),
    ("moments", dict(axes=0.0), TypeError, ["axes must be an int or a tuple of ints"]),
    ("group_norm", dict(reduction_axes=(1.5,)), TypeError, ["reduction_axes must be"]),
    ("group_norm", dict(num_groups=2.0), TypeError, ["num_groups must be an int or None"]),
    ("group_norm", dict(num_groups=True), TypeError, ["num_groups must be an int or None"]),
    ("dropout", dict(broadcast_dims=0), TypeError,
     ["broadcast_dims must be a tuple (or list) of axes", "Write broadcast_dims=(0,)."]),
    ("dropout", dict(broadcast_dims=(0.0,)), TypeError, ["broadcast_dims must be an int"]),
    ("spatial_dropout", dict(channel_axis=1.0), TypeError, ["channel_axis must be an int"]),
    ("drop_path", dict(mode=["row"]), ValueError, ["mode must be 'row'"]),
    ("batch_norm", dict(train=1), TypeError, ["train must be a Python bool"]),
    ("moments", dict(keepdims="yes"), TypeError, ["keepdims must be a Python bool"]),
    ("batch_renorm", dict(r_max="3"), TypeError, ["r_max must be a number, not a string"]),
    ("batch_renorm", dict(warmup_steps=True), TypeError, ["warmup_steps must be a number"]),
    ("concrete_dropout", dict(logit=True), TypeError, ["logit must be a real number"]),
    ("concrete_dropout", dict(temperature="0.1"), TypeError, ["temperature must be"]),
    ("concrete_dropout_regularizer", dict(input_dim=6.0), TypeError,
     ["input_dim must be an int"]),
    ("drop_path_rates", dict(num_layers=4.0), TypeError, ["num_layers must be an int"]),
    ("switch_norm", dict(mask=np.ones((4, 3, 6), np.float32)), TypeError,
     ["mask must be a boolean"]),
    ("batch_norm", dict(axis_name=["batch"]), TypeError,
     ["axis_name must be a mapped axis name"]),
])
def test_wrong_kind(name, kw, error, fragments):
  _raises(error, name, *fragments, **kw)


def test_r_drop_loss_shapes_and_kinds():
  with pytest.raises(ValueError, match=r"r_drop_loss: logits_a and logits_b must have the "
                     r"same shape.*got \(3,\) and \(4,\)"):
    F.r_drop_loss(jnp.ones(3), jnp.ones(4))
  with pytest.raises(TypeError, match=r"r_drop_loss: logits_a must be a floating-point"):
    F.r_drop_loss(jnp.ones(3, jnp.int32), jnp.ones(3))


def test_zero_dimensional_input():
  with pytest.raises(ValueError) as info:
    F.layer_norm(jnp.float32(1.0), None, None)
  message = str(info.value)
  assert "x is 0-d (shape ())" in message and "[0, -1]" not in message, message
  with pytest.raises(ValueError, match=r"moments: x is 0-d"):
    F.moments(jnp.float32(1.0), 0)
  with pytest.raises(ValueError, match=r"batch_norm: x is 0-d"):
    F.batch_norm(jnp.float32(1.0), None, None, None, train=True)


@pytest.mark.parametrize("call", [
    lambda: F.dropout(_X, _KEY, rate=0.5),
    lambda: F.alpha_dropout(_X, _KEY, rate=0.5),
    lambda: F.gaussian_dropout(_X, _KEY, rate=0.5),
    lambda: F.spatial_dropout(_X, _KEY, rate=0.5),
])
def test_swapped_key_and_data(call):
  with pytest.raises(TypeError) as info:
    call()
  message = str(info.value)
  assert "is a PRNG key" in message and "swapped" in message, message
  assert "astype(jnp.float32)" not in message


def test_complex_input_where_flax_has_no_equivalent():
  z = _X.astype(np.complex64)
  with pytest.raises(TypeError, match=r"batch_renorm: x has the complex dtype complex64; "
                     "complex inputs are supported by batch_norm"):
    F.batch_renorm(z, None, None, _RENORM, train=True)


_NAMED = {
    "batch_norm": lambda x: F.batch_norm(x, None, None, None, train=True, axis_name="dd")[0],
    "layer_norm": lambda x: F.layer_norm(x, None, None, axis_name="dd"),
    "group_norm": lambda x: F.group_norm(x, None, None, num_groups=2, axis_name="dd"),
    "instance_norm": lambda x: F.instance_norm(x, None, None, axis_name="dd"),
    "rms_norm": lambda x: F.rms_norm(x, None, axis_name="dd"),
    "moments": lambda x: F.moments(x, 0, axis_name="dd")[0],
    "batch_renorm": lambda x: F.batch_renorm(x, None, None, _RENORM, train=True,
                                             axis_name="dd")[0],
    "evonorm_s0": lambda x: F.evonorm_s0(x, None, None, _V, num_groups=2, axis_name="dd"),
}


@pytest.mark.skipif(jax.device_count() < 2, reason="needs simulated devices (conftest)")
@pytest.mark.parametrize("name", list(_NAMED))
def test_misspelled_axis_name_under_shard_map(name):
  """A misspelled mesh axis used to end in a bare AssertionError inside JAX."""
  mesh = Mesh(np.array(jax.devices()[:2]), ("d",))
  fn = jax.shard_map(_NAMED[name], mesh=mesh, in_specs=P("d"), out_specs=P("d"))
  with pytest.raises(ValueError) as info:
    jax.jit(fn)(np.concatenate([_X, _X]))
  message = str(info.value)
  assert re.search(r"axis_name='dd' is not bound here", message), message
  assert "jax.shard_map" in message and "with that exact name" in message
