"""Machine description and the markdown report of a benchmark run."""

from __future__ import annotations

import os
import platform

import flax
import jax
import numpy as np

from .layers import MIN_PASSES


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
  return {"cpu": cpu, "cores": os.cpu_count(), "load_before": load_average(),
          "python": platform.python_version(),
          "jax": jax.__version__, "flax": flax.__version__, "numpy": np.__version__,
          "torch": getattr(torch, "__version__", None), "device": str(jax.devices()[0])}


def load_average() -> float | None:
  """The 1-minute load average (runnable processes), or None where it is not known."""
  try:
    return round(os.getloadavg()[0], 2)
  except (AttributeError, OSError):
    return None


def machine_markdown(machine: dict) -> str:
  torch = machine["torch"] or "not installed"
  load = ""
  if machine.get("load_before") is not None:
    after = machine.get("load_after")
    load = (f" Load average (1 min): {machine['load_before']:.1f} when the run started"
            + ("." if after is None else f", {after:.1f} when it ended."))
  return (f"Machine: {machine['cpu']}, {machine['cores']} cores ({machine['device']}); "
          f"Python {machine['python']}, JAX {machine['jax']}, Flax {machine['flax']}, "
          f"NumPy {machine['numpy']}, PyTorch {torch}.{load}")


def _ratio(value):
  return "–" if value is None else f"{value:.2f}x"


def _mib(value):
  return "–" if value is None else f"{value / 2**20:.1f}"


def _ms(value):
  return "–" if value is None else f"{value * 1e3:.2f}"


def _passes(value, floor):
  return "–" if value is None else f"{value / floor:.1f}"


def markdown(machine, rows, e2e, *, quick: bool) -> str:
  cache = machine.get("compilation_cache")
  lines = ["# jaxnorm benchmarks", "",
           machine_markdown(machine), "",
           "Reproduce: `python -m pip install -e \".[dev]\" && pip install torch==2.13.0 && "
           "python -m benchmarks --markdown benchmarks/RESULTS.md`" +
           (" (this is a --quick run)" if quick else ""), "",
           "Median times of jit-compiled calls, warm-up excluded, the candidates run "
           "interleaved in the same process. *jaxnorm* is the pure-JAX layer as it runs "
           "today; *kernels* the same layer through `jaxnorm.kernels` (the fused C++ CPU "
           "kernels, XLA FFI); for dropout, *before* is jaxnorm's dropout with the mask "
           "drawn by `jax.random.bernoulli` (its path before the fused sampler, which "
           "*jaxnorm* now uses). Ratios are the peer's time over jaxnorm's best path "
           "(> 1: jaxnorm is faster). *Passes* is a time over the memory floor (one fused "
           "read+write pass over x, measured in the same run); *min* is the number of "
           "passes the arithmetic strictly needs (see benchmarks/layers.py). *Faults* are "
           "minor page faults per call (memory freshly mapped in). Temporary memory is "
           "XLA's compiled `temp_size_in_bytes` of forward+backward.",
           "",
           "| layer | shape | dtype | mode | jaxnorm ms | kernels ms | before ms | flax ms "
           "| torch ms | vs flax | vs torch | passes jaxnorm / kernels (min) "
           "| faults jaxnorm / kernels / flax | temp MiB jaxnorm / kernels / flax |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    faults = r.faults or {}
    fault_text = " / ".join("–" if faults.get(k) is None else f"{faults[k]:.0f}"
                            for k in ("jaxnorm", "kernels", "flax"))
    lines.append(
        f"| {r.layer} | {'x'.join(map(str, r.shape))} | {r.dtype} | {r.mode} | "
        f"{_ms(r.jaxnorm_s)} | {_ms(r.kernel_s)} | {_ms(r.before_s)} | {_ms(r.flax_s)} | "
        f"{_ms(r.torch_s)} | {_ratio(r.flax_s / r.best_s)} | "
        f"{_ratio(None if r.torch_s is None else r.torch_s / r.best_s)} | "
        f"{r.passes:.1f} / {_passes(r.kernel_s, r.floor_s)} "
        f"({MIN_PASSES[r.mode][r.layer]}) | {fault_text} | "
        f"{_mib(r.jaxnorm_temp_bytes)} / {_mib(r.kernel_temp_bytes)} / "
        f"{_mib(r.flax_temp_bytes)} |")
  tuned = [r for r in rows if r.tuned]
  if tuned:
    lines += ["", "## Page faults: the headline shape with the allocator tuned", "",
              "The same cases timed again in a child process whose environment sets "
              "`GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.arena_max=1:"
              "glibc.malloc.trim_threshold=1099511627776` (freed memory is kept and "
              "reused, for every candidate alike; jaxnorm itself never changes the "
              "allocator).", "",
              "| layer | mode | jaxnorm ms | kernels ms | before ms | flax ms | torch ms "
              "| floor ms | passes jaxnorm / kernels | faults jaxnorm / kernels / flax |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in tuned:
      t = r.tuned
      faults = t.get("faults") or {}
      lines.append(
          f"| {r.layer} | {r.mode} | {_ms(t['jaxnorm'])} | {_ms(t['kernels'])} | "
          f"{_ms(t['before'])} | {_ms(t['flax'])} | {_ms(t['torch'])} | {_ms(t['floor'])} | "
          f"{_passes(t['jaxnorm'], t['floor'])} / {_passes(t['kernels'], t['floor'])} | "
          + " / ".join("–" if faults.get(k) is None else f"{faults[k]:.0f}"
                       for k in ("jaxnorm", "kernels", "flax")) + " |")
  with_cpu = [r for r in rows if r.cpu]
  if with_cpu:
    lines += ["", "## CPU time per call", "",
              "CPU seconds of all the process's threads per call (user + system, "
              "`getrusage`), which other programs on the machine inflate much less than "
              "wall time: a call waiting for a core accrues none.", "",
              "| layer | shape | dtype | mode | CPU ms jaxnorm | kernels | before | flax "
              "| torch | floor |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in with_cpu:
      c = r.cpu
      lines.append(f"| {r.layer} | {'x'.join(map(str, r.shape))} | {r.dtype} | {r.mode} | "
                   + " | ".join(_ms(c.get(k)) for k in ("jaxnorm", "kernels", "before",
                                                         "flax", "torch", "floor")) + " |")
  lines += ["", "## Targets (the project's goals on the CPU; float32 (4096, 1024) unless "
            "said)", ""]
  lines += _targets(rows, e2e) + ["", LIMITS]
  lines += ["", f"## End to end: seed-mlp, {e2e.epochs} epochs", "",
            "| | jaxnorm s | PyTorch s | PyTorch / jaxnorm |", "|---|---|---|---|"]
  cached = getattr(e2e, "jaxnorm_cold_cached_s", None)
  for label, ours, theirs in (("cold (incl. compilation)", e2e.jaxnorm_cold_s,
                               e2e.torch_cold_s),
                              ("cold, persistent compilation cache warm", cached,
                               e2e.torch_cold_s),
                              ("warm", e2e.jaxnorm_warm_s, e2e.torch_warm_s)):
    if ours is None:
      continue
    ratio = None if theirs is None else theirs / ours
    lines.append(f"| {label} | {ours:.2f} | {'–' if theirs is None else f'{theirs:.2f}'} | "
                 f"{_ratio(ratio)} |")
  if cache:
    lines += ["", "JAX's persistent compilation cache was on for this run "
              "(`jaxnorm._compilation_cache`, a user cache directory; "
              "`--no-compilation-cache` turns it off)."]
  return "\n".join(lines)


def _find(rows, layer, mode, shape=(4096, 1024), dtype="float32"):
  for r in rows:
    if (r.layer, r.mode, tuple(r.shape), r.dtype) == (layer, mode, shape, dtype):
      return r
  return None


def _check(label, value, floor):
  if value is None:
    return f"- {label}: not measured in this run"
  return f"- {label}: {value:.2f}x (target >= {floor}x) — {'met' if value >= floor else 'NOT met'}"


def _targets(rows, e2e) -> list[str]:
  """The project's speed and memory targets, evaluated on this run."""
  lines = []
  fb = "forward+backward"
  for layer, vs_flax, vs_torch in (("dropout", 5.0, 5.0), ("layer_norm", 2.0, 1.2),
                                   ("rms_norm", 2.0, 1.2), ("batch_norm", 1.6, 1.3)):
    r = _find(rows, layer, fb)
    lines.append(_check(f"{layer} fwd+bwd vs flax", r and r.flax_s / r.best_s, vs_flax))
    lines.append(_check(f"{layer} fwd+bwd vs PyTorch",
                        r and r.torch_s and r.torch_s / r.best_s, vs_torch))
  for r in rows:
    if r.mode == "forward" and r.dtype == "float32":
      lines.append(_check(f"{r.layer} forward alone vs flax, {'x'.join(map(str, r.shape))}",
                          r.flax_s / r.best_s, 1.0))
  for r in rows:
    if r.mode == fb and r.kernel_s is not None and r.dtype == "float32":
      floor = MIN_PASSES[fb][r.layer] * 1.5
      ok = r.kernel_passes <= floor
      lines.append(f"- {r.layer} kernels within 1.5x of the minimum passes, "
                   f"{'x'.join(map(str, r.shape))}: {r.kernel_passes:.1f} passes (target <= "
                   f"{floor:.1f}) — {'met' if ok else 'NOT met'}")
  for r in rows:
    if r.mode == fb and r.flax_temp_bytes is not None:
      ours = min(t for t in (r.jaxnorm_temp_bytes, r.kernel_temp_bytes) if t is not None)
      ok = ours <= r.flax_temp_bytes
      lines.append(f"- {r.layer} {'x'.join(map(str, r.shape))} {r.dtype} temporary memory: "
                   f"{ours / 2**20:.1f} MiB vs flax {r.flax_temp_bytes / 2**20:.1f} MiB — "
                   f"{'met' if ok else 'NOT met'}")
  if e2e.torch_cold_s is not None:
    cached = getattr(e2e, "jaxnorm_cold_cached_s", None)
    lines.append(_check("seed-mlp vs PyTorch incl. compilation, second run (cache warm)",
                        None if cached is None else e2e.torch_cold_s / cached, 3.0))
    lines.append(_check("seed-mlp vs PyTorch, warm", e2e.torch_warm_s / e2e.jaxnorm_warm_s,
                        8.0))
  return lines


LIMITS = """### What limits the targets on this CPU

- **A shared machine.** When other jobs share the cores (the load averages above, against
  the number of cores), wall times are inflated and noisy, the memory floor included
  (runs under a load of 10-17 measured it several times its quiet value). Every ratio
  compares candidates timed in the same rounds (interleaved, medians), and the CPU-time
  table, which waiting for a core does not inflate, is the steadier comparison. A target
  marked NOT met by a margin within the noise is a tie, not a measured loss.
- **Dropout.** jaxnorm draws the mask with the threefry-2x32 hash written as fused
  integer operations, bit-identical to `jax.random.bernoulli` (and so to
  `flax.linen.Dropout`): one XLA loop instead of jax.random's rolled loop over
  full-size arrays (the *before* column). What is left is the hash itself, about 120
  integer operations per element: compute-bound, above the one-pass floor, and faster
  with AVX-512 than with the AVX2 of this CPU. A cheaper generator would reach the floor
  only with different masks.
- **Layer and RMS norm.** The kernels normalize each row while it is in cache (forward:
  one read of x, one write of y) and compute the backward from one read of x and dy per
  row, with dscale/dbias from per-chunk partial sums added in a fixed order
  (deterministic). XLA's pure-JAX versions write broadcast products in the backward
  (jaxnorm and flax alike).
- **Batch norm.** The statistics need all rows before any output, so the kernels make
  two passes forward (statistics, then y) and two backward (the sums, then dx): 4 passes
  for forward+backward where the arithmetic needs 3, because the fused forward call
  also writes y when only the gradients are used (XLA cannot drop part of a custom call;
  a separate statistics call and apply call, which XLA drops when y is unused, is left
  for wiring the kernels into the functional layer). Each pass is a parallel loop that
  waits for its slowest thread, which costs most when other jobs hold the cores.
- **Group norm.** On (N, C) inputs the groups are short contiguous segments and on NHWC
  inputs per-channel sums across rows: both one pass each way, and no temporary memory
  in XLA. The pure-JAX path keeps `c = x - shift` as its one residual; on NHWC inputs
  its backward folds the scale into the per-(example, channel) gain, so it forms no
  x-sized product either.
- **bfloat16.** The kernels read and write bfloat16 and compute in float32; the
  pure-JAX paths convert in XLA, which writes float32 temporaries of x's size.
- **Page faults.** XLA allocates its per-call temporaries with malloc; blocks above
  glibc's mmap threshold are mapped and faulted in afresh on every call (the *faults*
  columns). The tuned-allocator table shows the same cases with freed memory kept;
  jaxnorm never changes the allocator itself."""
