"""Package-level contracts: import layering and the public names others rely on."""

import subprocess
import sys
import typing

import pytest


def test_functional_layer_does_not_import_flax():
  code = ("import sys, jaxnorm.functional; "
          "assert 'flax' not in sys.modules, sorted(m for m in sys.modules if 'flax' in m)")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0, result.stderr


def test_top_level_import_does_not_import_flax_until_linen_is_used():
  code = ("import sys, jaxnorm; assert 'flax' not in sys.modules; "
          "jaxnorm.BatchNorm; assert 'flax' in sys.modules")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("module,name", [
    ("jaxnorm", "BatchStats"),
    ("jaxnorm", "functional"),
    ("jaxnorm", "linen"),
    ("jaxnorm.functional", "batch_norm"),
    ("jaxnorm.functional", "layer_norm"),
    ("jaxnorm.functional", "dropout"),
    ("jaxnorm.functional", "moments"),
    ("jaxnorm.linen", "BatchNorm"),
    ("jaxnorm.linen", "LayerNorm"),
    ("jaxnorm.linen", "Dropout"),
])
def test_public_names_exist(module, name):
  import importlib
  mod = importlib.import_module(module)
  assert hasattr(mod, name)
  assert getattr(mod, name) is not None


def test_functions_are_callable():
  import jaxnorm.functional as F
  for fn in (F.batch_norm, F.layer_norm, F.dropout, F.moments):
    assert callable(fn)


def test_unknown_attribute_raises_attribute_error():
  import jaxnorm
  with pytest.raises(AttributeError):
    jaxnorm.NoSuchLayer  # noqa: B018


def test_batch_stats_is_a_named_tuple_of_mean_and_var():
  import jaxnorm
  from jaxnorm.functional import BatchStats
  assert jaxnorm.BatchStats is BatchStats
  assert issubclass(BatchStats, tuple)
  assert BatchStats._fields == ("mean", "var")
  assert typing.get_type_hints(BatchStats).keys() == {"mean", "var"}
  stats = BatchStats(mean=1.0, var=2.0)
  assert stats.mean == 1.0 and stats.var == 2.0
  mean, var = stats
  assert (mean, var) == (1.0, 2.0)
  assert stats == (1.0, 2.0)
  assert stats._replace(var=3.0) == BatchStats(1.0, 3.0)
