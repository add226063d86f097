"""Training toolkit: state with batch_stats, jitted/scanned steps, optax recipes,
checkpoints, precise-BN, BN folding and PyTorch interop, for linen and NNX models."""

from jaxnorm.training.checkpoint import (
    CheckpointError, latest_epoch, restore_checkpoint, save_checkpoint, verify_checkpoint)
from jaxnorm.training.folding import FoldPair, find_foldable_pairs, fold_batch_norm
from jaxnorm.training.guard import all_finite, keep_if_not_finite
from jaxnorm.training.interop import (
    batch_norm_from_torch, batch_norm_to_torch, momentum_from_torch, momentum_to_torch)
from jaxnorm.training.loop import (
    epoch_batch_indices, evaluate, iterate_epoch, make_scan_epoch, run_epoch_per_step)
from jaxnorm.training.nnx_checkpoint import restore_nnx_checkpoint, save_nnx_checkpoint
from jaxnorm.training.nnx_steps import (
    NNXTrainState, make_nnx_eval_step, make_nnx_scan_epoch, make_nnx_train_step)
from jaxnorm.training.nnx_tools import (
    nnx_find_foldable_pairs, nnx_fold_batch_norm, nnx_mc_dropout_predict,
    nnx_precise_batch_stats)
from jaxnorm.training.optim import decay_mask, make_optimizer
from jaxnorm.training.precise_bn import precise_batch_stats
from jaxnorm.training.state import TrainState
from jaxnorm.training.steps import classification_loss, make_eval_step, make_train_step
from jaxnorm.training.uncertainty import (
    MCPrediction, mc_dropout_predict, mc_tta_predict, monte_carlo_predict)

__all__ = [
    "all_finite", "keep_if_not_finite",
    "CheckpointError", "FoldPair", "MCPrediction", "TrainState", "mc_dropout_predict",
    "monte_carlo_predict", "batch_norm_from_torch",
    "batch_norm_to_torch", "classification_loss", "decay_mask", "epoch_batch_indices",
    "evaluate", "find_foldable_pairs", "fold_batch_norm", "iterate_epoch",
    "latest_epoch", "make_eval_step", "make_optimizer", "make_scan_epoch",
    "make_train_step", "momentum_from_torch", "momentum_to_torch",
    "precise_batch_stats", "restore_checkpoint", "run_epoch_per_step", "save_checkpoint",
    "mc_tta_predict", "verify_checkpoint",
    # NNX
    "NNXTrainState", "make_nnx_eval_step", "make_nnx_scan_epoch", "make_nnx_train_step",
    "nnx_find_foldable_pairs", "nnx_fold_batch_norm", "nnx_mc_dropout_predict",
    "nnx_precise_batch_stats", "restore_nnx_checkpoint", "save_nnx_checkpoint",
]
