"""Packaging: what a wheel holds, the console scripts, the version, the editable install.

The console scripts are run in-process under their installed names
(``jaxnorm.experiments``, ``jaxnorm.benchmarks``); the wheel and the editable install are
built with setuptools' PEP 517 hooks from a copy of the sources (no pip, no network).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

import jaxnorm

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11")

ROOT = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SOURCES = ("jaxnorm", "experiments", "benchmarks", "pyproject.toml", "README.md", "LICENSE")


def _package_dirs() -> dict[str, pathlib.Path]:
  """Every package the sources hold, under the name it is installed as."""
  mapping = PYPROJECT["tool"]["setuptools"]["package-dir"]
  packages = {".".join(init.parent.relative_to(ROOT).parts): init.parent
              for init in (ROOT / "jaxnorm").rglob("__init__.py")}
  for name, path in mapping.items():
    packages.update({".".join((name, *init.parent.relative_to(ROOT / path).parts)): init.parent
                     for init in (ROOT / path).rglob("__init__.py")})
  return packages


def test_pyproject_lists_every_package():
  """setuptools cannot discover the mapped packages, so the list is explicit: a new
  subpackage of jaxnorm/ must be added to it or the wheel silently lacks it."""
  listed = PYPROJECT["tool"]["setuptools"]["packages"]
  assert sorted(listed) == sorted(_package_dirs())
  for name, directory in _package_dirs().items():
    assert (directory / "__init__.py").is_file(), name


def test_license_is_the_apache_2_text_named_in_the_metadata():
  text = (ROOT / "LICENSE").read_text(encoding="utf-8")
  assert "Apache License" in text and "Version 2.0, January 2004" in text
  assert "END OF TERMS AND CONDITIONS" in text
  assert PYPROJECT["project"]["license"] == {"text": "Apache-2.0"}


def test_version_comes_from_the_metadata_of_pyproject():
  assert jaxnorm.__version__ == importlib.metadata.version("jaxnorm")
  assert jaxnorm.__version__ == PYPROJECT["project"]["version"]
  changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
  assert f"## [{jaxnorm.__version__}]" in changelog


@pytest.fixture
def installed_layout(monkeypatch):
  """jaxnorm.experiments / jaxnorm.benchmarks importable as a wheel lays them out.

  Adds the repository root to ``jaxnorm.__path__`` (the package_dir mapping: the
  subpackage ``jaxnorm.X`` is the directory ``X/``) and removes the modules imported
  under those names afterwards.
  """
  monkeypatch.setattr(jaxnorm, "__path__", [*jaxnorm.__path__, str(ROOT)])
  before = set(sys.modules)
  yield
  for name in set(sys.modules) - before:
    if name.startswith(("jaxnorm.experiments", "jaxnorm.benchmarks")):
      del sys.modules[name]


def _script(name: str):
  module, _, function = PYPROJECT["project"]["scripts"][name].partition(":")
  return getattr(importlib.import_module(module), function)


def test_console_scripts_are_declared():
  assert PYPROJECT["project"]["scripts"] == {
      "jaxnorm-experiments": "jaxnorm.experiments.__main__:main",
      "jaxnorm-benchmarks": "jaxnorm.benchmarks.__main__:main"}


def test_jaxnorm_experiments_lists_the_experiments(installed_layout, capsys):
  main = _script("jaxnorm-experiments")
  assert main.__module__ == "jaxnorm.experiments.__main__"
  assert main(["list"]) == 0
  assert "seed-mlp" in capsys.readouterr().out


def test_jaxnorm_benchmarks_renders_a_saved_run_to_a_file(installed_layout, tmp_path,
                                                           capsys):
  main = _script("jaxnorm-benchmarks")
  assert main.__module__ == "jaxnorm.benchmarks.__main__"
  # end_to_end imports the seed-mlp model from its sibling package jaxnorm.experiments.
  assert sys.modules["jaxnorm.benchmarks.end_to_end"].SeedMLP.__module__ == (
      "jaxnorm.experiments.models")
  out = tmp_path / "RESULTS.md"
  assert main(["--from-json", str(ROOT / "benchmarks" / "results.json"),
               "--markdown", str(out)]) == 0
  printed = capsys.readouterr().out
  assert printed.strip() == f"Report written to {out}"  # the report is not printed too
  assert out.read_text(encoding="utf-8") == (ROOT / "benchmarks" / "RESULTS.md").read_text(
      encoding="utf-8")
  with pytest.raises(SystemExit) as exit_info:
    main(["--help"])
  assert exit_info.value.code == 0
  assert capsys.readouterr().out.startswith("usage: jaxnorm-benchmarks")


def test_benchmark_report_mentions_nothing_outside_the_repository():
  for path in (ROOT / "benchmarks" / "report.py", ROOT / "benchmarks" / "RESULTS.md"):
    assert "issue" not in path.read_text(encoding="utf-8").lower(), path


# --- builds --------------------------------------------------------------------------


def _copy_sources(destination: pathlib.Path) -> pathlib.Path:
  for name in SOURCES:
    source = ROOT / name
    if source.is_dir():
      shutil.copytree(source, destination / name,
                      ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    else:
      shutil.copy2(source, destination / name)
  return destination


def _build(kind: str, project: pathlib.Path, dist: pathlib.Path) -> pathlib.Path:
  """Runs setuptools' PEP 517 hook ``build_wheel`` or ``build_editable``."""
  pytest.importorskip("setuptools", reason="the build tests call setuptools' hooks")
  code = ("import sys; from setuptools import build_meta; "
          f"print(build_meta.{kind}(sys.argv[1]))")
  result = subprocess.run([sys.executable, "-c", code, str(dist)], cwd=project,
                          capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return dist / result.stdout.strip().splitlines()[-1]


def _run_python(code: str, cwd: pathlib.Path, *site_dirs: pathlib.Path):
  """Python without the default site, then ``site_dirs`` (with their .pth files) first
  and this environment's site-packages after them (for jax, flax, ...)."""
  environment = [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
  prologue = ("import site, sys; "
              + "".join(f"site.addsitedir({str(d)!r}); " for d in site_dirs)
              + "".join(f"site.addsitedir({d!r}); " for d in dict.fromkeys(environment)))
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  return subprocess.run([sys.executable, "-S", "-c", prologue + code], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.slow
def test_wheel_holds_one_top_level_package_and_runs_from_anywhere(tmp_path):
  wheel = _build("build_wheel", _copy_sources(tmp_path / "src"), tmp_path / "dist")
  with zipfile.ZipFile(wheel) as archive:
    names = archive.namelist()
    dist_info = next(n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info"))
    metadata = archive.read(f"{dist_info}/METADATA").decode()
    entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
  assert {n.split("/")[0] for n in names} == {"jaxnorm", dist_info}
  for expected in ("jaxnorm/py.typed", "jaxnorm/experiments/__main__.py",
                   "jaxnorm/experiments/seed_mlp.py", "jaxnorm/benchmarks/__main__.py",
                   "jaxnorm/benchmarks/RESULTS.md", "jaxnorm/training/state.py"):
    assert expected in names
  assert any(n.startswith(dist_info) and n.endswith("LICENSE") for n in names)
  assert f"Version: {PYPROJECT['project']['version']}" in metadata
  assert "Project-URL: Source," in metadata
  assert "jaxnorm-experiments = jaxnorm.experiments.__main__:main" in entry_points
  assert "jaxnorm-benchmarks = jaxnorm.benchmarks.__main__:main" in entry_points

  site = tmp_path / "site"
  with zipfile.ZipFile(wheel) as archive:
    archive.extractall(site)
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  result = _run_python(
      "import importlib.util, jaxnorm; "
      f"assert jaxnorm.__file__.startswith({str(site)!r}), jaxnorm.__file__; "
      "print(jaxnorm.__version__); "
      "assert importlib.util.find_spec('experiments') is None; "
      "from jaxnorm.experiments.__main__ import main; sys.exit(main(['list']))",
      elsewhere, site)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.splitlines()[0] == PYPROJECT["project"]["version"]
  assert "seed-mlp" in result.stdout


@pytest.mark.slow
def test_editable_install_imports_from_the_directory_above_a_clone_named_jaxnorm(tmp_path):
  """Regression: from the parent of a clone named jaxnorm/, Python took the clone for a
  namespace package (``module 'jaxnorm' has no attribute 'BatchNorm'``) because the
  editable install was an import hook that runs after the working directory is searched.
  The strict editable install puts a link tree on sys.path instead."""
  clone = _copy_sources(tmp_path / "jaxnorm")
  wheel = _build("build_editable", clone, tmp_path / "dist")
  site = tmp_path / "site"
  with zipfile.ZipFile(wheel) as archive:
    archive.extractall(site)
  result = _run_python(
      "import os, jaxnorm; "
      f"assert os.path.realpath(jaxnorm.__file__).startswith({str(clone)!r}), "
      "jaxnorm.__file__; "
      "print(jaxnorm.BatchNorm.__name__, jaxnorm.__version__); "
      "import jaxnorm.experiments.models, jaxnorm.benchmarks.report",
      tmp_path, site)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.split()[0] == "BatchNorm"


def test_ci_runs_the_readme_commands():
  """.ci/run installs as the README's set-up says and runs the README's test command."""
  readme = (ROOT / "README.md").read_text(encoding="utf-8")
  block = readme.split("# Tests:", 1)[1].split("```", 1)[0]
  install, test = block.splitlines()[1].split(" && ")
  ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
  assert install in ci and test in ci
  assert ci.index(install) < ci.index(test)
  assert "-n auto" in test  # the whole suite on every core (pytest-xdist)
  assert any(line.startswith("python -m sphinx -W") for line in ci[ci.index(test):])
