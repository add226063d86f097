"""``python -m benchmarks [--quick] [--json FILE] [--markdown FILE] [--no-torch]``.

Benchmarks jaxnorm's layers against flax.linen's built-ins (and PyTorch on the CPU when
it is installed) in one run, as ratios, plus the memory floor, compiled temporary
memory and the end-to-end seed-mlp training. Prints the timings as they are measured,
then the report, or writes the report to the --markdown file instead; writes JSON when
asked (the committed benchmarks/RESULTS.md comes from a full run). Installed, the same
command is ``jaxnorm-benchmarks``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

# PyTorch's OpenMP threads otherwise spin after each call and take the cores from the
# JAX call that runs next in the interleaved timings.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import end_to_end, layers, report


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
  args = parser.parse_args(argv)

  if args.from_json:
    with open(args.from_json, encoding="utf-8") as handle:
      saved = json.load(handle)
    rows = [layers.Row(**{k: v for k, v in row.items() if k != "passes"} | {
        "shape": tuple(row["shape"])}) for row in saved["layers"]]
    text = report.markdown(saved["machine"], rows, end_to_end.EndToEnd(**saved["end_to_end"]),
                           quick=saved["quick"])
    _emit(text, args.markdown)
    return 0

  torch = None
  if not args.no_torch:
    try:
      import torch  # pylint: disable=import-outside-toplevel
    except ImportError:
      print("PyTorch is not installed: its columns are left empty "
            "(pip install torch==2.13.0 for the CPU build).")
  machine = report.describe_machine(torch)
  print(report.machine_markdown(machine))
  print("\nLayers (median times; ratios > 1 mean jaxnorm is faster):")
  rows = layers.run(args.quick, torch)
  print("\nEnd to end (seed-mlp):")
  e2e = end_to_end.run(args.quick, torch)
  _emit(report.markdown(machine, rows, e2e, quick=args.quick), args.markdown)
  if args.json:
    with open(args.json, "w", encoding="utf-8") as handle:
      json.dump({"machine": machine, "quick": args.quick,
                 "layers": [dict(dataclasses.asdict(r), passes=r.passes) for r in rows],
                 "end_to_end": dataclasses.asdict(e2e)}, handle, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
