"""Drop-in replacement for ``flax.linen.Dropout`` over :func:`jaxnorm.functional.dropout`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxnorm import _frontend
from jaxnorm import functional as F


class Dropout(nn.Module):
  """Inverted dropout, a drop-in for ``flax.linen.Dropout``.

  Same attributes and call arguments; the key comes from the ``rng_collection`` stream
  (``'dropout'``) exactly as in Flax, so a model gives the same masks after swapping the
  import. See :func:`jaxnorm.functional.dropout`.

  Attributes:
    rate: drop probability in [0, 1] (not the keep probability).
    broadcast_dims: axes along which the mask is shared.
    deterministic: if True, return the input unchanged.
    rng_collection: the rng stream to draw the key from.

  Example:
    >>> import jax, jax.numpy as jnp, jaxnorm
    >>> import flax.linen as nn
    >>> x, rngs = jnp.ones((4, 3)), {"dropout": jax.random.key(0)}
    >>> y = jaxnorm.linen.Dropout(rate=0.5).apply({}, x, deterministic=False, rngs=rngs)
    >>> bool(jnp.isin(y, jnp.array([0.0, 2.0])).all())  # dropped, or kept / (1 - rate)
    True
    >>> bool((y == nn.Dropout(rate=0.5).apply({}, x, deterministic=False, rngs=rngs)).all())
    True
  """

  rate: float
  broadcast_dims: Sequence[int] = ()
  deterministic: bool | None = None
  rng_collection: str = "dropout"

  @nn.compact
  def __call__(self, inputs, deterministic: bool | None = None,
               rng: jax.Array | None = None, *, rate: float | jax.Array | None = None):
    """Applies a random dropout mask (training) or the identity (``deterministic``).

    ``rate`` overrides the attribute for this call; it may be traced (a schedule under
    ``jax.jit``, e.g. ``rate=schedule(step)``), without recompiling per value.
    """
    deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
    rate = self.rate if rate is None else rate
    _frontend.check_dropout_rate(rate, fn="jaxnorm.linen.Dropout")
    if _frontend.dropout_is_identity(rate, deterministic):
      return inputs
    if _frontend.dropout_drops_all(rate):
      return jnp.zeros_like(inputs)  # as Flax: no key is drawn
    if rng is None:
      rng = self.make_rng(self.rng_collection)
    return F.dropout(rng, inputs, rate=rate, broadcast_dims=self.broadcast_dims)


class _KeyedNoise(nn.Module):
  """Shared plumbing: ``deterministic`` merging and the key from ``rng_collection``."""

  rate: float
  deterministic: bool | None = None
  rng_collection: str = "dropout"

  def _key(self, deterministic):
    """The key for this call, or None when no noise is applied."""
    deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
    _frontend.check_dropout_rate(self.rate, fn=f"jaxnorm.linen.{type(self).__name__}")
    if _frontend.dropout_is_identity(self.rate, deterministic):
      return None
    return self.make_rng(self.rng_collection)


class SpatialDropout(_KeyedNoise):
  """Drops whole feature maps; see :func:`jaxnorm.functional.spatial_dropout`.

  ``channel_axis=-1`` for NHWC, ``1`` for NCHW.

  Example:
    >>> import jax, jax.numpy as jnp, jaxnorm
    >>> layer = jaxnorm.linen.SpatialDropout(0.5)
    >>> y = layer.apply({}, jnp.ones((2, 4, 4, 3)), deterministic=False,
    ...                 rngs={"dropout": jax.random.key(0)})
    >>> bool((y == y[:, :1, :1, :]).all())              # whole feature maps dropped
    True
  """

  channel_axis: int = -1

  @nn.compact
  def __call__(self, inputs, deterministic: bool | None = None):
    key = self._key(deterministic)
    return inputs if key is None else F.spatial_dropout(
        key, inputs, rate=self.rate, channel_axis=self.channel_axis)


class DropPath(_KeyedNoise):
  """Stochastic depth for a residual branch: ``x + DropPath(p)(branch(x), ...)``.

  ``mode="row"`` drops per example, ``"batch"`` the whole batch; see
  :func:`jaxnorm.functional.drop_path` and :func:`jaxnorm.functional.drop_path_rates`.

  Example:
    >>> import jax, jax.numpy as jnp, jaxnorm
    >>> x = jnp.ones((4, 3))
    >>> branch = jaxnorm.linen.DropPath(0.5).apply({}, 2 * x, deterministic=False,
    ...                                            rngs={"dropout": jax.random.key(0)})
    >>> y = x + branch                                 # the residual connection
    >>> bool((y == y[:, :1]).all())                    # per example: all or nothing
    True
  """

  mode: str = "row"

  @nn.compact
  def __call__(self, inputs, deterministic: bool | None = None):
    key = self._key(deterministic)
    return inputs if key is None else F.drop_path(key, inputs, rate=self.rate,
                                                  mode=self.mode)


class AlphaDropout(_KeyedNoise):
  """Alpha dropout for SELU networks; see :func:`jaxnorm.functional.alpha_dropout`.

  Example:
    >>> import jax, jax.numpy as jnp, jaxnorm
    >>> x = jax.nn.selu(jax.random.normal(jax.random.key(1), (10_000,)))
    >>> y = jaxnorm.linen.AlphaDropout(0.2).apply({}, x, deterministic=False,
    ...                                           rngs={"dropout": jax.random.key(0)})
    >>> round(abs(float(y.mean())), 1), round(float(y.std()), 1)  # SELU's mean 0, std 1
    (0.0, 1.0)
  """

  @nn.compact
  def __call__(self, inputs, deterministic: bool | None = None):
    key = self._key(deterministic)
    return inputs if key is None else F.alpha_dropout(key, inputs, rate=self.rate)


class GaussianDropout(_KeyedNoise):
  """Multiplicative N(1, rate / (1 - rate)) noise; see
  :func:`jaxnorm.functional.gaussian_dropout`.

  Example:
    >>> import jax, jax.numpy as jnp, jaxnorm
    >>> layer = jaxnorm.linen.GaussianDropout(0.5)
    >>> y = layer.apply({}, jnp.ones((10_000,)), deterministic=False,
    ...                 rngs={"dropout": jax.random.key(0)})
    >>> round(float(y.mean()), 1), round(float(y.std()), 1)   # N(1, 0.5 / (1 - 0.5))
    (1.0, 1.0)
  """

  @nn.compact
  def __call__(self, inputs, deterministic: bool | None = None):
    key = self._key(deterministic)
    return inputs if key is None else F.gaussian_dropout(key, inputs, rate=self.rate)


class ClassicDropout(_KeyedNoise):
  """Non-inverted dropout: no rescaling in training, ``x * (1 - rate)`` when
  deterministic; see :func:`jaxnorm.functional.classic_dropout`.

  Example:
    >>> import jax, jax.numpy as jnp, jaxnorm
    >>> layer = jaxnorm.linen.ClassicDropout(0.25)
    >>> layer.apply({}, jnp.ones((1, 3)), deterministic=True)   # evaluation: x * (1 - rate)
    Array([[0.75, 0.75, 0.75]], dtype=float32)
    >>> y = layer.apply({}, jnp.ones((4, 3)), deterministic=False,
    ...                 rngs={"dropout": jax.random.key(0)})
    >>> bool(jnp.isin(y, jnp.array([0.0, 1.0])).all())         # training: no rescaling
    True
  """

  @nn.compact
  def __call__(self, inputs, deterministic: bool | None = None):
    key = self._key(deterministic)
    return F.classic_dropout(key, inputs, rate=self.rate, train=key is not None)


class DropConnectDense(nn.Module):
  """A Dense layer whose weights (not activations) are dropped in training.

  One Bernoulli(1 - rate) mask over the kernel per call (shared by the batch), kept
  weights scaled by ``1 / (1 - rate)``; the bias is not dropped. Same ``params``
  (``kernel``, ``bias``) as ``flax.linen.Dense``.

  Example:
    >>> import jax, jax.numpy as jnp, jaxnorm
    >>> layer = jaxnorm.linen.DropConnectDense(features=2, rate=0.5)
    >>> x = jnp.ones((4, 3))
    >>> params = layer.init(jax.random.key(0), x, deterministic=True)
    >>> jax.tree.map(jnp.shape, params)                # as flax.linen.Dense
    {'params': {'bias': (2,), 'kernel': (3, 2)}}
    >>> y = layer.apply(params, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
    >>> bool((y == y[:1]).all())                       # one kernel mask for the batch
    True

  References:
    Wan et al., "Regularization of Neural Networks using DropConnect", ICML 2013.
  """

  features: int
  rate: float = 0.5
  use_bias: bool = True
  deterministic: bool | None = None
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros
  param_dtype: Any = jnp.float32
  rng_collection: str = "dropout"

  @nn.compact
  def __call__(self, inputs, deterministic: bool | None = None):
    deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
    _frontend.check_dropout_rate(self.rate, fn="jaxnorm.linen.DropConnectDense")
    kernel = self.param("kernel", self.kernel_init, (inputs.shape[-1], self.features),
                        self.param_dtype)
    if not deterministic:
      kernel = F.dropout(self.make_rng(self.rng_collection), kernel, rate=self.rate)
    y = inputs @ kernel.astype(inputs.dtype)
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,), self.param_dtype)
    return y


class ConcreteDropoutDense(nn.Module):
  """Concrete dropout on the input of a Dense layer, with a learned drop rate.

  ``params``: ``dense/kernel``, ``dense/bias`` (an ``nn.Dense`` named ``dense``) and
  ``dropout_logit`` (the logit of the drop probability). Each call sows its regularizer
  (:func:`jaxnorm.functional.concrete_dropout_regularizer`) into the ``losses``
  collection: apply with ``mutable=['losses']`` (passing only ``params``/``batch_stats``
  as variables) and add their sum to the loss.
  When deterministic, the input is used as is (inverted scaling).

  Example:
    >>> import jax, jax.numpy as jnp, jaxnorm
    >>> layer = jaxnorm.linen.ConcreteDropoutDense(features=2, init_rate=0.1)
    >>> x = jnp.ones((4, 3))
    >>> params = layer.init(jax.random.key(0), x, deterministic=True)["params"]
    >>> round(float(jax.nn.sigmoid(params["dropout_logit"])), 3)   # the learned rate
    0.1
    >>> y, state = layer.apply({"params": params}, x, deterministic=False,
    ...                        rngs={"dropout": jax.random.key(0)}, mutable=["losses"])
    >>> y.shape, len(state["losses"]["concrete_dropout"])   # add the sown loss
    ((4, 2), 1)
  """

  features: int
  weight_regularizer: float = 1e-6
  dropout_regularizer: float = 1e-5
  init_rate: float = 0.1
  temperature: float = 0.1
  deterministic: bool | None = None
  rng_collection: str = "dropout"

  @nn.compact
  def __call__(self, inputs, deterministic: bool | None = None):
    deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
    init_logit = _frontend.concrete_dropout_init_logit(
        self.init_rate, fn="jaxnorm.linen.ConcreteDropoutDense")
    logit = self.param("dropout_logit", nn.initializers.constant(init_logit), ())
    dense = nn.Dense(self.features, name="dense")
    x = inputs if deterministic else F.concrete_dropout(
        self.make_rng(self.rng_collection), inputs, logit=logit,
        temperature=self.temperature)
    y = dense(x)
    kernel = dense.variables["params"]["kernel"]
    self.sow("losses", "concrete_dropout", F.concrete_dropout_regularizer(
        logit, input_dim=inputs.shape[-1], weight_sq_norm=jnp.sum(jnp.square(kernel)),
        weight_regularizer=self.weight_regularizer,
        dropout_regularizer=self.dropout_regularizer))
    return y
