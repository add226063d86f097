"""End-to-end tests of ``python -m experiments`` through the real command line.

The training runs are the slow part (~20-30 s each on two CPU cores), so each of the two
is run once, in a module-scoped fixture, and several tests check its output.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VARIANTS = ("plain", "+BN", "+Dropout", "+BN+Dropout")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TIMEOUT_S = 300


def _env() -> dict[str, str]:
  """The caller's environment without the 8 simulated devices the test suite forces."""
  env = dict(os.environ)
  flags = " ".join(flag for flag in env.get("XLA_FLAGS", "").split()
                   if not flag.startswith("--xla_force_host_platform_device_count"))
  if flags:
    env["XLA_FLAGS"] = flags
  else:
    env.pop("XLA_FLAGS", None)
  env["MPLBACKEND"] = "Agg"
  return env


def _cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "experiments", *args], cwd=REPO_ROOT,
                        env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S,
                        check=False)


def _explain(result: subprocess.CompletedProcess) -> str:
  return (f"exit {result.returncode}\n--- stdout ---\n{result.stdout[-4000:]}\n"
          f"--- stderr ---\n{result.stderr[-4000:]}")


def _total_parameters(stdout: str) -> str:
  totals = re.findall(r"^total\s+([\d,]+)\s*$", stdout, flags=re.MULTILINE)
  assert len(totals) == 1, stdout
  return totals[0]


def _table_rows(text: str) -> dict[str, list[str]]:
  """``variant -> cells`` of the markdown table rows in ``text``."""
  rows = {}
  for line in text.splitlines():
    if line.startswith("| ") and line.endswith(" |"):
      cells = [cell.strip() for cell in line[2:-2].split(" | ")]
      rows[cells[0]] = cells[1:]
  return rows


# --------------------------------------------------------------------------- list


def test_list():
  result = _cli("list")
  assert result.returncode == 0, _explain(result)
  from experiments import EXPERIMENTS  # pylint: disable=import-outside-toplevel
  lines = [line for line in result.stdout.splitlines() if line.strip()]
  assert len(lines) == len(EXPERIMENTS), result.stdout
  listed = dict(line.split(None, 1) for line in lines)
  assert list(listed) == list(EXPERIMENTS)
  assert listed["seed-mlp"] == ("the notebook's MLP: plain vs +BN vs +Dropout vs "
                                "+BN+Dropout over seeds")
  for name, module in EXPERIMENTS.items():
    assert listed[name] == module.DESCRIPTION


# --------------------------------------------------------------------------- digits run


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("digits-out")
  # A file left by an earlier run: the new run must replace the run directory as a whole.
  (out / "seed-mlp").mkdir()
  (out / "seed-mlp" / "stale.png").write_bytes(b"old")
  result = _cli("run", "seed-mlp", "--quick", "--seeds", "1", "--epochs", "1",
                "--out", str(out))
  return result, out / "seed-mlp"


def test_digits_run_exits_cleanly(digits_run):
  result, _ = digits_run
  assert result.returncode == 0, _explain(result)
  assert "Traceback" not in result.stderr


def test_digits_run_replaces_the_previous_run(digits_run):
  result, out_dir = digits_run
  assert result.returncode == 0, _explain(result)
  assert not (out_dir / "stale.png").exists()
  assert sorted(p.name for p in out_dir.parent.iterdir()) == ["seed-mlp"]


def test_digits_run_parameter_summary(digits_run):
  result, _ = digits_run
  stdout = result.stdout
  assert "parameters of the +BN+Dropout variant" in stdout
  assert "digits: 1438 train / 359 test examples, 64 features, 10 classes" in stdout
  assert re.search(r"^for 784 inputs: 109,770 parameters \(notebook: 109,770, match\)$",
                   stdout, flags=re.MULTILINE), stdout
  assert "MISMATCH" not in stdout
  # 64 inputs: 64*128+128 + 2*128 + 128*64+64 + 2*64 + 64*10+10.
  assert _total_parameters(stdout) == "17,610"
  assert re.search(r"^Dense_0/kernel\s+\(64, 128\)\s+8,192$", stdout, flags=re.MULTILINE)


def test_digits_run_prints_table(digits_run):
  result, _ = digits_run
  stdout = result.stdout
  assert ("| variant | parameters | test accuracy | test loss | final train loss | "
          "train s / run | compile s |") in stdout
  rows = _table_rows(stdout)
  assert [name for name in rows if name != "variant"] == list(VARIANTS)
  assert rows["plain"][0] == rows["+Dropout"][0] == "17,226"
  assert rows["+BN"][0] == rows["+BN+Dropout"][0] == "17,610"
  for variant in VARIANTS:
    accuracy = float(rows[variant][1].split(" ± ")[0])
    assert 0.0 <= accuracy <= 1.0
    assert re.search(rf"^  {re.escape(variant)}\s+seed 0: test accuracy [01]\.\d{{4}}",
                     stdout, flags=re.MULTILINE), variant
  assert "seed-mlp on digits: 1 epochs" in stdout


def test_digits_run_results_json(digits_run):
  result, out_dir = digits_run
  assert result.returncode == 0, _explain(result)
  payload = json.loads((out_dir / "results.json").read_text(encoding="utf-8"))
  assert payload["experiment"] == "seed-mlp"
  assert payload["epochs"] == 1 and payload["seeds"] == 1 and payload["quick"] is True
  assert payload["parameters_784"] == 109770
  assert payload["data"].startswith("digits:") and "64 features" in payload["data"]
  runs = payload["runs"]
  assert len(runs) == 4
  assert [run["variant"] for run in runs] == list(VARIANTS)
  assert all(run["seed"] == 0 for run in runs)
  for run in runs:
    assert {"curves", "test_accuracy", "test_loss"} <= set(run)
    assert set(run["curves"]) == {"train_loss", "train_accuracy", "test_loss",
                                  "test_accuracy"}
    assert all(len(curve) == 1 for curve in run["curves"].values())
    assert run["test_accuracy"] == run["curves"]["test_accuracy"][-1]
    assert 0.0 <= run["test_accuracy"] <= 1.0
    assert np.isfinite(run["test_loss"]) and run["test_loss"] > 0


def test_digits_run_table_md(digits_run):
  result, out_dir = digits_run
  assert result.returncode == 0, _explain(result)
  table = (out_dir / "table.md").read_text(encoding="utf-8")
  assert table.startswith("seed-mlp on digits: 1 epochs, SGD lr 0.1, batch 32")
  rows = _table_rows(table)
  assert [name for name in rows if name != "variant"] == list(VARIANTS)
  # The file holds the same table as the one printed.
  assert _table_rows(result.stdout) == rows
  payload = json.loads((out_dir / "results.json").read_text(encoding="utf-8"))
  for run in payload["runs"]:
    # One seed: the mean alone, no meaningless "± 0".
    assert rows[run["variant"]][1] == f"{run['test_accuracy']:.4f}"


@pytest.mark.parametrize("name", ["loss_curves.png", "accuracy_curves.png"])
def test_digits_run_plots(digits_run, name):
  result, out_dir = digits_run
  assert result.returncode == 0, _explain(result)
  path = out_dir / name
  raw = path.read_bytes()
  assert raw[:8] == PNG_MAGIC
  assert len(raw) > 1000
  assert name in result.stdout


# --------------------------------------------------------------------------- fashion-csv run


@pytest.fixture(scope="module")
def fashion_run(tmp_path_factory):
  """The notebook's CSV layout (header + 784 pixel columns), run unchanged."""
  folder = tmp_path_factory.mktemp("fashion")
  rng = np.random.default_rng(0)
  table = rng.integers(0, 256, size=(200, 785))
  table[:, 0] = rng.integers(0, 10, size=200)
  header = "label," + ",".join(f"pixel{i}" for i in range(1, 785))
  csv_path = folder / "fashion-mnist_train.csv"
  np.savetxt(csv_path, table, fmt="%d", delimiter=",", header=header, comments="")
  out = folder / "out"
  result = _cli("run", "seed-mlp", "--quick", "--seeds", "1", "--epochs", "1",
                "--data", "fashion-csv", "--data-path", str(csv_path), "--out", str(out))
  return result, out / "seed-mlp"


def test_fashion_csv_run(fashion_run):
  result, out_dir = fashion_run
  assert result.returncode == 0, _explain(result)
  stdout = result.stdout
  assert "fashion-csv: 160 train / 40 test examples, 784 features, 10 classes" in stdout
  assert _total_parameters(stdout) == "109,770"
  assert re.search(r"^Dense_0/kernel\s+\(784, 128\)\s+100,352$", stdout, flags=re.MULTILINE)
  assert "(notebook: 109,770, match)" in stdout
  rows = _table_rows(stdout)
  assert rows["+BN+Dropout"][0] == "109,770"
  assert rows["plain"][0] == "109,386"
  payload = json.loads((out_dir / "results.json").read_text(encoding="utf-8"))
  assert "784 features" in payload["data"] and len(payload["runs"]) == 4


# --------------------------------------------------------------------------- errors
# The argument and data errors are checked in-process (the same main() the command line
# runs; no subprocess start-up per case): exit status 2, one "error:" line, no traceback.


def _main(capsys, *args: str) -> tuple[int, str, str]:
  from experiments.__main__ import main  # pylint: disable=import-outside-toplevel
  status = main(list(args))
  captured = capsys.readouterr()
  return status, captured.out, captured.err


def test_missing_fashion_csv_file(tmp_path, capsys):
  missing = tmp_path / "no-such-file.csv"
  out = tmp_path / "out"
  status, _, err = _main(capsys, "run", "seed-mlp", "--quick", "--seeds", "1", "--epochs",
                         "1", "--data", "fashion-csv", "--data-path", str(missing),
                         "--out", str(out))
  assert status == 2, err
  error_lines = [line for line in err.splitlines() if line.startswith("error:")]
  assert len(error_lines) == 1, err
  assert str(missing) in error_lines[0] and "not found" in error_lines[0]
  assert not out.exists()


@pytest.mark.parametrize("option", ["--seeds", "--epochs"])
def test_non_positive_counts_rejected(tmp_path, capsys, option):
  out = tmp_path / "out"
  status, _, err = _main(capsys, "run", "seed-mlp", "--quick", option, "0", "--out", str(out))
  assert status == 2, err
  assert f"error: {option} must be >= 1; got 0" in err
  assert not out.exists()


def test_negative_split_seed_rejected(tmp_path, capsys):
  out = tmp_path / "out"
  status, _, err = _main(capsys, "run", "seed-mlp", "--quick", "--split-seed", "-1", "--out",
                         str(out))
  assert status == 2, err
  assert "error: --split-seed must be >= 0" in err
  assert not out.exists()


def test_unwritable_out_rejected_before_training(tmp_path, capsys):
  blocker = tmp_path / "a-file"
  blocker.write_text("not a directory")
  status, out, err = _main(capsys, "run", "seed-mlp", "--quick", "--out", str(blocker))
  assert status == 2, err
  assert f"error: --out {blocker}: exists and is not a directory" in err
  assert "seed 0" not in out  # nothing was trained


def test_report_without_runs(tmp_path, capsys):
  status, _, err = _main(capsys, "report", "--runs", str(tmp_path / "none"), "--output",
                         str(tmp_path / "REPORT.md"))
  assert status == 2, err
  assert "no finished run" in err
