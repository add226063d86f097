"""Monte-Carlo dropout: predictive uncertainty from T stochastic forward passes, with or
without test-time augmentation."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxnorm import functional as F
from jaxnorm.linen import Dropout
from jaxnorm.training import _validate

DROPOUT_TYPES = (Dropout, nn.Dropout)


class MCPrediction(NamedTuple):
  """Predictive summary over the samples (leading axis of ``probs``).

  Attributes:
    mean: predictive mean of the class probabilities.
    std: their standard deviation over the samples.
    entropy: entropy of the predictive mean, :math:`H[\\bar p]` (total uncertainty).
    mutual_information: :math:`H[\\bar p] - \\overline{H[p]}` (BALD; epistemic part).
    probs: the per-sample probabilities, ``(num_samples, ...)``.
  """

  mean: jax.Array
  std: jax.Array
  entropy: jax.Array
  mutual_information: jax.Array
  probs: jax.Array


def _entropy(p):
  return -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1)


def monte_carlo_predict(logits_fn: Callable[[jax.Array], jax.Array], key: jax.Array,
                        num_samples: int) -> MCPrediction:
  """Summarizes ``softmax(logits_fn(k))`` over ``num_samples`` keys split from ``key``.

  The passes are ``jax.vmap``-ed over the keys, so the whole prediction is one XLA
  program under ``jax.jit``; a fixed ``key`` gives a fixed result.
  """
  if num_samples < 1:
    raise ValueError(f"jaxnorm.training.monte_carlo_predict: num_samples must be >= 1; "
                     f"got {num_samples}.")
  keys = jax.random.split(key, num_samples)
  probs = jax.nn.softmax(jax.vmap(logits_fn)(keys).astype(jnp.float32), axis=-1)
  mean = probs.mean(0)
  entropy = _entropy(mean)
  return MCPrediction(mean, probs.std(0), entropy, entropy - _entropy(probs).mean(0),
                      probs)


def _stochastic_dropout(next_fun, args, kwargs, context):
  """Interceptor: dropout layers sample masks even in evaluation mode."""
  module = context.module
  if context.method_name == "__call__" and isinstance(module, DROPOUT_TYPES):
    inputs = args[0]
    rate = kwargs.get("rate") if kwargs.get("rate") is not None else module.rate
    key = module.make_rng(module.rng_collection)  # always the pass's key, never a fixed rng
    return F.dropout(key, inputs, rate=rate, broadcast_dims=module.broadcast_dims)
  return next_fun(*args, **kwargs)


def mc_dropout_predict(apply_fn, variables: Mapping[str, Any], x: jax.Array,
                       key: jax.Array, *, num_samples: int = 32,
                       eval_kwargs: Mapping[str, Any] | None = None,
                       rng_collection: str = "dropout") -> MCPrediction:
  """MC-dropout prediction of a Flax classifier (Gal & Ghahramani, 2016).

  The model runs in evaluation mode (``eval_kwargs``, default ``{'train': False}``:
  running BN statistics) except that every ``Dropout`` layer (``jaxnorm.linen.Dropout``
  or ``flax.linen.Dropout``) samples a mask; each of the ``num_samples`` passes gets its
  own key. Other stochastic layers stay deterministic.
  """
  _validate.check_live(variables, name="variables", fn="jaxnorm.training.mc_dropout_predict")
  eval_kwargs = {"train": False} if eval_kwargs is None else dict(eval_kwargs)

  def logits_fn(sample_key):
    with nn.intercept_methods(_stochastic_dropout):
      return apply_fn(variables, x, rngs={rng_collection: sample_key}, **eval_kwargs)

  return monte_carlo_predict(logits_fn, key, num_samples)


def mc_tta_predict(apply_fn, variables: Mapping[str, Any], x: jax.Array,
                   key: jax.Array, *, augment: Callable[[jax.Array, jax.Array], jax.Array],
                   num_samples: int = 32, mc_dropout: bool = True,
                   eval_kwargs: Mapping[str, Any] | None = None,
                   rng_collection: str = "dropout") -> MCPrediction:
  """Test-time MC ensembling: MC dropout over randomly augmented copies of ``x``.

  Each of the ``num_samples`` passes draws its own key ``k_t`` (``jax.random.split(key,
  num_samples)[t]``), splits it into ``(augment_key, dropout_key) =
  jax.random.split(k_t)``, and runs the model on ``augment(augment_key, x)`` as
  :func:`mc_dropout_predict` does (evaluation mode, ``Dropout`` layers sampling masks
  from ``dropout_key``; with ``mc_dropout=False`` the model is deterministic and only
  the augmentations vary). The summaries are those of :func:`mc_dropout_predict`
  (:class:`MCPrediction`: mean, std, entropy, mutual information), now over both
  sources of randomness; a fixed key gives a fixed result.

  Args:
    apply_fn: the model's ``apply`` (e.g. ``model.apply``).
    variables: the model's variables (``params``, ``batch_stats``).
    x: the input batch.
    key: a PRNG key.
    augment: ``augment(key, x) -> x_aug``, pure and traceable (e.g. random flips,
      crops of a fixed size, noise); it may draw one transform per batch or per example
      (split the key per example). ``jax.vmap``-ed over the samples' keys.
    num_samples: ``T`` >= 1.
    mc_dropout: also sample dropout masks (True) or keep the model deterministic.
    eval_kwargs: keyword arguments of ``apply_fn`` for evaluation mode (default
      ``{'train': False}``).
    rng_collection: the dropout layers' rng stream.

  Returns:
    An :class:`MCPrediction` over the ``T`` passes.

  Example:
    >>> import flax.linen as nn, jax, jax.numpy as jnp, jaxnorm
    >>> from jaxnorm import training
    >>> class Net(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x, train: bool):
    ...     x = jaxnorm.Dropout(0.2, deterministic=not train)(nn.relu(nn.Dense(16)(x)))
    ...     return nn.Dense(3)(x)
    >>> x = jnp.ones((5, 4))
    >>> variables = Net().init(jax.random.key(0), x, train=False)
    >>> def jitter(key, x):
    ...   return x + 0.1 * jax.random.normal(key, x.shape)
    >>> pred = training.mc_tta_predict(Net().apply, variables, x, jax.random.key(1),
    ...                                augment=jitter, num_samples=8)
    >>> pred.probs.shape, pred.mutual_information.shape
    ((8, 5, 3), (5,))
  """
  fn = "jaxnorm.training.mc_tta_predict"
  if not callable(augment):
    raise TypeError(f"{fn}: augment must be a function augment(key, x) -> x_aug (key "
                    f"first); got {type(augment).__name__}.")
  if num_samples < 1:
    raise ValueError(f"{fn}: num_samples must be >= 1; got {num_samples}.")
  eval_kwargs = {"train": False} if eval_kwargs is None else dict(eval_kwargs)

  def logits_fn(sample_key):
    augment_key, dropout_key = jax.random.split(sample_key)
    x_aug = augment(augment_key, x)
    if not mc_dropout:
      return apply_fn(variables, x_aug, **eval_kwargs)
    with nn.intercept_methods(_stochastic_dropout):
      return apply_fn(variables, x_aug, rngs={rng_collection: dropout_key}, **eval_kwargs)

  return monte_carlo_predict(logits_fn, key, num_samples)
