"""The ``Example:`` sections of the NNX front-end, its training support, the shared
front-end helpers and the testing kit run as written."""

import doctest
import importlib

import pytest

MODULES = [
    "jaxnorm._frontend", "jaxnorm.nnx", "jaxnorm.nnx.normalization", "jaxnorm.nnx.variants",
    "jaxnorm.nnx.stochastic", "jaxnorm.nnx.convert", "jaxnorm.training.nnx_steps",
    "jaxnorm.training.nnx_checkpoint", "jaxnorm.training.nnx_tools", "jaxnorm.testing",
    "jaxnorm.testing.assertions", "jaxnorm.testing.strategies",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
  module = importlib.import_module(name)
  result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed"
  assert result.attempted > 0 or name == "jaxnorm.nnx"
