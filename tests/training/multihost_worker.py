"""Data-parallel training of the seed MLP, run by test_multiprocess.py.

As a script it is one process of a multi-process job::

  python multihost_worker.py PROCESS_ID NUM_PROCESSES PORT OUT.npz CHECKPOINT_DIR

(with ``XLA_FLAGS=--xla_force_host_platform_device_count=4``: four CPU devices per
process); :func:`train` is also imported by the test to run the same steps in one
process over eight devices.
"""

from __future__ import annotations

import sys

import numpy as np

STEPS = 3
GLOBAL_BATCH = 64
FEATURES = 64


def global_data(step: int) -> tuple[np.ndarray, np.ndarray]:
  """The global batch of ``step``, identical in every process."""
  rng = np.random.default_rng(1000 + step)
  x = rng.normal(size=(GLOBAL_BATCH, FEATURES)).astype(np.float32) * 2.0 + 0.5
  y = rng.integers(0, 10, GLOBAL_BATCH).astype(np.int32)
  return x, y


def initial_state():
  """The seed MLP's training state before the first step (on the default device)."""
  import jax  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel

  from experiments.models import SeedMLP  # pylint: disable=import-outside-toplevel
  from jaxnorm import training  # pylint: disable=import-outside-toplevel

  model = SeedMLP()
  variables = model.init(jax.random.key(0), np.zeros((2, FEATURES), np.float32),
                         train=False)
  return training.TrainState.create(
      apply_fn=model.apply, params=variables["params"],
      batch_stats=variables["batch_stats"], tx=optax.sgd(0.1), rng=jax.random.key(1))


def flat_values(state) -> dict:
  """Params and batch_stats as NumPy arrays (flattened paths -> values)."""
  import jax  # pylint: disable=import-outside-toplevel

  def local(leaf):  # replicated: every process holds the whole value
    return np.asarray(leaf.addressable_data(0))

  tree = {"params": state.params, "batch_stats": state.batch_stats}
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): local(leaf) for path, leaf in flat}


def train(mesh, checkpoint_dir: str | None = None) -> dict:
  """``STEPS`` steps of the seed MLP, each global batch split over ``mesh``.

  With ``checkpoint_dir`` the final state is saved there as epoch 1 (every process
  takes part) and restored again. Returns :func:`flat_values` of the final state.
  """
  import jax  # pylint: disable=import-outside-toplevel
  from jax.sharding import NamedSharding  # pylint: disable=import-outside-toplevel
  from jax.sharding import PartitionSpec as P  # pylint: disable=import-outside-toplevel

  from jaxnorm import training  # pylint: disable=import-outside-toplevel

  state = initial_state()
  step = training.make_train_step()

  def place(array, spec):
    """A global array from the values every process holds (each keeps its shards)."""
    if jax.dtypes.issubdtype(array.dtype, jax.dtypes.prng_key):  # the state's root key
      return jax.random.wrap_key_data(place(jax.random.key_data(array), spec),
                                      impl=jax.random.key_impl(array))
    array = np.asarray(array)
    sharding = NamedSharding(mesh, spec)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])

  replicated = NamedSharding(mesh, P())
  state = jax.tree.map(lambda leaf: place(leaf, P()), state)
  jitted = jax.jit(step, out_shardings=replicated)
  for t in range(STEPS):
    x, y = global_data(t)
    state, metrics = jitted(state, (place(x, P("data")), place(y, P("data"))))
    assert bool(np.asarray(metrics["finite"].addressable_data(0)))

  values = flat_values(state)
  if checkpoint_dir is not None:
    training.save_checkpoint(checkpoint_dir, state, epoch=1)
    restored, epoch = training.restore_checkpoint(checkpoint_dir, like=state)
    assert epoch == 1
    for name, value in flat_values(restored).items():
      np.testing.assert_array_equal(value, values[name], err_msg=name)
  return values


def main(process_id: int, num_processes: int, port: int, out: str,
         checkpoint_dir: str) -> None:
  import jax  # pylint: disable=import-outside-toplevel
  from jax.sharding import Mesh  # pylint: disable=import-outside-toplevel

  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}",
                             num_processes=num_processes, process_id=process_id,
                             initialization_timeout=90)
  try:
    assert jax.process_count() == num_processes, jax.process_count()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    np.savez(out, **train(mesh, checkpoint_dir), local_devices=jax.local_device_count(),
             global_devices=jax.device_count())
  finally:
    jax.distributed.shutdown()


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
