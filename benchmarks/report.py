"""Machine description and the markdown report of a benchmark run."""

from __future__ import annotations

import os
import platform

import flax
import jax
import numpy as np

from benchmarks.layers import MIN_PASSES


def describe_machine(torch=None) -> dict:
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as handle:
      for line in handle:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
          "jax": jax.__version__, "flax": flax.__version__, "numpy": np.__version__,
          "torch": getattr(torch, "__version__", None), "device": str(jax.devices()[0])}


def machine_markdown(machine: dict) -> str:
  torch = machine["torch"] or "not installed"
  return (f"Machine: {machine['cpu']}, {machine['cores']} cores ({machine['device']}); "
          f"Python {machine['python']}, JAX {machine['jax']}, Flax {machine['flax']}, "
          f"NumPy {machine['numpy']}, PyTorch {torch}.")


def _ratio(value):
  return "–" if value is None else f"{value:.2f}x"


def _mib(value):
  return "–" if value is None else f"{value / 2**20:.1f}"


def markdown(machine, rows, e2e, *, quick: bool) -> str:
  lines = ["# jaxnorm benchmarks", "",
           machine_markdown(machine), "",
           "Reproduce: `python -m pip install -e \".[dev]\" && pip install torch==2.13.0 && "
           "python -m benchmarks --markdown benchmarks/RESULTS.md`" +
           (" (this is a --quick run)" if quick else ""), "",
           "Median times of jit-compiled calls, warm-up excluded, the candidates run "
           "interleaved in the same process. Ratios are the peer's time over jaxnorm's "
           "(> 1: jaxnorm is faster). *Passes* is jaxnorm's time over the memory floor "
           "(one fused read+write pass over x, measured in the same run); *min* is the "
           "number of passes the arithmetic strictly needs (see benchmarks/layers.py). "
           "Temporary memory is XLA's compiled `temp_size_in_bytes` of forward+backward.",
           "",
           "| layer | shape | dtype | mode | jaxnorm ms | vs flax | vs torch | passes (min) "
           "| temp MiB jaxnorm / flax |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(
        f"| {r.layer} | {'x'.join(map(str, r.shape))} | {r.dtype} | {r.mode} | "
        f"{r.jaxnorm_s * 1e3:.2f} | {_ratio(r.flax_over_jaxnorm)} | "
        f"{_ratio(r.torch_over_jaxnorm)} | {r.passes:.1f} ({MIN_PASSES[r.mode][r.layer]}) | "
        f"{_mib(r.jaxnorm_temp_bytes)} / {_mib(r.flax_temp_bytes)} |")
  lines += ["", f"## End to end: seed-mlp, {e2e.epochs} epochs", "",
            "| | jaxnorm s | PyTorch s | PyTorch / jaxnorm |", "|---|---|---|---|"]
  for label, ours, theirs in (("cold (incl. compilation)", e2e.jaxnorm_cold_s,
                               e2e.torch_cold_s),
                              ("warm", e2e.jaxnorm_warm_s, e2e.torch_warm_s)):
    ratio = None if theirs is None else theirs / ours
    lines.append(f"| {label} | {ours:.2f} | {'–' if theirs is None else f'{theirs:.2f}'} | "
                 f"{_ratio(ratio)} |")
  return "\n".join(lines)
