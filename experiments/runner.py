"""Small shared pieces of the experiments' output: markdown tables, curve plots, files."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

from . import plots


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  """A GitHub markdown table.

  Example:
    >>> print(markdown_table(["a", "b"], [["1", "2"]]))
    | a | b |
    |---|---|
    | 1 | 2 |
  """
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(lines)


def plot_curves(path: str, runs: Sequence[dict], metrics: Sequence[str],
                title: str) -> str | None:
  """Per-epoch curves: mean per variant, band from min to max over seeds.

  Args:
    path: the PNG to write.
    runs: dicts with ``variant`` and ``curves`` (metric name -> per-epoch values).
    metrics: one panel per metric.
    title: the figure title.
  """
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    print("matplotlib is not installed (pip install -e '.[experiments]'); no plot written.")
    return None
  variants = list(dict.fromkeys(r["variant"] for r in runs))
  with plots.figure(path, title, ncols=len(metrics)) as axes:
    for ax, metric in zip(axes, metrics):
      for variant in variants:
        values = np.array([r["curves"][metric] for r in runs if r["variant"] == variant])
        plots.band(ax, np.arange(1, values.shape[1] + 1), values, label=variant,
                   spread="range")
      plots.label(ax, x="epoch", y=metric.replace("_", " "))
  return path


def write_results(out_dir: str, payload: dict, table: str) -> None:
  """``results.json`` and ``table.md`` in ``out_dir``."""
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "results.json"), "w", encoding="utf-8") as handle:
    json.dump(payload, handle, indent=2)
  with open(os.path.join(out_dir, "table.md"), "w", encoding="utf-8") as handle:
    handle.write(table + "\n")
