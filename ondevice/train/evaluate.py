"""Validation and test metrics of a PyTorch model on a data split (the trainer's and the searchers').

* CTR: ``predict_ctr`` gives probabilities in batches; ``evaluate_ctr`` computes AUC and
  logloss once over the whole split (``train.metrics``, float64), never a mean of batches.
* Top-K: ``evaluate_topk`` ranks every item for each evaluated user (Recall@K / NDCG@K, the
  LightGCN/NGCF protocol) excluding the user's training items (and validation ones when
  testing) and the OOV row, or ranks 1 positive against sampled negatives (HR@K / NDCG@K,
  NCF's protocol). ``popularity_model`` is the most-popular baseline in the same form.

The shipped ONNX file is scored by ``ondevice.evaluate`` (onnxruntime) with the same metrics.
"""

from __future__ import annotations

import numpy as np
import torch

from ondevice.errors import BadInputError
from ondevice.models import BPRMF, CTRModel
from ondevice.train.metrics import (
    log_loss,
    recall_ndcg_at_k,
    roc_auc,
    sampled_hr_ndcg,
    user_item_csr,
)

__all__ = ["evaluate_ctr", "evaluate_topk", "popularity_model", "predict_ctr"]


@torch.no_grad()
def predict_ctr(model: CTRModel, ids: np.ndarray, *, batch_size: int = 16384, device: str | torch.device = "cpu") -> np.ndarray:
    """Probabilities for every row of ``ids`` (a numpy/memmap int array)."""
    model.eval()
    out = np.empty(len(ids), dtype=np.float32)
    for start in range(0, len(ids), batch_size):
        x = torch.from_numpy(np.asarray(ids[start : start + batch_size], dtype=np.int64)).to(device)
        out[start : start + len(x)] = torch.sigmoid(model(x)).float().cpu().numpy()
    return out


def evaluate_ctr(model: CTRModel, ids: np.ndarray, labels: np.ndarray, *, batch_size: int = 16384, device: str | torch.device = "cpu") -> dict[str, float]:
    probs = predict_ctr(model, ids, batch_size=batch_size, device=device)
    labels = np.asarray(labels)
    return {"auc": roc_auc(labels, probs), "logloss": log_loss(labels, probs), "rows": int(len(labels))}


@torch.no_grad()
def evaluate_topk(
    model: BPRMF,
    eval_pairs: np.ndarray,
    exclude_pairs: list[np.ndarray],
    *,
    k: int = 20,
    protocol: str = "full",
    negatives: int = 99,
    seed: int = 0,
    user_batch: int = 1024,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Recall@K / NDCG@K with full ranking, or HR@K / NDCG@K on the sampled protocol.

    Full ranking scores every item for each evaluated user, removes the items in
    ``exclude_pairs`` (training interactions, and validation ones when testing) and the OOV
    row 0, and compares the top K with the user's held-out items. The sampled protocol
    ranks each held-out (user, item) against ``negatives`` items the user never interacted
    with, drawn with a fixed seed.
    """
    model.eval()
    n_users, n_items = model.num_users, model.num_items
    items_table = model.all_item_vectors().to(device)
    ev_ptr, ev_items = user_item_csr(np.asarray(eval_pairs), n_users)
    ex_ptrs = [user_item_csr(np.asarray(p), n_users) for p in exclude_pairs]
    users = np.flatnonzero(np.diff(ev_ptr) > 0)
    if len(users) == 0:
        raise BadInputError("evaluation split has no interactions; check the prepared top-K data")
    if protocol == "sampled":
        return _evaluate_sampled(model, ev_ptr, ev_items, ex_ptrs, users, n_items, k, negatives, seed, device)
    topk_all, relevant = [], []
    for start in range(0, len(users), user_batch):
        batch_users = users[start : start + user_batch]
        u = model.user_vectors(torch.from_numpy(batch_users).to(device))
        scores = u @ items_table.T
        scores[:, 0] = -torch.inf  # the OOV row is never a recommendation
        rows, cols = [], []
        for r, user in enumerate(batch_users):
            for ptr, items in ex_ptrs:
                seen = items[ptr[user] : ptr[user + 1]]
                rows.append(np.full(len(seen), r))
                cols.append(seen)
        if rows:
            scores[torch.from_numpy(np.concatenate(rows)), torch.from_numpy(np.concatenate(cols))] = -torch.inf
        top = torch.topk(scores, min(k, n_items), dim=1).indices.cpu().numpy()
        topk_all.extend(top)
        relevant.extend(ev_items[ev_ptr[u_] : ev_ptr[u_ + 1]] for u_ in batch_users)
    recall, ndcg = recall_ndcg_at_k(np.asarray(topk_all), relevant, k)
    return {f"recall@{k}": recall, f"ndcg@{k}": ndcg, "users": int(len(users))}


def popularity_model(train_pairs: np.ndarray, n_users: int, n_items: int) -> BPRMF:
    """The most-popular baseline as a dim-1 BPR-MF: every user scores item ``i`` by its
    number of training interactions, so ``evaluate_topk`` ranks it exactly like the model."""
    from ondevice.embedding import DenseEmbedding

    counts = np.bincount(np.asarray(train_pairs[:, 1], dtype=np.int64), minlength=n_items)[:n_items]
    order = np.lexsort((np.arange(n_items), -counts))  # most popular first, ties by id
    score = np.empty(n_items, dtype=np.float32)
    score[order] = np.arange(n_items, 0, -1, dtype=np.float32)  # exact integers in float32
    model = BPRMF(DenseEmbedding([n_users], 1), DenseEmbedding([n_items], 1))
    with torch.no_grad():
        model.user_embedding.weight.fill_(1.0)
        model.item_embedding.weight.copy_(torch.from_numpy(score).view(-1, 1))
    return model


def _evaluate_sampled(model, ev_ptr, ev_items, ex_ptrs, users, n_items, k, negatives, seed, device) -> dict[str, float]:
    rng = np.random.default_rng([seed, 7919])
    pos_scores, neg_scores = [], []
    for user in users:
        pos = ev_items[ev_ptr[user] : ev_ptr[user + 1]]
        seen = set(pos.tolist())
        for ptr, items in ex_ptrs:
            seen.update(items[ptr[user] : ptr[user + 1]].tolist())
        if len(seen) + negatives >= n_items - 1:
            raise BadInputError(f"user {user} has too few unseen items for {negatives} sampled negatives; lower --eval-negatives")
        for p in pos:
            negs: list[int] = []
            while len(negs) < negatives:
                cand = rng.integers(1, n_items, size=2 * negatives)
                negs.extend(c for c in cand.tolist() if c not in seen)
            u = torch.tensor([user] * (negatives + 1), device=device)
            it = torch.tensor([int(p)] + negs[:negatives], device=device)
            s = model(u, it).cpu().numpy()
            pos_scores.append(s[0])
            neg_scores.append(s[1:])
    hr, ndcg = sampled_hr_ndcg(np.asarray(pos_scores), np.asarray(neg_scores), k)
    return {f"hr@{k}": hr, f"ndcg@{k}": ndcg, "users": int(len(users)), "protocol": f"1+{negatives} sampled"}

