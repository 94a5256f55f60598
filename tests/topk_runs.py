"""Tiny top-K (BPR-MF) runs for the RULE, top-K compress and fleet tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ondevice.schema import Field, Schema
from ondevice.train import TrainConfig, train
from tests.conftest import write_encoded


def make_popular_topk(root: Path, *, users: int = 300, items: int = 1000, per_user: int = 20, popular: int = 250,
                      p_popular: float = 0.8, latent: int = 8, seed: int = 0) -> Path:
    """Implicit data where the held-out interactions hit only the ``popular`` first items.

    Users pick items by planted ``latent``-dim factors, a fraction ``p_popular`` among the
    popular items by taste and the rest uniformly in the tail (no taste to learn there);
    validation and test take only popular picks (the tail is seen in train only). Recall then depends only on ranking the popular items well, so a budget is better
    spent on their blocks.
    """
    rng = np.random.default_rng(seed)
    pu, qi = rng.normal(size=(users, latent)), rng.normal(size=(items, latent))
    pairs: dict[str, list[tuple[int, int]]] = {"train": [], "val": [], "test": []}
    for u in range(users):
        n_pop = int(rng.binomial(per_user, p_popular))
        scores = qi @ pu[u] + rng.gumbel(size=items) * 0.5
        pop = np.argsort(-scores[:popular])[:n_pop]
        tail = popular + rng.choice(items - popular, size=per_user - n_pop, replace=False)  # taste-free tail
        rng.shuffle(pop)
        chosen = np.concatenate([pop, tail]) + 1  # held-out splits take from the front: popular only
        n_te, n_va = per_user // 5, per_user // 5
        for name, part in (("test", chosen[:n_te]), ("val", chosen[n_te:n_te + n_va]), ("train", chosen[n_te + n_va:])):
            pairs[name].extend((u + 1, int(i)) for i in part)
    schema = Schema(task="topk", fields=[Field(name="user", vocab_size=users + 1, encoding="identity", role="user"),
                                         Field(name="item", vocab_size=items + 1, encoding="identity", role="item")])
    return write_encoded(root, schema, {k: (np.asarray(v), None) for k, v in pairs.items()})


def pretrained_topk_run(root: Path, *, embed_dim: int = 16, epochs: int = 8) -> Path:
    data = make_popular_topk(root / "data")
    cfg = TrainConfig(model="bprmf", embed_dim=embed_dim, epochs=epochs, batch_size=512, lr=1e-2, patience=3, l2=1e-4)
    train(data, root / "run", cfg, quiet=True)
    return root / "run"
