"""The kernels under jax.jit with sharded inputs (8 simulated CPU devices, conftest.py):
one kernel call per shard, no gathering, the same numbers as on one device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxnorm import kernels

pytestmark = [
    pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices"),
    pytest.mark.skipif(not kernels.status().loaded, reason="kernel library not built"),
]


@pytest.mark.parametrize("axes,param_shape,spec", [
    ((2,), (12,), P("a")),                 # layer norm, batch sharded
    ((2,), (12,), P("a", None, "c")),      # layer norm, normalized axis sharded too
    ((0, 1), (12,), P("a", "c")),          # batch norm, reduced axes sharded
    ((1,), (12,), P(None, "a", "c")),      # instance-norm-like: reduced and kept sharded
])
def test_sharded_equals_single_device_without_gathers(axes, param_shape, spec, monkeypatch):
  monkeypatch.setenv("JAXNORM_KERNELS", "1")
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("a", "c"))
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(1e3, 1.0, (16, 8, 12)), jnp.float32)
  scale = jnp.asarray(rng.normal(1.0, 0.2, param_shape), jnp.float32)
  mask = jnp.asarray(rng.random(x.shape) < 0.8)

  def loss(x, scale):
    y, mean, var, _ = kernels.normalize(x, scale, None, reduce_axes=axes, epsilon=1e-5,
                                        mask=mask)
    return jnp.sum(jnp.sin(y)), (y, mean, var)

  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
  expected = step(x, scale)
  x_sharded = jax.device_put(x, NamedSharding(mesh, spec))
  got = step(x_sharded, scale)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=2e-4)
  (_, (y, _, _)), (dx, _) = got
  assert y.sharding.spec == x_sharded.sharding.spec and dx.sharding.spec == y.sharding.spec
  hlo = step.lower(x_sharded, scale).compile().as_text()
  assert "all-gather" not in hlo
