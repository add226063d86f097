r"""Is an effect there, absent, or undecided? One rule for paired differences over seeds.

A claim such as "dropout shrinks the train-test gap" predicts that a difference measured
on the same seeds (here the gap without dropout minus the gap with it) is positive and
large enough to matter. With its mean :math:`\bar d` and 95% t-interval
:math:`[d_-, d_+]` (:func:`experiments.measures.stats.paired_difference`) and the
smallest effect that matters :math:`m`:

.. math::
  \text{present} \iff d_- > 0 \text{ and } \bar d \ge m, \qquad
  \text{absent} \iff d_+ < m, \qquad \text{undecided otherwise.}

"Absent" means the interval rules out an effect of size :math:`m`; the two cases cannot
both hold (:math:`\bar d \le d_+`).
"""

from __future__ import annotations

import math

from ..spec import Check
from .stats import Summary


def effect_check(name: str, difference: Summary, *, minimum: float,
                 scale: float = 100.0, unit: str = "points") -> Check:
  """A :class:`~experiments.spec.Check` of a paired difference by the rule above.

  Args:
    name: what the difference is ("gap without dropout - gap with dropout").
    difference: its summary over seeds.
    minimum: the smallest effect that counts (:math:`m`, > 0), in the difference's units.
    scale: factor for display (100: fractions shown as points).
    unit: the display unit.

  Returns:
    A check whose ``passed`` is True (present), False (absent) or None (undecided, or
    fewer than two seeds).

  Example:
    >>> from experiments.measures.stats import summarize
    >>> effect_check("d", summarize([0.05, 0.06, 0.04]), minimum=0.01).passed
    True
    >>> effect_check("d", summarize([0.001, -0.002, 0.0]), minimum=0.01).passed
    False
  """
  if not minimum > 0:
    raise ValueError(f"experiments.measures.effects.effect_check: minimum must be > 0 "
                     f"(the smallest effect that counts); got {minimum!r}.")
  low, high = difference.ci_low, difference.ci_high
  if not (math.isfinite(low) and math.isfinite(high) and math.isfinite(difference.mean)):
    passed = None
  elif low > 0 and difference.mean >= minimum:
    passed = True
  elif high < minimum:
    passed = False
  else:
    passed = None
  value = (f"{difference.mean * scale:+.2f} {unit} (95% CI {low * scale:+.2f} to "
           f"{high * scale:+.2f})")
  threshold = (f"present if CI > 0 and mean >= {minimum * scale:g} {unit}; absent if CI "
               f"upper end < {minimum * scale:g} {unit}")
  return Check(name, value, threshold, passed)
