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
