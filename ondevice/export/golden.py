"""Inputs that exercise an exported model: golden cases stored in the manifest, fresh ones for verify.

CTR inputs always include ids outside the vocabulary: ``vocab`` (one past the end),
``-1``, int64 extremes and large values, in single fields and in whole rows, because a
plain ONNX Gather raises on too-large ids and silently wraps negative ones.
"""

from __future__ import annotations

import numpy as np
import torch

from ondevice.models import BPRMF, CTRModel, RecModel

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def bad_ids(vocab: int) -> list[int]:
    """Out-of-range ids for a field of ``vocab`` rows (all must map to the OOV row 0)."""
    return [vocab, vocab + 17, -1, -vocab, -(2**40), 2**62, INT64_MIN, INT64_MAX]


def ctr_ids(vocab_sizes: list[int], batch: int, rng: np.random.Generator, *, oov_fraction: float = 0.1) -> np.ndarray:
    """``[batch, fields]`` int64 ids, ``oov_fraction`` of them out of range."""
    vocab = np.asarray(vocab_sizes, dtype=np.int64)
    ids = (rng.random((batch, len(vocab))) * vocab).astype(np.int64)
    for f, v in enumerate(vocab_sizes):
        mask = rng.random(batch) < oov_fraction
        choices = np.asarray(bad_ids(int(v)), dtype=np.int64)
        ids[mask, f] = rng.choice(choices, size=int(mask.sum()))
    return ids


def ctr_oov_rows(vocab_sizes: list[int], rng: np.random.Generator) -> np.ndarray:
    """Rows that stress the OOV path: all-OOV rows of each kind, all-zero, and one bad field at a time."""
    vocab = np.asarray(vocab_sizes, dtype=np.int64)
    base = (rng.random(len(vocab)) * vocab).astype(np.int64)
    rows = [np.zeros_like(vocab)]
    for kind in range(len(bad_ids(1))):
        rows.append(np.asarray([bad_ids(int(v))[kind] for v in vocab], dtype=np.int64))
    for f, v in enumerate(vocab_sizes):
        row = base.copy()
        row[f] = bad_ids(int(v))[f % len(bad_ids(1))]
        rows.append(row)
    return np.stack(rows)


def topk_vectors(model: BPRMF, batch: int, rng: np.random.Generator) -> np.ndarray:
    """Real user vectors (the server sends the user's row), OOV user row included."""
    users = torch.from_numpy(rng.integers(0, model.num_users, size=batch).astype(np.int64))
    users[0] = 0
    with torch.no_grad():
        return model.user_vectors(users).float().numpy()


def user_vector_std(model: BPRMF) -> float:
    with torch.no_grad():
        return float(model.user_embedding.dense_weight().float().std())


def golden_inputs(model: RecModel, *, seed: int = 0, large_batch: int = 64) -> dict[str, np.ndarray]:
    """Named golden input batches: ``batch1``, ``oov`` (CTR only) and ``batch{large_batch}``."""
    rng = np.random.default_rng(seed)
    if isinstance(model, CTRModel):
        vocab = list(model.embedding.vocab_sizes)
        return {
            "batch1": ctr_ids(vocab, 1, rng, oov_fraction=0.0),
            "oov": ctr_oov_rows(vocab, rng),
            f"batch{large_batch}": ctr_ids(vocab, large_batch, rng),
        }
    if isinstance(model, BPRMF):
        return {"batch1": topk_vectors(model, 2, rng)[1:] if model.num_users > 1 else topk_vectors(model, 1, rng),
                f"batch{large_batch}": topk_vectors(model, large_batch, rng)}
    raise TypeError(f"no golden inputs for {type(model).__name__}")


def topk_exclude(num_items: int, top_ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``exclude_items`` ``[B, S]`` int64 for user rows whose unexcluded top ids are ``top_ids [B, k]``.

    Each row excludes every other of its top ids (so the answer must change), a few random
    items and duplicates, and the ids the graph must ignore: ``-1`` padding (a random-length
    tail), ``0`` (the OOV row) and ``num_items`` (out of range).
    """
    b, k = top_ids.shape
    random = rng.integers(1, num_items, size=(b, 4))
    ignored = np.tile(np.asarray([0, num_items, -7], dtype=np.int64), (b, 1))
    out = np.concatenate([top_ids[:, ::2], random, random[:, :1], ignored, np.full((b, 3), -1)], axis=1).astype(np.int64)
    for r, pad in enumerate(rng.integers(0, 4, size=b)):  # -1 padding of different lengths per row
        out[r, out.shape[1] - pad:] = -1
    return out


def topk_golden_feeds(module: torch.nn.Module, vectors: dict[str, np.ndarray], names: tuple[str, str], num_items: int,
                      *, seed: int = 0, exclude_most: bool = True) -> dict[str, dict[str, np.ndarray]]:
    """Golden feeds of a top-K graph: ``batch1`` excludes nothing (an empty ``[1, 0]``), every
    other case excludes :func:`topk_exclude`'s items; ``exclude_most`` (catalogues of at most
    2,000 items; ``exclude_most=False``: not built) leaves fewer than ``k`` items, so the last
    slots must be id -1."""
    rng = np.random.default_rng(seed + 1)
    user, exclude = names
    feeds: dict[str, dict[str, np.ndarray]] = {}
    for name, x in vectors.items():
        if name == "batch1":
            feeds[name] = {user: x, exclude: np.zeros((len(x), 0), dtype=np.int64)}
            continue
        with torch.no_grad():
            top = module(torch.from_numpy(x))[0].numpy()
        feeds[name] = {user: x, exclude: topk_exclude(num_items, top, rng)}
    k = int(getattr(module, "k", 0))
    if exclude_most and 1 < num_items <= 2001 and k > 1:
        first = next(iter(vectors.values()))[:1]
        keep = rng.choice(np.arange(1, num_items), size=min(k - 1, num_items - 1) // 2 or 1, replace=False)
        most = np.setdiff1d(np.arange(1, num_items), keep)
        feeds["exclude_most"] = {user: first, exclude: np.concatenate([most, [-1, -1]]).astype(np.int64)[None, :]}
    return feeds


def fresh_inputs(model: RecModel, seed: int, batches: tuple[int, ...] = (1, 256)) -> dict[str, np.ndarray]:
    """Random inputs for ``verify`` (OOV and negative ids included for CTR models)."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for b in batches:
        if isinstance(model, CTRModel):
            out[f"random_batch{b}"] = ctr_ids(list(model.embedding.vocab_sizes), b, rng, oov_fraction=0.15)
        else:
            assert isinstance(model, BPRMF)
            dim = model.embed_dim
            out[f"random_batch{b}"] = (rng.standard_normal((b, dim)) * user_vector_std(model)).astype(np.float32)
    return out
