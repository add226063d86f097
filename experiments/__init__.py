"""Experiments that test what the course notes claim about normalization and dropout.

Run ``python -m experiments list`` to see them, ``python -m experiments run NAME`` (or
``all``) to run them and ``python -m experiments report`` to gather the latest runs
into ``experiments/REPORT.md``. Each experiment is one module declaring a
:class:`~experiments.spec.Spec` (claim, anchor, criterion — fixed before any run) and a
``run(ctx)`` returning an :class:`~experiments.spec.Outcome` with its verdicts; the
shared machinery is in :mod:`experiments.population` (many seeds and settings trained
in one program), :mod:`experiments.results`, :mod:`experiments.plots` and
:mod:`experiments.measures`.
"""

import importlib

#: Module names, in the order of the report. ``seed_mlp`` is the main job (the notebook's
#: network): it makes no claim of its own and is not part of the report.
_MODULES = ("seed_mlp", "bn_fig1", "lr_sweep", "depth_gradients", "placement",
            "mnist1d_baselines", "rnn_norm")

EXPERIMENTS = {module.NAME: module for module in (
    importlib.import_module(f"{__name__}.{name}") for name in _MODULES)}


def claims() -> list[str]:
  """Names of the experiments that test a claim (those with a ``SPEC``), in report order."""
  return [name for name, module in EXPERIMENTS.items() if hasattr(module, "SPEC")]
