"""The docstrings of these modules hold ``Example:`` sections.

The examples themselves run as doctests with the suite (``--doctest-modules`` over
``jaxnorm/`` in pyproject.toml); this test keeps a module from losing them unnoticed
without running them a second time.
"""

import doctest
import importlib
import pathlib

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
    "jaxnorm.training.guard",
    "jaxnorm.training.steps",
    "jaxnorm.training.loop",
    "jaxnorm.training.checkpoint",
]


@pytest.mark.parametrize("name", MODULES)
def test_module_has_docstring_examples(name):
  module = importlib.import_module(name)
  tests = doctest.DocTestFinder(exclude_empty=True).find(module)
  assert sum(len(test.examples) for test in tests) > 0, f"{name} has no examples"


def test_doctests_run_with_the_suite():
  import tomllib
  root = pathlib.Path(__file__).resolve().parents[1]
  options = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
  assert "--doctest-modules" in options["addopts"] and "jaxnorm" in options["testpaths"]
