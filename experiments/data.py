"""Offline data sets and loaders for user files, with deterministic seeded splits.

- ``digits``: scikit-learn's ``load_digits`` (1,797 real 8x8 digits shipped with the
  package), pixels / 16. The default.
- ``mnist1d``: the ``mnist1d`` package's ``make_dataset`` (5,000 length-40 signals,
  generated locally; its downloader is never called).
- ``fashion-csv``: the CSV layout of the Fashion-MNIST notebook (first column the
  label, then 784 pixel columns in [0, 255]; an optional header row), pixels / 255.
- ``idx``: IDX files as MNIST/Fashion-MNIST ship them (``--data-path`` is a directory
  with ``train-images-idx3-ubyte`` and ``train-labels-idx1-ubyte``, optionally
  gzipped, or ``IMAGES,LABELS``), pixels / 255.

Every set is split into train/test by a seeded permutation (80/20 by default).
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import struct
import zlib

import numpy as np


class DataError(ValueError):
  """A data file is missing or malformed; the message names the file and the problem."""


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Features as float32 ``(N, ...)`` and integer labels, split into train and test."""

  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int

  @property
  def input_dim(self) -> int:
    return int(np.prod(self.x_train.shape[1:]))

  def describe(self) -> str:
    return (f"{self.name}: {len(self.x_train)} train / {len(self.x_test)} test examples, "
            f"{self.input_dim} features, {self.num_classes} classes")


def split(x: np.ndarray, y: np.ndarray, *, seed: int, test_fraction: float = 0.2):
  """Seeded shuffle, then the first ``1 - test_fraction`` for training."""
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f"test_fraction must be in (0, 1); got {test_fraction}.")
  order = np.random.default_rng(seed).permutation(len(x))
  n_train = int(round((1.0 - test_fraction) * len(x)))
  train, test = order[:n_train], order[n_train:]
  return x[train], y[train], x[test], y[test]


def _require_file(path: str | None, dataset: str) -> str:
  if not path:
    raise DataError(f"--data {dataset} needs --data-path pointing to the file(s).")
  if not os.path.exists(path):
    raise DataError(f"{path}: file not found (for --data {dataset}).")
  return path


def load_digits_arrays():
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  digits = load_digits()
  return (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int32)


def load_mnist1d_arrays(generator_seed: int = 42):
  """MNIST-1D generated locally with the package's default settings."""
  from mnist1d.data import get_dataset_args, make_dataset  # pylint: disable=import-outside-toplevel
  args = get_dataset_args()
  args.seed = generator_seed
  data = make_dataset(args)
  x = np.concatenate([data["x"], data["x_test"]]).astype(np.float32)
  y = np.concatenate([data["y"], data["y_test"]]).astype(np.int32)
  return x, y


FASHION_PIXELS = 784


def read_fashion_csv(path: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads ``label, pixel1 .. pixel784`` rows; pixels scaled to [0, 1].

  The first non-blank line is a header when none of its cells is a number.
  """
  path = _require_file(path, "fashion-csv")
  if not os.path.isfile(path):
    raise DataError(f"{path}: is a directory; --data fashion-csv needs the CSV file.")
  try:
    with open(path, encoding="utf-8") as handle:
      first_index, first = next(
          ((i, line) for i, line in enumerate(handle) if line.strip()), (0, None))
  except UnicodeDecodeError as error:
    raise DataError(f"{path}: not a text CSV file ({error}); a gzipped CSV must be "
                    "decompressed first.") from error
  if first is None:
    raise DataError(f"{path}: the file is empty; expected rows of 1 label + "
                    f"{FASHION_PIXELS} pixel values.")
  has_header = not any(_is_number(token) for token in first.strip().split(","))
  try:
    table = np.loadtxt(path, delimiter=",", skiprows=first_index + 1 if has_header else 0,
                       dtype=np.float64, ndmin=2, encoding="utf-8")
  except ValueError as error:
    raise DataError(f"{path}: not a numeric CSV of 1 label + {FASHION_PIXELS} pixel "
                    f"columns ({error}).") from error
  if table.shape[0] == 0:
    raise DataError(f"{path}: no data rows after the header.")
  if table.shape[1] != 1 + FASHION_PIXELS:
    raise DataError(f"{path}: rows have {table.shape[1]} columns; expected "
                    f"{1 + FASHION_PIXELS} (label + {FASHION_PIXELS} pixels).")
  labels = table[:, 0]
  bad_labels = ~np.isfinite(labels) | (labels != np.round(labels)) | (labels < 0) | (
      labels > 9)
  if bad_labels.any():
    bad = int(np.argmax(bad_labels))
    raise DataError(f"{path}: data row {bad + 1} has label {labels[bad]!r}; labels must "
                    "be integers 0-9.")
  pixels = table[:, 1:]
  bad_pixels = (~np.isfinite(pixels) | (pixels < 0) | (pixels > 255)).any(1)
  if bad_pixels.any():
    raise DataError(f"{path}: data row {int(np.argmax(bad_pixels)) + 1} has pixel values "
                    "outside [0, 255] (or not finite).")
  return (pixels / 255.0).astype(np.float32), labels.astype(np.int32)


def _is_number(token: str) -> bool:
  try:
    float(token)
  except ValueError:
    return False
  return True


_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str) -> np.ndarray:
  """Reads an IDX file (optionally gzipped): magic ``00 00 type ndim``, big-endian dims."""
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as handle:
      raw = handle.read()
  except FileNotFoundError as error:
    raise DataError(f"{path}: file not found.") from error
  except (OSError, EOFError, zlib.error) as error:  # includes gzip.BadGzipFile
    raise DataError(f"{path}: cannot be read ({type(error).__name__}: {error}).") from error
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
    raise DataError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()!r}; "
                    "expected 0000 + type code + number of dimensions).")
  dtype, ndim = np.dtype(_IDX_TYPES[raw[2]]), raw[3]
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise DataError(f"{path}: truncated header ({len(raw)} bytes).")
  shape = struct.unpack(f">{ndim}I", raw[4:header])
  expected = int(np.prod(shape)) * dtype.itemsize
  if len(raw) - header != expected:
    raise DataError(f"{path}: header says shape {shape} ({expected} data bytes) but the "
                    f"file has {len(raw) - header} data bytes.")
  return np.frombuffer(raw, dtype, offset=header).reshape(shape)


def _idx_paths(path: str) -> tuple[str, str]:
  if "," in path:
    images, labels = path.split(",", 1)
    return images, labels
  _require_file(path, "idx")
  if not os.path.isdir(path):
    raise DataError(f"{path}: for --data idx give a directory with train-images-idx3-ubyte "
                    "and train-labels-idx1-ubyte, or IMAGES,LABELS.")
  found = []
  for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
    candidates = [os.path.join(path, stem + ext) for ext in ("", ".gz")]
    existing = [c for c in candidates if os.path.exists(c)]
    if not existing:
      raise DataError(f"{path}: no {stem} (or {stem}.gz) in this directory.")
    found.append(existing[0])
  return found[0], found[1]


def load_idx_arrays(path: str | None) -> tuple[np.ndarray, np.ndarray]:
  """Images (flattened, / 255) and labels from a pair of IDX files."""
  if not path:
    raise DataError("--data idx needs --data-path (a directory or IMAGES,LABELS).")
  images_path, labels_path = _idx_paths(path)
  images, labels = read_idx(images_path), read_idx(labels_path)
  if labels.ndim != 1:
    raise DataError(f"{labels_path}: labels must be 1-D; got shape {labels.shape}.")
  if images.ndim == 0 or images.shape[0] == 0:
    raise DataError(f"{images_path}: holds no examples (shape {images.shape}).")
  if images.shape[0] != labels.shape[0]:
    raise DataError(f"{images_path} has {images.shape[0]} images but {labels_path} has "
                    f"{labels.shape[0]} labels.")
  return (images.reshape(len(images), -1) / 255.0).astype(np.float32), labels.astype(np.int32)


DATASETS = ("digits", "mnist1d", "fashion-csv", "idx")


def load_dataset(name: str = "digits", *, path: str | None = None, seed: int = 0,
                 test_fraction: float = 0.2) -> Dataset:
  """Loads ``name`` (see the module docstring) and splits it with ``seed``."""
  if name == "digits":
    x, y = load_digits_arrays()
  elif name == "mnist1d":
    x, y = load_mnist1d_arrays()
  elif name == "fashion-csv":
    x, y = read_fashion_csv(path)
  elif name == "idx":
    x, y = load_idx_arrays(path)
  else:
    raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}.")
  x_train, y_train, x_test, y_test = split(x, y, seed=seed, test_fraction=test_fraction)
  # The offline sets and Fashion-MNIST have 10 classes; user IDX files may have more.
  num_classes = max(int(y.max()) + 1, 10)
  return Dataset(name, x_train, y_train, x_test, y_test, num_classes)
