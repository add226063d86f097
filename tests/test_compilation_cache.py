"""jaxnorm._compilation_cache: JAX's persistent cache for command-line tools."""

import jax
import pytest

from jaxnorm._compilation_cache import default_cache_dir, enable_compilation_cache


@pytest.fixture
def restore_config():
  keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
          "jax_persistent_cache_min_entry_size_bytes")
  saved = {k: getattr(jax.config, k) for k in keys}
  yield
  for k, v in saved.items():
    jax.config.update(k, v)


def test_off_leaves_jax_alone(restore_config, monkeypatch, tmp_path):
  before = jax.config.jax_compilation_cache_dir
  assert enable_compilation_cache(tmp_path, enabled=False) is None
  monkeypatch.setenv("JAXNORM_COMPILATION_CACHE", "0")
  assert enable_compilation_cache(tmp_path) is None
  assert jax.config.jax_compilation_cache_dir == before


def test_on_sets_the_directory(restore_config, monkeypatch, tmp_path):
  monkeypatch.delenv("JAXNORM_COMPILATION_CACHE", raising=False)
  path = enable_compilation_cache(tmp_path / "cache")
  assert path == tmp_path / "cache" and path.is_dir()
  assert jax.config.jax_compilation_cache_dir == str(path)
  monkeypatch.setenv("JAXNORM_COMPILATION_CACHE", str(tmp_path / "from-env"))
  assert enable_compilation_cache() == tmp_path / "from-env"


def test_default_is_a_user_cache_directory(monkeypatch, tmp_path):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert default_cache_dir() == tmp_path / "jaxnorm" / "jax"


def test_unusable_directory_is_a_clear_error(restore_config, monkeypatch, tmp_path):
  monkeypatch.delenv("JAXNORM_COMPILATION_CACHE", raising=False)
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  with pytest.raises(ValueError, match="cannot create the cache directory"):
    enable_compilation_cache(blocker / "cache")
