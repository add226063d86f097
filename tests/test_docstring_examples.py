"""The ``Example:`` sections of the docstrings run as written (doctest)."""

import doctest
import importlib

import pytest

MODULES = [
    "jaxnorm.functional.whitening",
    "jaxnorm.functional.revin",
    "jaxnorm.functional.structured_dropout",
    "jaxnorm.linen.whitening",
    "jaxnorm.linen.revin",
    "jaxnorm.linen.structured_dropout",
    "jaxnorm.training.uncertainty",
    "jaxnorm._frontend",
    "jaxnorm.nnx.normalization",
    "jaxnorm.nnx.variants",
    "jaxnorm.nnx.stochastic",
    "jaxnorm.nnx.convert",
    "jaxnorm.training.nnx_steps",
    "jaxnorm.training.nnx_checkpoint",
    "jaxnorm.training.nnx_tools",
    "jaxnorm.testing",
    "jaxnorm.testing.assertions",
    "jaxnorm.testing.strategies",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
  module = importlib.import_module(name)
  result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
  assert result.attempted > 0, f"{name} has no examples"
  assert result.failed == 0, f"{result.failed} example(s) failed in {name}"
