"""What an experiment declares before it runs, and what it returns.

Every experiment module defines, at import time and so before any run:

- ``SPEC``: a :class:`Spec` — the claim of the course notes in our words, the published
  anchor it is held against (with its source), the criterion (thresholds, seeds, what
  counts as success), the data and why, the setup, and what limits a conclusion at CPU
  scale;
- ``run(ctx: RunContext) -> Outcome``: trains and measures, then computes its
  :class:`Verdict` objects from the numbers with code written before the run. A
  criterion is never adjusted after seeing a result; a claim that fails is reported as
  failing.

The command line (``python -m experiments``) writes the outcome to
``DIR/NAME/results.json`` and ``table.md`` (see :mod:`experiments.results`), and
``python -m experiments report`` turns the latest runs into ``experiments/REPORT.md``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

HOLDS = "holds"
DOES_NOT_HOLD = "does not hold"
INCONCLUSIVE = "inconclusive"
VERDICTS = (HOLDS, DOES_NOT_HOLD, INCONCLUSIVE)


@dataclasses.dataclass(frozen=True)
class Anchor:
  """A published number the claim is held against.

  Attributes:
    number: the number(s), in words ("Inception reached 72.2% in 13.3M steps with BN
      against 31.0M without").
    source: the citation (authors, year, title, table or figure).
  """

  number: str
  source: str


@dataclasses.dataclass(frozen=True)
class Spec:
  """The declaration of an experiment, fixed in code before it runs.

  Attributes:
    name: the command-line name (``bn-fig1``).
    title: a one-line title for the report.
    description: a one-line description for ``python -m experiments list``.
    claim: the course notes' claim, in our words.
    anchor: the published number it is held against.
    criterion: the test — thresholds, seeds, what counts as success.
    data: which data set and why.
    setup: models, training and measurement, in a few sentences.
    limits: what limits the conclusion at this scale.
  """

  name: str
  title: str
  description: str
  claim: str
  anchor: Anchor
  criterion: str
  data: str
  setup: str
  limits: str


@dataclasses.dataclass(frozen=True)
class Check:
  """One numeric test inside a criterion: ``value`` against ``threshold``.

  ``passed`` is None when the number could not be computed (e.g. every run diverged).
  """

  name: str
  value: Any
  threshold: str
  passed: bool | None


@dataclasses.dataclass(frozen=True)
class Verdict:
  """The verdict on one claim (an experiment may test several parts of its claim).

  Attributes:
    claim: the part of the claim this verdict is about.
    verdict: ``holds``, ``does not hold`` or ``inconclusive``.
    reason: the numbers behind it, in a sentence.
    ours: our headline number, for the report's summary table.
    anchor: the published number for this part (defaults to the spec's anchor).
    checks: the individual tests.
  """

  claim: str
  verdict: str
  reason: str
  ours: str
  anchor: str | None = None
  checks: tuple[Check, ...] = ()

  def __post_init__(self):
    if self.verdict not in VERDICTS:
      raise ValueError(f"Verdict.verdict must be one of {VERDICTS}; got {self.verdict!r}.")


def verdict_from_checks(checks: Sequence[Check]) -> str:
  """``holds`` if every check passed, ``does not hold`` if one failed, else inconclusive.

  A failed check decides before an unknown one: a criterion that is already violated
  does not become inconclusive because another number is missing.

  Example:
    >>> verdict_from_checks([Check("a", 1.0, "> 0", True), Check("b", 2.0, "> 3", False)])
    'does not hold'
  """
  results = [check.passed for check in checks]
  if not results:
    raise ValueError("verdict_from_checks: no checks given.")
  if any(result is False for result in results):
    return DOES_NOT_HOLD
  if any(result is None for result in results):
    return INCONCLUSIVE
  return HOLDS


@dataclasses.dataclass(frozen=True)
class RunContext:
  """What the command line hands an experiment's ``run``.

  Attributes:
    out_dir: the directory to write figures into (a fresh staging directory; the CLI
      moves it into place when the run succeeds).
    quick: a smoke run (fewer seeds and steps); its verdicts are not results.
    seeds: the number of seeds (5 for a full run unless overridden).
    data: the data set name when the experiment lets the user choose one, else None.
    data_path: path for user data sets.
    split_seed: seed of the train/test split.
    epochs: a training length chosen on the command line, for the experiments that
      accept one (``ACCEPTS_DATA_OPTIONS``); None keeps the experiment's own.
    progress: a tqdm-like factory (``progress(iterable, **kwargs)``), or None.
    api: the Flax API of the models, ``"linen"`` or ``"nnx"`` (experiments that accept
      data options).
  """

  out_dir: str
  quick: bool = False
  seeds: int = 5
  data: str | None = None
  data_path: str | None = None
  split_seed: int = 0
  epochs: int | None = None
  progress: Callable[..., Any] | None = None
  api: str = "linen"

  def bar(self, iterable, **kwargs):
    """``iterable`` wrapped in a progress bar when one is available."""
    return self.progress(iterable, **kwargs) if self.progress else iterable


@dataclasses.dataclass
class Outcome:
  """What a run returns: configuration, numbers, verdicts, a table and figure files.

  Attributes:
    config: every setting that decides the numbers (model, steps, learning rates...).
    per_seed: the per-seed numbers behind the summary, as lists indexed by seed.
    summary: named :class:`~experiments.measures.stats.Summary` dicts (mean, std,
      95% interval) and other aggregates.
    verdicts: the verdicts, computed by code written before the run.
    table: a markdown table of the main numbers.
    figures: file names (inside ``ctx.out_dir``) of the PNG figures.
    notes: anything a reader needs to interpret the numbers.
  """

  config: dict
  per_seed: dict
  summary: dict
  verdicts: list[Verdict]
  table: str
  figures: list[str] = dataclasses.field(default_factory=list)
  notes: list[str] = dataclasses.field(default_factory=list)
