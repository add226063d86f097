"""The ``Example:`` sections of the training toolkit's docstrings run as written."""

import doctest
import importlib

import pytest


@pytest.mark.parametrize("module", ["guard", "steps", "loop", "checkpoint"])
def test_docstring_examples_run(module):
  mod = importlib.import_module(f"jaxnorm.training.{module}")
  result = doctest.testmod(mod, raise_on_error=False, report=True)
  assert result.attempted > 0
  assert result.failed == 0
