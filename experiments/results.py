"""Run directories and ``results.json``: a run never mixes with an earlier one.

A run writes into a fresh staging directory next to its destination and is moved into
place (``DIR/NAME``) only when it has finished, replacing the previous run of that
experiment as a whole. A failed or interrupted run leaves the previous one untouched.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import shutil
import subprocess
import tempfile

import numpy as np

from .spec import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, Outcome, RunContext, Spec

RESULTS_FILE = "results.json"
TABLE_FILE = "table.md"


class OutputError(ValueError):
  """The output directory cannot be used; the message names it and the reason."""


def check_output_root(root: str) -> str:
  """Creates ``root`` if needed and checks that files can be written there.

  Raises:
    OutputError: ``root`` is a file, or cannot be created or written.
  """
  root = os.path.abspath(root)
  if os.path.exists(root) and not os.path.isdir(root):
    raise OutputError(f"--out {root}: exists and is not a directory; give a directory.")
  try:
    os.makedirs(root, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=root, prefix=".write-check-"):
      pass
  except OSError as error:
    raise OutputError(f"--out {root}: cannot write there ({error.strerror or error}); "
                      "choose a writable directory.") from error
  return root


def staging_dir(root: str, name: str) -> str:
  """A fresh, empty directory inside ``root`` for one run of ``name``."""
  return tempfile.mkdtemp(dir=root, prefix=f".{name}.partial-")


def publish(staging: str, root: str, name: str) -> str:
  """Moves a finished run from ``staging`` to ``root/name``, replacing an older run."""
  final = os.path.join(root, name)
  old = None
  if os.path.lexists(final):
    old = tempfile.mkdtemp(dir=root, prefix=f".{name}.old-")
    os.rename(final, os.path.join(old, name))
  os.rename(staging, final)
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)
  return final


def overall_verdict(verdicts) -> str:
  """``holds`` if every part holds, ``does not hold`` if one part fails, else inconclusive."""
  values = [v.verdict for v in verdicts]
  if values and all(v == HOLDS for v in values):
    return HOLDS
  if any(v == DOES_NOT_HOLD for v in values):
    return DOES_NOT_HOLD
  return INCONCLUSIVE


def to_json(value):
  """``value`` with NumPy types and NamedTuples converted; non-finite floats become None."""
  if isinstance(value, dict):
    return {str(k): to_json(v) for k, v in value.items()}
  if hasattr(value, "as_dict"):
    return to_json(value.as_dict())
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    return to_json(dataclasses.asdict(value))
  if isinstance(value, (list, tuple)):
    return [to_json(v) for v in value]
  if isinstance(value, np.ndarray):
    return to_json(value.tolist())
  if isinstance(value, (np.bool_, bool)):
    return bool(value)
  if isinstance(value, (np.integer, int)):
    return int(value)
  if isinstance(value, (np.floating, float)):
    value = float(value)
    return value if math.isfinite(value) else None
  return value


def _source_revision() -> dict:
  """The git commit of the code that ran (and whether it had uncommitted changes)."""
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here,
                            capture_output=True, text=True, timeout=10, check=True)
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                            cwd=here, capture_output=True, text=True, timeout=10,
                            check=True)
  except (OSError, subprocess.SubprocessError):
    return {}
  return {"commit": commit.stdout.strip(), "uncommitted_changes": bool(status.stdout.strip())}


def _environment() -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  import jaxnorm  # pylint: disable=import-outside-toplevel
  return {"jax": jax.__version__, "jaxnorm": jaxnorm.__version__,
          "backend": jax.default_backend(), "devices": len(jax.devices()),
          "cpu_count": os.cpu_count(), **_source_revision()}


def write_outcome(spec: Spec, ctx: RunContext, outcome: Outcome,
                  wall_seconds: float) -> dict:
  """Writes ``results.json`` and ``table.md`` into ``ctx.out_dir``; returns the payload."""
  for figure in outcome.figures:
    if not os.path.isfile(os.path.join(ctx.out_dir, figure)):
      raise FileNotFoundError(f"{spec.name}: figure {figure!r} was not written to the run "
                              "directory.")
  payload = {
      "experiment": spec.name,
      "title": spec.title,
      "claim": spec.claim,
      "anchor": dataclasses.asdict(spec.anchor),
      "criterion": spec.criterion,
      "verdict": overall_verdict(outcome.verdicts),
      "verdicts": [dataclasses.asdict(v) for v in outcome.verdicts],
      "data": spec.data,
      "setup": spec.setup,
      "limits": spec.limits,
      "quick": ctx.quick,
      "seeds": ctx.seeds,
      "config": outcome.config,
      "per_seed": outcome.per_seed,
      "summary": outcome.summary,
      "table": outcome.table,
      "figures": outcome.figures,
      "notes": outcome.notes,
      "wall_seconds": wall_seconds,
      "environment": _environment(),
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  }
  payload = to_json(payload)
  with open(os.path.join(ctx.out_dir, RESULTS_FILE), "w", encoding="utf-8") as handle:
    json.dump(payload, handle, indent=2, allow_nan=False)
    handle.write("\n")
  with open(os.path.join(ctx.out_dir, TABLE_FILE), "w", encoding="utf-8") as handle:
    handle.write(f"# {spec.title}\n\n{outcome.table}\n")
  return payload


def read_results(run_dir: str) -> dict:
  """The payload of a finished run directory."""
  with open(os.path.join(run_dir, RESULTS_FILE), encoding="utf-8") as handle:
    return json.load(handle)
