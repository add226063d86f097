"""Figures for readers: titled, labelled axes with units, legends, bands over seeds.

Every experiment draws through these helpers so that the figures share one look: a
mean line per condition with a band over seeds (mean ± one sample std, or the range),
log axes where a quantity spans decades, small PNGs (about 100 dpi) for the report.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

import numpy as np

DPI = 100


def _pyplot():
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


@contextlib.contextmanager
def figure(path: str, title: str, *, ncols: int = 1, nrows: int = 1,
           size: tuple[float, float] = (5.0, 3.6)):
  """Yields a grid of axes; on exit adds the title, lays out and saves ``path``.

  Example:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "demo.png")
    >>> with figure(path, "demo") as axes:
    ...   _ = axes[0].plot([0, 1], [0, 1])
    >>> os.path.getsize(path) > 0
    True
  """
  plt = _pyplot()
  fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows),
                           squeeze=False)
  try:
    yield list(axes.reshape(-1))
    fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=DPI)
  finally:
    plt.close(fig)


def band(ax, x: Sequence[float], runs, *, label: str, spread: str = "std",
         color=None, marker: str | None = None, linestyle: str = "-") -> None:
  """Mean over seeds as a line, with a shaded band.

  Args:
    ax: matplotlib axes.
    x: the x values, shape ``(T,)``.
    runs: ``(seeds, T)`` values; NaN entries (diverged runs) are left out of the mean.
    label: legend label.
    spread: ``"std"`` (mean ± sample std) or ``"range"`` (min to max).
  """
  runs = np.atleast_2d(np.asarray(runs, np.float64))
  with np.errstate(all="ignore"), _quiet_nan_warnings():
    mean = np.nanmean(runs, axis=0)
    if spread == "std":
      sd = np.nanstd(runs, axis=0, ddof=1) if runs.shape[0] > 1 else np.zeros_like(mean)
      low, high = mean - sd, mean + sd
    elif spread == "range":
      low, high = np.nanmin(runs, axis=0), np.nanmax(runs, axis=0)
    else:
      raise ValueError(f"band: spread must be 'std' or 'range'; got {spread!r}.")
  line, = ax.plot(x, mean, label=label, color=color, marker=marker, linestyle=linestyle)
  if runs.shape[0] > 1:
    ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2, linewidth=0)


def label(ax, *, x: str, y: str, title: str | None = None, logx: bool = False,
          logy: bool = False, legend: bool = True) -> None:
  """Axis labels (with units), optional log scales, grid and legend."""
  ax.set_xlabel(x)
  ax.set_ylabel(y)
  if title:
    ax.set_title(title, fontsize=10)
  if logx:
    ax.set_xscale("log")
  if logy:
    ax.set_yscale("log")
  ax.grid(alpha=0.3, which="both" if (logx or logy) else "major")
  if legend and ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=8)


def heatmap(ax, values, *, row_labels: Sequence[str], col_labels: Sequence[str],
            xlabel: str, ylabel: str, title: str, fmt: str = "{:.2f}",
            cmap: str = "viridis") -> None:
  """An annotated heat map of a ``(rows, cols)`` table (NaN cells shown empty)."""
  values = np.asarray(values, np.float64)
  image = ax.imshow(values, cmap=cmap, aspect="auto")
  ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
  ax.set_xticks(range(len(col_labels)), labels=col_labels)
  ax.set_yticks(range(len(row_labels)), labels=row_labels)
  finite = values[np.isfinite(values)]
  middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
  for i in range(values.shape[0]):
    for j in range(values.shape[1]):
      if np.isfinite(values[i, j]):
        ax.text(j, i, fmt.format(values[i, j]), ha="center", va="center", fontsize=7,
                color="black" if values[i, j] > middle else "white")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title, fontsize=10)


@contextlib.contextmanager
def _quiet_nan_warnings():
  import warnings  # pylint: disable=import-outside-toplevel
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", category=RuntimeWarning)
    yield
