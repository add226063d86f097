"""Loading the kernel library and choosing between the kernel and the pure-JAX path.

The choice is made here and nowhere else (:func:`enabled`). The environment variable
``JAXNORM_KERNELS`` decides:

- ``auto`` (or unset): the kernels when the library loads; otherwise the pure-JAX path,
  with one warning on first use saying why.
- ``0``: always the pure-JAX path.
- ``1``: always the kernels; a missing or stale library is an error.

The library is a plain shared object (no Python C API) built from ``csrc/`` when the
package is installed; ``JAXNORM_KERNELS_LIBRARY`` may name another file.
"""

from __future__ import annotations

import ctypes
import functools
import os
import pathlib
import sys
import warnings
from typing import NamedTuple

import jax

#: Must equal ``jaxnorm_kernels_abi_version()`` of the library (csrc/norm_kernels.cc).
ABI_VERSION = 1

#: FFI target names and the C symbols of their handlers.
TARGETS = {
    "jaxnorm_norm_moments": "JaxnormNormMoments",
    "jaxnorm_norm_apply": "JaxnormNormApply",
    "jaxnorm_norm_forward": "JaxnormNormForward",
    "jaxnorm_norm_backward_sums": "JaxnormNormBackwardSums",
    "jaxnorm_norm_backward_dx": "JaxnormNormBackwardDx",
    "jaxnorm_norm_backward": "JaxnormNormBackward",
}

_ENV = "JAXNORM_KERNELS"
_ENV_LIBRARY = "JAXNORM_KERNELS_LIBRARY"
_MODES = {"auto": "auto", "": "auto", "0": "off", "off": "off", "false": "off",
          "1": "on", "on": "on", "true": "on"}


def library_name() -> str:
  return {"darwin": "libjaxnorm_kernels.dylib", "win32": "jaxnorm_kernels.dll"}.get(
      sys.platform, "libjaxnorm_kernels.so")


def default_library_path() -> pathlib.Path:
  """Where the install puts the library: next to this module."""
  return pathlib.Path(__file__).resolve().parent / library_name()


class Status(NamedTuple):
  """What :func:`status` reports.

  Attributes:
    mode: ``"auto"``, ``"on"`` or ``"off"`` (from ``JAXNORM_KERNELS``).
    loaded: whether the library is loaded and its FFI targets are registered.
    path: the library file looked for.
    reason: why it is not loaded (empty when it is).
  """

  mode: str
  loaded: bool
  path: str
  reason: str


def _mode() -> str:
  value = os.environ.get(_ENV, "auto").strip().lower()
  if value not in _MODES:
    raise ValueError(
        f"jaxnorm.kernels: the environment variable {_ENV}={os.environ[_ENV]!r} is not "
        "understood; use 1 (always the fused CPU kernels), 0 (always the pure-JAX path) "
        "or auto (kernels when available; the default).")
  return _MODES[value]


def _library_path() -> pathlib.Path:
  explicit = os.environ.get(_ENV_LIBRARY)
  return pathlib.Path(explicit) if explicit else default_library_path()


@functools.cache
def _load(path: str) -> tuple[bool, str]:
  """Loads the library at ``path`` and registers its FFI targets: ``(ok, reason)``."""
  if not os.path.exists(path):
    return False, (f"{path} does not exist (the C++ build did not run or failed when the "
                   "package was installed)")
  try:
    library = ctypes.CDLL(path)
    version = library.jaxnorm_kernels_abi_version()
  except (OSError, AttributeError) as error:
    return False, f"{path} could not be loaded ({error})"
  if version != ABI_VERSION:
    return False, (f"{path} has interface version {version}, this jaxnorm expects "
                   f"{ABI_VERSION} (a stale build; reinstall the package)")
  for target, symbol in TARGETS.items():
    try:
      handler = getattr(library, symbol)
    except AttributeError:
      return False, f"{path} lacks the handler {symbol}"
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(handler), platform="cpu")
  return True, ""


def status() -> Status:
  """The path that :func:`enabled` chooses and, when the kernels are off, why.

  Example:
    >>> from jaxnorm import kernels
    >>> kernels.status().mode in ("auto", "on", "off")
    True
  """
  mode = _mode()
  path = str(_library_path())
  if mode == "off":
    return Status(mode, False, path, f"{_ENV}=0")
  loaded, reason = _load(path)
  return Status(mode, loaded, path, reason)


@functools.cache
def _warn_unavailable(reason: str) -> None:
  warnings.warn(
      f"jaxnorm: the fused CPU kernels are not available, using the pure-JAX path "
      f"(same results, slower on the CPU): {reason}. Install a C++ compiler and reinstall "
      f"jaxnorm to build them; set {_ENV}=0 to choose the pure-JAX path silently.",
      RuntimeWarning, stacklevel=3)


def enabled() -> bool:
  """Whether the fused CPU kernels are used: the one place where the path is chosen.

  Returns False when ``JAXNORM_KERNELS=0``. With ``JAXNORM_KERNELS=1`` a library that
  cannot be loaded raises ``RuntimeError``; in the default ``auto`` mode it gives one
  ``RuntimeWarning`` (on first use, not on import) and False.

  Example:
    >>> from jaxnorm import kernels
    >>> isinstance(kernels.enabled(), bool)
    True
  """
  current = status()
  if current.mode == "off" or current.loaded:
    return current.loaded
  if current.mode == "on":
    raise RuntimeError(
        f"jaxnorm.kernels: {_ENV}=1 asks for the fused CPU kernels, but {current.reason}. "
        f"Reinstall jaxnorm where a C++ compiler is available (pip install -e .), point "
        f"{_ENV_LIBRARY} at a built library, or set {_ENV}=auto or 0.")
  _warn_unavailable(current.reason)
  return False
