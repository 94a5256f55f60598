"""Shared fixtures: tiny encoded datasets written directly (no prepare step needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ondevice.io import atomic_write_json
from ondevice.schema import Field, Schema

# One torch thread: the tests are about correctness, and two OpenMP threads on a busy
# 2-core machine can run ten times slower than one.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]

# The training setting the searcher tests on tiny planted data are calibrated on (the defaults
# before issue 12): no BatchNorm, dropout or weight decay, lazy Adam. With a 16-wide MLP on a
# few thousand rows the newer defaults learn the planted structure less sharply, and several
# tests assert on rankings that structure drives. Real-data behaviour is in benchmarks/.
CALIBRATED = {"batch_norm": False, "dropout": 0.0, "weight_decay": 0.0, "sparse_embeddings": True}
SHARED_DATA = REPO.parent / "shared" / "data"


def write_encoded(root: Path, schema: Schema, splits: dict[str, tuple[np.ndarray, np.ndarray | None]]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    schema.save(root / "schema.json")
    for name, (ids, labels) in splits.items():
        (root / name).mkdir()
        np.save(root / name / "ids.npy", ids.astype(np.int32))
        if labels is not None:
            np.save(root / name / "labels.npy", labels.astype(np.float32))
    atomic_write_json(root / "prepare.json", {"rows": {k: len(v[0]) for k, v in splits.items()}})
    return root


def make_ctr(root: Path, *, rows: int = 6000, vocab: tuple[int, ...] = (50, 30, 20, 80, 10), seed: int = 0) -> Path:
    """CTR data with a planted signal: field 0's value effect and a field-1×field-2 interaction."""
    rng = np.random.default_rng(seed)
    ids = np.stack([rng.integers(1, v, size=rows) for v in vocab], axis=1)
    effect0 = rng.normal(0, 1.5, size=vocab[0])
    inter = rng.normal(0, 1.5, size=(vocab[1], vocab[2]))
    logit = -1.0 + effect0[ids[:, 0]] + inter[ids[:, 1], ids[:, 2]]
    labels = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    schema = Schema(task="ctr", fields=[Field(name=f"f{i}", vocab_size=v, encoding="identity") for i, v in enumerate(vocab)])
    n_tr, n_va = int(rows * 0.8), int(rows * 0.1)
    return write_encoded(root, schema, {
        "train": (ids[:n_tr], labels[:n_tr]),
        "val": (ids[n_tr : n_tr + n_va], labels[n_tr : n_tr + n_va]),
        "test": (ids[n_tr + n_va :], labels[n_tr + n_va :]),
    })


def make_topk(root: Path, *, users: int = 120, items: int = 200, per_user: int = 20, seed: int = 0) -> Path:
    """Implicit interactions from planted latent factors (ids 1.. ; 0 is the OOV row)."""
    rng = np.random.default_rng(seed)
    pu, qi = rng.normal(size=(users, 4)), rng.normal(size=(items, 4))
    pairs = {"train": [], "val": [], "test": []}
    for u in range(users):
        scores = qi @ pu[u] + rng.gumbel(size=items) * 0.5
        chosen = np.argsort(-scores)[:per_user] + 1
        rng.shuffle(chosen)
        n_te, n_va = per_user // 5, per_user // 10
        for name, part in (("test", chosen[:n_te]), ("val", chosen[n_te : n_te + n_va]), ("train", chosen[n_te + n_va :])):
            pairs[name].extend((u + 1, int(i)) for i in part)
    schema = Schema(task="topk", fields=[Field(name="user", vocab_size=users + 1, encoding="identity", role="user"),
                                         Field(name="item", vocab_size=items + 1, encoding="identity", role="item")])
    return write_encoded(root, schema, {k: (np.asarray(v), None) for k, v in pairs.items()})


@pytest.fixture
def ctr_data(tmp_path: Path) -> Path:
    return make_ctr(tmp_path / "ctr")


@pytest.fixture
def topk_data(tmp_path: Path) -> Path:
    return make_topk(tmp_path / "topk")
