"""Flax NNX front-end: thin ``nnx.Module`` s that create variables and call jaxnorm.functional.

``BatchNorm``, ``LayerNorm``, ``RMSNorm``, ``GroupNorm``, ``InstanceNorm`` and ``Dropout``
are drop-ins for their ``flax.nnx`` namesakes: the same constructor and call signatures,
the same variables (``nnx.Param`` ``scale``/``bias``, ``nnx.BatchStat`` ``mean``/``var``
in float32), the same modes (``model.train()``, ``model.eval()``, ``nnx.view``) and, for
dropout, the same masks for the same ``nnx.Rngs``. The rest of the family
(``BatchRenorm``, ``GhostBatchNorm``, ``SwitchNorm``, ``EvoNormB0``/``EvoNormS0``,
``SpatialDropout``, ``DropPath``, ``AlphaDropout``, ``GaussianDropout``,
``ClassicDropout``, ``DropConnectLinear``, ``ConcreteDropoutLinear``,
``DecorrelatedBatchNorm``, ``IterNorm``, ``RevIN``, ``AttentionDropout``,
``TokenDropout``, ``PatchDrop``) follows the same
conventions and the variable names of :mod:`jaxnorm.linen`, so :func:`state_from_linen`
and :func:`state_to_linen` move checkpoints between the two front-ends.

Adding the NNX module of a new functional layer
-----------------------------------------------

A module here only creates variables and calls :mod:`jaxnorm.functional`; everything
both front-ends need lives below them in ``jaxnorm/_frontend.py`` (feature shapes,
Flax's dtype rule, the batch-norm mode) and ``jaxnorm/nnx/_base.py`` (parameters drawn
from ``rngs.params()`` as flax does, flag merging, RNG streams):

1. Subclass ``_base.RunningStatsNorm`` (a layer with ``mean``/``var`` running
   statistics and ``use_running_average``), ``_base.KeyedNoise`` (a stochastic layer:
   ``rate``, ``deterministic``, its own RNG stream) or ``nnx.Module`` (stateless).
2. In ``__init__``, take ``num_features`` (or ``rate``) first and keyword-only options
   after it, ending with ``rngs``; create Params with ``_base.param`` /
   ``_base.affine_params`` and running statistics as float32 ``nnx.BatchStat``, with
   the same names as the linen module (so the conversion helpers work unchanged).
3. In ``__call__``, merge the mode flag with ``_base.first_flag`` (or ``self._key`` /
   ``self._use_running_average``), check the input's features with
   ``_frontend.check_num_features``, promote with ``self._promoted(x)`` (flax's
   ``promote_dtype``), call the functional layer, write new statistics back with
   ``self._write`` and return ``y.astype(out_dtype)``.
4. Define ``set_view`` for the mode flag (inherited from both bases), export the class
   here, and test it against the linen module or the functional layer as
   ``tests/nnx/test_family.py`` does.
"""

from jaxnorm.nnx.convert import state_from_linen, state_to_linen
from jaxnorm.nnx.normalization import BatchNorm, GroupNorm, InstanceNorm, LayerNorm, RMSNorm
from jaxnorm.nnx.stochastic import (
    AlphaDropout, ClassicDropout, ConcreteDropoutLinear, DropConnectLinear, DropPath, Dropout,
    GaussianDropout, SpatialDropout)
from jaxnorm.nnx.variants import BatchRenorm, EvoNormB0, EvoNormS0, GhostBatchNorm, SwitchNorm
from jaxnorm.nnx.revin import RevIN
from jaxnorm.nnx.structured_dropout import AttentionDropout, PatchDrop, TokenDropout
from jaxnorm.nnx.whitening import DecorrelatedBatchNorm, IterNorm

__all__ = [
    "AlphaDropout", "AttentionDropout", "BatchNorm", "BatchRenorm", "ClassicDropout", "ConcreteDropoutLinear",
    "DecorrelatedBatchNorm", "DropConnectLinear", "DropPath", "Dropout", "EvoNormB0",
    "EvoNormS0", "GaussianDropout", "GhostBatchNorm", "GroupNorm", "InstanceNorm",
    "IterNorm", "LayerNorm", "PatchDrop", "RMSNorm", "RevIN", "SpatialDropout",
    "SwitchNorm", "TokenDropout", "state_from_linen", "state_to_linen",
]
