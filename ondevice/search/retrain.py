"""The one small CTR training loop every searcher shares (search phases and retraining).

Same conventions as ``ondevice.train.Trainer``: BCE on ``[B]`` logits, epoch order drawn
from ``numpy.random.default_rng([seed, epoch])``, torch re-seeded per epoch, validation AUC
computed once over the whole split with ``evaluate_ctr``, the best epoch's weights kept.
Optimisers: by default Adam on dense parameters and lazy ``SparseAdam`` on row-sparse tables
(the trainer's split); a searcher may pass its own (PEP: one Adam with coupled weight decay
on everything). ``on_step(step)`` may stop training early by returning ``True``.

``fit_topk`` is the same loop for BPR-MF (top-K): the trainer's BPR objective (one uniform
negative per training interaction, ``-ln σ(s(u,i) − s(u,j))``, L2 ``l2/2`` on the batch's
rows), validation Recall@K with full ranking excluding training items (``evaluate_topk``).
``before_step(step, rng)`` and ``extra_loss(model, users, pos, neg)`` are the hooks RULE uses
(sample a block configuration per batch, add the diversity regulariser).

Time limit (``compress --time-limit``): inside ``with deadline(t):`` both loops stop at the
first optimizer step after ``time.monotonic()`` passes ``t``, evaluate what they have, and
keep the best evaluated epoch as usual, so a candidate stopped at the limit still returns
a valid model (``FitResult.stopped_at_deadline``). Without a deadline nothing changes.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ondevice.data import EncodedDataset
from ondevice.models import BPRMF, CTRModel
from ondevice.train import evaluate_ctr, evaluate_topk
from ondevice.train.trainer import (
    DistInfo,
    epoch_order,
    in_memory_ctr,
    iter_ctr_batches,
    make_optimizers,
)

__all__ = ["RETRAIN_EPOCHS", "FitResult", "deadline", "default_optimizers", "fit_ctr", "fit_topk", "iter_batches", "past_deadline",
           "topk_metric_name", "topk_pairs", "val_metrics"]

# Retraining's epoch cap for the embedding searchers (pep, sseds, mde, uniform, hash): early
# stopping on validation (patience 2) ends it, the cap only bounds it. Warm-started retrains
# stop after 3-8 epochs; at 3 epochs uniform at 1/10 of Frappe's bytes (a narrowed int8 MLP) was
# still climbing (benchmarks/results/compress_quality_frappe.md).
RETRAIN_EPOCHS = 20

_DEADLINES: list[float] = []  # time.monotonic() values, innermost last


@contextmanager
def deadline(at: float | None) -> Iterator[None]:
    """Training loops inside stop at the first step after ``time.monotonic() > at`` (``None``: no limit)."""
    if at is None:
        yield
        return
    _DEADLINES.append(float(at))
    try:
        yield
    finally:
        _DEADLINES.pop()


def past_deadline() -> bool:
    """Whether the innermost ``deadline`` has passed."""
    return bool(_DEADLINES) and time.monotonic() > min(_DEADLINES)


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
    """The trainer's optimiser split (``ondevice.train.trainer.make_optimizers``)."""
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
) -> FitResult:
    """Train ``model`` in place on the train split; returns validation metrics.

    With ``select_best`` the weights of the best validation epoch are restored at the end
    (early stopping after ``patience`` epochs without improvement). ``epochs=0`` only
    evaluates.
    """
    opts = optimizers if optimizers is not None else default_optimizers(model, lr)
    started = time.perf_counter()
    best_auc, best_epoch, best_state, bad = -math.inf, 0, None, 0
    history: list[dict[str, Any]] = []
    steps, stopped, at_deadline = 0, False, past_deadline()
    val: dict[str, float] = {}
    best_val: dict[str, float] = {}
    train_cache: dict[int, tuple[Any, Any]] = {}  # the split as int64 tensors, converted once
    for epoch in range(1, 0 if at_deadline else epochs + 1):
        torch.manual_seed(seed + epoch)
        model.train()
        total, n = torch.zeros((), dtype=torch.float64), 0  # no host sync per step
        for x, y in iter_batches(data, "train", batch_size, seed, epoch, train_cache):
            logits = model(x)  # [B]
            assert logits.shape == y.shape, f"logits {tuple(logits.shape)} vs labels {tuple(y.shape)}"
            loss = F.binary_cross_entropy_with_logits(logits, y)
            for o in opts:
                o.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None and not p.grad.is_sparse], grad_clip)
            for o in opts:
                o.step()
            steps += 1
            total += loss.detach() * len(y)
            n += len(y)
            if on_step is not None and on_step(steps):
                stopped = True
                break
            if past_deadline():
                stopped = at_deadline = True
                break
        entry: dict[str, Any] = {"epoch": epoch, "train_loss": float(total) / max(n, 1), "steps": steps}
        if evaluate:
            val = val_metrics(model, data)
            entry["val_auc"] = val["auc"]
            if val["auc"] > best_auc:
                best_auc, best_epoch, bad = val["auc"], epoch, 0
                if select_best:
                    best_state, best_val = copy.deepcopy(model.state_dict()), val
            else:
                bad += 1
        history.append(entry)
        if stopped or (evaluate and select_best and bad >= patience):
            break
    if select_best and best_state is not None:
        model.load_state_dict(best_state)
        val = best_val  # evaluation is deterministic: the restored weights score exactly this
    elif evaluate and not history:
        val = val_metrics(model, data)  # epochs=0: evaluate only
    model.eval()
    return FitResult(val=val, best_epoch=best_epoch, steps=steps, seconds=time.perf_counter() - started,
                     history=history, stopped_early=stopped, stopped_at_deadline=at_deadline)


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
) -> FitResult:
    """Train a BPR-MF ``model`` in place on the train split (module docstring); val Recall@k.

    ``on_step(steps)`` runs after every optimizer step; returning True stops training
    (PEP's byte-target snapshot), as in :func:`fit_ctr`.

    Epoch ``e`` shuffles with ``default_rng([seed, e])`` and draws its negatives from
    ``default_rng([seed, e, 1])`` (the trainer's streams); ``before_step`` gets its own
    ``default_rng([seed, e, 2])``. With ``select_best`` the best validation epoch's weights
    are restored (early stopping after ``patience`` epochs without improvement).
    """
    opts = optimizers if optimizers is not None else default_optimizers(model, lr)  # type: ignore[arg-type]
    pairs = topk_pairs(data, "train")
    n_items = model.num_items
    metric = topk_metric_name(k)
    started = time.perf_counter()
    best, best_epoch, best_state, bad = -math.inf, 0, None, 0
    history: list[dict[str, Any]] = []
    steps = 0
    stop = at_deadline = past_deadline()
    val: dict[str, float] = {}
    best_val: dict[str, float] = {}
    for epoch in range(1, 0 if at_deadline else epochs + 1):
        torch.manual_seed(seed + epoch)
        model.train()
        order = epoch_order(len(pairs), seed, epoch)
        negatives = np.random.default_rng([seed, epoch, 1]).integers(1, n_items, size=len(pairs))
        hook_rng = np.random.default_rng([seed, epoch, 2])
        total, n = 0.0, 0
        for b, start in enumerate(range(0, len(order), batch_size)):
            if max_steps_per_epoch is not None and b >= max_steps_per_epoch:
                break
            rows = order[start:start + batch_size]
            users = torch.from_numpy(pairs[rows, 0])
            pos = torch.from_numpy(pairs[rows, 1])
            neg = torch.from_numpy(negatives[rows])
            if before_step is not None:
                before_step(steps, hook_rng)
            u = model.user_vectors(users)
            i_pos, i_neg = model.item_vectors(pos), model.item_vectors(neg)
            loss = -F.logsigmoid((u * i_pos).sum(1) - (u * i_neg).sum(1)).mean()
            if l2:
                loss = loss + l2 * (u.pow(2).sum() + i_pos.pow(2).sum() + i_neg.pow(2).sum()) / (2 * len(rows))
            if extra_loss is not None:
                loss = loss + extra_loss(model, users, pos, neg)
            for o in opts:
                o.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            for o in opts:
                o.step()
            steps += 1
            total += float(loss.detach()) * len(rows)
            n += len(rows)
            if on_step is not None and on_step(steps):
                stop = True
                break
            if past_deadline():
                stop = at_deadline = True
                break
        entry: dict[str, Any] = {"epoch": epoch, "train_loss": total / max(n, 1), "steps": steps}
        if evaluate:
            val = val_metrics(model, data, k=k)
            entry[f"val_{metric}"] = val[metric]
            if val[metric] > best:
                best, best_epoch, bad = val[metric], epoch, 0
                if select_best:
                    best_state, best_val = copy.deepcopy(model.state_dict()), val
            else:
                bad += 1
        history.append(entry)
        if stop or (evaluate and select_best and bad >= patience):
            break
    if select_best and best_state is not None:
        model.load_state_dict(best_state)
        val = best_val  # evaluation is deterministic: the restored weights score exactly this
    elif evaluate and not history:
        val = val_metrics(model, data, k=k)  # epochs=0: evaluate only
    model.eval()
    return FitResult(val=val, best_epoch=best_epoch, steps=steps, seconds=time.perf_counter() - started,
                     history=history, stopped_at_deadline=at_deadline)
