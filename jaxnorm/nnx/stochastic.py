"""NNX dropout layers: a drop-in for ``flax.nnx.Dropout`` and the jaxnorm dropout family.

Keys as in flax.nnx: each layer forks its own stream from ``rngs[rng_collection]`` at
construction (``'dropout'``, falling back to the default stream), and a call's ``rngs``
(an ``nnx.Rngs``, an ``nnx.RngStream`` or a key) takes precedence. ``deterministic``
follows ``model.train()`` / ``model.eval()`` / ``nnx.view``. The masks are those of
:mod:`jaxnorm.functional`, which for :class:`Dropout` are flax's for the same key.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx import rnglib
from flax.nnx.nn import initializers

from jaxnorm import _frontend
from jaxnorm import functional as F
from jaxnorm.nnx import _base


class Dropout(_base.KeyedNoise):
  """Inverted dropout, a drop-in for ``flax.nnx.Dropout``.

  .. math::
    y = \\frac{b \\odot x}{1 - p}, \\qquad b \\sim \\text{Bernoulli}(1 - p)

  with :math:`p` = ``rate`` (the drop probability, not the keep probability), the
  mask shared along ``broadcast_dims``. The same key gives the same mask as
  ``flax.nnx.Dropout``. A call may override ``rate`` with a traced value (a schedule
  under ``jax.jit``, no recompilation per value). See :func:`jaxnorm.functional.dropout`.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxnorm import nnx as jnnx
    >>> layer = jnnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0))
    >>> y = layer(jnp.ones((2, 4)))        # training: about half the values are 0, rest 2
    >>> layer.eval()
    >>> layer(jnp.ones((2, 4))).tolist()   # evaluation: the identity
    [[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]
  """

  def __init__(self, rate: float, *, broadcast_dims: Sequence[int] = (),
               deterministic: bool | None = False, rng_collection: str = "dropout",
               rngs: rnglib.Rngs | rnglib.RngStream | None = None):
    super().__init__(rate, deterministic=deterministic, rng_collection=rng_collection,
                     rngs=rngs)
    self.broadcast_dims = broadcast_dims

  def __call__(self, inputs, *, deterministic: bool | None = None,
               rngs: rnglib.Rngs | rnglib.RngStream | jax.Array | None = None,
               rate: float | jax.Array | None = None) -> jax.Array:
    """Applies a random dropout mask (training) or the identity (deterministic).

    Args:
      inputs: the input.
      deterministic: return the input unchanged; takes precedence over the attribute.
      rngs: a key, ``nnx.RngStream`` or ``nnx.Rngs`` for this call, instead of the
        layer's stream.
      rate: overrides the attribute for this call; may be traced.
    """
    fn = "jaxnorm.nnx.Dropout"
    deterministic = _base.first_flag(deterministic, self.deterministic,
                                     flag="deterministic", layer="Dropout")
    rate = self.rate if rate is None else rate
    _frontend.check_dropout_rate(rate, fn=fn)
    if _frontend.dropout_is_identity(rate, deterministic):
      return inputs
    if _frontend.dropout_drops_all(rate):
      return jnp.zeros_like(inputs)  # as flax: no key is drawn
    key = _base.draw_key(rngs, self.rngs, self.rng_collection, fn)
    return F.dropout(key, inputs, rate=rate, broadcast_dims=self.broadcast_dims)


class SpatialDropout(_base.KeyedNoise):
  """Drops whole feature maps; see :func:`jaxnorm.functional.spatial_dropout`.

  ``channel_axis=-1`` for NHWC, ``1`` for NCHW.

  Example:
    >>> import jax
    >>> from flax import nnx
    >>> from jaxnorm import nnx as jnnx
    >>> layer = jnnx.SpatialDropout(0.5, rngs=nnx.Rngs(dropout=0))
    >>> layer(jax.numpy.ones((2, 4, 4, 8))).shape
    (2, 4, 4, 8)
  """

  def __init__(self, rate: float, *, channel_axis: int = -1,
               deterministic: bool | None = False, rng_collection: str = "dropout",
               rngs: rnglib.Rngs | rnglib.RngStream | None = None):
    super().__init__(rate, deterministic=deterministic, rng_collection=rng_collection,
                     rngs=rngs)
    self.channel_axis = channel_axis

  def __call__(self, inputs, *, deterministic: bool | None = None, rngs=None):
    key = self._key(deterministic, rngs)
    return inputs if key is None else F.spatial_dropout(
        key, inputs, rate=self.rate, channel_axis=self.channel_axis)


class DropPath(_base.KeyedNoise):
  """Stochastic depth for a residual branch: ``x + drop_path(branch(x))``.

  ``mode="row"`` drops per example, ``"batch"`` the whole batch; see
  :func:`jaxnorm.functional.drop_path` and :func:`jaxnorm.functional.drop_path_rates`.

  Example:
    >>> import jax
    >>> from flax import nnx
    >>> from jaxnorm import nnx as jnnx
    >>> layer = jnnx.DropPath(0.2, rngs=nnx.Rngs(dropout=0))
    >>> layer(jax.numpy.ones((4, 3))).shape
    (4, 3)
  """

  def __init__(self, rate: float, *, mode: str = "row", deterministic: bool | None = False,
               rng_collection: str = "dropout",
               rngs: rnglib.Rngs | rnglib.RngStream | None = None):
    super().__init__(rate, deterministic=deterministic, rng_collection=rng_collection,
                     rngs=rngs)
    self.mode = mode

  def __call__(self, inputs, *, deterministic: bool | None = None, rngs=None):
    key = self._key(deterministic, rngs)
    return inputs if key is None else F.drop_path(key, inputs, rate=self.rate,
                                                  mode=self.mode)


class AlphaDropout(_base.KeyedNoise):
  """Alpha dropout for SELU networks; see :func:`jaxnorm.functional.alpha_dropout`.

  Example:
    >>> import jax
    >>> from flax import nnx
    >>> from jaxnorm import nnx as jnnx
    >>> layer = jnnx.AlphaDropout(0.1, rngs=nnx.Rngs(dropout=0))
    >>> layer(jax.numpy.ones((4, 3))).shape
    (4, 3)
  """

  def __call__(self, inputs, *, deterministic: bool | None = None, rngs=None):
    key = self._key(deterministic, rngs)
    return inputs if key is None else F.alpha_dropout(key, inputs, rate=self.rate)


class GaussianDropout(_base.KeyedNoise):
  """Multiplicative N(1, rate / (1 - rate)) noise; see
  :func:`jaxnorm.functional.gaussian_dropout`.

  Example:
    >>> import jax
    >>> from flax import nnx
    >>> from jaxnorm import nnx as jnnx
    >>> layer = jnnx.GaussianDropout(0.3, rngs=nnx.Rngs(dropout=0))
    >>> layer(jax.numpy.ones((4, 3))).shape
    (4, 3)
  """

  def __call__(self, inputs, *, deterministic: bool | None = None, rngs=None):
    key = self._key(deterministic, rngs)
    return inputs if key is None else F.gaussian_dropout(key, inputs, rate=self.rate)


class ClassicDropout(_base.KeyedNoise):
  """Non-inverted dropout: no rescaling in training, ``x * (1 - rate)`` when
  deterministic; see :func:`jaxnorm.functional.classic_dropout`.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxnorm import nnx as jnnx
    >>> layer = jnnx.ClassicDropout(0.25, deterministic=True)
    >>> layer(jnp.ones(2)).tolist()
    [0.75, 0.75]
  """

  def __call__(self, inputs, *, deterministic: bool | None = None, rngs=None):
    key = self._key(deterministic, rngs)
    return F.classic_dropout(key, inputs, rate=self.rate, train=key is not None)


class DropConnectLinear(_base.KeyedNoise):
  """A linear layer whose weights (not activations) are dropped in training.

  One Bernoulli(1 - rate) mask over the kernel per call (shared by the batch), kept
  weights scaled by ``1 / (1 - rate)``; the bias is not dropped. The same Params as
  ``flax.nnx.Linear`` (``kernel`` ``(in_features, out_features)``, ``bias``), drawn
  from ``rngs.params()`` in the same order, and the same names as
  :class:`jaxnorm.linen.DropConnectDense`.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxnorm import nnx as jnnx
    >>> layer = jnnx.DropConnectLinear(3, 2, rate=0.5, rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((4, 3))).shape
    (4, 2)

  References:
    Wan et al., "Regularization of Neural Networks using DropConnect", ICML 2013.
  """

  def __init__(self, in_features: int, out_features: int, *, rate: float = 0.5,
               use_bias: bool = True, deterministic: bool | None = False,
               kernel_init=initializers.lecun_normal(), bias_init=initializers.zeros_init(),
               param_dtype: Any = jnp.float32, rng_collection: str = "dropout",
               rngs: rnglib.Rngs):
    self.kernel = _base.param(rngs, kernel_init, (in_features, out_features), param_dtype)
    self.bias = (_base.param(rngs, bias_init, (out_features,), param_dtype)
                 if use_bias else nnx.data(None))
    super().__init__(rate, deterministic=deterministic, rng_collection=rng_collection,
                     rngs=rngs)
    self.in_features = in_features
    self.out_features = out_features
    self.use_bias = use_bias
    self.param_dtype = param_dtype

  def __call__(self, inputs, *, deterministic: bool | None = None, rngs=None):
    key = self._key(deterministic, rngs)
    kernel = self.kernel[...]
    if key is not None:
      kernel = F.dropout(key, kernel, rate=self.rate)
    y = inputs @ kernel.astype(inputs.dtype)
    return y if self.bias is None else y + self.bias[...]


class ConcreteDropoutLinear(_base.KeyedNoise):
  """Concrete dropout on the input of a linear layer, with a learned drop rate.

  Params: ``dense`` (an ``nnx.Linear``: ``kernel``, ``bias``) and ``dropout_logit``
  (the logit of the drop probability) — the names of
  :class:`jaxnorm.linen.ConcreteDropoutDense`. Add :meth:`regularizer` (the
  :func:`jaxnorm.functional.concrete_dropout_regularizer` of this layer) to the loss;
  it depends only on the parameters. When deterministic, the input is used as is.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxnorm import nnx as jnnx
    >>> layer = jnnx.ConcreteDropoutLinear(3, 2, init_rate=0.1, rngs=nnx.Rngs(0))
    >>> y = layer(jnp.ones((4, 3)))
    >>> layer.regularizer().shape   # a scalar to add to the loss
    ()

  References:
    Gal, Hron & Kendall, "Concrete Dropout", NeurIPS 2017.
  """

  def __init__(self, in_features: int, out_features: int, *,
               weight_regularizer: float = 1e-6, dropout_regularizer: float = 1e-5,
               init_rate: float = 0.1, temperature: float = 0.1,
               deterministic: bool | None = False, rng_collection: str = "dropout",
               rngs: rnglib.Rngs):
    init_logit = _frontend.concrete_dropout_init_logit(
        init_rate, fn="jaxnorm.nnx.ConcreteDropoutLinear")
    self.dense = nnx.Linear(in_features, out_features, rngs=rngs)
    self.dropout_logit = nnx.Param(jnp.asarray(init_logit, jnp.float32))
    self.deterministic = deterministic
    self.rng_collection = rng_collection
    self.rngs = _base.stream(rngs, rng_collection, "jaxnorm.nnx.ConcreteDropoutLinear")
    self.in_features = in_features
    self.weight_regularizer = weight_regularizer
    self.dropout_regularizer = dropout_regularizer
    self.temperature = temperature

  def __call__(self, inputs, *, deterministic: bool | None = None, rngs=None):
    deterministic = _base.first_flag(deterministic, self.deterministic,
                                     flag="deterministic", layer="ConcreteDropoutLinear")
    if not deterministic:
      key = _base.draw_key(rngs, self.rngs, self.rng_collection,
                           "jaxnorm.nnx.ConcreteDropoutLinear")
      inputs = F.concrete_dropout(key, inputs, logit=self.dropout_logit[...],
                                  temperature=self.temperature)
    return self.dense(inputs)

  def regularizer(self) -> jax.Array:
    """The concrete-dropout regularizer of this layer (add it to the loss)."""
    return F.concrete_dropout_regularizer(
        self.dropout_logit[...], input_dim=self.in_features,
        weight_sq_norm=jnp.sum(jnp.square(self.dense.kernel[...])),
        weight_regularizer=self.weight_regularizer,
        dropout_regularizer=self.dropout_regularizer)
