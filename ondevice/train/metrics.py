"""Evaluation metrics: AUC and logloss for CTR; Recall@K and NDCG@K for top-K (+ the per-user CSR they rank with).

All metrics are computed globally over the evaluated split (not averaged per batch, a
quirk of the PEP reference code), in float64.
"""

from __future__ import annotations

import numpy as np


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic, ties counted as ½.

    AUC = (Σ ranks of positives − n⁺(n⁺+1)/2) / (n⁺ n⁻), with average ranks for tied
    scores. Matches ``sklearn.metrics.roc_auc_score`` (checked in the tests). Returns NaN
    when only one class is present.
    """
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, dtype=np.float64)
    # average rank (1-based) of every run of equal scores
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [scores.size]))
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Binary cross-entropy of probabilities, clipped to [eps, 1−eps]."""
    labels = np.asarray(labels, dtype=np.float64).ravel()
    p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), eps, 1 - eps)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def recall_ndcg_at_k(topk_items: np.ndarray, relevant: list[np.ndarray], k: int) -> tuple[float, float]:
    """Recall@K and NDCG@K averaged over users (LightGCN/NGCF convention).

    ``topk_items[u]`` are the K highest-scored items of user u (training items already
    excluded); ``relevant[u]`` the held-out items. Recall@K = hits / |relevant|;
    NDCG@K = Σ_{rank r hit} 1/log2(r+1) / Σ_{r ≤ min(K,|relevant|)} 1/log2(r+1).
    Users without held-out items must be filtered out by the caller.
    """
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    recalls, ndcgs = [], []
    for items, rel in zip(topk_items, relevant, strict=True):
        hits = np.isin(items[:k], rel)
        recalls.append(hits.sum() / len(rel))
        idcg = discounts[: min(k, len(rel))].sum()
        ndcgs.append((hits * discounts[: len(hits)]).sum() / idcg)
    return float(np.mean(recalls)), float(np.mean(ndcgs))


def sampled_hr_ndcg(pos_scores: np.ndarray, neg_scores: np.ndarray, k: int) -> tuple[float, float]:
    """Sampled protocol (NCF, He et al. WWW'17): rank 1 positive among N sampled negatives.

    HR@K = P(rank < K); NDCG@K = 1/log2(rank+2) when rank < K, with rank = number of
    negatives scored strictly higher plus half the ties (so constant scores give the
    expected rank, not an optimistic one).
    """
    pos = pos_scores.reshape(-1, 1)
    rank = (neg_scores > pos).sum(1) + 0.5 * (neg_scores == pos).sum(1)
    hit = rank < k
    ndcg = np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0)
    return float(hit.mean()), float(ndcg.mean())


def user_item_csr(pairs: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR (indptr, items) of a [n, 2] (user, item) array, items sorted per user."""
    users = np.asarray(pairs[:, 0], dtype=np.int64)
    items = np.asarray(pairs[:, 1], dtype=np.int64)
    order = np.lexsort((items, users))
    counts = np.bincount(users, minlength=n_users)
    indptr = np.concatenate(([0], np.cumsum(counts)))
    return indptr, items[order]
