"""PRNG-keyed dropout: randomness is an explicit key argument, never hidden state."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxnorm import _checks
from jaxnorm.functional import _random


def _check_key(key, fn: str) -> None:
  dtype = getattr(key, "dtype", None)
  is_typed_key = dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
  is_raw_key = dtype == jnp.uint32 and getattr(key, "shape", None) == (2,)
  if not (is_typed_key or is_raw_key):
    raise TypeError(
        f"{fn}: key must be a JAX PRNG key (jax.random.key(seed) or "
        f"jax.random.PRNGKey(seed)); got {type(key).__name__} with dtype {dtype}. "
        "The key comes first: dropout(key, x, rate=...).")


def dropout(
    key: jax.Array,
    x: jax.Array,
    *,
    rate: float | jax.Array,
    broadcast_dims: Sequence[int] = (),
) -> jax.Array:
  r"""Inverted dropout: drop each element with probability ``rate``, rescale the rest.

  .. math::
    y = \frac{b \odot x}{1 - p}, \qquad b \sim \text{Bernoulli}(1 - p)

  with :math:`p` = ``rate``, so :math:`E[y] = x`. The mask is shared along
  ``broadcast_dims`` (e.g. ``(1, 2)`` on NHWC drops whole channels). The mask is a
  function of ``key`` and the mask shape only: the same key gives the same mask with or
  without ``jax.jit`` and the same mask as ``flax.linen.Dropout`` given the same key.

  ``rate`` may be traced (a schedule under ``jax.jit``: no recompilation per value);
  traced values are not range-checked. ``rate == 1`` gives zeros with zero (finite)
  gradients; ``rate == 0`` returns ``x``.

  Args:
    key: a PRNG key; split or ``fold_in`` it per layer and per step yourself.
    x: floating-point input.
    rate: drop probability in [0, 1] (not the keep probability).
    broadcast_dims: axes along which the mask is shared.

  Returns:
    An array like ``x``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxnorm import functional as F
    >>> y = F.dropout(jax.random.key(0), jnp.ones((4, 3)), rate=0.5)
    >>> y.shape, bool(jnp.isin(y, jnp.array([0.0, 2.0])).all())  # kept: x / (1 - rate)
    ((4, 3), True)

  References:
    Srivastava et al., "Dropout: A Simple Way to Prevent Neural Networks from
    Overfitting", JMLR 2014.
  """
  fn = "jaxnorm.functional.dropout"
  x = _checks.ensure_floating(x, name="x", fn=fn, allow_complex=True)
  _checks.check_in_unit_interval(
      rate, name="rate", fn=fn,
      hint=" rate is the probability of dropping an element, not of keeping it.")
  dims = _broadcast_dims(broadcast_dims, x.shape, fn)
  static_rate = _checks.concrete_float(rate)
  if static_rate == 0.0:
    return x
  if static_rate == 1.0:
    return jnp.zeros_like(x)
  _check_key(key, fn)
  mask_shape = tuple(1 if a in dims else n for a, n in enumerate(x.shape))
  if static_rate is not None:
    return _dropout_static(key, x, 1.0 - static_rate, mask_shape)
  return _dropout_traced(key, x, rate, mask_shape)


# The dropout bodies compiled as a whole, also when called outside jax.jit.
@functools.partial(jax.jit, static_argnums=(2, 3))
def _dropout_static(key, x, keep_prob: float, mask_shape: tuple[int, ...]) -> jax.Array:
  keep = _random.bernoulli(key, keep_prob, mask_shape)
  return lax.select(jnp.broadcast_to(keep, x.shape), x / keep_prob, jnp.zeros_like(x))


@functools.partial(jax.jit, static_argnums=(3,))
def _dropout_traced(key, x, rate, mask_shape: tuple[int, ...]) -> jax.Array:
  keep_prob = 1.0 - jnp.asarray(rate, jnp.float32)
  keep = _random.bernoulli(key, keep_prob, mask_shape)
  # Where nothing is kept, divide by 1 instead of 0 so no inf/NaN reaches the gradient.
  safe_keep_prob = jnp.where(keep_prob > 0, keep_prob, 1.0).astype(x.dtype)
  return jnp.where(jnp.broadcast_to(keep, x.shape), x / safe_keep_prob, jnp.zeros_like(x))


def _broadcast_dims(broadcast_dims, shape, fn) -> tuple[int, ...]:
  """``broadcast_dims`` as canonical axes: a tuple or list of ints, as in flax."""
  if not isinstance(broadcast_dims, (tuple, list)):
    example = (f" Write broadcast_dims=({broadcast_dims},)."
               if isinstance(broadcast_dims, (int, np.integer)) else "")
    raise TypeError(f"{fn}: broadcast_dims must be a tuple (or list) of axes along which "
                    f"the mask is shared, e.g. (1, 2); got {broadcast_dims!r} "
                    f"({type(broadcast_dims).__name__}).{example}")
  if not broadcast_dims:
    return ()
  return _checks.canonical_axes(tuple(broadcast_dims), shape, name="broadcast_dims", fn=fn)


def _keep_mask(key, shape, keep_prob) -> jax.Array:
  return _random.bernoulli(key, keep_prob, shape)


def _static_rate(rate, fn: str) -> float | None:
  """Checks ``rate`` in [0, 1]; returns it as a float when concrete, else None."""
  _checks.check_in_unit_interval(
      rate, name="rate", fn=fn,
      hint=" rate is the probability of dropping, not of keeping.")
  return _checks.concrete_float(rate)


def _uniform(key, shape) -> jax.Array:
  """Uniform [0, 1) float32 draws of ``shape``: random scores (e.g. tokens to keep)."""
  return jax.random.uniform(key, shape, jnp.float32)


def spatial_dropout(
    key: jax.Array, x: jax.Array, *, rate: float | jax.Array, channel_axis: int = -1
) -> jax.Array:
  """Drops whole feature maps: one keep/drop draw per example and channel.

  The mask is shared over every axis but the batch (0) and ``channel_axis``: ``-1`` for
  NHWC/NWC/NDHWC, ``1`` for NCHW. Equivalent to :func:`dropout` with those
  ``broadcast_dims`` (inverted, ``E[y] = x``).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxnorm import functional as F
    >>> x = jnp.ones((2, 4, 4, 3))                       # NHWC
    >>> y = F.spatial_dropout(jax.random.key(0), x, rate=0.5)
    >>> bool((y == y[:, :1, :1, :]).all())               # one draw per example and channel
    True

  References:
    Tompson et al., "Efficient Object Localization Using Convolutional Networks", 2015.
  """
  fn = "jaxnorm.functional.spatial_dropout"
  x = _checks.ensure_floating(x, name="x", fn=fn)
  _static_rate(rate, fn)
  _checks.check_int(channel_axis, name="channel_axis", fn=fn,
                    hint=" Use -1 for NHWC, 1 for NCHW.")
  (channel,) = _checks.canonical_axes(channel_axis, x.shape, name="channel_axis", fn=fn)
  if channel == 0 or x.ndim < 3:
    raise ValueError(f"{fn}: x must be (N, ..., C) or (N, C, ...) with spatial axes and "
                     f"channel_axis must not be 0; got x.shape={tuple(x.shape)}, "
                     f"channel_axis={channel_axis}.")
  dims = tuple(a for a in range(1, x.ndim) if a != channel)
  return dropout(key, x, rate=rate, broadcast_dims=dims)


def drop_path(
    key: jax.Array, x: jax.Array, *, rate: float | jax.Array, mode: str = "row"
) -> jax.Array:
  r"""Stochastic depth: drop a residual branch, per example or for the whole batch.

  Use as ``x + drop_path(key, branch(x), rate=p)``. In ``"row"`` mode each example's
  branch is kept with probability :math:`1-p` and scaled by :math:`1/(1-p)`; in
  ``"batch"`` mode one draw decides for the whole batch.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxnorm import functional as F
    >>> x = jnp.ones((4, 3))
    >>> y = x + F.drop_path(jax.random.key(0), x, rate=0.5)   # residual x + branch(x)
    >>> bool((y == y[:, :1]).all())                     # whole examples kept or dropped
    True

  References:
    Huang et al., "Deep Networks with Stochastic Depth", ECCV 2016.
  """
  fn = "jaxnorm.functional.drop_path"
  if not isinstance(mode, str) or mode not in ("row", "batch"):
    raise ValueError(f"{fn}: mode must be 'row' (per example) or 'batch'; got {mode!r}.")
  x = _checks.ensure_floating(x, name="x", fn=fn)
  _static_rate(rate, fn)
  dims = tuple(range(1, x.ndim)) if mode == "row" else tuple(range(x.ndim))
  return dropout(key, x, rate=rate, broadcast_dims=dims) if dims else dropout(
      key, x, rate=rate)


def drop_path_rates(num_layers: int, max_rate: float) -> list[float]:
  """Linearly increasing stochastic-depth rates ``max_rate * l / (L - 1)`` for ``l < L``.

  The first block is never dropped and the last with ``max_rate`` (Huang et al.'s
  linear decay rule, as used by timm and DeiT).

  Example:
    >>> from jaxnorm import functional as F
    >>> F.drop_path_rates(3, 0.2)                       # one rate per residual block
    [0.0, 0.1, 0.2]
  """
  fn = "jaxnorm.functional.drop_path_rates"
  _checks.check_in_unit_interval(max_rate, name="max_rate", fn=fn)
  num_layers = _checks.check_int(num_layers, name="num_layers", fn=fn, low=1)
  max_rate = float(max_rate)
  if num_layers == 1:
    return [0.0]
  return [max_rate * layer / (num_layers - 1) for layer in range(num_layers)]


#: SELU's saturation value :math:`-\lambda\alpha`.
SELU_ALPHA_PRIME = -1.7580993408473766


def alpha_dropout(key: jax.Array, x: jax.Array, *, rate: float | jax.Array) -> jax.Array:
  r"""Alpha dropout: keeps zero mean and unit variance of SELU activations.

  Dropped units are set to :math:`\alpha' = -\lambda\alpha`, then
  :math:`y = a\,\tilde x + b` with :math:`q = 1 - p`,
  :math:`a = (q + \alpha'^2 q (1 - q))^{-1/2}`, :math:`b = -a (1 - q) \alpha'`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxnorm import functional as F
    >>> x = jax.nn.selu(jax.random.normal(jax.random.key(0), (10_000,)))
    >>> y = F.alpha_dropout(jax.random.key(1), x, rate=0.2)
    >>> round(abs(float(y.mean())), 1), round(float(y.std()), 1)  # still mean 0, std 1
    (0.0, 1.0)

  References:
    Klambauer et al., "Self-Normalizing Neural Networks", NeurIPS 2017.
  """
  fn = "jaxnorm.functional.alpha_dropout"
  x = _checks.ensure_floating(x, name="x", fn=fn)
  static_rate = _static_rate(rate, fn)
  if static_rate == 0.0:
    return x
  if static_rate == 1.0:
    return jnp.zeros_like(x)  # as PyTorch: nothing is kept (a would be infinite)
  _check_key(key, fn)
  q = 1.0 - jnp.asarray(rate, jnp.float32)
  keep = _keep_mask(key, x.shape, q)
  safe_q = jnp.where(q > 0, q, 1.0)  # a traced rate of 1 gives zeros, not NaN
  a = lax.rsqrt(safe_q + SELU_ALPHA_PRIME ** 2 * safe_q * (1 - safe_q))
  b = -a * (1 - safe_q) * SELU_ALPHA_PRIME
  y = jnp.where(keep, x, jnp.asarray(SELU_ALPHA_PRIME, x.dtype))
  y = a.astype(x.dtype) * y + b.astype(x.dtype)
  return jnp.where(q > 0, y, jnp.zeros_like(y)).astype(x.dtype)


def gaussian_dropout(key: jax.Array, x: jax.Array, *, rate: float | jax.Array) -> jax.Array:
  r"""Multiplicative Gaussian noise with the variance of dropout at ``rate``.

  .. math:: y = x \cdot n, \qquad n \sim \mathcal{N}\big(1, \tfrac{p}{1-p}\big)

  ``rate`` must be < 1 (the variance diverges at 1).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxnorm import functional as F
    >>> y = F.gaussian_dropout(jax.random.key(0), jnp.ones((10_000,)), rate=0.5)
    >>> round(float(y.mean()), 1), round(float(y.std()), 1)  # noise N(1, 0.5 / (1 - 0.5))
    (1.0, 1.0)

  References:
    Srivastava et al., "Dropout: A Simple Way to Prevent Neural Networks from
    Overfitting", JMLR 2014, section 10.
  """
  fn = "jaxnorm.functional.gaussian_dropout"
  x = _checks.ensure_floating(x, name="x", fn=fn)
  static_rate = _static_rate(rate, fn)
  if static_rate == 1.0:
    raise ValueError(f"{fn}: rate must be < 1 (the noise variance rate / (1 - rate) "
                     "diverges); got 1.0.")
  if static_rate == 0.0:
    return x
  _check_key(key, fn)
  rate = jnp.asarray(rate, jnp.float32)
  std = jnp.sqrt(rate / (1.0 - rate))
  noise = 1.0 + std * _random.normal(key, x.shape, jnp.float32)
  return (x * noise.astype(x.dtype)).astype(x.dtype)


def classic_dropout(
    key: jax.Array | None, x: jax.Array, *, rate: float | jax.Array, train: bool
) -> jax.Array:
  r"""Non-inverted dropout, as in the original paper and many course notes.

  Training: :math:`y = b \odot x` (no rescaling); inference: :math:`y = (1-p)\,x`.
  Equivalent in expectation to the inverted :func:`dropout` (which rescales in
  training and leaves inference alone): both give :math:`E[y_{train}] = y_{eval}`.
  ``key`` may be ``None`` when ``train`` is False.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxnorm import functional as F
    >>> x = jnp.ones((4, 3))
    >>> F.classic_dropout(None, x, rate=0.25, train=False)[0]   # inference: x * (1 - rate)
    Array([0.75, 0.75, 0.75], dtype=float32)
    >>> y = F.classic_dropout(jax.random.key(0), x, rate=0.25, train=True)
    >>> bool(jnp.isin(y, jnp.array([0.0, 1.0])).all())         # training: no rescaling
    True
  """
  fn = "jaxnorm.functional.classic_dropout"
  x = _checks.ensure_floating(x, name="x", fn=fn)
  train = _checks.check_static_bool(train, name="train", fn=fn)
  static_rate = _static_rate(rate, fn)
  keep_prob = 1.0 - (static_rate if static_rate is not None else jnp.asarray(rate, x.dtype))
  if not train:
    return (x * keep_prob).astype(x.dtype)
  if static_rate == 0.0:
    return x
  _check_key(key, fn)
  keep = _keep_mask(key, x.shape, keep_prob)
  return jnp.where(keep, x, jnp.zeros_like(x))


def concrete_dropout(
    key: jax.Array, x: jax.Array, *, logit: jax.Array, temperature: float = 0.1
) -> jax.Array:
  r"""Concrete dropout: a relaxed (differentiable) Bernoulli mask with a learned rate.

  With drop probability :math:`p = \mathrm{sigmoid}(\ell)` (``logit``) and
  :math:`u \sim U(0, 1)`:

  .. math::
    z = \mathrm{sigmoid}\Big(\frac{\log p - \log(1-p) + \log u - \log(1-u)}{t}\Big),
    \qquad y = \frac{x\,(1 - z)}{1 - p}

  Gradients flow to ``logit``; add :func:`concrete_dropout_regularizer` to the loss.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxnorm import functional as F
    >>> logit = jnp.log(0.1 / 0.9)                     # drop probability 0.1
    >>> y = F.concrete_dropout(jax.random.key(0), jnp.ones((10_000,)), logit=logit)
    >>> round(float(y.mean()), 1)                      # E[y] = x, about
    1.0
    >>> loss = lambda l: F.concrete_dropout(jax.random.key(0), jnp.ones((4, 3)), logit=l)
    >>> bool(jax.grad(lambda l: loss(l).sum())(logit) != 0)  # the rate learns by gradient
    True

  References:
    Gal, Hron & Kendall, "Concrete Dropout", NeurIPS 2017.
  """
  fn = "jaxnorm.functional.concrete_dropout"
  x = _checks.ensure_floating(x, name="x", fn=fn)
  _checks.check_positive(temperature, name="temperature", fn=fn, hint=" 0.1 is usual.")
  logit = _checked_logit(logit, fn)
  _check_key(key, fn)
  eps = 1e-7
  u = _random.uniform(key, x.shape, jnp.float32, eps, 1.0 - eps)
  # 1 - z = sigmoid(-a) and 1 - p = sigmoid(-logit), as exp(log_sigmoid(...)): finite for
  # confident logits, where 1 - sigmoid(logit) rounds to 0 in float32.
  a = (logit + jnp.log(u) - jnp.log1p(-u)) / temperature
  keep = jnp.exp(jax.nn.log_sigmoid(-a) - jax.nn.log_sigmoid(-logit))
  return (x.astype(jnp.float32) * keep).astype(x.dtype)


def _checked_logit(logit, fn) -> jax.Array:
  """``logit`` as a float32 array: a real floating-point number or array, not a bool."""
  if isinstance(logit, (bool, np.bool_, str)):
    raise TypeError(f"{fn}: logit must be a real number or array (the logit of the drop "
                    f"probability); got {logit!r}.")
  if isinstance(logit, (int, float, np.integer, np.floating)):
    return jnp.asarray(float(logit), jnp.float32)
  return _checks.ensure_floating(logit, name="logit", fn=fn).astype(jnp.float32)


def concrete_dropout_regularizer(
    logit: jax.Array, *, input_dim: int, weight_sq_norm: jax.Array,
    weight_regularizer: float, dropout_regularizer: float,
) -> jax.Array:
  r"""Concrete dropout's regularizer for the layer after the dropout.

  .. math::
    R = \lambda_w \frac{\lVert W \rVert^2}{1 - p}
      + \lambda_p\, K \big(p \log p + (1 - p) \log (1 - p)\big)

  with :math:`p = \mathrm{sigmoid}(\ell)`, :math:`K` = ``input_dim``,
  :math:`\lambda_w` = ``weight_regularizer`` (:math:`l^2 / N`),
  :math:`\lambda_p` = ``dropout_regularizer`` (:math:`2 / N`). The second term is a
  negative entropy: minimizing it pushes :math:`p` towards 0.5 unless the data says
  otherwise.

  Example:
    >>> from jaxnorm import functional as F
    >>> reg = lambda logit: float(F.concrete_dropout_regularizer(
    ...     logit, input_dim=3, weight_sq_norm=2.0, weight_regularizer=1e-4,
    ...     dropout_regularizer=1e-2))
    >>> round(reg(0.0), 5), reg(0.0) < reg(2.0)        # p = 0.5 costs less than p = 0.88
    (-0.02039, True)
  """
  fn = "jaxnorm.functional.concrete_dropout_regularizer"
  logit = _checked_logit(logit, fn)
  _checks.check_int(input_dim, name="input_dim", fn=fn, low=1)
  for name, value in (("weight_regularizer", weight_regularizer),
                      ("dropout_regularizer", dropout_regularizer)):
    _checks.check_range(value, name=name, fn=fn, low=0.0, finite=True)
  weight_sq_norm = _checks.ensure_floating(weight_sq_norm, name="weight_sq_norm", fn=fn)
  p, keep = jax.nn.sigmoid(logit), jax.nn.sigmoid(-logit)  # keep = 1 - p, no cancellation
  negative_entropy = p * jax.nn.log_sigmoid(logit) + keep * jax.nn.log_sigmoid(-logit)
  return (weight_regularizer * weight_sq_norm * jnp.exp(-jax.nn.log_sigmoid(-logit))
          + dropout_regularizer * input_dim * negative_entropy)


def r_drop_loss(logits_a: jax.Array, logits_b: jax.Array) -> jax.Array:
  r"""R-Drop's consistency loss: symmetric KL between two dropout passes.

  .. math::
    \frac{1}{2}\big(\mathrm{KL}(P_a \Vert P_b) + \mathrm{KL}(P_b \Vert P_a)\big)

  averaged over the batch, with :math:`P = \mathrm{softmax}` of the logits (last axis).
  Add ``alpha * r_drop_loss(...)`` to the cross-entropy of both passes.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxnorm import functional as F
    >>> a, b = jnp.array([[2.0, 0.0, -1.0]]), jnp.array([[0.0, 1.0, 0.0]])
    >>> float(F.r_drop_loss(a, a)), bool(F.r_drop_loss(a, b) > 0)  # 0 only if they agree
    (0.0, True)
    >>> bool(F.r_drop_loss(a, b) == F.r_drop_loss(b, a))           # symmetric
    True

  References:
    Liang et al., "R-Drop: Regularized Dropout for Neural Networks", NeurIPS 2021.
  """
  fn = "jaxnorm.functional.r_drop_loss"
  logits_a = _checks.ensure_floating(logits_a, name="logits_a", fn=fn)
  logits_b = _checks.ensure_floating(logits_b, name="logits_b", fn=fn)
  if logits_a.shape != logits_b.shape or logits_a.ndim == 0:
    raise ValueError(f"{fn}: logits_a and logits_b must have the same shape (..., classes) "
                     f"from two dropout passes over the same batch; got {logits_a.shape} "
                     f"and {logits_b.shape}.")
  log_a = jax.nn.log_softmax(logits_a.astype(jnp.float32), axis=-1)
  log_b = jax.nn.log_softmax(logits_b.astype(jnp.float32), axis=-1)

  def kl(log_p, log_q):  # with 0 log 0 = 0, so classes masked to -inf in both are fine
    p = jnp.exp(log_p)
    return jnp.sum(jnp.where(p > 0, p * (log_p - jnp.where(p > 0, log_q, 0.0)), 0.0),
                   axis=-1)

  return 0.5 * jnp.mean(kl(log_a, log_b) + kl(log_b, log_a))
