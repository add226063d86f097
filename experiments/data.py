"""Offline data sets and loaders for user files, with deterministic seeded splits.

- ``digits``: scikit-learn's ``load_digits`` (1,797 real 8x8 digits shipped with the
  package), pixels / 16. The default.
- ``mnist1d``: the ``mnist1d`` package's ``make_dataset`` (5,000 length-40 signals,
  generated locally; its downloader is never called).
- ``fashion-csv``: the CSV layout of the Fashion-MNIST notebook (first column the
  label, then 784 pixel columns; an optional header row; UTF-8, with or without a
  byte-order mark).
- ``idx``: IDX files as MNIST/Fashion-MNIST ship them (``--data-path`` is a directory
  with ``train-images-idx3-ubyte`` and ``train-labels-idx1-ubyte``, optionally
  gzipped, or ``IMAGES,LABELS``).

Every loader applies the same rules, and a violation is a :class:`DataError` naming
the file, the row (CSV: the line of the file; IDX: the example) and the value:

- labels are whole numbers in ``[0, num_classes)``: 0-9 for ``fashion-csv``, fewer than
  :data:`MAX_CLASSES` for ``idx`` (a label of 2**31 - 1 would ask for a Dense layer of
  two billion outputs);
- features are finite;
- image pixels (``fashion-csv``, ``idx``): integer-typed pixels are on the 0-255 scale
  and are divided by 255; floating-point pixels that all lie in [0, 1] are already
  scaled and kept as they are, otherwise they must lie in [0, 255] and are divided by
  255;
- the seeded split (80/20 by default) must leave at least one test example and, when
  the batch size is given, at least one batch of training examples.
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


#: Labels of user files must be below this: a stray huge label would otherwise ask for
#: a classifier with that many outputs.
MAX_CLASSES = 1000


def _example(index: int) -> str:
  return f"example {index}"


def split(x: np.ndarray, y: np.ndarray, *, seed: int, test_fraction: float = 0.2):
  """Seeded shuffle, then the first ``1 - test_fraction`` for training.

  Raises:
    DataError: ``test_fraction`` is not in (0, 1), or the split leaves no training or
      no test example.
  """
  if not 0.0 < test_fraction < 1.0:
    raise DataError(f"test_fraction must be in (0, 1); got {test_fraction}.")
  n_train = int(round((1.0 - test_fraction) * len(x)))
  if n_train < 1 or n_train >= len(x):
    raise DataError(
        f"a split with test_fraction {test_fraction} of {len(x)} example(s) gives "
        f"{n_train} training and {len(x) - n_train} test example(s); both must be at "
        "least 1. Use more data or another test_fraction.")
  order = np.random.default_rng(seed).permutation(len(x))
  train, test = order[:n_train], order[n_train:]
  return x[train], y[train], x[test], y[test]


def check_labels(labels: np.ndarray, *, source: str, num_classes: int,
                 where=_example) -> np.ndarray:
  """``labels`` as int32 after checking they are whole numbers in [0, num_classes).

  Args:
    labels: 1-D labels of any numeric dtype.
    source: the file (or data set) they come from, for messages.
    num_classes: the exclusive upper bound.
    where: names the position of label ``index`` in the file (e.g. its line).
  """
  values = np.asarray(labels)
  if not (np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype,
                                                                  np.floating)):
    raise DataError(f"{source}: labels must be numbers; got dtype {values.dtype}.")
  as_float = values.astype(np.float64)
  bad = ~np.isfinite(as_float) | (as_float != np.round(as_float)) | (as_float < 0) | (
      as_float >= num_classes)
  if bad.any():
    index = int(np.argmax(bad))
    raise DataError(
        f"{source}: {where(index)} has label {values[index].item()!r}; labels must be "
        f"whole numbers 0-{num_classes - 1} ({int(bad.sum())} label(s) are not). Fix or "
        "drop those examples.")
  return values.astype(np.int32)


def check_features(x: np.ndarray, *, source: str,
                   where=_example) -> np.ndarray:
  """``x`` after checking every value is finite (``(N, ...)``, any float dtype)."""
  finite = np.isfinite(x).reshape(len(x), -1).all(axis=1)
  if not finite.all():
    index = int(np.argmin(finite))
    row = np.asarray(x[index]).reshape(-1)
    column = int(np.argmin(np.isfinite(row)))
    value = row[column].item()
    raise DataError(f"{source}: {where(index)} has the non-finite value {value!r} at "
                    f"feature {column}; every value must be finite.")
  return x


def scale_pixels(pixels: np.ndarray, *, source: str,
                 where=_example) -> np.ndarray:
  """Image pixels as float32 in [0, 1] (the rules in the module docstring)."""
  pixels = np.asarray(pixels)
  if pixels.dtype.kind in "biu":
    scale = 255.0
  else:
    check_features(pixels, source=source, where=where)
    flat = pixels.reshape(len(pixels), -1)
    scale = 1.0 if flat.size and 0.0 <= flat.min() and flat.max() <= 1.0 else 255.0
  flat = pixels.reshape(len(pixels), -1)
  outside = ((flat < 0) | (flat > 255)).any(axis=1)
  if outside.any():
    index = int(np.argmax(outside))
    row = flat[index]
    column = int(np.argmax((row < 0) | (row > 255)))
    raise DataError(f"{source}: {where(index)} has pixel value {row[column].item()!r} at "
                    f"pixel {column}; pixels must be in [0, 255] (or all in [0, 1] for "
                    "floating-point images).")
  return (pixels.astype(np.float64) / scale).astype(np.float32)


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

  The first non-blank line is a header when its first cell is not a number (e.g.
  ``label,pixel1,...`` or ``label,1,2,...``) or when it numbers the columns
  (``0,1,...,784`` or ``1,...,785``, which cannot be data: pixels stop at 255). Blank
  lines are skipped; errors name the line of the file (``line 5 (data row 3)``).
  """
  path = _require_file(path, "fashion-csv")
  if not os.path.isfile(path):
    raise DataError(f"{path}: is a directory; --data fashion-csv needs the CSV file.")
  try:
    with open(path, encoding="utf-8-sig") as handle:  # tolerates a byte-order mark
      lines = [(number, line) for number, line in enumerate(handle, start=1)
               if line.strip()]
  except UnicodeDecodeError as error:
    raise DataError(f"{path}: not a UTF-8 text CSV file ({error}); a gzipped CSV must be "
                    "decompressed first.") from None
  if not lines:
    raise DataError(f"{path}: the file is empty; expected rows of 1 label + "
                    f"{FASHION_PIXELS} pixel values.")
  header = _header_kind(lines[0][1])
  if header:
    lines = lines[1:]
  if not lines:
    raise DataError(f"{path}: no data rows after the header.")
  numbers = np.array([number for number, _ in lines])

  def where(index):
    return f"line {numbers[index]} (data row {index + 1})"

  try:
    table = np.loadtxt([line for _, line in lines], delimiter=",", dtype=np.float64,
                       ndmin=2)
  except ValueError:
    table = None
  if table is None or table.shape[1] != 1 + FASHION_PIXELS:
    _raise_csv_format(path, lines, where, header)
  hint = "" if header else (
      f" If line {numbers[0]} is a header, give it a non-numeric cell such as 'label'.")
  try:
    labels = check_labels(table[:, 0], source=path, num_classes=10, where=where)
    check_features(table[:, 1:], source=path, where=where)
    pixels = scale_pixels(table[:, 1:], source=path, where=where)
  except DataError as error:
    if hint and "data row 1)" in str(error):
      raise DataError(f"{error}{hint}") from None
    raise
  return pixels, labels


def _header_kind(line: str) -> str:
  """``'names'`` or ``'numbers'`` when ``line`` is a header row, else ``''``.

  A data row always starts with a numeric label, so a first cell that is not a number
  (or a row without any number) marks a header; a row with a numeric label and one
  damaged cell stays data and is reported.
  """
  cells = [cell.strip() for cell in line.split(",")]
  numeric = [_is_number(cell) for cell in cells]
  if not numeric[0] or not any(numeric):
    return "names"
  if not all(numeric):
    return ""
  values = [float(cell) for cell in cells]
  for start in (0, 1):
    if values == [float(start + i) for i in range(1 + FASHION_PIXELS)]:
      return "numbers"
  return ""


def _raise_csv_format(path: str, lines, where, header: str):
  """The first line that is not ``1 + FASHION_PIXELS`` numbers, as a DataError."""
  expected = 1 + FASHION_PIXELS
  for index, (_, line) in enumerate(lines):
    cells = [cell.strip() for cell in line.rstrip("\r\n").split(",")]
    if len(cells) != expected:
      raise DataError(f"{path}: {where(index)} has {len(cells)} columns; expected "
                      f"{expected} (label + {FASHION_PIXELS} pixels).")
    for column, cell in enumerate(cells):
      if not _is_number(cell):
        hint = (" It looks like a second header row." if index == 0 and header else "")
        raise DataError(f"{path}: not a numeric CSV of 1 label + {FASHION_PIXELS} pixel "
                        f"columns: {where(index)}, column {column + 1} is {cell!r}.{hint}")
  raise DataError(f"{path}: not a numeric CSV of 1 label + {FASHION_PIXELS} pixel "
                  "columns.")


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
  """Images (flattened, scaled to [0, 1]) and labels from a pair of IDX files."""
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
  labels = check_labels(labels, source=labels_path, num_classes=MAX_CLASSES)
  pixels = scale_pixels(images.reshape(len(images), -1), source=images_path)
  return pixels, labels


DATASETS = ("digits", "mnist1d", "fashion-csv", "idx")


def load_dataset(name: str = "digits", *, path: str | None = None, seed: int = 0,
                 test_fraction: float = 0.2, batch_size: int | None = None) -> Dataset:
  """Loads ``name`` (see the module docstring) and splits it with ``seed``.

  With ``batch_size``, a split that leaves fewer training examples than one batch is a
  :class:`DataError` here, before any training starts.
  """
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
  source = path if path else name
  y = check_labels(y, source=source, num_classes=MAX_CLASSES)
  x = check_features(x, source=source)
  try:
    x_train, y_train, x_test, y_test = split(x, y, seed=seed, test_fraction=test_fraction)
  except DataError as error:
    raise DataError(f"{source}: {error}") from None
  if batch_size is not None and len(x_train) < batch_size:
    raise DataError(
        f"{source}: the split leaves {len(x_train)} training example(s) (of {len(x)}, "
        f"test_fraction {test_fraction}), fewer than one batch of {batch_size}. Use more "
        "data or a smaller batch size.")
  # The offline sets and Fashion-MNIST have 10 classes; user IDX files may have more.
  num_classes = max(int(y.max()) + 1, 10)
  return Dataset(name, x_train, y_train, x_test, y_test, num_classes)
