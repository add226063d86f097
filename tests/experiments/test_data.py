"""Tests of experiments.data: the offline sets, the CSV and IDX loaders, the seeded split.

Every user-file test writes its own small file under ``tmp_path``; nothing is downloaded.
"""

from __future__ import annotations

import gzip
import os
import socket
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments import data as data_lib
from experiments.data import DataError

PIXELS = 784
HEADER = "label," + ",".join(f"pixel{i}" for i in range(1, PIXELS + 1))


# --------------------------------------------------------------------------- helpers


def _fashion_table(rows: int, seed: int = 0) -> np.ndarray:
  """Integer ``(rows, 785)`` table: label column 0-9, then pixels in [0, 255]."""
  rng = np.random.default_rng(seed)
  table = rng.integers(0, 256, size=(rows, 1 + PIXELS))
  table[:, 0] = np.arange(rows) % 10
  table[0, 1], table[0, 2] = 0, 255  # both ends of the pixel range
  return table


def _write_lines(path, lines) -> str:
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return str(path)


def _rows_as_text(table) -> list[str]:
  return [",".join(str(v) for v in row) for row in table]


def _write_fashion(path, table, *, header: bool) -> str:
  lines = _rows_as_text(table)
  return _write_lines(path, ([HEADER] if header else []) + lines)


def _expected_pixels(table) -> np.ndarray:
  return (np.asarray(table[:, 1:], np.float64) / 255.0).astype(np.float32)


def _idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
  header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I",
                                                              *array.shape)
  return header + np.ascontiguousarray(array, np.uint8).tobytes()


def _write_idx(path, array: np.ndarray, type_code: int = 0x08) -> str:
  raw = _idx_bytes(array, type_code)
  path = str(path)
  if path.endswith(".gz"):
    raw = gzip.compress(raw)
  with open(path, "wb") as handle:
    handle.write(raw)
  return path


def _images_labels(n: int, side: int = 4, seed: int = 0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, size=(n, side, side), dtype=np.uint8)
  images[0, 0, 0], images[0, 0, 1] = 0, 255
  labels = (np.arange(n) % 10).astype(np.uint8)
  return images, labels


def _assert_data_error(excinfo, *fragments):
  message = str(excinfo.value)
  for fragment in fragments:
    assert fragment in message, f"{fragment!r} not in {message!r}"


# --------------------------------------------------------------------------- fashion-csv


def test_data_error_is_a_value_error():
  assert issubclass(DataError, ValueError)


@pytest.mark.parametrize("header", [True, False], ids=["header", "no-header"])
def test_read_fashion_csv_values(tmp_path, header):
  table = _fashion_table(12)
  path = _write_fashion(tmp_path / "fashion.csv", table, header=header)
  x, y = data_lib.read_fashion_csv(path)
  assert x.dtype == np.float32 and y.dtype == np.int32
  assert x.shape == (12, PIXELS) and y.shape == (12,)
  np.testing.assert_array_equal(y, table[:, 0])
  np.testing.assert_array_equal(x, _expected_pixels(table))
  assert x.min() == 0.0 and x.max() == 1.0


def test_read_fashion_csv_single_row(tmp_path):
  table = _fashion_table(1)
  x, y = data_lib.read_fashion_csv(_write_fashion(tmp_path / "one.csv", table, header=True))
  assert x.shape == (1, PIXELS)
  np.testing.assert_array_equal(y, [0])
  np.testing.assert_array_equal(x, _expected_pixels(table))


def test_load_dataset_fashion_csv_split(tmp_path):
  table = _fashion_table(50)
  path = _write_fashion(tmp_path / "fashion.csv", table, header=True)
  dataset = data_lib.load_dataset("fashion-csv", path=path, seed=3)
  assert dataset.name == "fashion-csv"
  assert dataset.x_train.shape == (40, PIXELS) and dataset.x_test.shape == (10, PIXELS)
  assert dataset.input_dim == PIXELS and dataset.num_classes == 10
  assert "784 features" in dataset.describe()
  # Every written row appears exactly once, with its own label.
  x = np.concatenate([dataset.x_train, dataset.x_test])
  y = np.concatenate([dataset.y_train, dataset.y_test])
  expected = _expected_pixels(table)
  order = np.lexsort(x.T[::-1])
  expected_order = np.lexsort(expected.T[::-1])
  np.testing.assert_array_equal(x[order], expected[expected_order])
  np.testing.assert_array_equal(y[order], table[expected_order, 0])
  again = data_lib.load_dataset("fashion-csv", path=path, seed=3)
  np.testing.assert_array_equal(again.x_train, dataset.x_train)
  np.testing.assert_array_equal(again.y_test, dataset.y_test)


def test_fashion_csv_missing_file(tmp_path):
  path = str(tmp_path / "nowhere.csv")
  with pytest.raises(DataError) as excinfo:
    data_lib.read_fashion_csv(path)
  _assert_data_error(excinfo, path, "not found")
  with pytest.raises(DataError) as excinfo:
    data_lib.load_dataset("fashion-csv", path=path)
  _assert_data_error(excinfo, path, "not found")


@pytest.mark.parametrize("content", ["", "\n", "   \n"], ids=["empty", "newline", "blank"])
def test_fashion_csv_empty_file(tmp_path, content):
  path = tmp_path / "empty.csv"
  path.write_text(content, encoding="utf-8")
  with pytest.raises(DataError) as excinfo:
    data_lib.read_fashion_csv(str(path))
  _assert_data_error(excinfo, str(path), "empty")


@pytest.mark.filterwarnings("ignore:loadtxt. input contained no data")
def test_fashion_csv_header_only(tmp_path):
  path = _write_lines(tmp_path / "header.csv", [HEADER])
  with pytest.raises(DataError) as excinfo:
    data_lib.read_fashion_csv(path)
  _assert_data_error(excinfo, path, "no data rows")


@pytest.mark.parametrize("header", [True, False], ids=["header", "no-header"])
@pytest.mark.parametrize("columns", [10, 784, 786])
def test_fashion_csv_wrong_column_count(tmp_path, header, columns):
  table = _fashion_table(3)
  if columns <= table.shape[1]:
    table = table[:, :columns]
  else:
    table = np.concatenate([table, np.zeros((3, columns - table.shape[1]), int)], axis=1)
  lines = _rows_as_text(table)
  if header:
    lines = [",".join(["label"] + [f"pixel{i}" for i in range(1, columns)])] + lines
  path = _write_lines(tmp_path / "columns.csv", lines)
  with pytest.raises(DataError) as excinfo:
    data_lib.read_fashion_csv(path)
  _assert_data_error(excinfo, path, f"{columns} columns", "expected 785")


def test_fashion_csv_ragged_rows(tmp_path):
  lines = _rows_as_text(_fashion_table(3))
  lines[1] = lines[1].rsplit(",", 1)[0]  # one row loses a pixel
  path = _write_lines(tmp_path / "ragged.csv", [HEADER] + lines)
  with pytest.raises(DataError) as excinfo:
    data_lib.read_fashion_csv(path)
  _assert_data_error(excinfo, path, "785", "784")


@pytest.mark.parametrize("header", [True, False], ids=["header", "no-header"])
@pytest.mark.parametrize("label", ["2.5", "10", "-1", "nan"])
def test_fashion_csv_bad_label_names_row(tmp_path, header, label):
  lines = _rows_as_text(_fashion_table(4))
  lines[2] = label + "," + lines[2].split(",", 1)[1]  # the third data row
  path = _write_lines(tmp_path / "labels.csv", ([HEADER] if header else []) + lines)
  with pytest.raises(DataError) as excinfo:
    data_lib.read_fashion_csv(path)
  _assert_data_error(excinfo, path, "row 3", "label", "0-9")


@pytest.mark.parametrize("pixel", ["256", "-1", "1000.5"])
def test_fashion_csv_pixel_out_of_range(tmp_path, pixel):
  lines = _rows_as_text(_fashion_table(4))
  lines[1] = lines[1].rsplit(",", 1)[0] + "," + pixel  # the second data row
  path = _write_lines(tmp_path / "pixels.csv", [HEADER] + lines)
  with pytest.raises(DataError) as excinfo:
    data_lib.read_fashion_csv(path)
  _assert_data_error(excinfo, path, "row 2", "[0, 255]")


def test_fashion_csv_nan_pixel_rejected(tmp_path):
  lines = _rows_as_text(_fashion_table(4))
  lines[1] = lines[1].rsplit(",", 1)[0] + ",nan"
  path = _write_lines(tmp_path / "nan.csv", [HEADER] + lines)
  with pytest.raises(DataError) as excinfo:
    data_lib.read_fashion_csv(path)
  _assert_data_error(excinfo, path)


@pytest.mark.parametrize("cell", ["abc", "", "12x"])
def test_fashion_csv_non_numeric_cell(tmp_path, cell):
  lines = _rows_as_text(_fashion_table(4))
  parts = lines[2].split(",")
  parts[100] = cell
  lines[2] = ",".join(parts)
  path = _write_lines(tmp_path / "cells.csv", [HEADER] + lines)
  with pytest.raises(DataError) as excinfo:
    data_lib.read_fashion_csv(path)
  _assert_data_error(excinfo, path, "not a numeric CSV")
  if cell:
    _assert_data_error(excinfo, repr(cell).strip("'"))


def test_fashion_csv_headerless_bad_first_row_is_not_dropped(tmp_path):
  lines = _rows_as_text(_fashion_table(4))
  parts = lines[0].split(",")
  parts[100] = "12x"
  lines[0] = ",".join(parts)
  path = _write_lines(tmp_path / "first.csv", lines)
  with pytest.raises(DataError) as excinfo:
    data_lib.read_fashion_csv(path)
  _assert_data_error(excinfo, path)


def test_fashion_csv_directory_path(tmp_path):
  with pytest.raises(DataError) as excinfo:
    data_lib.read_fashion_csv(str(tmp_path))
  _assert_data_error(excinfo, str(tmp_path))


def test_fashion_csv_binary_file(tmp_path):
  path = tmp_path / "fashion.csv.gz"
  path.write_bytes(gzip.compress(b"label,pixel1\n1,2\n"))
  with pytest.raises(DataError) as excinfo:
    data_lib.read_fashion_csv(str(path))
  _assert_data_error(excinfo, str(path))


@pytest.mark.parametrize("name", ["fashion-csv", "idx"])
@pytest.mark.parametrize("path", [None, ""])
def test_missing_data_path(name, path):
  with pytest.raises(DataError) as excinfo:
    data_lib.load_dataset(name, path=path)
  _assert_data_error(excinfo, f"--data {name}", "--data-path")


# --------------------------------------------------------------------------- idx


@pytest.mark.parametrize("side", [28, 4])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_round_trip(tmp_path, side, suffix):
  images, labels = _images_labels(7, side)
  image_path = _write_idx(tmp_path / f"images{suffix}", images)
  label_path = _write_idx(tmp_path / f"labels{suffix}", labels)
  read_images, read_labels = data_lib.read_idx(image_path), data_lib.read_idx(label_path)
  assert read_images.shape == (7, side, side) and read_images.dtype == np.uint8
  np.testing.assert_array_equal(read_images, images)
  np.testing.assert_array_equal(read_labels, labels)


def test_read_idx_other_type_code(tmp_path):
  values = np.array([[1, -2], [300, -40000]], ">i4")
  raw = bytes([0, 0, 0x0C, 2]) + struct.pack(">2I", 2, 2) + values.tobytes()
  path = tmp_path / "ints"
  path.write_bytes(raw)
  np.testing.assert_array_equal(data_lib.read_idx(str(path)), values)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("side", [28, 4])
def test_load_idx_directory(tmp_path, gz, side):
  images, labels = _images_labels(20, side)
  suffix = ".gz" if gz else ""
  _write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images)
  _write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels)
  x, y = data_lib.load_idx_arrays(str(tmp_path))
  assert x.dtype == np.float32 and y.dtype == np.int32
  assert x.shape == (20, side * side)
  expected = (images.reshape(20, -1).astype(np.float64) / 255.0).astype(np.float32)
  np.testing.assert_array_equal(x, expected)
  np.testing.assert_array_equal(y, labels)
  assert x.min() == 0.0 and x.max() == 1.0

  dataset = data_lib.load_dataset("idx", path=str(tmp_path), seed=1)
  assert dataset.x_train.shape == (16, side * side) and dataset.x_test.shape == (4, side * side)
  assert dataset.input_dim == side * side and dataset.num_classes == 10
  assert sorted(np.concatenate([dataset.y_train, dataset.y_test]).tolist()) == \
      sorted(labels.tolist())


def test_load_idx_directory_mixed_compression(tmp_path):
  images, labels = _images_labels(5)
  _write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
  _write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
  x, y = data_lib.load_idx_arrays(str(tmp_path))
  np.testing.assert_array_equal(x * 255.0, images.reshape(5, -1).astype(np.float32))
  np.testing.assert_array_equal(y, labels)


@pytest.mark.parametrize("suffixes", [("", ""), (".gz", ".gz"), ("", ".gz")])
def test_load_idx_pair(tmp_path, suffixes):
  images, labels = _images_labels(9, 28)
  image_path = _write_idx(tmp_path / f"imgs{suffixes[0]}", images)
  label_path = _write_idx(tmp_path / f"lbls{suffixes[1]}", labels)
  x, y = data_lib.load_idx_arrays(f"{image_path},{label_path}")
  assert x.shape == (9, 784)
  np.testing.assert_array_equal(x, (images.reshape(9, -1) / 255.0).astype(np.float32))
  np.testing.assert_array_equal(y, labels)
  dataset = data_lib.load_dataset("idx", path=f"{image_path},{label_path}")
  assert dataset.input_dim == 784
  assert len(dataset.x_train) + len(dataset.x_test) == 9


def test_load_idx_more_than_ten_classes(tmp_path):
  images, _ = _images_labels(15)
  labels = np.arange(15, dtype=np.uint8)
  image_path = _write_idx(tmp_path / "i", images)
  label_path = _write_idx(tmp_path / "l", labels)
  assert data_lib.load_dataset("idx", path=f"{image_path},{label_path}").num_classes == 15


@pytest.mark.parametrize("magic", [b"\x00\x00\x07\x03", b"\x08\x03\x00\x00",
                                   b"\x01\x00\x08\x03", b"\x00\x00"],
                         ids=["type-code", "swapped", "nonzero-lead", "short"])
def test_read_idx_bad_magic(tmp_path, magic):
  path = tmp_path / "bad-magic"
  path.write_bytes(magic + (struct.pack(">3I", 1, 4, 4) + bytes(16) if len(magic) == 4 else b""))
  with pytest.raises(DataError) as excinfo:
    data_lib.read_idx(str(path))
  _assert_data_error(excinfo, str(path), "magic")


def test_read_idx_bad_magic_through_loader(tmp_path):
  _, labels = _images_labels(3)
  (tmp_path / "train-images-idx3-ubyte").write_bytes(b"PK\x03\x04" + bytes(64))
  _write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
  with pytest.raises(DataError) as excinfo:
    data_lib.load_dataset("idx", path=str(tmp_path))
  _assert_data_error(excinfo, "train-images-idx3-ubyte", "magic")


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("extra", [-1, -16, 1], ids=["one-short", "one-image-short",
                                                     "one-extra"])
def test_read_idx_wrong_data_length(tmp_path, suffix, extra):
  images, _ = _images_labels(3)
  raw = _idx_bytes(images)
  raw = raw[:extra] if extra < 0 else raw + bytes(extra)
  path = tmp_path / f"images{suffix}"
  path.write_bytes(gzip.compress(raw) if suffix else raw)
  with pytest.raises(DataError) as excinfo:
    data_lib.read_idx(str(path))
  _assert_data_error(excinfo, str(path), "(3, 4, 4)", "48 data bytes",
                     f"{48 + extra} data bytes")


def test_read_idx_truncated_header(tmp_path):
  path = tmp_path / "header"
  path.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">I", 3))
  with pytest.raises(DataError) as excinfo:
    data_lib.read_idx(str(path))
  _assert_data_error(excinfo, str(path), "truncated header")


def test_read_idx_truncated_gzip(tmp_path):
  images, _ = _images_labels(3)
  compressed = gzip.compress(_idx_bytes(images))
  path = tmp_path / "images.gz"
  path.write_bytes(compressed[:len(compressed) // 2])
  with pytest.raises(DataError) as excinfo:
    data_lib.read_idx(str(path))
  _assert_data_error(excinfo, str(path))


def test_read_idx_not_gzip(tmp_path):
  images, _ = _images_labels(3)
  path = tmp_path / "images.gz"
  path.write_bytes(_idx_bytes(images))  # named .gz but not compressed
  with pytest.raises(DataError) as excinfo:
    data_lib.read_idx(str(path))
  _assert_data_error(excinfo, str(path), "cannot be read")


def test_read_idx_missing_file(tmp_path):
  path = str(tmp_path / "absent")
  with pytest.raises(DataError) as excinfo:
    data_lib.read_idx(path)
  _assert_data_error(excinfo, path, "not found")


def test_load_idx_count_mismatch(tmp_path):
  images, _ = _images_labels(6)
  image_path = _write_idx(tmp_path / "train-images-idx3-ubyte", images)
  label_path = _write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(5, dtype=np.uint8))
  for path in (str(tmp_path), f"{image_path},{label_path}"):
    with pytest.raises(DataError) as excinfo:
      data_lib.load_dataset("idx", path=path)
    _assert_data_error(excinfo, image_path, label_path, "6 images", "5 labels")


@pytest.mark.parametrize("present", [[], ["train-images-idx3-ubyte"],
                                     ["train-labels-idx1-ubyte.gz"]],
                         ids=["empty", "images-only", "labels-only"])
def test_load_idx_directory_without_files(tmp_path, present):
  images, labels = _images_labels(4)
  for name in present:
    _write_idx(tmp_path / name, images if "images" in name else labels)
  (tmp_path / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(images))  # not the train set
  missing = ("train-images-idx3-ubyte" if "train-images-idx3-ubyte" not in present
             else "train-labels-idx1-ubyte")
  with pytest.raises(DataError) as excinfo:
    data_lib.load_dataset("idx", path=str(tmp_path))
  _assert_data_error(excinfo, str(tmp_path), missing)


def test_load_idx_path_not_found_or_not_directory(tmp_path):
  absent = str(tmp_path / "absent-dir")
  with pytest.raises(DataError) as excinfo:
    data_lib.load_idx_arrays(absent)
  _assert_data_error(excinfo, absent, "not found")
  images, _ = _images_labels(2)
  single = _write_idx(tmp_path / "train-images-idx3-ubyte", images)
  with pytest.raises(DataError) as excinfo:
    data_lib.load_idx_arrays(single)
  _assert_data_error(excinfo, single, "directory", "IMAGES,LABELS")


@pytest.mark.parametrize("which", ["images", "labels"])
def test_load_idx_pair_missing_file(tmp_path, which):
  images, labels = _images_labels(4)
  image_path = str(tmp_path / "imgs")
  label_path = str(tmp_path / "lbls")
  if which == "images":
    _write_idx(label_path, labels)
  else:
    _write_idx(image_path, images)
  with pytest.raises(DataError) as excinfo:
    data_lib.load_dataset("idx", path=f"{image_path},{label_path}")
  _assert_data_error(excinfo, image_path if which == "images" else label_path, "not found")


def test_load_idx_labels_not_one_dimensional(tmp_path):
  images, labels = _images_labels(4)
  image_path = _write_idx(tmp_path / "imgs", images)
  label_path = _write_idx(tmp_path / "lbls", labels.reshape(4, 1))
  with pytest.raises(DataError) as excinfo:
    data_lib.load_idx_arrays(f"{image_path},{label_path}")
  _assert_data_error(excinfo, label_path, "1-D", "(4, 1)")


def test_load_idx_zero_examples(tmp_path):
  image_path = _write_idx(tmp_path / "imgs", np.zeros((0, 4, 4), np.uint8))
  label_path = _write_idx(tmp_path / "lbls", np.zeros((0,), np.uint8))
  with pytest.raises(DataError) as excinfo:
    data_lib.load_dataset("idx", path=f"{image_path},{label_path}")
  _assert_data_error(excinfo, image_path)


# --------------------------------------------------------------------------- split


def _split_arrays(n):
  x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
  return x, np.arange(n) * 7


def test_split_deterministic_and_seed_dependent():
  x, y = _split_arrays(100)
  first = data_lib.split(x, y, seed=5)
  second = data_lib.split(x, y, seed=5)
  other = data_lib.split(x, y, seed=6)
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(first[1], other[1])
  assert not np.array_equal(first[3], other[3])
  # A shuffle, not the identity.
  assert not np.array_equal(first[1], np.sort(first[1]))


@pytest.mark.parametrize("n", [100, 1797, 7])
def test_split_disjoint_covering_sizes(n):
  x, y = _split_arrays(n)
  x_train, y_train, x_test, y_test = data_lib.split(x, y, seed=0)
  n_train = int(round(0.8 * n))
  assert len(x_train) == len(y_train) == n_train
  assert len(x_test) == len(y_test) == n - n_train
  if n == 100:
    assert (len(x_train), len(x_test)) == (80, 20)
  train_ids, test_ids = set(y_train.tolist()), set(y_test.tolist())
  assert not train_ids & test_ids
  assert train_ids | test_ids == set(y.tolist())
  # Features stay with their labels.
  np.testing.assert_array_equal(x_train[:, 0], y_train / 7 * 3)
  np.testing.assert_array_equal(x_test[:, 0], y_test / 7 * 3)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), fraction=st.floats(0.01, 0.99), seed=st.integers(0, 2**31))
def test_split_properties(n, fraction, seed):
  x, y = _split_arrays(n)
  n_train = int(round((1 - fraction) * n))
  if not 0 < n_train < n:  # no training or no test example: an error, never a silent split
    with pytest.raises(DataError, match=f"gives {n_train} training and {n - n_train} test"):
      data_lib.split(x, y, seed=seed, test_fraction=fraction)
    return
  x_train, y_train, x_test, y_test = data_lib.split(x, y, seed=seed, test_fraction=fraction)
  assert len(y_train) == n_train and len(y_test) == n - n_train
  assert sorted(np.concatenate([y_train, y_test]).tolist()) == y.tolist()
  np.testing.assert_array_equal(x_train[:, 0], y_train / 7 * 3)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.2, 1.5, float("nan")])
def test_split_invalid_fraction(fraction):
  x, y = _split_arrays(10)
  with pytest.raises(ValueError, match="test_fraction"):
    data_lib.split(x, y, seed=0, test_fraction=fraction)


def test_load_dataset_passes_test_fraction():
  dataset = data_lib.load_dataset("digits", seed=0, test_fraction=0.5)
  assert len(dataset.x_train) == round(0.5 * 1797)
  with pytest.raises(ValueError, match="test_fraction"):
    data_lib.load_dataset("digits", test_fraction=1.0)


# --------------------------------------------------------------------------- digits


def test_digits():
  dataset = data_lib.load_dataset("digits")
  assert dataset.name == "digits"
  assert dataset.x_train.shape == (1438, 64) and dataset.x_test.shape == (359, 64)
  assert len(dataset.y_train) == 1438 and len(dataset.y_test) == 359
  assert dataset.x_train.dtype == np.float32
  assert np.issubdtype(dataset.y_train.dtype, np.integer)
  x = np.concatenate([dataset.x_train, dataset.x_test])
  y = np.concatenate([dataset.y_train, dataset.y_test])
  assert x.min() == 0.0 and x.max() == 1.0
  assert sorted(set(y.tolist())) == list(range(10)) and dataset.num_classes == 10
  assert dataset.input_dim == 64
  assert dataset.describe() == "digits: 1438 train / 359 test examples, 64 features, 10 classes"
  again = data_lib.load_dataset("digits", seed=0)
  np.testing.assert_array_equal(again.x_train, dataset.x_train)
  np.testing.assert_array_equal(again.y_test, dataset.y_test)
  other = data_lib.load_dataset("digits", seed=1)
  assert not np.array_equal(other.y_train, dataset.y_train)


def test_digits_matches_sklearn():
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  x, y = data_lib.load_digits_arrays()
  reference = load_digits()
  np.testing.assert_array_equal(x, (reference.data / 16.0).astype(np.float32))
  np.testing.assert_array_equal(y, reference.target)


# --------------------------------------------------------------------------- mnist1d


@pytest.fixture
def no_network(monkeypatch, tmp_path):
  """Any download attempt is recorded and fails; mnist1d's own fallbacks can't hide it."""
  import mnist1d.data  # pylint: disable=import-outside-toplevel
  import requests  # pylint: disable=import-outside-toplevel
  attempts = []

  def refuse(name):
    def blocked(*args, **kwargs):
      attempts.append((name, args, kwargs))
      raise RuntimeError(f"network access attempted via {name}")
    return blocked

  monkeypatch.setattr(mnist1d.data, "get_dataset", refuse("mnist1d.data.get_dataset"))
  monkeypatch.setattr(mnist1d.data.requests, "get", refuse("mnist1d.data.requests.get"))
  monkeypatch.setattr(requests, "get", refuse("requests.get"))
  monkeypatch.setattr(requests.Session, "request", refuse("requests.Session.request"))
  monkeypatch.setattr(socket.socket, "connect", refuse("socket.connect"))
  monkeypatch.setattr(socket, "create_connection", refuse("socket.create_connection"))
  monkeypatch.chdir(tmp_path)  # get_dataset would write ./mnist1d_data.pkl here
  yield attempts
  assert not attempts, f"download attempted: {attempts}"
  assert not os.listdir(tmp_path), f"files written: {os.listdir(tmp_path)}"


def test_no_network_guard_catches_downloader(no_network):
  import mnist1d.data  # pylint: disable=import-outside-toplevel
  with pytest.raises(RuntimeError, match="network"):
    mnist1d.data.get_dataset(mnist1d.data.get_dataset_args())
  assert no_network
  no_network.clear()


def test_mnist1d(no_network):
  dataset = data_lib.load_dataset("mnist1d", seed=0)
  assert dataset.name == "mnist1d"
  assert dataset.x_train.shape == (4000, 40) and dataset.x_test.shape == (1000, 40)
  assert dataset.x_train.dtype == np.float32 and dataset.input_dim == 40
  assert np.all(np.isfinite(dataset.x_train))
  y = np.concatenate([dataset.y_train, dataset.y_test])
  assert dataset.num_classes == 10
  np.testing.assert_array_equal(np.bincount(y, minlength=10), [500] * 10)
  assert "40 features" in dataset.describe()
  assert not no_network


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["mnist", "Digits", "fashion", ""])
def test_unknown_dataset(name):
  with pytest.raises(ValueError) as excinfo:
    data_lib.load_dataset(name)
  message = str(excinfo.value)
  assert repr(name) in message
  for choice in ("digits", "mnist1d", "fashion-csv", "idx"):
    assert choice in message


# --------------------------------------------------------------------------- shared rules


def _write_idx_typed(path, array: np.ndarray, type_code: int) -> str:
  """An IDX file of any element type (big-endian, as the format stores it)."""
  dtype = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4",
           0x0E: ">f8"}[type_code]
  header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I",
                                                              *array.shape)
  path.write_bytes(header + np.ascontiguousarray(array, dtype).tobytes())
  return str(path)


@pytest.mark.parametrize("type_code,label", [
    (0x09, -1), (0x0D, 2.7), (0x0C, 2**31 - 1), (0x0B, 1000), (0x0E, float("nan")),
    (0x0D, float("inf"))])
def test_idx_bad_label_names_file_example_and_value(tmp_path, type_code, label):
  images, labels = _images_labels(6)
  labels = labels.astype(np.float64)
  labels[4] = label
  image_path = _write_idx(tmp_path / "imgs", images)
  label_path = _write_idx_typed(tmp_path / "lbls", labels, type_code)
  with pytest.raises(DataError) as excinfo:
    data_lib.load_dataset("idx", path=f"{image_path},{label_path}")
  message = str(excinfo.value)
  assert message.startswith(label_path + ": example 4 has label ")
  assert repr(np.asarray(labels[4], {0x09: np.int8, 0x0B: np.int16, 0x0C: np.int32}.get(
      type_code, np.float64)).item()).rstrip("0").rstrip(".") in message
  assert "0-999" in message


def test_idx_labels_of_every_integer_type_and_whole_floats_load(tmp_path):
  images, labels = _images_labels(12)
  labels = (np.arange(12) * 83 % 1000).astype(np.int64)  # up to 913 < MAX_CLASSES
  image_path = _write_idx(tmp_path / "imgs", images)
  for type_code in (0x0B, 0x0C, 0x0D, 0x0E):
    label_path = _write_idx_typed(tmp_path / f"lbls{type_code}", labels, type_code)
    x, y = data_lib.load_idx_arrays(f"{image_path},{label_path}")
    assert y.dtype == np.int32
    np.testing.assert_array_equal(y, labels)
  dataset = data_lib.load_dataset("idx", path=f"{image_path},{label_path}")
  assert dataset.num_classes == labels.max() + 1


@pytest.mark.parametrize("type_code", [0x0D, 0x0E])
def test_idx_float_images_already_in_unit_range_are_kept(tmp_path, type_code):
  rng = np.random.default_rng(1)
  images = rng.random((5, 4, 4))
  images[0, 0, 0], images[0, 0, 1] = 0.0, 1.0
  image_path = _write_idx_typed(tmp_path / "imgs", images, type_code)
  label_path = _write_idx(tmp_path / "lbls", np.arange(5, dtype=np.uint8))
  x, _ = data_lib.load_idx_arrays(f"{image_path},{label_path}")
  stored = images.astype(np.float32 if type_code == 0x0D else np.float64)
  np.testing.assert_array_equal(x, stored.reshape(5, -1).astype(np.float32))
  assert x.max() == 1.0  # not divided by 255 again


@pytest.mark.parametrize("type_code", [0x0D, 0x0E, 0x0B, 0x0C])
def test_idx_images_on_the_255_scale_are_divided(tmp_path, type_code):
  images = np.arange(5 * 16).reshape(5, 4, 4) * 3 % 256
  image_path = _write_idx_typed(tmp_path / "imgs", images, type_code)
  label_path = _write_idx(tmp_path / "lbls", np.arange(5, dtype=np.uint8))
  x, _ = data_lib.load_idx_arrays(f"{image_path},{label_path}")
  np.testing.assert_allclose(x, images.reshape(5, -1) / 255.0, rtol=1e-7)


@pytest.mark.parametrize("type_code,value,expected", [
    (0x0D, float("nan"), "non-finite value nan at feature 5"),
    (0x0E, float("-inf"), "non-finite value -inf at feature 5"),
    (0x0D, 255.5, "pixel value 255.5 at pixel 5"),
    (0x0D, -0.5, "pixel value -0.5 at pixel 5"),
    (0x09, -3, "pixel value -3 at pixel 5"),
    (0x0B, 300, "pixel value 300 at pixel 5")])
def test_idx_bad_pixels_name_file_example_and_value(tmp_path, type_code, value, expected):
  images = np.full((4, 2, 4), 7.0)
  images[2, 1, 1] = value  # flat pixel 5 of example 2
  image_path = _write_idx_typed(tmp_path / "imgs", images, type_code)
  label_path = _write_idx(tmp_path / "lbls", np.arange(4, dtype=np.uint8))
  with pytest.raises(DataError) as excinfo:
    data_lib.load_idx_arrays(f"{image_path},{label_path}")
  assert str(excinfo.value).startswith(f"{image_path}: example 2 has ")
  assert expected in str(excinfo.value)


@pytest.mark.parametrize("header", [True, False], ids=["header", "no-header"])
def test_fashion_csv_with_byte_order_mark(tmp_path, header):
  table = _fashion_table(6)
  plain = _write_fashion(tmp_path / "plain.csv", table, header=header)
  marked = tmp_path / "marked.csv"
  marked.write_bytes(b"\xef\xbb\xbf" + (tmp_path / "plain.csv").read_bytes())
  x, y = data_lib.read_fashion_csv(str(marked))
  x_plain, y_plain = data_lib.read_fashion_csv(plain)
  np.testing.assert_array_equal(x, x_plain)
  np.testing.assert_array_equal(y, y_plain)
  np.testing.assert_array_equal(x, _expected_pixels(table))


@pytest.mark.parametrize("header", [
    ",".join(str(i) for i in range(785)), ",".join(str(i) for i in range(1, 786)),
    "label," + ",".join(str(i) for i in range(1, 785)), "  label ,  " + ",".join(
        f"p{i}" for i in range(784))],
    ids=["numbered-from-0", "numbered-from-1", "label-then-numbers", "spaced-names"])
def test_fashion_csv_header_rows_are_recognised(tmp_path, header):
  table = _fashion_table(5)
  path = _write_lines(tmp_path / "header.csv", [header] + _rows_as_text(table))
  x, y = data_lib.read_fashion_csv(path)
  np.testing.assert_array_equal(y, table[:, 0])
  np.testing.assert_array_equal(x, _expected_pixels(table))


def test_fashion_csv_numeric_first_row_that_is_not_data_is_explained(tmp_path):
  """A numeric header that is not the column numbers fails as data, with a hint."""
  header = ",".join(str(i * 2) for i in range(785))
  path = _write_lines(tmp_path / "numeric.csv", [header] + _rows_as_text(_fashion_table(3)))
  with pytest.raises(DataError) as excinfo:
    data_lib.read_fashion_csv(path)
  _assert_data_error(excinfo, path, "line 1 (data row 1)", "If line 1 is a header",
                     "'label'")


def test_fashion_csv_errors_name_the_line_of_the_file(tmp_path):
  lines = _rows_as_text(_fashion_table(4))
  lines[2] = "11," + lines[2].split(",", 1)[1]
  path = _write_lines(tmp_path / "blank.csv", [HEADER, "", lines[0], "  ", lines[1],
                                               lines[2], lines[3]])
  with pytest.raises(DataError) as excinfo:
    data_lib.read_fashion_csv(path)
  _assert_data_error(excinfo, path, "line 6 (data row 3) has label 11.0", "0-9")


def test_fashion_csv_fractional_pixels_in_unit_range_are_kept(tmp_path):
  rng = np.random.default_rng(2)
  pixels = np.round(rng.random((3, PIXELS)), 6)
  pixels[0, :2] = [0.0, 1.0]
  lines = [f"{k}," + ",".join(repr(float(v)) for v in row) for k, row in enumerate(pixels)]
  x, y = data_lib.read_fashion_csv(_write_lines(tmp_path / "unit.csv", lines))
  np.testing.assert_array_equal(x, pixels.astype(np.float32))
  np.testing.assert_array_equal(y, [0, 1, 2])


@pytest.mark.parametrize("rows,fraction,expected", [
    (1, 0.2, "gives 1 training and 0 test"), (2, 0.2, "gives 2 training and 0 test"),
    (4, 0.9, "gives 0 training and 4 test")])
def test_split_without_test_or_training_examples_names_the_file(tmp_path, rows, fraction,
                                                                expected):
  path = _write_fashion(tmp_path / "tiny.csv", _fashion_table(rows), header=True)
  with pytest.raises(DataError) as excinfo:
    data_lib.load_dataset("fashion-csv", path=path, test_fraction=fraction)
  _assert_data_error(excinfo, path, expected)


def test_fewer_training_examples_than_one_batch(tmp_path):
  path = _write_fashion(tmp_path / "small.csv", _fashion_table(39), header=True)
  with pytest.raises(DataError) as excinfo:
    data_lib.load_dataset("fashion-csv", path=path, batch_size=32)
  _assert_data_error(excinfo, path, "31 training example(s) (of 39", "one batch of 32")
  assert len(data_lib.load_dataset("fashion-csv", path=path, batch_size=31).x_train) == 31


def test_seed_mlp_rejects_a_too_small_data_set_before_training(tmp_path, capsys):
  from experiments import seed_mlp  # pylint: disable=import-outside-toplevel
  from experiments.spec import RunContext  # pylint: disable=import-outside-toplevel
  path = _write_fashion(tmp_path / "small.csv", _fashion_table(30), header=True)
  ctx = RunContext(out_dir=str(tmp_path / "out"), quick=True, seeds=2, data="fashion-csv",
                   data_path=path)
  with pytest.raises(DataError, match="one batch of 32"):
    seed_mlp.run(ctx)
  assert not (tmp_path / "out").exists()
  assert capsys.readouterr().out == ""  # nothing was trained or printed


@settings(max_examples=50, deadline=None)
@given(labels=st.lists(st.one_of(st.integers(-3, 12), st.floats(allow_nan=True,
                                                                 allow_infinity=True,
                                                                 width=32)),
                       min_size=1, max_size=20))
def test_check_labels_against_a_reference(labels):
  values = np.asarray(labels, np.float64)
  bad = [i for i, v in enumerate(values)
         if not (np.isfinite(v) and v == np.round(v) and 0 <= v < 10)]
  if not bad:
    np.testing.assert_array_equal(
        data_lib.check_labels(values, source="f.csv", num_classes=10), values)
    return
  with pytest.raises(DataError) as excinfo:
    data_lib.check_labels(values, source="f.csv", num_classes=10)
  assert str(excinfo.value).startswith(
      f"f.csv: example {bad[0]} has label {values[bad[0]].item()!r}; ")
  assert f"({len(bad)} label(s) are not)" in str(excinfo.value)
