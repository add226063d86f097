"""The present / absent / undecided rule for paired differences."""

import doctest
import math

import pytest

from experiments.measures import effects
from experiments.measures.effects import effect_check
from experiments.measures.stats import Summary


def _summary(mean, low, high):
  return Summary(mean=mean, std=0.01, n=5, ci_low=low, ci_high=high)


@pytest.mark.parametrize("mean, low, high, expected", [
    (0.05, 0.02, 0.08, True),     # interval above 0, mean above the minimum
    (0.005, 0.001, 0.009, False),  # interval rules out an effect of 0.01
    (-0.03, -0.05, -0.01, False),  # the opposite effect
    (0.02, -0.01, 0.05, None),     # interval spans 0
    (0.008, 0.002, 0.014, None),   # real but below the minimum, not ruled out
    (math.nan, math.nan, math.nan, None),
])
def test_rule(mean, low, high, expected):
  assert effect_check("d", _summary(mean, low, high), minimum=0.01).passed is expected


def test_value_and_threshold_are_shown_in_points():
  check = effect_check("d", _summary(0.05, 0.02, 0.08), minimum=0.01)
  assert check.value == "+5.00 points (95% CI +2.00 to +8.00)"
  assert "1 points" in check.threshold


@pytest.mark.parametrize("minimum", [0.0, -1.0])
def test_minimum_must_be_positive(minimum):
  with pytest.raises(ValueError, match="effect_check: minimum must be > 0"):
    effect_check("d", _summary(0.1, 0.0, 0.2), minimum=minimum)


def test_docstring_examples_run():
  result = doctest.testmod(effects, optionflags=doctest.NORMALIZE_WHITESPACE)
  assert result.attempted > 0 and result.failed == 0
