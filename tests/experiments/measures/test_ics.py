"""ICS measures: gradient shift against float64 NumPy gradients of linear networks,
distribution shift against the Gaussian 2-Wasserstein distance by quantile integration."""

from __future__ import annotations

import doctest

import chex
import hypothesis
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from experiments.measures import ics
from experiments.measures.ics import distribution_shift, gradient_shift, unit_moments

HYPOTHESIS = hypothesis.settings(max_examples=25, deadline=None, database=None,
                                 derandomize=True)


def _linear_loss(params, x, y):
  """0.5 * sum ||W3 W2 W1 x - y||^2 over the batch (row vectors: x @ W1 @ W2 @ W3)."""
  h = x
  for name in ("w1", "w2", "w3"):
    h = h @ params[name]
  return 0.5 * jnp.sum((h - y) ** 2)


def _numpy_gradients(params, x, y):
  """Gradients of :func:`_linear_loss` by hand, in float64."""
  w1, w2, w3 = (np.asarray(params[k], np.float64) for k in ("w1", "w2", "w3"))
  h1 = x @ w1
  h2 = h1 @ w2
  r = h2 @ w3 - y                        # dL/d(output)
  d2 = r @ w3.T
  d1 = d2 @ w2.T
  return {"w1": x.T @ d1, "w2": h1.T @ d2, "w3": h2.T @ r}


def _numpy_shift(g, g_new):
  g, g_new = g.ravel(), g_new.ravel()
  diff = np.linalg.norm(g - g_new)
  return diff, g @ g_new / (np.linalg.norm(g) * np.linalg.norm(g_new)), diff / np.linalg.norm(g)


def _problem(seed):
  rng = np.random.default_rng(seed)
  x, y = rng.normal(size=(8, 4)), rng.normal(size=(8, 2))
  params = {"w1": rng.normal(size=(4, 5)) * 0.5, "w2": rng.normal(size=(5, 3)) * 0.5,
            "w3": rng.normal(size=(3, 2)) * 0.5}
  new = {k: v + rng.normal(size=v.shape) * 0.1 for k, v in params.items()}
  as32 = lambda tree: {k: jnp.asarray(v, jnp.float32) for k, v in tree.items()}
  return x, y, params, new, as32


GROUPS = [["w1"], ["w2"], ["w3"]]


class GradientShiftTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_numpy_gradients_of_a_linear_network(self):
    x, y, params, new, as32 = _problem(0)
    loss = lambda p: _linear_loss(p, jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))
    got = self.variant(lambda p, q: gradient_shift(loss, p, q, GROUPS))(as32(params),
                                                                        as32(new))
    base = _numpy_gradients(params, x, y)
    # Layer 2 sees W1 updated; layer 3 sees W1 and W2 updated.
    moved = [base["w1"],
             _numpy_gradients({**params, "w1": new["w1"]}, x, y)["w2"],
             _numpy_gradients({**params, "w1": new["w1"], "w2": new["w2"]}, x, y)["w3"]]
    for i, name in enumerate(("w1", "w2", "w3")):
      l2, cosine, relative = _numpy_shift(base[name], moved[i])
      np.testing.assert_allclose(float(got.l2[i]), l2, rtol=2e-4, atol=1e-5)
      np.testing.assert_allclose(float(got.cosine[i]), cosine, rtol=1e-5, atol=1e-5)
      np.testing.assert_allclose(float(got.relative_l2[i]), relative, rtol=2e-4, atol=1e-5)
    assert float(got.l2[1]) > 0.0 and float(got.l2[2]) > 0.0

  def test_first_layer_and_unchanged_earlier_layers_give_no_shift(self):
    x, y, params, new, as32 = _problem(1)
    loss = lambda p: _linear_loss(p, jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))
    only_last = {**params, "w3": new["w3"]}   # the earlier layers do not move
    got = jax.jit(lambda p, q: gradient_shift(loss, p, q, GROUPS))(as32(params),
                                                                   as32(only_last))
    np.testing.assert_array_equal(np.asarray(got.l2), [0.0, 0.0, 0.0])
    np.testing.assert_allclose(np.asarray(got.cosine), [1.0, 1.0, 1.0], atol=1e-6)
    np.testing.assert_array_equal(np.asarray(got.relative_l2), [0.0, 0.0, 0.0])

  def test_hand_computed_scalar_chain(self):
    # L = 0.5 (b a x - y)^2: G_b = (b a x - y) a x. With x=2, y=1, a=1 -> 0.5, b=1:
    # G_b = (2 - 1) * 2 = 2 and G'_b = (1 - 1) * 1 = 0.
    loss = lambda p: 0.5 * (p["b"] * p["a"] * 2.0 - 1.0) ** 2
    got = gradient_shift(loss, {"a": jnp.array(1.0), "b": jnp.array(1.0)},
                         {"a": jnp.array(0.5), "b": jnp.array(3.0)}, [["a"], ["b"]])
    np.testing.assert_allclose(np.asarray(got.l2), [0.0, 2.0])
    np.testing.assert_allclose(np.asarray(got.relative_l2), [0.0, 1.0])
    # A zero G' has no direction: the cosine is 0, not NaN.
    np.testing.assert_allclose(np.asarray(got.cosine), [1.0, 0.0])

  def test_grouped_names_move_together(self):
    # Groups [[w1, w2], [w3]]: layer 2 (w3) sees both w1 and w2 updated.
    x, y, params, new, as32 = _problem(2)
    loss = lambda p: _linear_loss(p, jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))
    got = jax.jit(lambda p, q: gradient_shift(loss, p, q, [["w1", "w2"], ["w3"]]))(
        as32(params), as32(new))
    base = _numpy_gradients(params, x, y)["w3"]
    moved = _numpy_gradients({**params, "w1": new["w1"], "w2": new["w2"]}, x, y)["w3"]
    np.testing.assert_allclose(float(got.l2[1]), _numpy_shift(base, moved)[0], rtol=2e-4)
    assert got.l2.shape == (2,)


@pytest.mark.parametrize("groups, match", [
    ([], "non-empty"), ([["w1"], []], "non-empty"), ([["w1"], ["w1"]], "two groups"),
    ([["w1"], ["nope"]], "'nope'")])
def test_gradient_shift_rejects_bad_groups(groups, match):
  _, _, params, new, as32 = _problem(3)
  with pytest.raises(ValueError, match=match):
    gradient_shift(lambda p: 0.0, as32(params), as32(new), groups)


class UnitMomentsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_numpy(self):
    h = np.random.default_rng(0).normal(2.0, 3.0, size=(50, 4))
    got = np.asarray(self.variant(unit_moments)(h.astype(np.float32)))
    np.testing.assert_allclose(got, [h.mean(0), h.std(0)], rtol=1e-5, atol=1e-5)

  def test_rejects_non_matrix(self):
    with pytest.raises(ValueError, match=r"unit_moments: h must be \(examples, units\)"):
      unit_moments(jnp.ones((2, 3, 4)))


def _gaussian_w2_by_quantiles(m1, s1, m2, s2):
  """W2 between N(m1, s1^2) and N(m2, s2^2) by integrating the squared quantile gap."""
  u = (np.arange(20_000) + 0.5) / 20_000
  z = scipy_stats.norm.ppf(u)
  return np.sqrt(np.mean(((m1 + s1 * z) - (m2 + s2 * z)) ** 2))


class DistributionShiftTest(chex.TestCase):

  def test_mean_move_in_units_of_the_std(self):
    moments = np.zeros((3, 2, 4))
    moments[:, 1] = 2.0                       # every unit has std 2
    moments[1, 0] = 1.0                       # means move by 1 then back by 1
    np.testing.assert_allclose(distribution_shift(moments), [0.5, 0.5])

  def test_std_move(self):
    moments = np.array([[[0.0], [1.0]], [[0.0], [3.0]]])
    np.testing.assert_allclose(distribution_shift(moments), [2.0])

  @HYPOTHESIS
  @hypothesis.given(hnp.arrays(np.float64, (2, 2, 3), elements=st.floats(0.1, 5.0)))
  def test_matches_the_wasserstein_distance_of_gaussians(self, moments):
    scale = np.sqrt(np.mean(moments[0, 1] ** 2))
    want = np.mean([_gaussian_w2_by_quantiles(moments[0, 0, u], moments[0, 1, u],
                                              moments[1, 0, u], moments[1, 1, u])
                    for u in range(3)]) / scale
    np.testing.assert_allclose(distribution_shift(moments), [want], rtol=1e-3)

  def test_leading_axes_are_kept_and_a_constant_layer_gives_nan(self):
    moments = np.ones((4, 3, 5, 2, 6))
    moments[0, 0, :, 1] = 0.0                 # a layer whose every unit is constant
    got = distribution_shift(moments)
    assert got.shape == (4, 3, 4)
    assert np.all(np.isnan(got[0, 0])) and np.all(got[1:] == 0.0)



@pytest.mark.parametrize("shape", [(2, 3), (1, 2, 3), (4, 3, 5)])
def test_distribution_shift_rejects_bad_shapes(shape):
  with pytest.raises(ValueError, match="distribution_shift: moments must be"):
    distribution_shift(np.ones(shape))


def test_docstring_examples_run():
  assert doctest.testmod(ics).failed == 0
