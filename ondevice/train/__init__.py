"""Training: one loop for every model and task, metrics and checkpoints."""

from ondevice.train.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from ondevice.train.config import TrainConfig
from ondevice.train.evaluate import evaluate_ctr, evaluate_topk, predict_ctr
from ondevice.train.metrics import log_loss, recall_ndcg_at_k, roc_auc, sampled_hr_ndcg
from ondevice.train.trainer import Trainer, TrainResult, train

__all__ = [
    "Checkpoint",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "evaluate_ctr",
    "evaluate_topk",
    "load_checkpoint",
    "log_loss",
    "predict_ctr",
    "recall_ndcg_at_k",
    "roc_auc",
    "sampled_hr_ndcg",
    "save_checkpoint",
    "train",
]
