"""Flax linen front-end: thin modules that create variables and call jaxnorm.functional.

``BatchNorm``, ``LayerNorm``, ``GroupNorm``, ``InstanceNorm``, ``RMSNorm`` and ``Dropout``
are drop-ins for their ``flax.linen`` namesakes: same arguments, variable collections
and names, and rng stream, so swapping the import keeps checkpoints loadable.
``BatchRenorm``, ``GhostBatchNorm``, ``SwitchNorm``, ``EvoNormB0`` and ``EvoNormS0``
follow the same conventions.
"""

from jaxnorm.linen.normalization import (
    BatchNorm, GroupNorm, InstanceNorm, LayerNorm, RMSNorm)
from jaxnorm.linen.stochastic import (
    AlphaDropout, ClassicDropout, ConcreteDropoutDense, DropConnectDense, DropPath, Dropout,
    GaussianDropout, SpatialDropout)
from jaxnorm.linen.variants import (
    BatchRenorm, EvoNormB0, EvoNormS0, GhostBatchNorm, SwitchNorm)
from jaxnorm.linen.revin import RevIN
from jaxnorm.linen.structured_dropout import AttentionDropout, PatchDrop, TokenDropout
from jaxnorm.linen.whitening import DecorrelatedBatchNorm, IterNorm

__all__ = [
    "AlphaDropout", "ClassicDropout", "ConcreteDropoutDense", "DropConnectDense",
    "DropPath", "GaussianDropout", "SpatialDropout",
    "BatchNorm", "BatchRenorm", "Dropout", "EvoNormB0", "EvoNormS0", "GhostBatchNorm",
    "GroupNorm", "InstanceNorm", "LayerNorm", "RMSNorm", "SwitchNorm",
    "AttentionDropout", "DecorrelatedBatchNorm", "IterNorm", "PatchDrop", "RevIN",
    "TokenDropout",
]
