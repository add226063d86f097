"""Smoke test of the benchmark suite: `python -m benchmarks --quick` runs and reports.

Not a timing assertion: speed is measured by the full run (benchmarks/RESULTS.md).
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_benchmark_run(tmp_path):
  report, markdown = tmp_path / "bench.json", tmp_path / "RESULTS.md"
  result = subprocess.run(
      [sys.executable, "-m", "benchmarks", "--quick", "--no-torch", "--no-tuned-allocator",
       "--json", str(report), "--markdown", str(markdown)],
      capture_output=True, text=True, timeout=600, cwd=ROOT, check=False,
      env=dict(os.environ, JAXNORM_COMPILATION_CACHE=str(tmp_path / "cache")))
  assert result.returncode == 0, result.stderr[-2000:]
  data = json.loads(report.read_text())
  cases = {(row["layer"], row["mode"]) for row in data["layers"]}
  assert cases == {(layer, mode) for layer in ("batch_norm", "layer_norm", "group_norm",
                                               "rms_norm", "dropout")
                   for mode in ("forward", "forward+backward")}
  from jaxnorm import kernels  # pylint: disable=import-outside-toplevel
  for row in data["layers"]:
    assert row["jaxnorm_s"] > 0 and row["flax_s"] > 0 and row["floor_s"] > 0
    assert set(row["faults"]) >= {"jaxnorm", "flax", "floor"}
    if row["layer"] == "dropout":
      assert row["before_s"] > 0
    elif kernels.status().loaded:
      assert row["kernel_s"] > 0
    assert row["torch_s"] is None  # --no-torch
    if row["mode"] == "forward+backward":
      assert row["jaxnorm_temp_bytes"] is not None and row["flax_temp_bytes"] is not None
  e2e = data["end_to_end"]
  assert e2e["jaxnorm_cold_s"] > 0 and e2e["jaxnorm_warm_s"] > 0
  assert e2e["jaxnorm_cold_cached_s"] > 0  # the persistent cache was on
  assert any((tmp_path / "cache").iterdir())
  text = markdown.read_text()
  assert "| layer | shape | dtype | mode |" in text and "End to end" in text
  assert data["machine"]["cores"] >= 1 and data["machine"]["jax"]
