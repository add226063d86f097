"""Multi-process data-parallel training equals one process with as many devices.

Two processes on localhost (``jax.distributed.initialize``, four CPU devices each)
train the seed MLP with the batch split over all eight devices, so every BatchNorm
layer's statistics are computed across devices and processes; their params and
``batch_stats`` must equal the same steps in this process over eight devices (which
other tests hold equal to one device with the whole batch). Both processes also save
the final state as one checkpoint, which restores here, on one device, to the same
values.
"""

import importlib.util
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from jaxnorm import training

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TIMEOUT_S = 150


def _worker_module():
  spec = importlib.util.spec_from_file_location("multihost_worker",
                                                HERE / "multihost_worker.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def _start_two_processes(tmp_path):
  port = _free_port()
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT),
         "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  outputs = [tmp_path / f"process{i}.npz" for i in range(2)]
  processes = [
      subprocess.Popen([sys.executable, str(HERE / "multihost_worker.py"), str(i), "2",
                        str(port), str(outputs[i]), str(tmp_path / "checkpoints")],
                       env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  return processes, outputs


def _finish(processes, outputs) -> list[dict]:
  logs = []
  try:
    for process in processes:
      logs.append(process.communicate(timeout=TIMEOUT_S)[0])
  except subprocess.TimeoutExpired:
    pytest.fail(f"the two training processes did not finish within {TIMEOUT_S} s")
  finally:
    for process in processes:  # never leave a process behind
      if process.poll() is None:
        process.kill()
        process.communicate()
  for process, log in zip(processes, logs):
    assert process.returncode == 0, log[-4000:]
  return [dict(np.load(path)) for path in outputs]


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
def test_two_processes_equal_one_process_with_eight_devices(tmp_path):
  worker = _worker_module()
  processes, outputs = _start_two_processes(tmp_path)
  try:  # the reference runs here while the two processes train
    eight = worker.train(Mesh(np.array(jax.devices()[:8]), ("data",)))
  finally:
    results = _finish(processes, outputs)
  for result in results:
    assert int(result.pop("local_devices")) == 4
    assert int(result.pop("global_devices")) == 8
  assert sorted(eight) == sorted(results[0]) == sorted(results[1])
  assert any("batch_stats" in name and "mean" in name for name in eight)
  restored, epoch = training.restore_checkpoint(str(tmp_path / "checkpoints"),
                                                like=worker.initial_state())
  assert epoch == 1
  restored = worker.flat_values(restored)
  for name, expected in eight.items():
    for result in results:
      # Same program, same shards; only the all-reduce runs over gloo between processes.
      np.testing.assert_allclose(result[name], expected, rtol=1e-6, atol=1e-7,
                                 err_msg=name)
    np.testing.assert_array_equal(results[0][name], results[1][name], err_msg=name)
    np.testing.assert_array_equal(restored[name], results[0][name], err_msg=name)
  assert not np.allclose(eight["['batch_stats']['BatchNorm_0']['mean']"], 0.0)
