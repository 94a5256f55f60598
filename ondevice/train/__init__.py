"""Training: one loop for every model and task, metrics and checkpoints.

``loop`` (epochs, early stopping, restore-best, hooks, deadline) is shared by ``trainer``
(``ondevice train``) and the searchers (``ondevice.search.retrain``); beside it ``optim``
(Adam + lazy Adam split), ``evaluate`` (metrics of a model on a split, over ``metrics``),
``batches`` (epoch order, CTR batches), ``config`` (``TrainConfig`` and defaults),
``distributed`` (DDP), ``allocator``, ``progress``, ``resume``, ``checkpoint``, ``tune``.
"""

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
