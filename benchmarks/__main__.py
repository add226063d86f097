"""``python -m benchmarks [--quick] [--json FILE] [--markdown FILE] [--no-torch]
[--no-compilation-cache] [--no-tuned-allocator]``.

Benchmarks jaxnorm's layers (pure JAX and through its fused kernels) against flax.linen's
built-ins (and PyTorch on the CPU when it is installed) in one run, as ratios, plus the
memory floor, compiled temporary memory, page faults and the end-to-end seed-mlp
training. The headline shape is timed again in a child process whose allocator keeps
freed memory (glibc tunables set in its environment, for every candidate alike), which
shows what page faults cost. JAX's persistent compilation cache is on unless
``--no-compilation-cache``. Prints the timings as they are measured, then the report,
or writes the report to the --markdown file instead; writes JSON when asked (the
committed benchmarks/RESULTS.md comes from a full run). Installed, the same command is
``jaxnorm-benchmarks``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile

# PyTorch's OpenMP threads otherwise spin after each call and take the cores from the
# JAX call that runs next in the interleaved timings.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from jaxnorm._compilation_cache import enable_compilation_cache

from . import end_to_end, layers, report

#: The allocator setting of the tuned run: glibc never returns memory to the system and
#: serves large blocks from its heap (no mmap), so XLA's per-call temporaries are
#: reused instead of being mapped and faulted in afresh on every call.
TUNED_ALLOCATOR = {"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0:glibc.malloc.arena_max=1:"
                                     "glibc.malloc.trim_threshold=1099511627776"}
HEADLINE = ((4096, 1024),)

def _emit(text: str, markdown_path: str | None) -> None:
  """Writes the report to ``markdown_path``, or prints it when there is none."""
  if markdown_path is None:
    print("\n" + text)
    return
  with open(markdown_path, "w", encoding="utf-8") as handle:
    handle.write(text + "\n")
  print(f"\nReport written to {markdown_path}")


def main(argv=None) -> int:
  """Runs the benchmarks (the ``jaxnorm-benchmarks`` command); returns the exit code."""
  prog = "python -m benchmarks" if __package__ == "benchmarks" else "jaxnorm-benchmarks"
  parser = argparse.ArgumentParser(prog=prog, description=__doc__)
  parser.add_argument("--quick", action="store_true",
                      help="small shape, float32, few repeats: a smoke run")
  parser.add_argument("--json", default=None, help="write the results as JSON here")
  parser.add_argument("--markdown", default=None, help="write the report (RESULTS.md) here")
  parser.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
  parser.add_argument("--from-json", default=None,
                      help="re-render the report of a saved --json run (no timing)")
  parser.add_argument("--no-compilation-cache", action="store_true",
                      help="do not use JAX's persistent compilation cache")
  parser.add_argument("--no-tuned-allocator", action="store_true",
                      help="skip the timing of the headline shape with the tuned allocator")
  parser.add_argument("--shapes", default=None,
                      help="comma-separated shapes to time instead of the suite's, e.g. "
                           "4096x1024,8192x256")
  parser.add_argument("--dtypes", default=None,
                      help="comma-separated dtypes instead of the suite's, e.g. float32")
  parser.add_argument("--tuned-child", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  cache_dir = enable_compilation_cache(enabled=not args.no_compilation_cache)

  if args.tuned_child:  # the child process of the tuned-allocator run
    torch = None if args.no_torch else _import_torch()
    rows = layers.run(args.quick, torch, shapes=layers.QUICK_SHAPES if args.quick else HEADLINE,
                      dtypes=("float32",))
    with open(args.tuned_child, "w", encoding="utf-8") as handle:
      json.dump([_row_json(r) for r in rows], handle)
    return 0

  if args.from_json:
    with open(args.from_json, encoding="utf-8") as handle:
      saved = json.load(handle)
    rows = [_row_from_json(row) for row in saved["layers"]]
    text = report.markdown(saved["machine"], rows, end_to_end.EndToEnd(**saved["end_to_end"]),
                           quick=saved["quick"])
    _emit(text, args.markdown)
    return 0

  torch = None if args.no_torch else _import_torch()
  machine = report.describe_machine(torch)
  # Whether the cache was on, not where it is (the saved run names no local path).
  machine["compilation_cache"] = cache_dir is not None
  print(report.machine_markdown(machine))
  print("\nLayers (median times; ratios > 1 mean jaxnorm is faster):")
  shapes = None if not args.shapes else tuple(
      tuple(int(n) for n in shape.split("x")) for shape in args.shapes.split(","))
  dtypes = None if not args.dtypes else tuple(args.dtypes.split(","))
  rows = layers.run(args.quick, torch, shapes=shapes, dtypes=dtypes)
  if not args.no_tuned_allocator:
    print("\nHeadline shape again, allocator tuned in a child process "
          f"({TUNED_ALLOCATOR['GLIBC_TUNABLES']}):")
    _tuned_run(rows, args)
  print("\nEnd to end (seed-mlp):")
  e2e = end_to_end.run(args.quick, torch, persistent_cache=cache_dir is not None)
  machine["load_after"] = report.load_average()
  _emit(report.markdown(machine, rows, e2e, quick=args.quick), args.markdown)
  if args.json:
    with open(args.json, "w", encoding="utf-8") as handle:
      json.dump({"machine": machine, "quick": args.quick,
                 "layers": [_row_json(r) for r in rows],
                 "end_to_end": dataclasses.asdict(e2e)}, handle, indent=2)
  return 0


def _import_torch():
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    print("PyTorch is not installed: its columns are left empty "
          "(pip install torch==2.13.0 for the CPU build).")
    return None
  return torch


def _row_json(row) -> dict:
  return dict(dataclasses.asdict(row), passes=row.passes)


def _row_from_json(row: dict):
  fields = {f.name for f in dataclasses.fields(layers.Row)}
  return layers.Row(**{k: v for k, v in row.items() if k in fields} | {
      "shape": tuple(row["shape"])})


def _tuned_run(rows, args) -> None:
  """Times the headline shape in a child process with the tuned allocator and stores
  its medians (and page faults) in ``row.tuned``."""
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "tuned.json")
    command = [sys.executable, "-m", "benchmarks", "--tuned-child", out]
    command += ["--quick"] if args.quick else []
    command += ["--no-torch"] if args.no_torch else []
    command += ["--no-compilation-cache"] if args.no_compilation_cache else []
    env = dict(os.environ, **TUNED_ALLOCATOR)
    result = subprocess.run(command, env=env, check=False, cwd=os.path.dirname(
        os.path.dirname(os.path.abspath(__file__))))
    if result.returncode != 0 or not os.path.exists(out):
      print("the tuned-allocator run failed; its columns are left empty")
      return
    with open(out, encoding="utf-8") as handle:
      tuned = [_row_from_json(r) for r in json.load(handle)]
  for t in tuned:
    for row in rows:
      if (row.layer, tuple(row.shape), row.dtype, row.mode) == (
          t.layer, tuple(t.shape), t.dtype, t.mode):
        row.tuned = {"jaxnorm": t.jaxnorm_s, "kernels": t.kernel_s, "before": t.before_s,
                     "flax": t.flax_s, "torch": t.torch_s, "floor": t.floor_s,
                     "faults": t.faults}


if __name__ == "__main__":
  sys.exit(main())
