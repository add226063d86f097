"""PyTorch BN conventions: exact conversion, checked against torch when installed."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm import functional as F
from jaxnorm import training


def test_momentum_conversion():
  assert training.momentum_from_torch(0.1) == pytest.approx(0.9)
  assert training.momentum_to_torch(0.99) == pytest.approx(0.01)
  with pytest.raises(ValueError, match="cumulative average"):
    training.momentum_from_torch(None)
  with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\]; got 1.5"):
    training.momentum_to_torch(1.5)


def _jaxnorm_run(batches, momentum):
  stats = F.BatchStats(jnp.zeros(batches[0].shape[1]), jnp.ones(batches[0].shape[1]))
  for batch in batches:
    _, stats = F.batch_norm(jnp.asarray(batch), None, None, stats, train=True,
                            momentum=momentum)
  return stats


def _numpy_torch_convention(batches, torch_momentum):
  """PyTorch's update rule written out in float64: EMA of the unbiased variance."""
  mean, var = np.zeros(batches[0].shape[1]), np.ones(batches[0].shape[1])
  for batch in batches:
    b = batch.astype(np.float64)
    mean = (1 - torch_momentum) * mean + torch_momentum * b.mean(0)
    var = (1 - torch_momentum) * var + torch_momentum * b.var(0, ddof=1)
  return mean, var


@pytest.fixture
def batches():
  rng = np.random.default_rng(0)
  return [(rng.normal(size=(16, 5)) * 2 + 3).astype(np.float32) for _ in range(7)]


def test_to_torch_matches_torch_update_rule(batches):
  stats = _jaxnorm_run(batches, momentum=0.9)
  state = training.batch_norm_to_torch(stats, momentum=0.9, num_batches_tracked=7,
                                       values_per_batch=16, scale=jnp.full(5, 2.0))
  mean, var = _numpy_torch_convention(batches, 0.1)
  np.testing.assert_allclose(state["running_mean"], mean, rtol=1e-5)
  np.testing.assert_allclose(state["running_var"], var, rtol=1e-5)
  assert int(state["num_batches_tracked"]) == 7
  np.testing.assert_array_equal(state["weight"], np.full(5, 2.0, np.float32))


def test_round_trip(batches):
  stats = _jaxnorm_run(batches, momentum=0.9)
  state = training.batch_norm_to_torch(stats, momentum=0.9, num_batches_tracked=7,
                                       values_per_batch=16)
  back, params = training.batch_norm_from_torch(state, momentum=0.9, values_per_batch=16)
  np.testing.assert_allclose(back.mean, np.asarray(stats.mean), rtol=1e-6)
  np.testing.assert_allclose(back.var, np.asarray(stats.var), rtol=1e-6)
  assert params == {}
  plain, _ = training.batch_norm_from_torch(
      training.batch_norm_to_torch(stats, num_batches_tracked=7))
  np.testing.assert_array_equal(plain.var, np.asarray(stats.var))


def test_bad_counts_are_rejected(batches):
  stats = _jaxnorm_run(batches, momentum=0.9)
  with pytest.raises(ValueError, match="values_per_batch must be >= 2"):
    training.batch_norm_to_torch(stats, momentum=0.9, num_batches_tracked=7,
                                 values_per_batch=1)
  with pytest.raises(ValueError, match="give both momentum and values_per_batch"):
    training.batch_norm_to_torch(stats, momentum=0.9, num_batches_tracked=7)
  with pytest.raises(ValueError, match="num_batches_tracked must be >= 0; got -1"):
    training.batch_norm_to_torch(stats, momentum=0.9, num_batches_tracked=-1,
                                 values_per_batch=16)


def test_against_torch_batchnorm(batches):
  torch = pytest.importorskip("torch")
  layer = torch.nn.BatchNorm1d(5, momentum=0.1)
  with torch.no_grad():
    layer.weight.copy_(torch.linspace(0.5, 1.5, 5))
    layer.bias.copy_(torch.linspace(-1, 1, 5))
  layer.train()
  for batch in batches:
    layer(torch.from_numpy(batch))
  momentum = training.momentum_from_torch(layer.momentum)
  stats = _jaxnorm_run(batches, momentum=momentum)
  exported = training.batch_norm_to_torch(stats, momentum=momentum, num_batches_tracked=7,
                                          values_per_batch=16)
  torch_state = layer.state_dict()
  np.testing.assert_allclose(exported["running_mean"], torch_state["running_mean"].numpy(),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(exported["running_var"], torch_state["running_var"].numpy(),
                             rtol=1e-5)
  imported, _ = training.batch_norm_from_torch(torch_state, momentum=momentum,
                                               values_per_batch=16)
  np.testing.assert_allclose(imported.var, np.asarray(stats.var), rtol=1e-5)
  # Inference conversion: the imported layer evaluates exactly like torch's.
  inference_stats, params = training.batch_norm_from_torch(torch_state)
  layer.eval()
  x = batches[0]
  expected = layer(torch.from_numpy(x)).detach().numpy()
  got, _ = F.batch_norm(jnp.asarray(x), jnp.asarray(params["scale"]),
                        jnp.asarray(params["bias"]), inference_stats, train=False)
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-5)
  # ... and the inference export of jaxnorm's state makes torch evaluate like jaxnorm.
  exported = training.batch_norm_to_torch(stats, num_batches_tracked=7, scale=params["scale"],
                                          bias=params["bias"])
  layer.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in exported.items()})
  want, _ = F.batch_norm(jnp.asarray(x), jnp.asarray(params["scale"]),
                         jnp.asarray(params["bias"]), stats, train=False)
  np.testing.assert_allclose(layer(torch.from_numpy(x)).detach().numpy(), np.asarray(want),
                             rtol=1e-5, atol=1e-5)
