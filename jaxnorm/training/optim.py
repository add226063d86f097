"""optax recipes: weight decay that spares biases and normalization parameters, clipping.

Coupled L2 adds ``wd * w`` to the gradient before the optimizer (so Adam rescales it);
decoupled decay (Loshchilov & Hutter, 2019) adds it to the optimizer's direction, scaled
only by the learning rate. Either way the mask from :func:`decay_mask` keeps biases and
the ``scale``/``bias`` of normalization layers out of it.

    tx = make_optimizer("momentum", 0.1, weight_decay=5e-4, clip_norm=1.0)
    # = chain(clip_by_global_norm(1.0), add_decayed_weights(5e-4, decay_mask),
    #         trace(0.9), scale_by_learning_rate(0.1))
"""

from __future__ import annotations

from typing import Any

import jax
import optax

#: Module-name prefixes of normalization layers (flax.linen and jaxnorm.linen names).
NORM_LAYER_PREFIXES = ("BatchNorm", "LayerNorm", "GroupNorm", "RMSNorm", "InstanceNorm",
                       "BatchRenorm", "GhostBatchNorm", "SwitchNorm", "EvoNorm")


def _path_names(path) -> list[str]:
  return [str(getattr(entry, "key", getattr(entry, "name", entry))) for entry in path]


def decay_mask(params: Any) -> Any:
  """Pytree of bools: True for weights that weight decay should shrink.

  Spared (False): every leaf named ``bias`` or ``scale``, every 0-D or 1-D leaf, and
  every leaf inside a normalization module (a path component starting with one of
  :data:`NORM_LAYER_PREFIXES`). Decayed: kernels and embeddings.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxnorm import training
    >>> params = {"Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)},
    ...           "BatchNorm_0": {"scale": jnp.ones(2), "bias": jnp.zeros(2)}}
    >>> training.decay_mask(params)
    {'BatchNorm_0': {'bias': False, 'scale': False}, 'Dense_0': {'bias': False, 'kernel': True}}
  """
  def decays(path, leaf) -> bool:
    names = _path_names(path)
    in_norm_layer = any(name.startswith(NORM_LAYER_PREFIXES) for name in names)
    return (getattr(leaf, "ndim", 0) >= 2 and names[-1] not in ("bias", "scale")
            and not in_norm_layer)

  return jax.tree_util.tree_map_with_path(decays, params)


#: The direction of each optimizer name (optax's ``scale_by_*`` with the defaults of the
#: optax alias of the same name); names ending in ``w`` decay decoupled.
_DIRECTIONS = {
    "sgd": lambda momentum: optax.identity(),
    "momentum": lambda momentum: optax.trace(decay=momentum),
    "nesterov": lambda momentum: optax.trace(decay=momentum, nesterov=True),
    "adam": lambda momentum: optax.scale_by_adam(),
    "adamw": lambda momentum: optax.scale_by_adam(),
    "nadam": lambda momentum: optax.scale_by_adam(nesterov=True),
    "nadamw": lambda momentum: optax.scale_by_adam(nesterov=True),
    "radam": lambda momentum: optax.scale_by_radam(),
    "adamax": lambda momentum: optax.scale_by_adamax(),
    "adabelief": lambda momentum: optax.scale_by_belief(),
    "rmsprop": lambda momentum: optax.scale_by_rms(),
    "adagrad": lambda momentum: optax.scale_by_rss(),
    "lion": lambda momentum: optax.scale_by_lion(),
}
OPTIMIZER_NAMES = tuple(_DIRECTIONS)


def make_optimizer(
    name: str,
    learning_rate: float | optax.Schedule,
    *,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    decoupled_weight_decay: bool = False,
    clip_norm: float | None = None,
) -> optax.GradientTransformation:
  r"""An optax optimizer by name, with masked weight decay and global-norm clipping.

  Order: clip the raw gradient by global norm, add coupled L2 decay, compute the
  optimizer's direction, add decoupled decay, scale by ``-learning_rate``:

  .. math::

    u_t = -\eta \, \big(d(\mathrm{clip}(g_t) + \lambda_c m \odot w_t)
          + \lambda_d m \odot w_t\big)

  with :math:`\eta` = ``learning_rate``, :math:`d` the optimizer's direction,
  :math:`m` = :func:`decay_mask` and the decay :math:`\lambda` = ``weight_decay``
  coupled (:math:`\lambda_c`) or decoupled (:math:`\lambda_d`, Loshchilov & Hutter,
  2019).

  Args:
    name: an optax name: ``"sgd"`` (plain), ``"momentum"`` (heavy ball, ``momentum``),
      ``"nesterov"``, ``"adam"``, ``"adamw"``, ``"nadam"``, ``"nadamw"``, ``"radam"``,
      ``"adamax"``, ``"adabelief"``, ``"rmsprop"``, ``"adagrad"`` or ``"lion"``; the
      direction has the defaults of the optax alias of that name. ``"adamw"`` and
      ``"nadamw"`` always decay decoupled and need ``weight_decay > 0``.
    learning_rate: a float or an optax schedule.
    momentum: the momentum coefficient of ``"momentum"`` and ``"nesterov"``.
    weight_decay: decay coefficient (0 disables it); applied through :func:`decay_mask`.
    decoupled_weight_decay: decoupled (AdamW-style) instead of coupled L2.
    clip_norm: clip gradients to this global norm (None disables clipping).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxnorm import training
    >>> tx = training.make_optimizer("adamw", 1e-3, weight_decay=1e-4, clip_norm=1.0)
    >>> params = {"Dense_0": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
    >>> updates, _ = tx.update(params, tx.init(params), params)
    >>> updates["Dense_0"]["bias"].shape
    (2,)
  """
  if not isinstance(name, str):
    raise TypeError(f"jaxnorm.training.make_optimizer: name must be a string, one of "
                    f"{list(OPTIMIZER_NAMES)}; got {name!r} of type {type(name).__name__}.")
  if name.lower() not in _DIRECTIONS:
    raise ValueError(f"jaxnorm.training.make_optimizer: name must be one of "
                     f"{list(OPTIMIZER_NAMES)}; got {name!r}. For another optimizer, build "
                     "it with optax and pass it as TrainState.create(tx=...).")
  name = name.lower()
  if weight_decay < 0:
    raise ValueError(f"jaxnorm.training.make_optimizer: weight_decay must be >= 0; got "
                     f"{weight_decay}.")
  if name in ("adamw", "nadamw"):
    if not weight_decay:
      raise ValueError(
          f"jaxnorm.training.make_optimizer: name={name!r} decays weights decoupled, but "
          f"weight_decay={weight_decay}; pass weight_decay > 0 (optax.{name} uses 1e-4), "
          f"or use name={name[:-1]!r} for no decay.")
    decoupled_weight_decay = True
  if clip_norm is not None and clip_norm <= 0:
    raise ValueError(f"jaxnorm.training.make_optimizer: clip_norm must be > 0 or None; "
                     f"got {clip_norm}.")
  chain = []
  if clip_norm is not None:
    chain.append(optax.clip_by_global_norm(clip_norm))
  decay = optax.add_decayed_weights(weight_decay, mask=decay_mask) if weight_decay else None
  if decay is not None and not decoupled_weight_decay:
    chain.append(decay)
  chain.append(_DIRECTIONS[name](momentum))
  if decay is not None and decoupled_weight_decay:
    chain.append(decay)
  chain.append(optax.scale_by_learning_rate(learning_rate))
  return optax.chain(*chain)
