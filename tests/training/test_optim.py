"""optax recipes: the weight-decay mask, coupled/decoupled decay, clipping."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import chex
import optax
import pytest

import jaxnorm
from jaxnorm import training


class ConvNet(nn.Module):
  @nn.compact
  def __call__(self, tokens, images, train: bool):
    e = nn.Embed(10, 4)(tokens)
    e = nn.LayerNorm()(e)
    h = nn.Conv(5, (3, 3))(images)
    h = jaxnorm.BatchNorm(use_running_average=not train, axis=(-2, -1))(h)  # 2-D scale
    h = nn.GroupNorm(num_groups=5)(h)
    h = nn.Dense(3, use_bias=False)(h.reshape(h.shape[0], -1))
    return h + nn.Dense(3)(e.sum(1))


def _params():
  return ConvNet().init(jax.random.key(0), jnp.zeros((2, 3), jnp.int32),
                        jnp.zeros((2, 4, 4, 2)), train=False)["params"]


def test_decay_mask_spares_biases_and_norm_parameters():
  mask = training.decay_mask(_params())
  flat = {"/".join(str(getattr(k, "key", k)) for k in path): value
          for path, value in jax.tree_util.tree_flatten_with_path(mask)[0]}
  assert flat == {
      "BatchNorm_0/bias": False, "BatchNorm_0/scale": False,
      "Conv_0/bias": False, "Conv_0/kernel": True,
      "Dense_0/kernel": True,
      "Dense_1/bias": False, "Dense_1/kernel": True,
      "Embed_0/embedding": True,
      "GroupNorm_0/bias": False, "GroupNorm_0/scale": False,
      "LayerNorm_0/bias": False, "LayerNorm_0/scale": False,
  }


def _grads_like(params, seed=1):
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [jax.random.normal(k, l.shape) for k, l in zip(keys, leaves)])


def test_coupled_l2_with_sgd_matches_formula():
  params = _params()
  grads = _grads_like(params)
  tx = training.make_optimizer("sgd", 0.1, weight_decay=0.01)
  updates, _ = tx.update(grads, tx.init(params), params)
  mask = training.decay_mask(params)
  for u, g, p, m in zip(*(jax.tree.leaves(t) for t in (updates, grads, params, mask))):
    expected = -0.1 * (np.asarray(g, np.float64) + (0.01 * np.asarray(p) if m else 0.0))
    np.testing.assert_allclose(np.asarray(u), expected, rtol=1e-5, atol=1e-7)


def test_decoupled_decay_with_adam_equals_optax_adamw():
  params = _params()
  tx = training.make_optimizer("adam", 1e-3, weight_decay=0.05,
                               decoupled_weight_decay=True)
  reference = optax.adamw(1e-3, weight_decay=0.05, mask=training.decay_mask)
  state, ref_state = tx.init(params), reference.init(params)
  for step in range(3):
    grads = _grads_like(params, seed=step)
    updates, state = tx.update(grads, state, params)
    ref_updates, ref_state = reference.update(grads, ref_state, params)
    for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(ref_updates)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-8)
    params = optax.apply_updates(params, updates)


def test_coupled_decay_is_rescaled_by_adam_but_decoupled_is_not():
  params = _params()
  grads = jax.tree.map(jnp.zeros_like, params)
  kernel = np.asarray(params["Dense_1"]["kernel"])
  coupled = training.make_optimizer("adam", 1e-3, weight_decay=0.1)
  decoupled = training.make_optimizer("adam", 1e-3, weight_decay=0.1,
                                      decoupled_weight_decay=True)
  u_c, _ = coupled.update(grads, coupled.init(params), params)
  u_d, _ = decoupled.update(grads, decoupled.init(params), params)
  # Decoupled: exactly -lr * wd * w. Coupled: Adam normalizes wd * w to about -lr * sign.
  np.testing.assert_allclose(np.asarray(u_d["Dense_1"]["kernel"]), -1e-4 * kernel, rtol=1e-5)
  np.testing.assert_allclose(np.abs(np.asarray(u_c["Dense_1"]["kernel"])), 1e-3, rtol=1e-3)


def test_momentum_and_clipping():
  params = {"w": jnp.ones((2, 2))}
  tx = training.make_optimizer("momentum", 0.5, momentum=0.9, clip_norm=1.0)
  state = tx.init(params)
  grads = {"w": jnp.full((2, 2), 3.0)}  # global norm 6 -> clipped to 1: each entry 0.5
  u1, state = tx.update(grads, state, params)
  u2, state = tx.update(grads, state, params)
  np.testing.assert_allclose(np.asarray(u1["w"]), -0.5 * 0.5, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(u2["w"]), -0.5 * (0.5 + 0.9 * 0.5), rtol=1e-6)


def test_learning_rate_schedule_is_accepted():
  tx = training.make_optimizer("sgd", optax.linear_schedule(1.0, 0.0, 4))
  params = {"w": jnp.ones(3)}
  state = tx.init(params)
  rates = []
  for _ in range(3):
    updates, state = tx.update({"w": jnp.ones(3)}, state, params)
    rates.append(-float(updates["w"][0]))
  np.testing.assert_allclose(rates, [1.0, 0.75, 0.5], rtol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="adamx"), r"name must be one of \['sgd', .*'adamw'.*\]; got 'adamx'"),
    (dict(name="adamw"), r"name='adamw' decays weights decoupled, but weight_decay=0.0"),
    (dict(name="nadamw"), r"optax.nadamw uses 1e-4\), or use name='nadam'"),
    (dict(name="sgd", weight_decay=-1.0), "weight_decay must be >= 0; got -1.0"),
    (dict(name="sgd", clip_norm=0.0), "clip_norm must be > 0 or None; got 0.0"),
])
def test_make_optimizer_errors(kwargs, match):
  name = kwargs.pop("name")
  with pytest.raises(ValueError, match=match):
    training.make_optimizer(name, 0.1, **kwargs)


def test_make_optimizer_rejects_a_non_string_name():
  with pytest.raises(TypeError, match="name must be a string.*got <function sgd"):
    training.make_optimizer(optax.sgd, 0.1)


# Each name against the optax alias of that name (an independent construction), with the
# same decay mask; weight decay where the alias takes it, else none.
_OPTAX_ALIASES = [
    ("sgd", {}, lambda: optax.sgd(0.05)),
    ("momentum", {"momentum": 0.8}, lambda: optax.sgd(0.05, momentum=0.8)),
    ("nesterov", {"momentum": 0.8}, lambda: optax.sgd(0.05, momentum=0.8, nesterov=True)),
    ("adam", {}, lambda: optax.adam(0.05)),
    ("AdamW", {"weight_decay": 0.1},
     lambda: optax.adamw(0.05, weight_decay=0.1, mask=training.decay_mask)),
    ("nadam", {}, lambda: optax.nadam(0.05)),
    ("nadamw", {"weight_decay": 0.1},
     lambda: optax.nadamw(0.05, weight_decay=0.1, mask=training.decay_mask)),
    ("radam", {}, lambda: optax.radam(0.05)),
    ("adamax", {}, lambda: optax.adamax(0.05)),
    ("adabelief", {}, lambda: optax.adabelief(0.05)),
    ("rmsprop", {}, lambda: optax.rmsprop(0.05)),
    ("adagrad", {}, lambda: optax.adagrad(0.05)),
    ("lion", {"weight_decay": 0.1, "decoupled_weight_decay": True},
     lambda: optax.lion(0.05, weight_decay=0.1, mask=training.decay_mask)),
]


@pytest.mark.parametrize("name, kwargs, alias", _OPTAX_ALIASES,
                         ids=[name for name, _, _ in _OPTAX_ALIASES])
def test_named_optimizer_matches_the_optax_alias(name, kwargs, alias):
  params = {"Dense_0": {"kernel": jnp.asarray([[0.5, -1.0], [2.0, 0.25]]),
                        "bias": jnp.asarray([0.1, -0.3])}}
  ours, theirs = training.make_optimizer(name, 0.05, **kwargs), alias()
  state_ours, state_theirs = ours.init(params), theirs.init(params)
  rng = np.random.default_rng(0)
  for _ in range(4):  # several steps: moments, bias corrections and decay all act
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
    u_ours, state_ours = ours.update(grads, state_ours, params)
    u_theirs, state_theirs = theirs.update(grads, state_theirs, params)
    chex.assert_trees_all_close(u_ours, u_theirs, rtol=1e-6, atol=1e-7)
    params = optax.apply_updates(params, u_ours)
