"""Drop-in replacement for ``flax.linen.Dropout`` over :func:`jaxnorm.functional.dropout`."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxnorm import _checks
from jaxnorm import functional as F


class Dropout(nn.Module):
  """Inverted dropout, a drop-in for ``flax.linen.Dropout``.

  Same attributes and call arguments; the key comes from the ``rng_collection`` stream
  (``'dropout'``) exactly as in Flax, so a model gives the same masks after swapping the
  import. See :func:`jaxnorm.functional.dropout`.

  Attributes:
    rate: drop probability in [0, 1] (not the keep probability).
    broadcast_dims: axes along which the mask is shared.
    deterministic: if True, return the input unchanged.
    rng_collection: the rng stream to draw the key from.
  """

  rate: float
  broadcast_dims: Sequence[int] = ()
  deterministic: bool | None = None
  rng_collection: str = "dropout"

  @nn.compact
  def __call__(self, inputs, deterministic: bool | None = None,
               rng: jax.Array | None = None):
    """Applies a random dropout mask (training) or the identity (``deterministic``)."""
    deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
    _checks.check_in_unit_interval(
        self.rate, name="rate", fn="jaxnorm.linen.Dropout",
        hint=" rate is the probability of dropping an element, not of keeping it.")
    if deterministic or _checks.concrete_float(self.rate) == 0.0:
      return inputs
    if _checks.concrete_float(self.rate) == 1.0:
      return jnp.zeros_like(inputs)  # as Flax: no key is drawn
    if rng is None:
      rng = self.make_rng(self.rng_collection)
    return F.dropout(rng, inputs, rate=self.rate, broadcast_dims=self.broadcast_dims)
