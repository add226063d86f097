"""Command line: ``python -m experiments list | run NAME [options]``."""

from __future__ import annotations

import argparse
import sys

from . import EXPERIMENTS
from .data import DATASETS, DataError


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m experiments", description=__doc__)
  commands = parser.add_subparsers(dest="command", required=True)
  commands.add_parser("list", help="list the experiments")
  run = commands.add_parser("run", help="run one experiment")
  run.add_argument("name", choices=sorted(EXPERIMENTS))
  run.add_argument("--quick", action="store_true",
                   help="a short smoke run (fewer epochs and seeds)")
  run.add_argument("--seeds", type=int, default=None, help="number of seeds")
  run.add_argument("--epochs", type=int, default=None, help="override the epoch count")
  run.add_argument("--out", default="runs", help="output directory (default: runs)")
  run.add_argument("--data", default="digits", choices=DATASETS, help="data set")
  run.add_argument("--data-path", default=None, help="file or directory for user data")
  run.add_argument("--split-seed", type=int, default=0, help="seed of the train/test split")
  run.add_argument("--api", default="linen", choices=("linen", "nnx"),
                   help="Flax API of the models: linen (default) or nnx")
  return parser


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  if args.command == "list":
    for name, module in sorted(EXPERIMENTS.items()):
      print(f"{name:<16} {module.DESCRIPTION}")
    return 0
  for option in ("seeds", "epochs"):
    value = getattr(args, option)
    if value is not None and value < 1:
      print(f"error: --{option} must be >= 1; got {value}", file=sys.stderr)
      return 2
  try:
    EXPERIMENTS[args.name].run(args)
  except DataError as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
