"""Builds jaxnorm's optional fused CPU kernels (csrc/) during the install.

Everything else about the package is in pyproject.toml. The kernels are one C++ file
compiled into a plain shared library (no Python C API) that ``jaxnorm.kernels`` loads
with ctypes; XLA's FFI headers come from the jax installed in the build environment
(``jax.ffi.include_dir()``). If there is no working C++ compiler, the build prints why
and the install goes on: jaxnorm then runs on its pure-JAX path and says so once, on
first use. ``CXX`` chooses the compiler; ``JAXNORM_BUILD_KERNELS=0`` skips the build.
"""

import os
import shlex
import subprocess
import sys
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

LIBRARY = "jaxnorm.kernels.libjaxnorm_kernels"
SOURCES = ["csrc/norm_kernels.cc"]

# Portable flags: no -march=native. The hot loops carry target_clones attributes
# (x86-64-v4 / v3 / baseline), so one binary runs at native speed on every x86-64 CPU.
# Floating-point contraction is off so that every clone computes the same bits.
FLAGS = ["-std=c++17", "-O3", "-fPIC", "-shared", "-pthread", "-ffp-contract=off",
         "-fvisibility=hidden", "-fvisibility-inlines-hidden", "-Wno-psabi"]


def _compiler() -> list[str]:
  return shlex.split(os.environ.get("CXX") or sysconfig.get_config_var("CXX") or "c++")


class BuildKernels(build_ext):
  """Compiles the kernel library; a failure is reported, not raised."""

  def get_ext_filename(self, fullname):
    # Called with the dotted name (a path relative to the build or source root) or with
    # its last part (a file name); a plain library name either way, not a module's.
    if fullname.endswith("libjaxnorm_kernels"):
      name = {"darwin": "libjaxnorm_kernels.dylib"}.get(sys.platform, "libjaxnorm_kernels.so")
      return os.path.join(*fullname.split(".")[:-1], name)
    return super().get_ext_filename(fullname)

  def build_extension(self, ext):
    if ext.name != LIBRARY:
      return super().build_extension(ext)
    output = self.get_ext_fullpath(ext.name)
    if os.environ.get("JAXNORM_BUILD_KERNELS", "1") == "0":
      self._skip("JAXNORM_BUILD_KERNELS=0")
      return None
    try:
      import jax  # pylint: disable=import-outside-toplevel
      include = jax.ffi.include_dir()
    except Exception as error:  # pylint: disable=broad-except
      self._skip(f"jax (for XLA's FFI headers) is not importable: {error}")
      return None
    os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
    command = _compiler() + FLAGS + ["-isystem", include] + ext.sources + ["-o", output]
    print("building the jaxnorm kernels: " + " ".join(command), flush=True)
    try:
      result = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as error:
      self._skip(f"the C++ compiler could not be run ({error})")
      return None
    if result.returncode != 0:
      self._skip(f"the C++ compiler failed:\n{result.stderr[-3000:]}")
      if os.path.exists(output):
        os.remove(output)
    return None

  @staticmethod
  def _skip(reason: str) -> None:
    print(f"\nWARNING: jaxnorm's fused CPU kernels were not built ({reason}).\n"
          "jaxnorm works without them, on its pure-JAX path.\n", file=sys.stderr,
          flush=True)


setup(
    ext_modules=[Extension(LIBRARY, sources=SOURCES, optional=True)],
    cmdclass={"build_ext": BuildKernels},
)
