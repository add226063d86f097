"""JAX's persistent compilation cache, for command-line tools: compile once per machine.

A program that jit-compiles the same functions on every start (the experiments and
benchmarks CLIs) pays XLA's compilation each time; with the persistent cache a second
run loads the compiled programs from disk. This is for programs' entry points, never for
the library itself (importing jaxnorm changes no global setting).
"""

from __future__ import annotations

import os
import pathlib

import jax

_ENV = "JAXNORM_COMPILATION_CACHE"


def default_cache_dir() -> pathlib.Path:
  """``$XDG_CACHE_HOME/jaxnorm/jax`` (``~/.cache/jaxnorm/jax`` by default)."""
  base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
  return pathlib.Path(base) / "jaxnorm" / "jax"


def enable_compilation_cache(directory: str | os.PathLike | None = None, *,
                             enabled: bool = True) -> pathlib.Path | None:
  """Turns on JAX's persistent compilation cache; returns its directory (None if off).

  Every compiled program is cached, whatever its compile time. The cache stays off
  when ``enabled`` is False or the environment variable ``JAXNORM_COMPILATION_CACHE``
  is ``0``; that variable may also name the directory. Call it once, at the start of a
  program, before anything is compiled.

  Args:
    directory: where to keep the cache; default :func:`default_cache_dir`.
    enabled: False leaves JAX's settings alone (e.g. a ``--no-compilation-cache`` flag).

  Example:
    >>> import tempfile
    >>> from jaxnorm._compilation_cache import enable_compilation_cache
    >>> enable_compilation_cache(enabled=False) is None
    True
  """
  setting = os.environ.get(_ENV, "").strip()
  if not enabled or setting == "0":
    return None
  if directory is None:
    directory = setting if setting not in ("", "1") else default_cache_dir()
  path = pathlib.Path(directory).expanduser()
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as error:
    raise ValueError(
        f"jaxnorm.enable_compilation_cache: cannot create the cache directory {path} "
        f"({error}); pass another directory, set {_ENV}=DIR, or turn the cache off with "
        f"{_ENV}=0.") from error
  jax.config.update("jax_compilation_cache_dir", str(path))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path
