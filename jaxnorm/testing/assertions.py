"""chex-style assertions of the properties of normalization and dropout layers.

Each takes a model as you hold it — an NNX ``nnx.Module``, or a linen ``nn.Module`` and
its ``variables`` — runs it without changing it, and raises ``AssertionError`` saying
what failed and by how much. A linen model's mode is selected through the first of
``train`` (True in training), ``use_running_average`` (False in training) and
``deterministic`` (False in training) its ``__call__`` takes, unless ``train_kwargs`` /
``eval_kwargs`` say otherwise; an NNX model's through ``nnx.view(model,
use_running_average=..., deterministic=...)``, as ``model.train()`` / ``model.eval()``.
Extra keyword arguments (e.g. ``mask=``) go to the model's call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxnorm import _checks
from jaxnorm.testing._subject import Subject


def _f64(a) -> np.ndarray:
  return np.asarray(jnp.asarray(a, jnp.float32) if jnp.asarray(a).dtype == jnp.bfloat16
                    else a, np.float64)


def _leaves(tree) -> list[tuple[str, np.ndarray]]:
  return [(jax.tree_util.keystr(path), np.asarray(leaf))
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _subject(model, variables, train_kwargs, eval_kwargs, fn) -> Subject:
  return Subject.of(model, variables, train_kwargs=train_kwargs, eval_kwargs=eval_kwargs,
                    fn=f"jaxnorm.testing.{fn}")


def assert_normalized(model, x, *, axes: int | Sequence[int], variables=None,
                      train: bool = True, atol: float = 1e-3,
                      train_kwargs: Mapping[str, Any] | None = None,
                      eval_kwargs: Mapping[str, Any] | None = None, **call_kwargs) -> None:
  r"""Outputs have mean 0 and variance 1 over ``axes`` (a layer with scale 1, bias 0).

  .. math:: \max |\bar y| \le \text{atol}, \qquad \max |\overline{y^2} - \bar y^2 - 1|
     \le \text{atol}

  over ``axes``, for every position of the other axes (valid elements only when a
  ``mask`` is passed). The variance of a normalized output is
  :math:`\sigma^2 / (\sigma^2 + \epsilon)`, so use inputs with variance well above
  ``epsilon``. Training mode by default (dropout off); ``train=False`` checks
  evaluation.

  Example:
    >>> import jax
    >>> from flax import nnx
    >>> from jaxnorm import nnx as jnnx, testing
    >>> x = 3.0 * jax.random.normal(jax.random.key(0), (8, 4)) + 1.0
    >>> testing.assert_normalized(jnnx.BatchNorm(4, rngs=nnx.Rngs(0)), x, axes=0)
  """
  subject = _subject(model, variables, train_kwargs, eval_kwargs, "assert_normalized")
  y, _ = subject.run(x, train=train, dropout=False, **call_kwargs)
  y = _f64(y)
  axes = _checks.canonical_axes(axes, y.shape, name="axes",
                                fn="jaxnorm.testing.assert_normalized")
  mask = call_kwargs.get("mask")
  weight = np.broadcast_to(np.asarray(mask, bool), y.shape).astype(np.float64) if (
      mask is not None) else np.ones(y.shape)
  count = weight.sum(axes)
  mean = (weight * y).sum(axes) / count
  var = (weight * np.square(y - np.expand_dims(mean, axes))).sum(axes) / count
  worst_mean, worst_var = float(np.max(np.abs(mean))), float(np.max(np.abs(var - 1.0)))
  if not (worst_mean <= atol and worst_var <= atol):
    raise AssertionError(
        f"jaxnorm.testing.assert_normalized: outputs are not normalized over axes={axes} "
        f"({'training' if train else 'evaluation'} mode): max |mean| = {worst_mean:.3g}, "
        f"max |variance - 1| = {worst_var:.3g} (atol {atol}).")


def assert_affine_invariant(model, x, *, feature_axis: int = -1, variables=None,
                            seed: int = 0, atol: float = 1e-3,
                            train_kwargs: Mapping[str, Any] | None = None,
                            eval_kwargs: Mapping[str, Any] | None = None,
                            **call_kwargs) -> None:
  r"""Training-mode outputs do not change under a per-feature affine map of the input.

  .. math:: f(a \odot x + b) = f(x), \qquad a_c = e^{u_c},\; u_c \sim U(-1, 1),\;
     b_c \sim 3\,\mathcal{N}(0, 1)

  for each feature ``c`` on ``feature_axis``, as batch normalization in training mode
  guarantees (within ``atol``; ``epsilon`` makes it approximate for inputs of tiny
  variance). Dropout is off.

  Example:
    >>> import jax
    >>> from flax import nnx
    >>> from jaxnorm import nnx as jnnx, testing
    >>> x = jax.random.normal(jax.random.key(0), (8, 4))
    >>> testing.assert_affine_invariant(jnnx.BatchNorm(4, rngs=nnx.Rngs(0)), x)
  """
  subject = _subject(model, variables, train_kwargs, eval_kwargs, "assert_affine_invariant")
  axis = _checks.canonical_axes(feature_axis, jnp.shape(x), name="feature_axis",
                                fn="jaxnorm.testing.assert_affine_invariant")[0]
  rng = np.random.default_rng(seed)
  shape = tuple(n if a == axis else 1 for a, n in enumerate(jnp.shape(x)))
  a, b = np.exp(rng.uniform(-1.0, 1.0, shape)), 3.0 * rng.normal(size=shape)
  moved = (jnp.asarray(x) * a + b).astype(jnp.asarray(x).dtype)
  y, _ = subject.run(x, train=True, dropout=False, **call_kwargs)
  y_moved, _ = subject.run(moved, train=True, dropout=False, **call_kwargs)
  error = float(np.max(np.abs(_f64(y) - _f64(y_moved))))
  if not error <= atol:
    raise AssertionError(
        f"jaxnorm.testing.assert_affine_invariant: outputs changed by up to {error:.3g} "
        f"(atol {atol}) when each feature on axis {axis} of the input was scaled and "
        "shifted; a batch-normalizing layer in training mode is invariant to that.")


def _compare_stats(subject, x, *, train, call_kwargs):
  """``[(path, before, after)]`` of every running statistic after one call."""
  before = _leaves(subject.stats())
  _, new_stats = subject.run(x, train=train, dropout=False, **call_kwargs)
  after = dict(_leaves(new_stats))
  return [(path, value, after.get(path)) for path, value in before]


def assert_stats_updated(model, x, *, variables=None,
                         train_kwargs: Mapping[str, Any] | None = None,
                         eval_kwargs: Mapping[str, Any] | None = None, **call_kwargs) -> None:
  """A training-mode call changes every running statistic of the model.

  Fails when the model has no running statistics or one of them keeps its value (use
  data whose statistics differ from the current running ones).

  Example:
    >>> import jax
    >>> from flax import nnx
    >>> from jaxnorm import nnx as jnnx, testing
    >>> x = jax.random.normal(jax.random.key(0), (8, 4)) + 2.0
    >>> testing.assert_stats_updated(jnnx.BatchNorm(4, rngs=nnx.Rngs(0)), x)
  """
  subject = _subject(model, variables, train_kwargs, eval_kwargs, "assert_stats_updated")
  rows = _compare_stats(subject, x, train=True, call_kwargs=call_kwargs)
  if not rows:
    raise AssertionError("jaxnorm.testing.assert_stats_updated: the model has no running "
                         "statistics (nnx.BatchStat / batch_stats).")
  stale = [path for path, old, new in rows if new is not None and np.array_equal(old, new)]
  if stale:
    raise AssertionError(f"jaxnorm.testing.assert_stats_updated: a training-mode call left "
                         f"these running statistics unchanged: {', '.join(stale)}.")


def assert_stats_unchanged(model, x, *, train: bool = False, variables=None,
                           train_kwargs: Mapping[str, Any] | None = None,
                           eval_kwargs: Mapping[str, Any] | None = None,
                           **call_kwargs) -> None:
  """A call leaves every running statistic bit for bit as it was.

  Evaluation mode by default; ``train=True`` checks frozen layers in training mode.

  Example:
    >>> import jax
    >>> from flax import nnx
    >>> from jaxnorm import nnx as jnnx, testing
    >>> x = jax.random.normal(jax.random.key(0), (8, 4)) + 2.0
    >>> testing.assert_stats_unchanged(jnnx.BatchNorm(4, rngs=nnx.Rngs(0)), x)
    >>> frozen = jnnx.BatchNorm(4, freeze_stats=True, rngs=nnx.Rngs(0))
    >>> testing.assert_stats_unchanged(frozen, x, train=True)
  """
  subject = _subject(model, variables, train_kwargs, eval_kwargs, "assert_stats_unchanged")
  moved = [path for path, old, new in _compare_stats(subject, x, train=train,
                                                     call_kwargs=call_kwargs)
           if new is None or not np.array_equal(old, new)]
  if moved:
    raise AssertionError(
        f"jaxnorm.testing.assert_stats_unchanged: a {'training' if train else 'evaluation'}"
        f"-mode call changed these running statistics: {', '.join(moved)}.")


def assert_eval_deterministic(model, x, *, variables=None, num_keys: int = 3,
                              train_kwargs: Mapping[str, Any] | None = None,
                              eval_kwargs: Mapping[str, Any] | None = None,
                              **call_kwargs) -> None:
  """Evaluation gives the same output for every dropout key and changes no statistic.

  The model is called in its own evaluation mode with ``num_keys`` different dropout
  keys; a dropout layer that still samples masks, or a statistic that moves, fails.

  Example:
    >>> import jax
    >>> from flax import nnx
    >>> from jaxnorm import nnx as jnnx, testing
    >>> model = nnx.Sequential(jnnx.BatchNorm(4, rngs=nnx.Rngs(0)),
    ...                        jnnx.Dropout(0.5, rngs=nnx.Rngs(1)))
    >>> testing.assert_eval_deterministic(model, jax.random.normal(jax.random.key(0), (8, 4)))
  """
  subject = _subject(model, variables, train_kwargs, eval_kwargs,
                     "assert_eval_deterministic")
  before = _leaves(subject.stats())
  outputs = []
  for k in range(num_keys):
    y, stats = subject.run(x, train=False, key=jax.random.key(k), **call_kwargs)
    outputs.append(np.asarray(y))
    after = dict(_leaves(stats))
    moved = [path for path, old in before if not np.array_equal(old, after.get(path))]
    if moved:
      raise AssertionError(f"jaxnorm.testing.assert_eval_deterministic: evaluation changed "
                           f"these running statistics: {', '.join(moved)}.")
  for k, y in enumerate(outputs[1:], start=1):
    if not np.array_equal(y, outputs[0]):
      raise AssertionError(
          f"jaxnorm.testing.assert_eval_deterministic: evaluation outputs differ between "
          f"dropout keys 0 and {k} (max difference {np.max(np.abs(_f64(y) - _f64(outputs[0]))):.3g}"
          "): a stochastic layer is still active in evaluation mode.")


def assert_precise_bn_consistent(model, x, *, variables=None, atol: float = 1e-4,
                                 train_kwargs: Mapping[str, Any] | None = None,
                                 eval_kwargs: Mapping[str, Any] | None = None) -> None:
  """After precise-BN on ``x``, evaluation on ``x`` equals training mode on ``x``.

  The running statistics are replaced by the exact statistics of ``x``
  (:func:`jaxnorm.training.precise_batch_stats` /
  :func:`jaxnorm.training.nnx_precise_batch_stats`); then the evaluation network must
  reproduce the training-mode (batch statistics, dropout off) outputs on the same batch
  to within ``atol`` relative to the outputs' scale. A layer whose evaluation path
  disagrees with its training path (a different variance, epsilon or statistic) fails.

  Example:
    >>> import jax
    >>> from flax import nnx
    >>> from jaxnorm import nnx as jnnx, testing
    >>> model = nnx.Sequential(nnx.Linear(4, 4, rngs=nnx.Rngs(0)),
    ...                        jnnx.BatchNorm(4, rngs=nnx.Rngs(0)))
    >>> testing.assert_precise_bn_consistent(model, jax.random.normal(jax.random.key(0),
    ...                                                             (8, 4)))
  """
  from jaxnorm import training  # pylint: disable=import-outside-toplevel

  subject = _subject(model, variables, train_kwargs, eval_kwargs,
                     "assert_precise_bn_consistent")
  if subject.is_nnx:
    precise = nnx.clone(subject.model)
    nnx.update(precise, training.nnx_precise_batch_stats(precise, [x]))
    precise_subject = Subject.of(precise)
  else:
    stats = training.precise_batch_stats(subject.model.apply, subject.variables, [x],
                                         eval_kwargs=subject.eval_kwargs_or_default())
    precise_subject = Subject.of(subject.model, {**subject.variables, "batch_stats": stats},
                                 train_kwargs=train_kwargs, eval_kwargs=eval_kwargs)
  y_eval, _ = precise_subject.run(x, train=False)
  y_train, _ = precise_subject.run(x, train=True, dropout=False)
  y_eval, y_train = _f64(y_eval), _f64(y_train)
  error = float(np.max(np.abs(y_eval - y_train)) / max(1.0, np.max(np.abs(y_train))))
  if not error <= atol:
    raise AssertionError(
        f"jaxnorm.testing.assert_precise_bn_consistent: after precise-BN on the batch, "
        f"evaluation differs from training mode on the same batch by up to {error:.3g} "
        f"(relative, atol {atol}): the evaluation path does not normalize with the "
        "statistics the training path uses.")


def assert_grad_matches_reference(model, reference: Callable[[Any, jax.Array], jax.Array],
                                  x, *, variables=None, train: bool = True, seed: int = 0,
                                  tol: float = 1e-4,
                                  train_kwargs: Mapping[str, Any] | None = None,
                                  eval_kwargs: Mapping[str, Any] | None = None,
                                  **call_kwargs) -> None:
  r"""Gradients of the model match ``jax.grad`` of the plain formula ``reference``.

  With a random cotangent :math:`c`, compares the gradients of
  :math:`\sum c \odot f(\theta, x)` with respect to the parameters :math:`\theta` and
  the input for the model (in training mode by default, dropout off) and for
  ``reference(params, x)``, the formula written plainly (``params`` is the model's
  parameter tree: ``variables['params']`` for linen, ``nnx.to_pure_dict(nnx.state(model,
  nnx.Param))`` for NNX). The error is relative to the gradients' scale (at least 1).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxnorm import nnx as jnnx, testing
    >>> def plain_layer_norm(params, x):
    ...   mean = x.mean(-1, keepdims=True)
    ...   var = ((x - mean) ** 2).mean(-1, keepdims=True)
    ...   return (x - mean) / jnp.sqrt(var + 1e-6) * params["scale"] + params["bias"]
    >>> testing.assert_grad_matches_reference(
    ...     jnnx.LayerNorm(4, rngs=nnx.Rngs(0)), plain_layer_norm,
    ...     jax.random.normal(jax.random.key(0), (8, 4)))
  """
  subject = _subject(model, variables, train_kwargs, eval_kwargs,
                     "assert_grad_matches_reference")
  params = subject.params()
  y, _ = subject.run(x, train=train, dropout=False, **call_kwargs)
  cotangent = jnp.asarray(np.random.default_rng(seed).normal(size=jnp.shape(y)),
                          jnp.asarray(y).dtype)

  def model_loss(params, x):
    return jnp.sum(subject.run(x, train=train, dropout=False, params=params,
                               **call_kwargs)[0] * cotangent)

  def reference_loss(params, x):
    return jnp.sum(reference(params, x) * cotangent)

  ours = jax.grad(model_loss, argnums=(0, 1))(params, x)
  theirs = jax.grad(reference_loss, argnums=(0, 1))(params, x)
  named_ours = dict(_leaves({"params": ours[0], "x": ours[1]}))
  named_theirs = dict(_leaves({"params": theirs[0], "x": theirs[1]}))
  if named_ours.keys() != named_theirs.keys():
    raise AssertionError(
        f"jaxnorm.testing.assert_grad_matches_reference: the gradient trees differ: model "
        f"{sorted(named_ours)}, reference {sorted(named_theirs)}.")
  worst = {}
  for path, grad in named_ours.items():
    expected = _f64(named_theirs[path])
    worst[path] = float(np.max(np.abs(_f64(grad) - expected), initial=0.0) /
                        max(1.0, np.max(np.abs(expected), initial=0.0)))
  bad = {path: error for path, error in worst.items() if not error <= tol}
  if bad:
    raise AssertionError(
        "jaxnorm.testing.assert_grad_matches_reference: gradients differ from those of the "
        "plain formula: " + ", ".join(f"{path} by {error:.3g}" for path, error in bad.items())
        + f" (relative, tol {tol}).")
