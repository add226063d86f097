"""jaxnorm.testing's assertions pass on jaxnorm's layers (linen and NNX) and fail on
deliberately broken layers."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxnorm.linen as jl
from jaxnorm import nnx as jnnx
from jaxnorm import testing


def _x(shape, seed=0, loc=1.0, scale=2.0):
  return jnp.asarray(loc + scale * np.random.default_rng(seed).normal(size=shape), jnp.float32)


X = _x((16, 4))


def _linen_bn(**kwargs):
  module = jl.BatchNorm(**kwargs)
  return module, module.init(jax.random.key(0), X, use_running_average=True)


class LinenNet(nn.Module):
  """A user's linen model with a ``train`` flag."""

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(4)(x)
    x = jl.BatchNorm(use_running_average=not train)(x)
    return jl.Dropout(0.5, deterministic=not train)(nn.relu(x))


class NNXNet(nnx.Module):
  def __init__(self, rngs, *, dropout=jnnx.Dropout):
    self.linear = nnx.Linear(4, 4, rngs=rngs)
    self.bn = jnnx.BatchNorm(4, rngs=rngs)
    self.drop = dropout(0.5, rngs=rngs)

  def __call__(self, x):
    return self.drop(nnx.relu(self.bn(self.linear(x))))


# ------------------------------------------------------------------- broken layers


class UncenteredBatchNorm(jnnx.BatchNorm):
  """Broken: divides by the batch standard deviation but forgets to subtract the mean."""

  def __call__(self, x, use_running_average=None, *, mask=None):
    if self._use_running_average(use_running_average):
      return super().__call__(x, True)
    return x / jnp.sqrt(x.var(0) + self.epsilon)


class StaleBatchNorm(jnnx.BatchNorm):
  """Broken: never writes its running statistics."""

  def _write(self, stats):
    pass


class LeakyEvalBatchNorm(jnnx.BatchNorm):
  """Broken: updates its running statistics in evaluation too."""

  def __call__(self, x, use_running_average=None, *, mask=None):
    y = super().__call__(x, use_running_average, mask=mask)
    self.mean[...] = 0.5 * self.mean[...] + 0.5 * x.mean(0)
    return y


class WrongVarianceBatchNorm(jnnx.BatchNorm):
  """Broken: evaluation normalizes with 1.5 times the running variance."""

  def __call__(self, x, use_running_average=None, *, mask=None):
    if not self._use_running_average(use_running_average):
      return super().__call__(x, False, mask=mask)
    return (x - self.mean[...]) / jnp.sqrt(1.5 * self.var[...] + self.epsilon) * (
        self.scale[...]) + self.bias[...]


class AlwaysDropout(jnnx.Dropout):
  """Broken: samples masks even when deterministic."""

  def __call__(self, inputs, *, deterministic=None, rngs=None, rate=None):
    return super().__call__(inputs, deterministic=False, rngs=rngs, rate=rate)


class LinenAlwaysDropout(nn.Module):
  """Broken linen dropout: ignores ``deterministic``."""

  rate: float = 0.5

  @nn.compact
  def __call__(self, x, deterministic: bool):
    keep = jax.random.bernoulli(self.make_rng("dropout"), 1 - self.rate, x.shape)
    return jnp.where(keep, x / (1 - self.rate), 0.0)


@jax.custom_vjp
def _layer_norm_bad_grad(x, scale, bias):
  mean = x.mean(-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(x.var(-1, keepdims=True) + 1e-6) * scale + bias


def _bad_fwd(x, scale, bias):
  return _layer_norm_bad_grad(x, scale, bias), (x, scale)


def _bad_bwd(residuals, g):
  x, scale = residuals   # broken: treats the statistics as constants
  rstd = jax.lax.rsqrt(x.var(-1, keepdims=True) + 1e-6)
  xhat = (x - x.mean(-1, keepdims=True)) * rstd
  return g * scale * rstd, (g * xhat).sum(0), g.sum(0)


_layer_norm_bad_grad.defvjp(_bad_fwd, _bad_bwd)


class BadGradLayerNorm(jnnx.LayerNorm):
  """Broken: right outputs, wrong input gradient."""

  def __call__(self, x, *, mask=None):
    return _layer_norm_bad_grad(x, self.scale[...], self.bias[...])


def plain_layer_norm(params, x):
  mean = x.mean(-1, keepdims=True)
  var = jnp.square(x - mean).mean(-1, keepdims=True)
  return (x - mean) / jnp.sqrt(var + 1e-6) * params["scale"] + params["bias"]


def plain_batch_norm(params, x):
  mean = x.mean(0)
  var = jnp.square(x - mean).mean(0)
  return (x - mean) / jnp.sqrt(var + 1e-5) * params["scale"] + params["bias"]


# ------------------------------------------------------------------------- tests


def test_assert_normalized():
  testing.assert_normalized(jnnx.BatchNorm(4, rngs=nnx.Rngs(0)), X, axes=0)
  testing.assert_normalized(*_linen_bn()[:1], X, axes=0, variables=_linen_bn()[1])
  testing.assert_normalized(jnnx.LayerNorm(4, rngs=nnx.Rngs(0)), X, axes=-1)
  mask = np.ones((16, 1), bool)
  mask[12:] = False
  testing.assert_normalized(jnnx.BatchNorm(4, rngs=nnx.Rngs(0)), X.at[12:].set(50.0),
                            axes=0, mask=jnp.asarray(mask))
  with pytest.raises(AssertionError, match="max \\|mean\\| = "):
    testing.assert_normalized(UncenteredBatchNorm(4, rngs=nnx.Rngs(0)), X, axes=0)
  with pytest.raises(AssertionError, match="evaluation mode"):   # running stats 0 / 1
    testing.assert_normalized(jnnx.BatchNorm(4, rngs=nnx.Rngs(0)), X, axes=0, train=False)


def test_assert_affine_invariant():
  testing.assert_affine_invariant(jnnx.BatchNorm(4, rngs=nnx.Rngs(0)), X)
  module, variables = _linen_bn(axis=1)
  testing.assert_affine_invariant(module, _x((8, 4, 3)), feature_axis=1,
                                  variables=module.init(jax.random.key(0), _x((8, 4, 3)),
                                                        use_running_average=True))
  with pytest.raises(AssertionError, match="outputs changed by up to"):
    testing.assert_affine_invariant(UncenteredBatchNorm(4, rngs=nnx.Rngs(0)), X)
  with pytest.raises(AssertionError, match="outputs changed"):   # LN is not per-feature
    testing.assert_affine_invariant(jnnx.LayerNorm(4, rngs=nnx.Rngs(0)), X)


def test_assert_stats_updated_and_unchanged():
  for model, variables in ((jnnx.BatchNorm(4, rngs=nnx.Rngs(0)), None), _linen_bn(),
                           (NNXNet(nnx.Rngs(0)), None),
                           (LinenNet(), LinenNet().init(jax.random.key(0), X, train=False))):
    testing.assert_stats_updated(model, X, variables=variables)
    testing.assert_stats_unchanged(model, X, variables=variables)
  testing.assert_stats_unchanged(jnnx.BatchNorm(4, freeze_stats=True, rngs=nnx.Rngs(0)), X,
                                 train=True)
  testing.assert_stats_unchanged(*_linen_bn(freeze_stats=True)[:1], X, train=True,
                                 variables=_linen_bn(freeze_stats=True)[1])
  with pytest.raises(AssertionError, match="left these running statistics unchanged: "
                                           "\\['mean'\\], \\['var'\\]"):
    testing.assert_stats_updated(StaleBatchNorm(4, rngs=nnx.Rngs(0)), X)
  with pytest.raises(AssertionError, match="has no running statistics"):
    testing.assert_stats_updated(jnnx.LayerNorm(4, rngs=nnx.Rngs(0)), X)
  with pytest.raises(AssertionError, match="evaluation-mode call changed these running "
                                           "statistics: \\['mean'\\]"):
    testing.assert_stats_unchanged(LeakyEvalBatchNorm(4, rngs=nnx.Rngs(0)), X)
  with pytest.raises(AssertionError, match="training-mode call changed"):
    testing.assert_stats_unchanged(jnnx.BatchNorm(4, rngs=nnx.Rngs(0)), X, train=True)


def test_assert_eval_deterministic():
  testing.assert_eval_deterministic(NNXNet(nnx.Rngs(0)), X)
  testing.assert_eval_deterministic(LinenNet(), X,
                                    variables=LinenNet().init(jax.random.key(0), X,
                                                              train=False))
  with pytest.raises(AssertionError, match="still active in evaluation mode"):
    testing.assert_eval_deterministic(NNXNet(nnx.Rngs(0), dropout=AlwaysDropout), X)
  module = LinenAlwaysDropout()
  with pytest.raises(AssertionError, match="still active in evaluation mode"):
    testing.assert_eval_deterministic(module, X, variables={"params": {}})
  with pytest.raises(AssertionError, match="changed these running statistics"):
    testing.assert_eval_deterministic(LeakyEvalBatchNorm(4, rngs=nnx.Rngs(0)), X)


def test_assert_precise_bn_consistent():
  testing.assert_precise_bn_consistent(NNXNet(nnx.Rngs(0)), X)
  testing.assert_precise_bn_consistent(LinenNet(), X,
                                       variables=LinenNet().init(jax.random.key(0), X,
                                                                 train=False))
  with pytest.raises(AssertionError, match="evaluation differs from training mode"):
    testing.assert_precise_bn_consistent(WrongVarianceBatchNorm(4, rngs=nnx.Rngs(0)), X)


def test_assert_grad_matches_reference():
  layer = jnnx.LayerNorm(4, rngs=nnx.Rngs(0))
  nnx.update(layer, {"scale": jnp.array([0.5, 1.0, 1.5, 2.0]), "bias": jnp.ones(4)})
  testing.assert_grad_matches_reference(layer, plain_layer_norm, X)
  module, variables = _linen_bn()
  testing.assert_grad_matches_reference(module, plain_batch_norm, X, variables=variables)
  with pytest.raises(AssertionError, match="\\['x'\\] by"):
    testing.assert_grad_matches_reference(BadGradLayerNorm(4, rngs=nnx.Rngs(0)),
                                          plain_layer_norm, X)


def test_bad_arguments():
  with pytest.raises(TypeError, match="a linen model needs its variables"):
    testing.assert_normalized(jl.BatchNorm(), X, axes=0)
  with pytest.raises(TypeError, match="holds its own variables"):
    testing.assert_normalized(jnnx.BatchNorm(4, rngs=nnx.Rngs(0)), X, axes=0, variables={})
  with pytest.raises(TypeError, match="must be a flax.nnx.Module or a flax.linen.Module"):
    testing.assert_normalized(lambda x: x, X, axes=0)

  class NoFlag(nn.Module):
    @nn.compact
    def __call__(self, x):
      return jl.BatchNorm(use_running_average=False)(x)

  with pytest.raises(TypeError, match="pass train_kwargs"):
    testing.assert_stats_updated(NoFlag(), X, variables=NoFlag().init(jax.random.key(0), X))
