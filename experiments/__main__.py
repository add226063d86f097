"""Command line: ``python -m experiments list | run NAME|all [options] | report``."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

from . import EXPERIMENTS, claims
from .data import DATASETS, DataError
from .results import OutputError, check_output_root, publish, staging_dir, write_outcome
from .spec import RunContext

QUICK_SEEDS = 2
FULL_SEEDS = 5


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m experiments", description=__doc__)
  commands = parser.add_subparsers(dest="command", required=True)
  commands.add_parser("list", help="list the experiments")
  run = commands.add_parser("run", help="run one experiment, or all of them")
  run.add_argument("name", choices=sorted(EXPERIMENTS) + ["all"])
  run.add_argument("--quick", action="store_true",
                   help="a short smoke run (fewer seeds and steps; not a result)")
  run.add_argument("--seeds", type=int, default=None,
                   help=f"number of seeds (default {FULL_SEEDS}, {QUICK_SEEDS} with --quick)")
  run.add_argument("--epochs", type=int, default=None,
                   help="override the epoch count (seed-mlp only)")
  run.add_argument("--out", default="runs", help="output directory (default: runs)")
  run.add_argument("--data", default=None, choices=DATASETS,
                   help="data set (seed-mlp only; default digits)")
  run.add_argument("--data-path", default=None, help="file or directory for user data")
  run.add_argument("--split-seed", type=int, default=0,
                   help="seed of the train/test split (>= 0)")
  run.add_argument("--api", default=None, choices=("linen", "nnx"),
                   help="Flax API of the models (seed-mlp only; default linen)")
  report = commands.add_parser("report", help="write experiments/REPORT.md from the runs")
  report.add_argument("--runs", default="runs", help="directory of the runs (default: runs)")
  report.add_argument("--output", default=None,
                      help="report path (default: experiments/REPORT.md)")
  return parser


def _progress_bar():
  try:
    from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  return tqdm


def _check_run_arguments(args) -> str | None:
  """The first problem with the run options, as an error message, or None."""
  for option in ("seeds", "epochs"):
    value = getattr(args, option)
    if value is not None and value < 1:
      return f"--{option} must be >= 1; got {value}"
  if args.split_seed < 0:
    return f"--split-seed must be >= 0 (a NumPy seed); got {args.split_seed}"
  names = list(EXPERIMENTS) if args.name == "all" else [args.name]
  for option in ("epochs", "data", "data_path", "api"):
    if getattr(args, option) is not None and any(
        not getattr(EXPERIMENTS[n], "ACCEPTS_DATA_OPTIONS", False) for n in names):
      fixed = [n for n in names if not getattr(EXPERIMENTS[n], "ACCEPTS_DATA_OPTIONS", False)]
      return (f"--{option.replace('_', '-')} applies to seed-mlp only; {', '.join(fixed)} "
              "fix their data and length in code (see `python -m experiments list`)")
  return None


def _run_one(name: str, args, root: str) -> dict:
  module = EXPERIMENTS[name]
  seeds = args.seeds or (QUICK_SEEDS if args.quick else FULL_SEEDS)
  staging = staging_dir(root, name)
  ctx = RunContext(out_dir=staging, quick=args.quick, seeds=seeds, data=args.data,
                   data_path=args.data_path, split_seed=args.split_seed,
                   epochs=args.epochs, progress=_progress_bar(), api=args.api or "linen")
  try:
    start = time.perf_counter()
    outcome = module.run(ctx)
    wall = time.perf_counter() - start
    if hasattr(module, "SPEC"):
      payload = write_outcome(module.SPEC, ctx, outcome, wall)
      print(f"\n{payload['title']}\n\n{payload['table']}\n")
      for verdict in payload["verdicts"]:
        print(f"  {verdict['claim']}: {verdict['verdict'].upper()} — {verdict['reason']}")
    else:
      payload = outcome
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  final = publish(staging, root, name)
  print(f"\n{name}: {wall:.1f} s; results in {final}{os.sep}")
  return payload


def _run(args) -> int:
  problem = _check_run_arguments(args)
  if problem:
    print(f"error: {problem}", file=sys.stderr)
    return 2
  existed = os.path.isdir(args.out)
  try:
    root = check_output_root(args.out)
  except OutputError as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  names = list(EXPERIMENTS) if args.name == "all" else [args.name]
  verdicts = {}
  try:
    for name in names:
      payload = _run_one(name, args, root)
      if "verdict" in payload:
        verdicts[name] = payload["verdict"]
  except (DataError, OutputError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  finally:
    if not existed and os.path.isdir(root) and not os.listdir(root):
      os.rmdir(root)
  if len(names) > 1:
    print("\n" + "\n".join(f"{name:<20} {verdict}" for name, verdict in verdicts.items()))
  return 0


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  if args.command == "list":
    for name, module in EXPERIMENTS.items():
      print(f"{name:<18} {module.DESCRIPTION}")
    return 0
  if args.command == "report":
    from .report import DEFAULT_OUTPUT, build_report  # pylint: disable=import-outside-toplevel
    try:
      path, missing = build_report(args.runs, claims(), args.output or DEFAULT_OUTPUT)
    except FileNotFoundError as error:
      print(f"error: {error}", file=sys.stderr)
      return 2
    print(f"wrote {path}" + (f" (not run yet: {', '.join(missing)})" if missing else ""))
    return 0
  return _run(args)


if __name__ == "__main__":
  sys.exit(main())
