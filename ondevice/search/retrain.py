"""CTR and top-K training for the searchers (search phases and retraining), on the shared loop.

``fit_ctr`` and ``fit_topk`` bring the batches and the loss to ``ondevice.train.loop.fit``,
the loop ``ondevice.train.Trainer`` runs too (epochs, early stopping on validation,
restore-best, ``on_step``, the deadline), with the trainer's conventions: BCE on ``[B]``
logits, epoch order drawn from ``numpy.random.default_rng([seed, epoch])``, torch re-seeded
per epoch, validation AUC computed once over the whole split with ``evaluate_ctr``, the best
epoch's weights kept. Optimisers: by default Adam on dense parameters and lazy Adam on
row-sparse tables (``ondevice.train.optim.make_optimizers``); a searcher may pass its own
(PEP: one Adam with coupled weight decay on everything). ``on_step(step)`` may stop training
early by returning ``True``.

``fit_topk`` is the same for BPR-MF (top-K): the trainer's BPR objective (one uniform
negative per training interaction, ``-ln σ(s(u,i) − s(u,j))``, L2 ``l2/2`` on the batch's
rows), validation Recall@K with full ranking excluding training items (``evaluate_topk``).
``before_step(step, rng)`` and ``extra_loss(model, users, pos, neg)`` are the hooks RULE uses
(sample a block configuration per batch, add the diversity regulariser).

Time limit (``compress --time-limit``): inside ``with deadline(t):`` (``ondevice.train.loop``)
both stop at the first optimizer step after ``time.monotonic()`` passes ``t``, evaluate what
they have, and keep the best evaluated epoch as usual, so a candidate stopped at the limit
still returns a valid model (``FitResult.stopped_at_deadline``). Without a deadline nothing
changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ondevice.data import EncodedDataset
from ondevice.models import BPRMF, CTRModel
from ondevice.train.batches import epoch_order, in_memory_ctr, iter_ctr_batches
from ondevice.train.distributed import DistInfo
from ondevice.train.evaluate import evaluate_ctr, evaluate_topk
from ondevice.train.loop import LoopResult, StepInfo, deadline, fit, past_deadline
from ondevice.train.optim import make_optimizers

__all__ = ["RETRAIN_EPOCHS", "FitResult", "deadline", "default_optimizers", "fit_ctr", "fit_topk", "iter_batches",
           "past_deadline", "topk_metric_name", "topk_pairs", "val_metrics"]

# Retraining's epoch cap for the embedding searchers (pep, sseds, mde, uniform, hash): early
# stopping on validation (patience 2) ends it, the cap only bounds it. Warm-started retrains
# stop after 3-8 epochs; at 3 epochs uniform at 1/10 of Frappe's bytes (a narrowed int8 MLP) was
# still climbing (benchmarks/results/compress_quality_frappe.md).
RETRAIN_EPOCHS = 20


@dataclass
class FitResult:
    val: dict[str, float]
    best_epoch: int
    steps: int
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False
    stopped_at_deadline: bool = False


def default_optimizers(model: CTRModel | BPRMF, lr: float, weight_decay: float = 0.0) -> list[torch.optim.Optimizer]:
    """The trainer's optimiser split (``ondevice.train.optim.make_optimizers``)."""
    return make_optimizers(model, lr=lr, weight_decay=weight_decay)


def iter_batches(data: EncodedDataset, split: str, batch_size: int, seed: int, epoch: int,
                 _cache: dict[int, tuple[Any, Any]] | None = None):
    """Shuffled ``(ids int64 [B, F], labels float32 [B])`` batches of one epoch.

    The trainer's order and batching (``epoch_order``, ``iter_ctr_batches``); the split is
    converted to int64 tensors once per ``_cache`` (``fit_ctr`` keeps one for all epochs).
    """
    s = data.split(split)
    cache = {} if _cache is None else _cache
    if id(s) not in cache:
        cache[id(s)] = in_memory_ctr(s)
    ids, labels = cache[id(s)]
    yield from iter_ctr_batches(ids, labels, epoch_order(len(s), seed, epoch), batch_size, DistInfo(), torch.device("cpu"))


def val_metrics(model: CTRModel | BPRMF, data: EncodedDataset, *, k: int = 20) -> dict[str, float]:
    """Validation metrics: AUC/logloss (CTR) or Recall@k/NDCG@k excluding training items (top-K)."""
    if isinstance(model, BPRMF):
        out = evaluate_topk(model, topk_pairs(data, "val"), [topk_pairs(data, "train")], k=k)
    else:
        s = data.split("val")
        out = evaluate_ctr(model, s.ids, s.labels)
    model.train()
    return out


def topk_metric_name(k: int = 20) -> str:
    return f"recall@{k}"


def topk_pairs(data: EncodedDataset, split: str) -> np.ndarray:
    """``[n, 2]`` int64 (user, item) pairs of a top-K split."""
    return np.asarray(data.split(split).ids, dtype=np.int64)


def fit_ctr(
    model: CTRModel,
    data: EncodedDataset,
    *,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 1024,
    seed: int = 0,
    patience: int = 2,
    optimizers: list[torch.optim.Optimizer] | None = None,
    on_step: Callable[[int], bool] | None = None,
    select_best: bool = True,
    evaluate: bool = True,
    grad_clip: float | None = None,
    score_start: bool = True,
) -> FitResult:
    """Train ``model`` in place on the train split; returns validation metrics.

    With ``select_best`` the weights of the best validation epoch are restored at the end
    (early stopping after ``patience`` epochs without improvement); with ``score_start`` the
    starting weights compete as epoch 0 (a warm start that the first epochs overfit is kept).
    ``epochs=0`` only evaluates.
    """
    train_cache: dict[int, tuple[Any, Any]] = {}  # the split as int64 tensors, converted once

    def bce(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
        x, y = batch
        logits = model(x)  # [B]
        assert logits.shape == y.shape, f"logits {tuple(logits.shape)} vs labels {tuple(y.shape)}"
        return F.binary_cross_entropy_with_logits(logits, y), len(y)

    result = fit(model, optimizers if optimizers is not None else default_optimizers(model, lr),
                 batches=lambda epoch: iter_batches(data, "train", batch_size, seed, epoch, train_cache),
                 loss=bce, epochs=epochs, seed=seed,
                 evaluate=(lambda: val_metrics(model, data)) if evaluate else None, metric="auc",
                 patience=patience if evaluate and select_best else None, restore_best=select_best,
                 grad_clip=grad_clip, on_step=_count_steps(on_step), score_start=score_start)
    return _fit_result(result, "val_auc", "auc")


def fit_topk(
    model: BPRMF,
    data: EncodedDataset,
    *,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 2048,
    seed: int = 0,
    patience: int = 2,
    l2: float = 1e-4,
    k: int = 20,
    optimizers: list[torch.optim.Optimizer] | None = None,
    before_step: Callable[[int, np.random.Generator], None] | None = None,
    extra_loss: Callable[[BPRMF, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    select_best: bool = True,
    evaluate: bool = True,
    max_steps_per_epoch: int | None = None,
    on_step: Callable[[int], bool] | None = None,
    grad_clip: float | None = None,
    score_start: bool = True,
) -> FitResult:
    """Train a BPR-MF ``model`` in place on the train split (module docstring); val Recall@k.

    ``on_step(steps)`` runs after every optimizer step; returning True stops training
    (PEP's byte-target snapshot), as in :func:`fit_ctr`.

    Epoch ``e`` shuffles with ``default_rng([seed, e])`` and draws its negatives from
    ``default_rng([seed, e, 1])`` (the trainer's streams); ``before_step`` gets its own
    ``default_rng([seed, e, 2])``. With ``select_best`` the best validation epoch's weights
    are restored (early stopping after ``patience`` epochs without improvement); with
    ``score_start`` the starting weights compete as epoch 0.
    """
    pairs = topk_pairs(data, "train")
    metric = topk_metric_name(k)
    steps_done = 0  # what before_step is told: optimiser steps before this batch

    def bpr_batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        nonlocal steps_done
        order = epoch_order(len(pairs), seed, epoch)
        negatives = np.random.default_rng([seed, epoch, 1]).integers(1, model.num_items, size=len(pairs))
        hook_rng = np.random.default_rng([seed, epoch, 2])
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            users, pos, neg = (torch.from_numpy(pairs[rows, 0]), torch.from_numpy(pairs[rows, 1]),
                               torch.from_numpy(negatives[rows]))
            if before_step is not None:
                before_step(steps_done, hook_rng)
            steps_done += 1
            yield users, pos, neg

    def bpr(batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
        users, pos, neg = batch
        u = model.user_vectors(users)
        i_pos, i_neg = model.item_vectors(pos), model.item_vectors(neg)
        loss = -F.logsigmoid((u * i_pos).sum(1) - (u * i_neg).sum(1)).mean()
        if l2:
            loss = loss + l2 * (u.pow(2).sum() + i_pos.pow(2).sum() + i_neg.pow(2).sum()) / (2 * len(users))
        if extra_loss is not None:
            loss = loss + extra_loss(model, users, pos, neg)
        return loss, len(users)

    result = fit(model, optimizers if optimizers is not None else default_optimizers(model, lr),
                 batches=bpr_batches, loss=bpr, epochs=epochs, seed=seed,
                 evaluate=(lambda: val_metrics(model, data, k=k)) if evaluate else None, metric=metric,
                 patience=patience if evaluate and select_best else None, restore_best=select_best,
                 grad_clip=grad_clip, max_steps_per_epoch=max_steps_per_epoch, on_step=_count_steps(on_step),
                 score_start=score_start)
    return _fit_result(result, f"val_{metric}", metric)


def _count_steps(on_step: Callable[[int], bool] | None) -> Callable[[StepInfo], bool] | None:
    """The searchers' ``on_step(steps)`` as a loop hook."""
    return None if on_step is None else (lambda info: on_step(info.steps))


def _fit_result(result: LoopResult, history_key: str, metric: str) -> FitResult:
    """``FitResult`` of a loop run; history rows ``{epoch, train_loss, steps[, val_<metric>]}``."""
    history = [{"epoch": e.epoch, "train_loss": e.train_loss, "steps": e.steps,
                **({history_key: e.val[metric]} if e.val else {})} for e in result.epochs]
    return FitResult(val=result.val, best_epoch=result.state.best_epoch, steps=result.state.steps,
                     seconds=result.seconds, history=history, stopped_early=result.stopped_early,
                     stopped_at_deadline=result.stopped_at_deadline)
