"""Every public function and class of the API modules shows an ``Example:`` (``>>>``).

The examples run as doctests with the suite (``--doctest-modules``); this test only
finds them (``doctest.DocTestFinder``, nothing is run), so that a new public name
without an example fails here, naming it.
"""

import doctest
import importlib
import inspect

import pytest

MODULES = [
    "jaxnorm.functional",
    "jaxnorm.linen",
    "jaxnorm.nnx",
    "jaxnorm.training",
    "jaxnorm.testing",
    "jaxnorm.kernels",
]

_FINDER = doctest.DocTestFinder(recurse=False)


def _has_example(obj, name: str) -> bool:
  """Whether ``obj``'s own docstring holds at least one ``>>>`` example."""
  return any(test.examples for test in _FINDER.find(obj, name, module=False, globs={}))


def _public_api(module_name: str) -> dict[str, object]:
  """The functions and classes (any callable but a module) in ``module.__all__``."""
  module = importlib.import_module(module_name)
  api = {}
  for name in module.__all__:
    obj = getattr(module, name)
    if callable(obj) and not inspect.ismodule(obj):
      api[f"{module_name}.{name}"] = obj
  return api


@pytest.mark.parametrize("module_name", MODULES)
def test_public_names_have_examples(module_name):
  api = _public_api(module_name)
  assert api, f"{module_name}.__all__ lists no function or class"
  missing = sorted(name for name, obj in api.items()
                   if not _has_example(obj, name))
  assert not missing, (
      f"these public names of {module_name} have no '>>>' example in their docstring: "
      f"{', '.join(missing)}. Add a short 'Example:' section (2-5 '>>>' lines, tiny "
      "shapes, outputs that are stable across platforms).")


def test_checker_tells_examples_apart():

  def documented():
    """Adds one.

    Example:
      >>> 1 + 1
      2
    """

  def undocumented():
    """Adds one; see documented (no example here)."""

  class Plain:
    """A class whose method, not the class, has an example."""

    def method(self):
      """>>> 1
      1
      """

  assert _has_example(documented, "documented")
  assert not _has_example(undocumented, "undocumented")
  assert not _has_example(Plain, "Plain")
  assert not _has_example(lambda: None, "no_docstring")
