"""Experiments that test what the literature claims about normalization and dropout.

Run ``python -m experiments list`` to see them and ``python -m experiments run NAME``
to run one; results go to ``DIR/NAME/`` (``results.json``, ``table.md``, PNG plots).
"""

from . import seed_mlp

EXPERIMENTS = {module.NAME: module for module in (seed_mlp,)}
