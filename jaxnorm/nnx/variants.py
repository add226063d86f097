"""NNX modules for the batch-norm variants and the composite normalizations.

Same conventions as :class:`jaxnorm.nnx.BatchNorm`: ``use_running_average`` selects
evaluation (``model.train()`` / ``model.eval()`` / ``nnx.view``), running statistics are
float32 ``nnx.BatchStat`` variables, parameters ``nnx.Param``; variable names are those
of the :mod:`jaxnorm.linen` modules, so checkpoints convert between the two.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx import rnglib
from flax.nnx.nn import initializers

from jaxnorm import _checks, _frontend
from jaxnorm import functional as F
from jaxnorm.functional.normalization import _groups
from jaxnorm.nnx import _base
from jaxnorm.nnx._base import NO_METADATA
from jaxnorm.nnx.normalization import Axes, _reshape


class _FeatureAxisNorm(_base.RunningStatsNorm):
  """A running-statistics layer whose features lie on ``axis`` (default: the last)."""

  def _features(self, x, axis, fn) -> tuple[tuple[int, ...], tuple[int, ...]]:
    axes = _checks.canonical_axes(axis, jnp.shape(x), name="axis", fn=fn)
    return axes, _frontend.check_num_features(self.num_features, jnp.shape(x), axes,
                                              axis_desc=f"axis={axis!r}", fn=fn)


class BatchRenorm(_FeatureAxisNorm):
  """Batch Renormalization; see :func:`jaxnorm.functional.batch_renorm`.

  .. math::
    y = \\left(\\frac{x - \\mu_B}{\\sigma_B}\\, r + d\\right)\\gamma + \\beta, \\quad
    r = \\mathrm{clip}_{[1/r_{max}, r_{max}]}\\frac{\\sigma_B}{\\sigma},\\;
    d = \\mathrm{clip}_{[-d_{max}, d_{max}]}\\frac{\\mu_B - \\mu}{\\sigma}

  ``nnx.BatchStat`` holds ``mean``, ``var`` and ``step`` (int32), the step driving the
  ``r_max``/``d_max`` schedules and the warm-up.

  Other arguments as :class:`jaxnorm.nnx.BatchNorm`.

  Example:
    >>> import jax
    >>> from flax import nnx
    >>> from jaxnorm import nnx as jnnx
    >>> layer = jnnx.BatchRenorm(4, r_max=3.0, d_max=5.0, rngs=nnx.Rngs(0))
    >>> y = layer(jax.random.normal(jax.random.key(0), (8, 4)))
    >>> int(layer.step[...])
    1
  """

  def __init__(self, num_features: int, *, use_running_average: bool | None = False,
               axis: Axes = -1, momentum: float = 0.99, epsilon: float = 1e-5,
               r_max: Any = 3.0, d_max: Any = 5.0, warmup_steps: int = 0,
               dtype: Any = None, param_dtype: Any = jnp.float32, use_bias: bool = True,
               use_scale: bool = True, bias_init=initializers.zeros_init(),
               scale_init=initializers.ones_init(), axis_name: str | None = None,
               axis_index_groups: Any = None, promote_dtype=_base.promote_dtype,
               rngs: rnglib.Rngs, bias_metadata: Mapping[str, Any] = NO_METADATA,
               scale_metadata: Mapping[str, Any] = NO_METADATA):
    super().__init__(
        num_features, use_running_average=use_running_average, momentum=momentum,
        epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, use_bias=use_bias,
        use_scale=use_scale, bias_init=bias_init, scale_init=scale_init,
        promote_dtype=promote_dtype, rngs=rngs, bias_metadata=bias_metadata,
        scale_metadata=scale_metadata)
    self.step = nnx.BatchStat(jnp.zeros((), jnp.int32))
    self.axis = axis
    self.r_max = r_max
    self.d_max = d_max
    self.warmup_steps = warmup_steps
    self.axis_name = axis_name
    self.axis_index_groups = axis_index_groups

  def __call__(self, x, use_running_average: bool | None = None, *,
               mask: jax.Array | None = None):
    """Renormalizes ``x`` (training) or normalizes with running statistics."""
    train = not self._use_running_average(use_running_average)
    axes, shape = self._features(x, self.axis, "jaxnorm.nnx.BatchRenorm")
    x, scale, bias, out_dtype = self._promoted(x)
    stats = self._stats(shape)
    y, new = F.batch_renorm(
        x, *_reshape(shape, scale, bias),
        F.BatchRenormStats(stats.mean, stats.var, self.step[...]), train=train,
        r_max=self.r_max, d_max=self.d_max, warmup_steps=self.warmup_steps,
        momentum=self.momentum, epsilon=self.epsilon, axis=axes, axis_name=self.axis_name,
        axis_index_groups=self.axis_index_groups, mask=mask)
    if train:
      self._write(F.BatchStats(new.mean, new.var))
      self.step[...] = new.step
    return y.astype(out_dtype)


class GhostBatchNorm(_FeatureAxisNorm):
  """Ghost batch norm over virtual batches of ``virtual_batch_size`` examples.

  Each virtual batch is normalized with its own statistics; the running statistics
  follow their average. Same variables as :class:`BatchNorm`. See
  :func:`jaxnorm.functional.ghost_batch_norm`.

  Other arguments as :class:`jaxnorm.nnx.BatchNorm`.

  Example:
    >>> import jax
    >>> from flax import nnx
    >>> from jaxnorm import nnx as jnnx
    >>> layer = jnnx.GhostBatchNorm(4, virtual_batch_size=4, rngs=nnx.Rngs(0))
    >>> layer(jax.random.normal(jax.random.key(0), (8, 4))).shape
    (8, 4)
  """

  def __init__(self, num_features: int, *, virtual_batch_size: int = 32,
               use_running_average: bool | None = False, axis: Axes = -1,
               momentum: float = 0.99, epsilon: float = 1e-5, dtype: Any = None,
               param_dtype: Any = jnp.float32, use_bias: bool = True,
               use_scale: bool = True, bias_init=initializers.zeros_init(),
               scale_init=initializers.ones_init(), promote_dtype=_base.promote_dtype,
               rngs: rnglib.Rngs, bias_metadata: Mapping[str, Any] = NO_METADATA,
               scale_metadata: Mapping[str, Any] = NO_METADATA):
    super().__init__(
        num_features, use_running_average=use_running_average, momentum=momentum,
        epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, use_bias=use_bias,
        use_scale=use_scale, bias_init=bias_init, scale_init=scale_init,
        promote_dtype=promote_dtype, rngs=rngs, bias_metadata=bias_metadata,
        scale_metadata=scale_metadata)
    self.virtual_batch_size = virtual_batch_size
    self.axis = axis

  def __call__(self, x, use_running_average: bool | None = None, *,
               mask: jax.Array | None = None):
    """Normalizes each virtual batch (training) or with the running statistics."""
    train = not self._use_running_average(use_running_average)
    axes, shape = self._features(x, self.axis, "jaxnorm.nnx.GhostBatchNorm")
    x, scale, bias, out_dtype = self._promoted(x)
    y, new = F.ghost_batch_norm(
        x, *_reshape(shape, scale, bias), self._stats(shape),
        virtual_batch_size=self.virtual_batch_size, train=train, momentum=self.momentum,
        epsilon=self.epsilon, axis=axes, mask=mask)
    if train:
      self._write(new)
    return y.astype(out_dtype)


class SwitchNorm(_FeatureAxisNorm):
  """Switchable Normalization; see :func:`jaxnorm.functional.switch_norm`.

  Input ``(N, ..., C)`` with ``C = num_features``. ``nnx.Param`` also holds
  ``mean_weights`` and ``var_weights`` (logits of IN, LN, BN, initialized equal).

  Other arguments as :class:`jaxnorm.nnx.BatchNorm`.

  Example:
    >>> import jax
    >>> from flax import nnx
    >>> from jaxnorm import nnx as jnnx
    >>> layer = jnnx.SwitchNorm(4, rngs=nnx.Rngs(0))
    >>> layer(jax.random.normal(jax.random.key(0), (8, 3, 3, 4))).shape
    (8, 3, 3, 4)
  """

  def __init__(self, num_features: int, *, use_running_average: bool | None = False,
               momentum: float = 0.99, epsilon: float = 1e-5, dtype: Any = None,
               param_dtype: Any = jnp.float32, use_bias: bool = True,
               use_scale: bool = True, bias_init=initializers.zeros_init(),
               scale_init=initializers.ones_init(), promote_dtype=_base.promote_dtype,
               rngs: rnglib.Rngs, bias_metadata: Mapping[str, Any] = NO_METADATA,
               scale_metadata: Mapping[str, Any] = NO_METADATA):
    super().__init__(
        num_features, use_running_average=use_running_average, momentum=momentum,
        epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, use_bias=use_bias,
        use_scale=use_scale, bias_init=bias_init, scale_init=scale_init,
        promote_dtype=promote_dtype, rngs=rngs, bias_metadata=bias_metadata,
        scale_metadata=scale_metadata)
    self.mean_weights = _base.param(rngs, initializers.ones, (3,), param_dtype)
    self.var_weights = _base.param(rngs, initializers.ones, (3,), param_dtype)

  def __call__(self, x, use_running_average: bool | None = None, *,
               mask: jax.Array | None = None):
    """Normalizes with a learned mixture of instance, layer and batch statistics."""
    train = not self._use_running_average(use_running_average)
    _, shape = self._features(x, -1, "jaxnorm.nnx.SwitchNorm")
    x, scale, bias, out_dtype = self._promoted(x)
    y, new = F.switch_norm(x, scale, bias, self.mean_weights[...], self.var_weights[...],
                           self._stats(shape), train=train, momentum=self.momentum,
                           epsilon=self.epsilon, mask=mask)
    if train:
      self._write(new)
    return y.astype(out_dtype)


class EvoNormB0(_FeatureAxisNorm):
  """EvoNorm-B0; see :func:`jaxnorm.functional.evonorm_b0`. ``v`` (a Param) starts at 1.

  Other arguments as :class:`jaxnorm.nnx.BatchNorm`.

  Example:
    >>> import jax
    >>> from flax import nnx
    >>> from jaxnorm import nnx as jnnx
    >>> layer = jnnx.EvoNormB0(4, rngs=nnx.Rngs(0))
    >>> layer(jax.random.normal(jax.random.key(0), (8, 3, 3, 4))).shape
    (8, 3, 3, 4)
  """

  def __init__(self, num_features: int, *, use_running_average: bool | None = False,
               momentum: float = 0.99, epsilon: float = 1e-5, dtype: Any = None,
               param_dtype: Any = jnp.float32, use_bias: bool = True,
               use_scale: bool = True, bias_init=initializers.zeros_init(),
               scale_init=initializers.ones_init(), promote_dtype=_base.promote_dtype,
               rngs: rnglib.Rngs, bias_metadata: Mapping[str, Any] = NO_METADATA,
               scale_metadata: Mapping[str, Any] = NO_METADATA):
    super().__init__(
        num_features, use_running_average=use_running_average, momentum=momentum,
        epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, use_bias=use_bias,
        use_scale=use_scale, bias_init=bias_init, scale_init=scale_init,
        promote_dtype=promote_dtype, rngs=rngs, bias_metadata=bias_metadata,
        scale_metadata=scale_metadata)
    self.v = _base.param(rngs, initializers.ones, (num_features,), param_dtype)

  def __call__(self, x, use_running_average: bool | None = None, *,
               mask: jax.Array | None = None):
    """``x / max(sqrt(batch var), v x + sqrt(instance var))``, then the affine part."""
    train = not self._use_running_average(use_running_average)
    _, shape = self._features(x, -1, "jaxnorm.nnx.EvoNormB0")
    x, scale, bias, out_dtype = self._promoted(x)
    y, new = F.evonorm_b0(x, scale, bias, self.v[...], self._stats(shape), train=train,
                          momentum=self.momentum, epsilon=self.epsilon, mask=mask)
    if train:
      self._write(new)
    return y.astype(out_dtype)


class EvoNormS0(nnx.Module):
  """EvoNorm-S0; see :func:`jaxnorm.functional.evonorm_s0`. ``v`` (a Param) starts at 1.

  No running statistics: ``x * sigmoid(v x) / group_std(x)``, then the affine part, with
  ``num_groups`` groups (default 32) or groups of ``group_size`` channels.

  Example:
    >>> import jax
    >>> from flax import nnx
    >>> from jaxnorm import nnx as jnnx
    >>> layer = jnnx.EvoNormS0(4, num_groups=2, rngs=nnx.Rngs(0))
    >>> layer(jax.random.normal(jax.random.key(0), (8, 3, 3, 4))).shape
    (8, 3, 3, 4)
  """

  def __init__(self, num_features: int, *, num_groups: int | None = 32,
               group_size: int | None = None, epsilon: float = 1e-5, dtype: Any = None,
               param_dtype: Any = jnp.float32, use_bias: bool = True,
               use_scale: bool = True, bias_init=initializers.zeros_init(),
               scale_init=initializers.ones_init(), axis_name: str | None = None,
               promote_dtype=_base.promote_dtype, rngs: rnglib.Rngs,
               bias_metadata: Mapping[str, Any] = NO_METADATA,
               scale_metadata: Mapping[str, Any] = NO_METADATA):
    groups = _groups(num_features, num_groups, group_size, "jaxnorm.nnx.EvoNormS0",
                     features=True)
    _base.affine_params(self, rngs, num_features, use_scale=use_scale, use_bias=use_bias,
                        scale_init=scale_init, bias_init=bias_init, param_dtype=param_dtype,
                        scale_metadata=scale_metadata, bias_metadata=bias_metadata)
    self.v = _base.param(rngs, initializers.ones, (num_features,), param_dtype)
    self.num_features = num_features
    self.num_groups = groups
    self.group_size = num_features // groups
    self.epsilon = epsilon
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.use_bias = use_bias
    self.use_scale = use_scale
    self.axis_name = axis_name
    self.promote_dtype = promote_dtype

  def __call__(self, x, *, mask: jax.Array | None = None):
    """Applies EvoNorm-S0 (the same in training and evaluation)."""
    fn = "jaxnorm.nnx.EvoNormS0"
    _frontend.check_num_features(self.num_features, jnp.shape(x), (jnp.ndim(x) - 1,),
                                 axis_desc="the last (channel) axis", fn=fn)
    x, scale, bias = _base.promote(
        self, (x, _base.value(self.scale), _base.value(self.bias)))
    out_dtype = _frontend.output_dtype(x, scale, bias, dtype=self.dtype)
    y = F.evonorm_s0(x, scale, bias, self.v[...], num_groups=self.num_groups,
                     epsilon=self.epsilon, mask=mask, axis_name=self.axis_name)
    return y.astype(out_dtype)
