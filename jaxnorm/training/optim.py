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
  """
  def decays(path, leaf) -> bool:
    names = _path_names(path)
    in_norm_layer = any(name.startswith(NORM_LAYER_PREFIXES) for name in names)
    return (getattr(leaf, "ndim", 0) >= 2 and names[-1] not in ("bias", "scale")
            and not in_norm_layer)

  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(
    name: str,
    learning_rate: float | optax.Schedule,
    *,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    decoupled_weight_decay: bool = False,
    clip_norm: float | None = None,
) -> optax.GradientTransformation:
  """SGD / momentum / Adam with masked weight decay and global-norm clipping.

  Order: clip the raw gradient by global norm, add coupled L2 decay, compute the
  optimizer's direction, add decoupled decay, scale by ``-learning_rate``.

  Args:
    name: ``"sgd"``, ``"momentum"`` (heavy ball, ``momentum``) or ``"adam"``.
    learning_rate: a float or an optax schedule.
    momentum: the momentum coefficient of ``"momentum"``.
    weight_decay: decay coefficient (0 disables it); applied through :func:`decay_mask`.
    decoupled_weight_decay: decoupled (AdamW-style) instead of coupled L2.
    clip_norm: clip gradients to this global norm (None disables clipping).
  """
  directions = {"sgd": optax.identity, "momentum": lambda: optax.trace(decay=momentum),
                "adam": optax.scale_by_adam}
  if name not in directions:
    raise ValueError(f"jaxnorm.training.make_optimizer: name must be one of "
                     f"{sorted(directions)}; got {name!r}.")
  if weight_decay < 0:
    raise ValueError(f"jaxnorm.training.make_optimizer: weight_decay must be >= 0; got "
                     f"{weight_decay}.")
  if clip_norm is not None and clip_norm <= 0:
    raise ValueError(f"jaxnorm.training.make_optimizer: clip_norm must be > 0 or None; "
                     f"got {clip_norm}.")
  chain = []
  if clip_norm is not None:
    chain.append(optax.clip_by_global_norm(clip_norm))
  decay = optax.add_decayed_weights(weight_decay, mask=decay_mask) if weight_decay else None
  if decay is not None and not decoupled_weight_decay:
    chain.append(decay)
  chain.append(directions[name]())
  if decay is not None and decoupled_weight_decay:
    chain.append(decay)
  chain.append(optax.scale_by_learning_rate(learning_rate))
  return optax.chain(*chain)
