"""jaxnorm: batch norm, layer norm, dropout and their relatives for JAX and Flax.

``jaxnorm.functional`` holds the pure functions (no Flax import); ``jaxnorm.linen``
holds drop-in replacements for ``flax.linen``'s modules, also exported here
(``jaxnorm.BatchNorm``, ...). The Flax front-end is imported on first use, so
``import jaxnorm.functional`` does not import Flax.
"""

import importlib

from jaxnorm import functional
from jaxnorm.functional import BatchStats

__version__ = "0.1.0"

_LINEN_EXPORTS = ("AlphaDropout", "BatchNorm", "BatchRenorm", "ClassicDropout",
                  "ConcreteDropoutDense", "DropConnectDense", "DropPath", "Dropout",
                  "GaussianDropout", "SpatialDropout", "EvoNormB0", "EvoNormS0",
                  "GhostBatchNorm", "GroupNorm", "InstanceNorm", "LayerNorm", "RMSNorm",
                  "SwitchNorm", "AttentionDropout", "DecorrelatedBatchNorm", "IterNorm",
                  "PatchDrop", "RevIN", "TokenDropout")

__all__ = ["BatchStats", "functional", "linen", *_LINEN_EXPORTS]


def __getattr__(name):
  if name == "linen":
    return importlib.import_module("jaxnorm.linen")
  if name in _LINEN_EXPORTS:
    return getattr(importlib.import_module("jaxnorm.linen"), name)
  raise AttributeError(f"module 'jaxnorm' has no attribute {name!r}")
