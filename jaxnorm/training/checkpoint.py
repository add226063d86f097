"""Checkpoints of the whole training state: orbax for the arrays, plus integrity checks.

Everything that decides the rest of a run is saved: params, ``batch_stats``, optimizer
state, step, root key and skip counter. Restoring needs a template state (for the
structure, shapes and dtypes) and gives back a state that continues bit for bit.

Layout of ``directory/<epoch>/``:

- ``default/``: the state as orbax writes it (``StandardCheckpointHandler``);
- ``jaxnorm-checksums.json``: the size and SHA-256 of every file under ``default/``,
  preceded by the SHA-256 of the manifest itself.

Guarantees:

- **Atomic**: a checkpoint is written into ``directory/.<epoch>.partial`` and renamed
  to ``directory/<epoch>`` only once its data and manifest are complete, so an epoch
  directory is always whole; an interrupted save leaves only the hidden partial
  directory, which the next save of that epoch replaces.
- **Verified**: :func:`restore_checkpoint` checks every file against the manifest
  before orbax reads anything, so a flipped bit anywhere (data, orbax metadata or the
  manifest) is a :class:`CheckpointError`, never a silently different state.
- **Never overwritten**: saving an epoch that already has a checkpoint raises
  ``FileExistsError`` (a re-run into an old directory would otherwise mix two runs).
- **One clear error**: a save or restore that fails raises one exception with one
  message, promptly (orbax is used synchronously, so no background thread is left to
  time out at exit).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time

import jax
import numpy as np

from jaxnorm.training import _validate
from jaxnorm.training.state import TrainState

MANIFEST = "jaxnorm-checksums.json"
_ITEM = "default"  # orbax's item name, as CheckpointManager writes it
_FORMAT = "jaxnorm.training checkpoint"
_VERSION = 1
_CHUNK = 1 << 20
_SLACK = 1 << 20  # metadata written beside the arrays, bytes


class CheckpointError(ValueError):
  """A checkpoint cannot be written, or exists but cannot be restored (damaged,
  incomplete or of another model).

  A ``ValueError``, so code that catches ``ValueError`` catches it too.

  Example:
    >>> import tempfile, jax, jax.numpy as jnp, optax
    >>> from jaxnorm import training
    >>> def make(n):
    ...   return training.TrainState.create(apply_fn=None, params={"w": jnp.ones(n)},
    ...                                     tx=optax.sgd(0.1), rng=jax.random.key(0))
    >>> directory = tempfile.mkdtemp()
    >>> training.save_checkpoint(directory, make(3), epoch=1)
    >>> try:
    ...   training.restore_checkpoint(directory, like=make(4))   # another model's shapes
    ... except training.CheckpointError:
    ...   print("not restored")
    not restored
  """


def _short(error: BaseException) -> str:
  text = " ".join(str(error).split())
  return f"{type(error).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"


def _wait_until_quiet(sink, *, settle: float = 0.25, limit: float = 3.0) -> None:
  """Waits until nothing has been written to ``sink`` for ``settle`` seconds (at most
  ``limit`` seconds in all)."""
  size, quiet, start = -1, time.monotonic(), time.monotonic()
  while time.monotonic() - start < limit:
    sys.stderr.flush()
    now = os.fstat(sink.fileno()).st_size
    if now != size:
      size, quiet = now, time.monotonic()
    elif time.monotonic() - quiet >= settle:
      return
    time.sleep(0.02)


@contextlib.contextmanager
def _quiet_on_failure():
  """Runs orbax with its output collected: replayed if it succeeds, dropped if it fails.

  When a write fails, orbax's worker threads and tensorstore's callbacks each print a
  traceback (~150 lines for one failure) and leave coroutines that print more at
  interpreter exit. This keeps file descriptor 2 on a temporary file while orbax runs;
  on success what was printed (warnings) is written back to stderr; on failure the
  abandoned coroutines are collected at once, tensorstore's operations still in flight
  are let finish (each prints a traceback as it finds its event loop closed), and the
  caller raises one error.
  """
  sys.stderr.flush()
  saved = os.dup(2)
  sink = tempfile.TemporaryFile()
  os.dup2(sink.fileno(), 2)
  failed = False
  try:
    yield
  except BaseException:
    failed = True
    gc.collect()
    _wait_until_quiet(sink)
    raise
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
    sink.seek(0)
    output = sink.read()
    sink.close()
    if output and not failed:
      os.write(2, output)


def _orbax():
  """orbax.checkpoint, imported on first use (it is slow to import)."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  return ocp


def _is_primary() -> bool:
  return jax.process_index() == 0


def _sync(name: str) -> None:
  """Barrier across processes (multi-host training); nothing with one process."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(name)


def _check_epoch(epoch, *, fn: str) -> int:
  if isinstance(epoch, (bool, np.bool_)) or not isinstance(epoch, (int, np.integer)):
    raise TypeError(f"{fn}: epoch must be an int; got {epoch!r} of type "
                    f"{type(epoch).__name__}.")
  if epoch < 0:
    raise ValueError(f"{fn}: epoch must be >= 0; got {epoch}.")
  return int(epoch)


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as handle:
    for chunk in iter(lambda: handle.read(_CHUNK), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _data_files(root: str) -> list[str]:
  """Paths of every file under ``root/default``, relative to ``root``, sorted."""
  files = []
  for folder, _, names in os.walk(os.path.join(root, _ITEM)):
    files.extend(os.path.relpath(os.path.join(folder, name), root) for name in names)
  return sorted(path.replace(os.sep, "/") for path in files)


def _write_manifest(root: str, epoch: int) -> None:
  entries = {path: [os.path.getsize(os.path.join(root, path)),
                    _sha256(os.path.join(root, path))] for path in _data_files(root)}
  body = json.dumps({"format": _FORMAT, "version": _VERSION, "epoch": epoch,
                     "files": entries}, indent=1, sort_keys=True).encode()
  with open(os.path.join(root, MANIFEST), "wb") as handle:
    handle.write(hashlib.sha256(body).hexdigest().encode() + b"\n" + body)
    handle.flush()
    os.fsync(handle.fileno())


def _epoch_dirs(directory: str) -> dict[int, str]:
  """``{epoch: path}`` of the checkpoint directories (named by their epoch)."""
  if not os.path.isdir(directory):
    return {}
  epochs = {}
  for name in os.listdir(directory):
    path = os.path.join(directory, name)
    if name.isdigit() and name == str(int(name)) and os.path.isdir(path):
      if os.path.exists(os.path.join(path, MANIFEST)) or os.path.isdir(
          os.path.join(path, _ITEM)):
        epochs[int(name)] = path
  return epochs


def save_checkpoint(directory: str, state: TrainState, epoch: int,
                    *, max_to_keep: int | None = 3) -> None:
  """Saves ``state`` as the checkpoint of ``epoch`` (completed epochs) in ``directory``.

  The checkpoint appears atomically as ``directory/<epoch>`` with a manifest of
  checksums (see the module docstring). After saving, only the ``max_to_keep`` newest
  checkpoints are kept (the one just saved always is); ``None`` keeps all. In a
  multi-process job every process calls it with the same arguments and ``directory``
  must be shared; each writes its own shards and process 0 the manifest.

  Args:
    directory: where to save (created if needed).
    state: the state to save; it must be alive (not donated to an epoch).
    epoch: the number of completed epochs, >= 0.
    max_to_keep: how many checkpoints to keep, or None for all.

  Raises:
    FileExistsError: ``directory/<epoch>`` exists; checkpoints are never overwritten.
    CheckpointError: the directory cannot be created or written.
    ValueError: ``state`` holds deleted (donated) arrays.

  Example:
    >>> import tempfile, jax, optax
    >>> from jaxnorm import training
    >>> state = training.TrainState.create(apply_fn=None, params={"w": jax.numpy.ones(3)},
    ...                                    tx=optax.sgd(0.1), rng=jax.random.key(0))
    >>> directory = tempfile.mkdtemp()
    >>> training.save_checkpoint(directory, state, epoch=1)
    >>> training.latest_epoch(directory)
    1
    >>> training.save_checkpoint(directory, state, epoch=1)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    FileExistsError: jaxnorm.training.save_checkpoint: ... never overwritten ...
  """
  fn = "jaxnorm.training.save_checkpoint"
  epoch = _check_epoch(epoch, fn=fn)
  if max_to_keep is not None and (isinstance(max_to_keep, bool) or not isinstance(
      max_to_keep, (int, np.integer)) or max_to_keep < 1):
    raise ValueError(f"{fn}: max_to_keep must be an int >= 1 or None (keep all); got "
                     f"{max_to_keep!r}.")
  _validate.check_live(state, name="state", fn=fn)
  directory = os.path.abspath(os.fspath(directory))
  final = os.path.join(directory, str(epoch))
  partial = os.path.join(directory, f".{epoch}.partial")
  if os.path.exists(directory) and not os.path.isdir(directory):
    raise CheckpointError(f"{fn}: {directory!r} exists and is not a directory; give a "
                          "directory for the checkpoints.")
  if os.path.lexists(final):
    raise FileExistsError(
        f"{fn}: {final!r} already holds a checkpoint of epoch {epoch}; checkpoints are "
        "never overwritten (a re-run into an old directory would mix two runs). Save "
        "into a new directory, resume from this one with restore_checkpoint, or delete "
        f"{final!r} first.")
  try:
    if _is_primary():
      os.makedirs(directory, exist_ok=True)
      shutil.rmtree(partial, ignore_errors=True)  # left by an interrupted save
      os.makedirs(partial)
    _sync(f"jaxnorm_save_{epoch}_start")  # the other processes see the directory now
    free = shutil.disk_usage(directory).free
  except OSError as error:
    raise CheckpointError(f"{fn}: cannot write a checkpoint into {directory!r} "
                          f"({_short(error)}). Choose a writable directory.") from None
  needed = _SLACK + sum(int(getattr(leaf, "nbytes", 0)) for leaf in jax.tree.leaves(state))
  if free < needed:
    if _is_primary():
      shutil.rmtree(partial, ignore_errors=True)
    raise CheckpointError(f"{fn}: {directory!r} has {free / 2**20:.1f} MiB free but the "
                          f"checkpoint needs about {needed / 2**20:.1f} MiB. Free some "
                          "space or choose another directory.")
  ocp = _orbax()
  try:
    with _quiet_on_failure(), ocp.Checkpointer(
        ocp.StandardCheckpointHandler()) as checkpointer:
      checkpointer.save(os.path.join(partial, _ITEM), args=ocp.args.StandardSave(state))
    _sync(f"jaxnorm_save_{epoch}_written")
    if _is_primary():
      _write_manifest(partial, epoch)
      os.rename(partial, final)
  except Exception as error:  # pylint: disable=broad-except
    if _is_primary():
      shutil.rmtree(partial, ignore_errors=True)
    raise CheckpointError(f"{fn}: writing the checkpoint of epoch {epoch} into "
                          f"{directory!r} failed ({_short(error)}); nothing was saved."
                          ) from None
  _sync(f"jaxnorm_save_{epoch}_done")
  if max_to_keep is not None and _is_primary():
    epochs = sorted(_epoch_dirs(directory), reverse=True)
    for old in epochs[max_to_keep:]:
      if old != epoch:
        shutil.rmtree(os.path.join(directory, str(old)), ignore_errors=True)


def latest_epoch(directory: str) -> int | None:
  """The epoch of the newest checkpoint in ``directory``, or None.

  Example:
    >>> import tempfile, jax, optax
    >>> from jaxnorm import training
    >>> state = training.TrainState.create(apply_fn=None, params={"w": jax.numpy.ones(3)},
    ...                                    tx=optax.sgd(0.1), rng=jax.random.key(0))
    >>> directory = tempfile.mkdtemp()
    >>> print(training.latest_epoch(directory))        # nothing saved yet: start afresh
    None
    >>> training.save_checkpoint(directory, state, epoch=4)
    >>> training.latest_epoch(directory)               # resume after epoch 4
    4
  """
  epochs = _epoch_dirs(os.fspath(directory))
  return max(epochs) if epochs else None


def verify_checkpoint(directory: str, epoch: int) -> None:
  """Checks every file of the checkpoint of ``epoch`` against its manifest.

  Raises:
    FileNotFoundError: there is no checkpoint of ``epoch`` in ``directory``.
    CheckpointError: the manifest is missing or damaged, or a file is missing, has
      another size or another SHA-256 than when it was saved.

  Example:
    >>> import os, tempfile, jax, optax
    >>> from jaxnorm import training
    >>> state = training.TrainState.create(apply_fn=None, params={"w": jax.numpy.ones(3)},
    ...                                    tx=optax.sgd(0.1), rng=jax.random.key(0))
    >>> directory = tempfile.mkdtemp()
    >>> training.save_checkpoint(directory, state, epoch=2)
    >>> training.verify_checkpoint(directory, 2)  # silent when intact
    >>> with open(os.path.join(directory, "2", "default", "_METADATA"), "r+b") as f:
    ...   _ = f.write(b" ")
    >>> training.verify_checkpoint(directory, 2)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    jaxnorm.training.checkpoint.CheckpointError: ... default/_METADATA does not match ...
  """
  fn = "jaxnorm.training.verify_checkpoint"
  epoch = _check_epoch(epoch, fn=fn)
  directory = os.path.abspath(os.fspath(directory))
  root = os.path.join(directory, str(epoch))
  if not os.path.isdir(root):
    raise FileNotFoundError(f"{fn}: no checkpoint of epoch {epoch} in {directory!r}.")
  damaged = f"{fn}: the checkpoint of epoch {epoch} in {directory!r} is damaged"
  manifest = os.path.join(root, MANIFEST)
  if not os.path.exists(manifest):
    raise CheckpointError(
        f"{fn}: the checkpoint of epoch {epoch} in {directory!r} has no {MANIFEST} (it "
        "was written by an older jaxnorm or by orbax directly), so its integrity cannot "
        "be checked. Restore it with restore_checkpoint(..., verify=False) if you trust "
        "it.")
  with open(manifest, "rb") as handle:
    raw = handle.read()
  digest, _, body = raw.partition(b"\n")
  if hashlib.sha256(body).hexdigest().encode() != digest:
    raise CheckpointError(f"{damaged}: {MANIFEST} does not match its own checksum.")
  try:
    content = json.loads(body)
    files = content["files"]
    ok = (content["format"] == _FORMAT and content["version"] == _VERSION
          and content["epoch"] == epoch and isinstance(files, dict))
  except (ValueError, KeyError, TypeError):
    ok = False
  if not ok:
    raise CheckpointError(f"{damaged}: {MANIFEST} is not a version-{_VERSION} manifest "
                          f"of epoch {epoch}.")
  for relative, (size, sha256) in sorted(files.items()):
    path = os.path.join(root, *relative.split("/"))
    if not os.path.isfile(path):
      raise CheckpointError(f"{damaged}: {relative} is missing.")
    if os.path.getsize(path) != size:
      raise CheckpointError(f"{damaged}: {relative} has {os.path.getsize(path)} bytes; "
                            f"{size} were saved.")
    if _sha256(path) != sha256:
      raise CheckpointError(f"{damaged}: {relative} does not match its SHA-256 (its "
                            "contents changed after saving).")


def restore_checkpoint(directory: str, like: TrainState, epoch: int | None = None,
                       *, verify: bool = True) -> tuple[TrainState, int]:
  """Restores ``(state, epoch)`` from ``directory`` (the newest epoch unless given).

  Args:
    directory: where :func:`save_checkpoint` wrote.
    like: a state with the same structure (e.g. freshly created); only its shapes,
      dtypes and shardings are used (it may even be donated), and its
      ``apply_fn``/``tx`` are kept.
    epoch: which checkpoint; the newest when None.
    verify: check every file against the manifest first (:func:`verify_checkpoint`).
      ``False`` only for checkpoints written without one.

  Raises:
    FileNotFoundError: no checkpoint there (never a silent fresh start).
    CheckpointError: the checkpoint is damaged, incomplete or of another model.

  Example:
    >>> import tempfile, jax, optax
    >>> from jaxnorm import training
    >>> state = training.TrainState.create(apply_fn=None, params={"w": jax.numpy.ones(3)},
    ...                                    tx=optax.sgd(0.1), rng=jax.random.key(0))
    >>> directory = tempfile.mkdtemp()
    >>> training.save_checkpoint(directory, state.replace(step=7), epoch=3)
    >>> restored, epoch = training.restore_checkpoint(directory, like=state)
    >>> epoch, int(restored.step)
    (3, 7)
  """
  fn = "jaxnorm.training.restore_checkpoint"
  directory = os.path.abspath(os.fspath(directory))
  epochs = _epoch_dirs(directory)
  if not epochs:
    raise FileNotFoundError(
        f"{fn}: no checkpoint in {directory!r}. Check the path, or start a fresh run "
        "without resuming.")
  epoch = max(epochs) if epoch is None else _check_epoch(epoch, fn=fn)
  if epoch not in epochs:
    raise FileNotFoundError(f"{fn}: no checkpoint of epoch {epoch} in {directory!r}; "
                            f"available: {sorted(epochs)}.")
  if verify:
    try:
      verify_checkpoint(directory, epoch)
    except CheckpointError as error:
      raise CheckpointError(str(error).replace("verify_checkpoint", "restore_checkpoint",
                                               1)) from None
  ocp = _orbax()
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
  try:
    with _quiet_on_failure(), ocp.Checkpointer(
        ocp.StandardCheckpointHandler()) as checkpointer:
      restored = checkpointer.restore(os.path.join(epochs[epoch], _ITEM),
                                      args=ocp.args.StandardRestore(abstract))
  except Exception as error:  # pylint: disable=broad-except  (orbax raises many types)
    raise CheckpointError(
        f"{fn}: the checkpoint of epoch {epoch} in {directory!r} cannot be restored "
        f"({_short(error)}). It is damaged or incomplete, or was written for a different "
        "model or optimizer.") from None
  return restored, epoch
