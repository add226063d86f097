"""Checkpoints: round trip, resume equals uninterrupted, integrity, atomicity, clear errors."""

import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time

import flax.linen as nn
import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxnorm import training


ADAM = optax.adam(1e-2)  # one transform object, so compiled epochs are reused
RUN_EPOCH = training.make_scan_epoch(training.make_train_step(), batch_size=16)


def _train(state, x, y, epochs, first_epoch=0):
  run_epoch = RUN_EPOCH
  for epoch in range(first_epoch, first_epoch + epochs):
    state, _ = run_epoch(state, x, y, jax.random.fold_in(jax.random.key(11), epoch))
  return state


def test_round_trip_keeps_every_field(tmp_path, toy_data, trees_equal, state_factory):
  make_state = state_factory
  x, y = toy_data
  state = _train(make_state(tx=ADAM), x, y, epochs=1)
  training.save_checkpoint(str(tmp_path), state, epoch=1)
  assert training.latest_epoch(str(tmp_path)) == 1
  restored, epoch = training.restore_checkpoint(str(tmp_path), like=make_state(
      tx=ADAM))
  assert epoch == 1
  trees_equal(restored, state)
  assert restored.apply_fn is not None and restored.tx is not None


def test_resume_after_epoch_k_equals_uninterrupted_run(tmp_path, toy_data, trees_equal,
                                                      state_factory):
  make_state = state_factory
  x, y = toy_data
  uninterrupted = _train(make_state(tx=ADAM), x, y, epochs=3)

  interrupted = _train(make_state(tx=ADAM), x, y, epochs=2)
  training.save_checkpoint(str(tmp_path), interrupted, epoch=2)
  del interrupted
  fresh = make_state(seed=5, tx=ADAM)  # different values, same structure
  resumed, epoch = training.restore_checkpoint(str(tmp_path), like=fresh)
  resumed = _train(resumed, x, y, epochs=1, first_epoch=epoch)
  trees_equal(resumed, uninterrupted)


def test_newest_checkpoint_is_restored_and_old_ones_pruned(tmp_path, toy_data, state_factory):
  make_state = state_factory
  x, y = toy_data
  state = make_state()
  for epoch in range(1, 6):
    state = _train(state, x, y, epochs=1, first_epoch=epoch)
    training.save_checkpoint(str(tmp_path), state, epoch=epoch, max_to_keep=2)
  restored, epoch = training.restore_checkpoint(str(tmp_path), like=make_state())
  assert epoch == 5 and int(restored.step) == int(state.step)
  with pytest.raises(FileNotFoundError, match=r"no checkpoint of epoch 1 .*available: \[4, 5\]"):
    training.restore_checkpoint(str(tmp_path), like=make_state(), epoch=1)


def test_missing_checkpoint_is_an_error_not_a_fresh_start(tmp_path, state_factory):
  make_state = state_factory
  with pytest.raises(FileNotFoundError, match="no checkpoint in"):
    training.restore_checkpoint(str(tmp_path / "nowhere"), like=make_state())
  os.makedirs(tmp_path / "empty")
  with pytest.raises(FileNotFoundError, match="no checkpoint in"):
    training.restore_checkpoint(str(tmp_path / "empty"), like=make_state())


def test_corrupt_checkpoint_gives_a_clear_error(tmp_path, state_factory):
  make_state = state_factory
  state = make_state()
  training.save_checkpoint(str(tmp_path), state, epoch=1)
  damaged = 0
  for root, _, files in os.walk(tmp_path / "1"):
    for name in files:
      path = os.path.join(root, name)
      if os.path.getsize(path) > 0 and not name.startswith("_CHECKPOINT_METADATA"):
        with open(path, "r+b") as handle:
          handle.write(b"\xff" * min(64, os.path.getsize(path)))
        damaged += 1
  assert damaged
  with pytest.raises(training.CheckpointError, match="is damaged"):
    training.restore_checkpoint(str(tmp_path), like=make_state())
  with pytest.raises(training.CheckpointError, match="cannot be restored"):  # unverified
    training.restore_checkpoint(str(tmp_path), like=make_state(), verify=False)


def test_checkpoint_of_another_model_is_rejected(tmp_path, state_factory):
  make_state = state_factory
  training.save_checkpoint(str(tmp_path), make_state(), epoch=1)

  class Other(nn.Module):
    @nn.compact
    def __call__(self, x, train):
      return nn.Dense(7)(x)

  other = Other()
  variables = other.init(jax.random.key(0), np.zeros((2, 6), np.float32), train=False)
  like = training.TrainState.create(apply_fn=other.apply, params=variables["params"],
                                    tx=optax.sgd(0.1), rng=jax.random.key(0))
  with pytest.raises(training.CheckpointError, match="different model"):
    training.restore_checkpoint(str(tmp_path), like=like)


# ----------------------------------------------------------------- integrity


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """One saved checkpoint (epoch 4) and the state it holds."""
  directory = tmp_path_factory.mktemp("saved")
  rng = np.random.default_rng(0)
  params = {"Dense_0": {"kernel": rng.normal(size=(6, 16)).astype(np.float32),
                        "bias": np.zeros(16, np.float32)}}
  state = training.TrainState.create(
      apply_fn=None, params=jax.tree.map(jax.numpy.asarray, params),
      batch_stats={"BatchNorm_0": {"mean": jax.numpy.full(16, 0.5),
                                   "var": jax.numpy.full(16, 2.0)}},
      tx=ADAM, rng=jax.random.key(3))
  training.save_checkpoint(str(directory), state, epoch=4)
  files = sorted(os.path.relpath(os.path.join(root, name), directory / "4")
                 for root, _, names in os.walk(directory / "4") for name in names)
  return directory, state, files


def test_saved_layout_and_manifest(saved):
  directory, _, files = saved
  assert training.checkpoint.MANIFEST in files
  data = [f for f in files if f != training.checkpoint.MANIFEST]
  assert data and all(f.startswith("default" + os.sep) for f in data)
  assert sorted(os.listdir(directory)) == ["4"]  # no partial directory left behind
  raw = (directory / "4" / training.checkpoint.MANIFEST).read_bytes()
  digest, body = raw.split(b"\n", 1)
  assert hashlib.sha256(body).hexdigest().encode() == digest
  listed = json.loads(body)["files"]
  assert sorted(listed) == sorted(f.replace(os.sep, "/") for f in data)
  for name, (size, sha) in listed.items():  # checked here against hashlib directly
    content = (directory / "4" / name).read_bytes()
    assert len(content) == size and hashlib.sha256(content).hexdigest() == sha
  training.verify_checkpoint(str(directory), 4)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_flipped_bit_is_a_checkpoint_error(saved, tmp_path_factory, data):
  directory, state, files = saved
  copy = tmp_path_factory.mktemp("flipped")
  shutil.copytree(directory / "4", copy / "4")
  name = data.draw(st.sampled_from(files), label="file")
  path = copy / "4" / name
  raw = bytearray(path.read_bytes())
  position = data.draw(st.integers(0, len(raw) * 8 - 1), label="bit")
  raw[position // 8] ^= 1 << (position % 8)
  path.write_bytes(bytes(raw))
  with pytest.raises(training.CheckpointError) as excinfo:
    training.restore_checkpoint(str(copy), like=state)
  message = str(excinfo.value)
  assert "restore_checkpoint" in message and "damaged" in message and "epoch 4" in message
  if name != training.checkpoint.MANIFEST:
    assert name.replace(os.sep, "/") in message
  shutil.rmtree(copy)


@pytest.mark.parametrize("damage", ["missing", "truncated", "appended", "manifest-missing",
                                    "manifest-empty"])
def test_other_damage_is_a_checkpoint_error(saved, tmp_path, damage):
  directory, state, files = saved
  shutil.copytree(directory / "4", tmp_path / "4")
  data_file = tmp_path / "4" / next(f for f in files if f.endswith("_METADATA"))
  manifest = tmp_path / "4" / training.checkpoint.MANIFEST
  if damage == "missing":
    data_file.unlink()
  elif damage == "truncated":
    data_file.write_bytes(data_file.read_bytes()[:-1])
  elif damage == "appended":
    data_file.write_bytes(data_file.read_bytes() + b"\n")
  elif damage == "manifest-missing":
    manifest.unlink()
  else:
    manifest.write_bytes(b"")
  with pytest.raises(training.CheckpointError) as excinfo:
    training.restore_checkpoint(str(tmp_path), like=state)
  expected = {"missing": "is missing", "truncated": "bytes;", "appended": "bytes;",
              "manifest-missing": "verify=False", "manifest-empty": "own checksum"}[damage]
  assert expected in str(excinfo.value)


def test_checkpoint_without_manifest_restores_only_unverified(tmp_path, state_factory,
                                                              trees_equal):
  """Written by orbax directly (or an older jaxnorm): no checksums to verify."""
  state = state_factory(tx=ADAM)
  with ocp.CheckpointManager(str(tmp_path)) as manager:
    manager.save(2, args=ocp.args.StandardSave(state))
    manager.wait_until_finished()
  assert training.latest_epoch(str(tmp_path)) == 2
  with pytest.raises(training.CheckpointError, match="verify=False"):
    training.restore_checkpoint(str(tmp_path), like=state_factory(seed=3, tx=ADAM))
  restored, epoch = training.restore_checkpoint(
      str(tmp_path), like=state_factory(seed=3, tx=ADAM), verify=False)
  assert epoch == 2
  trees_equal(restored, state)


# ----------------------------------------------------------------- overwriting


def test_saving_an_existing_epoch_raises_and_keeps_the_old_one(tmp_path, state_factory,
                                                              trees_equal):
  first = state_factory(seed=1)
  training.save_checkpoint(str(tmp_path), first, epoch=1)
  with pytest.raises(FileExistsError) as excinfo:
    training.save_checkpoint(str(tmp_path), state_factory(seed=2), epoch=1)
  message = str(excinfo.value)
  assert "epoch 1" in message and "never overwritten" in message
  assert os.path.join(str(tmp_path), "1") in message
  restored, _ = training.restore_checkpoint(str(tmp_path), like=state_factory())
  trees_equal(restored, first)


def test_interrupted_save_is_invisible_and_replaced(tmp_path, state_factory, trees_equal):
  state = state_factory()
  partial = tmp_path / ".3.partial" / "default"
  partial.mkdir(parents=True)
  (partial / "_METADATA").write_text("{half written")
  assert training.latest_epoch(str(tmp_path)) is None
  with pytest.raises(FileNotFoundError):
    training.restore_checkpoint(str(tmp_path), like=state)
  training.save_checkpoint(str(tmp_path), state, epoch=3)
  assert sorted(os.listdir(tmp_path)) == ["3"]
  trees_equal(training.restore_checkpoint(str(tmp_path), like=state)[0], state)


def test_pruning_never_deletes_newer_or_the_new_checkpoint(tmp_path, state_factory):
  state = state_factory()
  for epoch in (5, 6, 7):
    training.save_checkpoint(str(tmp_path), state, epoch=epoch, max_to_keep=2)
  assert sorted(os.listdir(tmp_path)) == ["6", "7"]
  training.save_checkpoint(str(tmp_path), state, epoch=2, max_to_keep=2)  # an older epoch
  assert sorted(os.listdir(tmp_path)) == ["2", "6", "7"]
  training.save_checkpoint(str(tmp_path), state, epoch=8, max_to_keep=None)
  assert sorted(os.listdir(tmp_path)) == ["2", "6", "7", "8"]


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(epoch=-1), ValueError, "epoch must be >= 0; got -1"),
    (dict(epoch=True), TypeError, "epoch must be an int; got True"),
    (dict(epoch=1.0), TypeError, "epoch must be an int; got 1.0"),
    (dict(epoch=1, max_to_keep=0), ValueError, "max_to_keep must be an int >= 1 or None"),
])
def test_bad_save_arguments(tmp_path, state_factory, kwargs, error, match):
  with pytest.raises(error, match=re.escape(match)):
    training.save_checkpoint(str(tmp_path), state_factory(), **kwargs)
  assert not os.listdir(tmp_path)


@pytest.mark.parametrize("where", ["file", "under-file"])
def test_impossible_directory_is_one_checkpoint_error(tmp_path, state_factory, where):
  blocker = tmp_path / "blocker"
  blocker.write_text("not a directory")
  directory = blocker if where == "file" else blocker / "checkpoints"
  with pytest.raises(training.CheckpointError) as excinfo:
    training.save_checkpoint(str(directory), state_factory(), epoch=1)
  assert str(directory) in str(excinfo.value) and "directory" in str(excinfo.value)


# ----------------------------------------------------------------- failing promptly

_FAILURES = r'''
import os, resource, signal, sys, time
import jax, optax
from jaxnorm import training

state = training.TrainState.create(apply_fn=None, params={"w": jax.numpy.ones((64, 64))},
                                   tx=optax.adam(1e-3), rng=jax.random.key(0))
root = sys.argv[1]
blocker = os.path.join(root, "blocker")
open(blocker, "w").close()
for directory in (blocker, os.path.join(blocker, "sub")):
  try:
    training.save_checkpoint(directory, state, epoch=1)
  except training.CheckpointError as error:
    print("impossible path:", type(error).__name__)
# A write that fails inside orbax: files may not grow beyond 1000 bytes.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, hard))
try:
  training.save_checkpoint(os.path.join(root, "limited"), state, epoch=1)
except training.CheckpointError as error:
  print("failed write:", type(error).__name__, "|", os.listdir(os.path.join(root, "limited")))
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
good = os.path.join(root, "good")
training.save_checkpoint(good, state, epoch=1)
manifest = os.path.join(good, "1", "default", "manifest.ocdbt")
raw = bytearray(open(manifest, "rb").read())
raw[len(raw) // 2] ^= 4
open(manifest, "wb").write(bytes(raw))
try:
  training.restore_checkpoint(good, like=state, verify=False)  # orbax reads the damage
except training.CheckpointError as error:
  print("unverified corrupt manifest:", type(error).__name__)
print("last one uncaught", flush=True)
training.restore_checkpoint(good, like=state)
'''


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE/SIGXFSZ semantics")
def test_failures_end_with_one_error_promptly(tmp_path):
  """A script whose saves and restores fail exits at once with one short traceback:
  no 300 s wait for orbax's threads at exit, no pages of their tracebacks."""
  script = tmp_path / "failures.py"
  script.write_text(_FAILURES)
  start = time.perf_counter()
  package_root = str(pathlib.Path(training.__file__).resolve().parents[2])
  result = subprocess.run(
      [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True,
      timeout=240, env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": package_root})
  elapsed = time.perf_counter() - start
  assert result.stdout.splitlines() == [
      "impossible path: CheckpointError", "impossible path: CheckpointError",
      "failed write: CheckpointError | []",
      "unverified corrupt manifest: CheckpointError", "last one uncaught"], result.stderr
  assert result.returncode == 1
  stderr = [line for line in result.stderr.splitlines() if line.strip()]
  assert stderr[0] == "Traceback (most recent call last):", result.stderr
  assert stderr[-1].startswith("jaxnorm.training.checkpoint.CheckpointError: "
                               "jaxnorm.training.restore_checkpoint: "), result.stderr
  assert "manifest.ocdbt" in stderr[-1]
  assert len(stderr) <= 8 and len(result.stderr) < 2000, result.stderr
  assert elapsed < 120  # a lingering orbax thread would hold the exit for ~300 s
