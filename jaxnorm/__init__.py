"""jaxnorm: batch norm, layer norm, dropout and their relatives for JAX and Flax.

``jaxnorm.functional`` holds the pure functions (no Flax import); ``jaxnorm.linen``
holds drop-in replacements for ``flax.linen``'s modules, also exported here
(``jaxnorm.BatchNorm``, ...), and ``jaxnorm.nnx`` those for ``flax.nnx``'s. The Flax
front-ends are imported on first use, so ``import jaxnorm`` does not import Flax.
"""

import importlib
import importlib.metadata

from jaxnorm import functional
from jaxnorm.functional import BatchStats

try:  # pyproject.toml is the one source of the version; installing records it
  __version__ = importlib.metadata.version("jaxnorm")
except importlib.metadata.PackageNotFoundError:  # a source tree that was never installed
  __version__ = "0+unknown"

_LINEN_EXPORTS = ("AlphaDropout", "BatchNorm", "BatchRenorm", "ClassicDropout",
                  "ConcreteDropoutDense", "DropConnectDense", "DropPath", "Dropout",
                  "GaussianDropout", "SpatialDropout", "EvoNormB0", "EvoNormS0",
                  "GhostBatchNorm", "GroupNorm", "InstanceNorm", "LayerNorm", "RMSNorm",
                  "SwitchNorm", "AttentionDropout", "DecorrelatedBatchNorm", "IterNorm",
                  "PatchDrop", "RevIN", "TokenDropout")

__all__ = ["BatchStats", "functional", "linen", "nnx", *_LINEN_EXPORTS]


def __getattr__(name):
  if name in ("linen", "nnx"):
    return importlib.import_module(f"jaxnorm.{name}")
  if name in _LINEN_EXPORTS:
    return getattr(importlib.import_module("jaxnorm.linen"), name)
  raise AttributeError(f"module 'jaxnorm' has no attribute {name!r}")
