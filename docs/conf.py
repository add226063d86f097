"""Sphinx configuration: user guide and API reference of jaxnorm.

Build with ``python -m sphinx -W -b html docs docs/_build/html`` (warnings are errors,
as in CI). The API pages are generated from the docstrings (autodoc + napoleon for the
Google style, MathJax for ``.. math::``).
"""

import importlib.metadata
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # document this source tree, not an installed copy

import jaxnorm  # noqa: E402

# The repository's address, from the project URLs in pyproject.toml (as installed).
_URLS = dict(url.split(", ", 1) for url in importlib.metadata.metadata(
    "jaxnorm").get_all("Project-URL") or [])
if "Source" not in _URLS:
  raise RuntimeError("docs/conf.py: the installed jaxnorm has no Source project URL; "
                     "install it again: python -m pip install -e \".[docs]\"")
SOURCE = _URLS["Source"]

project = "jaxnorm"
author = "the jaxnorm authors"
copyright = "the jaxnorm authors"  # noqa: A001
release = version = jaxnorm.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.extlinks",
    "sphinx.ext.viewcode",
]

# :source:`experiments/REPORT.md` links to a file of the repository.
extlinks = {"source": (f"{SOURCE}/blob/main/%s", "%s")}

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True  # Attributes: as a field list; autodoc documents no member twice

exclude_patterns = ["_build"]
html_theme = "alabaster"
html_title = f"jaxnorm {release}"


def _is_field(obj, name: str) -> bool:
  """A NamedTuple field or a flax module's dataclass field: the class docstring's
  Attributes section documents it, so autodoc would only add "Alias for field number 0"
  or the docstring of the field's default value (``initializers.zeros``, ...)."""
  if type(obj).__name__ == "_tuplegetter":
    return True
  return name in _MODULE_FIELDS


def _module_fields() -> set[str]:
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jaxnorm.linen  # pylint: disable=import-outside-toplevel
  return {field for value in vars(jaxnorm.linen).values()
          if isinstance(value, type) and issubclass(value, nn.Module)
          for field in getattr(value, "__dataclass_fields__", {})}


_MODULE_FIELDS = _module_fields()


def _skip_fields(app, what, name, obj, skip, options):  # pylint: disable=unused-argument
  if what == "class" and _is_field(obj, name):
    return True
  return None


def setup(app):
  app.connect("autodoc-skip-member", _skip_fields)
