"""Test configuration: 8 simulated CPU devices, quick XLA compiles, hypothesis profiles.

XLA reads the device flag once, when JAX initializes its backend, so it is set here,
before any test module imports JAX.

Hypothesis profiles, chosen with ``JAXNORM_HYPOTHESIS_PROFILE`` (default ``ci``):

- ``ci``: derandomized (the same examples every run, so a failure reproduces), no
  example database, no deadline (the first example of a test pays for compilation),
  25 examples where a test does not set its own budget.
- ``dev``: random examples and the local example database, to look for new failures;
  otherwise as ``ci``.

The ``slow`` marker: property-based (hypothesis) tests are marked here, the others where
they are defined; ``-m "not slow"`` runs the fast subset.
"""

import os

import hypothesis
import pytest

_FLAGS = ["--xla_force_host_platform_device_count=8"]
# The suite compiles thousands of small programs and runs each a few times, so XLA's
# compile time dominates it. Two code-generation settings halve it without touching
# semantics (no fast math either way; XLA's own HLO passes, fusion included, still run):
# the LLVM back end's optimizations off, and XLA:CPU's classic elemental emitters for
# fused loops instead of its newer MLIR fusion emitters (same HLO, same arithmetic,
# about half the compile time). JAXNORM_TEST_OPTIMIZED=1 keeps XLA's defaults; CI also
# runs the numerical core that way (.ci/run).
if os.environ.get("JAXNORM_TEST_OPTIMIZED", "0") != "1":
  _FLAGS += ["--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true",
             "--xla_cpu_use_fusion_emitters=false"]
for _flag in _FLAGS:
  if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

# The command-line tools turn on JAX's persistent compilation cache; tests that run them
# in-process must not write into the user's cache directory.
os.environ.setdefault("JAXNORM_COMPILATION_CACHE", "0")

hypothesis.settings.register_profile(
    "ci", max_examples=25, deadline=None, derandomize=True, database=None,
    print_blob=True, suppress_health_check=[hypothesis.HealthCheck.too_slow])
hypothesis.settings.register_profile(
    "dev", parent=hypothesis.settings.get_profile("ci"), derandomize=False,
    database=hypothesis.database.DirectoryBasedExampleDatabase(".hypothesis/examples"))
hypothesis.settings.load_profile(os.environ.get("JAXNORM_HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(items):
  for item in items:
    if getattr(getattr(item, "obj", None), "is_hypothesis_test", False):
      item.add_marker(pytest.mark.slow)
