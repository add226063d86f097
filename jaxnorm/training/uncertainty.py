"""Monte-Carlo dropout: predictive uncertainty from T stochastic forward passes."""

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
