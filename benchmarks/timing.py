"""Timing helpers: compiled functions, warm-up excluded, interleaved repeats, medians."""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable, Mapping

import jax


def interleaved_medians(candidates: Mapping[str, Callable[[], object]], repeats: int,
                        warmup: int = 2) -> dict[str, float]:
  """Median seconds per call of each candidate, run in turn so drifts hit all alike.

  Each candidate is a no-argument callable that runs the work and blocks until it is
  done (``jax.block_until_ready`` for JAX; PyTorch CPU calls are synchronous). The
  first ``warmup`` rounds (compilation, caches) are not counted.
  """
  samples: dict[str, list[float]] = {name: [] for name in candidates}
  names = list(candidates)
  for round_index in range(warmup + repeats):
    # Rotate the order so that each candidate follows each other one equally often
    # (the one that runs after PyTorch finds colder caches).
    start = round_index % len(names)
    for name in names[start:] + names[:start]:
      run = candidates[name]
      start = time.perf_counter()
      run()
      elapsed = time.perf_counter() - start
      if round_index >= warmup:
        samples[name].append(elapsed)
  return {name: statistics.median(values) for name, values in samples.items()}


def jax_runner(fn, *args) -> tuple[Callable[[], object], int | None]:
  """``(run, temp_bytes)``: a callable running the compiled ``fn(*args)`` and blocking on
  the result, and the compiled temporary memory (XLA's ``temp_size_in_bytes``)."""
  compiled = jax.jit(fn).lower(*args).compile()
  analysis = compiled.memory_analysis()
  temp = None if analysis is None else int(analysis.temp_size_in_bytes)
  return (lambda: jax.block_until_ready(compiled(*args))), temp


def faults_per_call(run: Callable[[], object], calls: int = 3) -> float:
  """Minor page faults (fresh memory mapped in) per call of ``run``, after one warm call."""
  run()
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(calls):
    run()
  return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls


def cpu_per_call(run: Callable[[], object], calls: int = 5) -> float:
  """Seconds of CPU time (all threads of the process, user + system) per call of ``run``.

  Less sensitive than wall time to other programs taking the cores: a call that waits
  for a core accrues no CPU time meanwhile.
  """
  run()
  usage = resource.getrusage(resource.RUSAGE_SELF)
  before = usage.ru_utime + usage.ru_stime
  for _ in range(calls):
    run()
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return (usage.ru_utime + usage.ru_stime - before) / calls
