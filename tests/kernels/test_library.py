"""Choosing the path: JAXNORM_KERNELS=auto|1|0 and a missing library."""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm import kernels


@pytest.fixture
def missing_library(tmp_path, monkeypatch):
  monkeypatch.setenv("JAXNORM_KERNELS_LIBRARY", str(tmp_path / "libmissing.so"))
  return tmp_path


def test_forced_on_without_library_is_a_clear_error(missing_library, monkeypatch):
  monkeypatch.setenv("JAXNORM_KERNELS", "1")
  with pytest.raises(RuntimeError, match="JAXNORM_KERNELS=1 .* does not exist"):
    kernels.enabled()


def test_auto_without_library_warns_once_and_falls_back(missing_library, monkeypatch):
  monkeypatch.setenv("JAXNORM_KERNELS", "auto")
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    assert kernels.enabled() is False
    assert kernels.enabled() is False
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8)), jnp.float32)
    y = kernels.normalize(x, None, None, reduce_axes=(1,), epsilon=1e-5)[0]
  messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
  assert len(messages) == 1 and "pure-JAX path" in messages[0]
  x64 = np.asarray(x, np.float64)
  want = (x64 - x64.mean(1, keepdims=True)) / np.sqrt(x64.var(1, keepdims=True) + 1e-5)
  np.testing.assert_allclose(y, want, atol=1e-5)


def test_forced_off_is_silent(missing_library, monkeypatch):
  monkeypatch.setenv("JAXNORM_KERNELS", "0")
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert kernels.enabled() is False
  assert kernels.status().mode == "off"


def test_unknown_setting_is_rejected(monkeypatch):
  monkeypatch.setenv("JAXNORM_KERNELS", "yes please")
  with pytest.raises(ValueError, match="JAXNORM_KERNELS='yes please'"):
    kernels.enabled()


def test_built_library_loads_in_auto_mode(monkeypatch):
  monkeypatch.delenv("JAXNORM_KERNELS", raising=False)
  status = kernels.status()
  if not status.loaded:
    pytest.skip(f"kernel library not built: {status.reason}")
  assert kernels.enabled() is True and status.reason == ""
