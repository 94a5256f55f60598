"""BPR-MF (Rendle et al., UAI'09): matrix factorisation trained with the BPR loss.

score(u, i) = <p_u, q_i>. BPR maximises ln σ(score(u, i) − score(u, j)) over a user's
observed item i and a sampled unobserved item j (the paper's BPR-Opt criterion).
The item table is an ``EmbeddingLayer`` with one field, so RULE/PEP/int8 swap it like
any CTR table; the user table stays on the server (the device gets the user's vector).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ondevice.embedding import DenseEmbedding, EmbeddingLayer
from ondevice.models.base import RecModel, register_model


@register_model
class BPRMF(RecModel):
    name = "bprmf"
    task = "topk"

    def __init__(self, user_embedding: EmbeddingLayer, item_embedding: EmbeddingLayer) -> None:
        super().__init__()
        if user_embedding.dim != item_embedding.dim:
            raise ValueError("user and item embeddings must have the same dim")
        self.user_embedding = user_embedding
        self.item_embedding = item_embedding

    @property
    def num_users(self) -> int:
        return self.user_embedding.vocab_sizes[0]

    @property
    def num_items(self) -> int:
        return self.item_embedding.vocab_sizes[0]

    @property
    def embed_dim(self) -> int:
        return self.item_embedding.dim

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        return self.user_embedding(users.view(-1, 1)).squeeze(1)

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        return self.item_embedding(items.view(-1, 1)).squeeze(1)

    def all_item_vectors(self) -> torch.Tensor:
        return self.item_embedding.dense_weight()

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return (self.user_vectors(users) * self.item_vectors(items)).sum(dim=1)

    def bpr_loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        u = self.user_vectors(users)
        diff = (u * self.item_vectors(pos)).sum(1) - (u * self.item_vectors(neg)).sum(1)
        return -F.logsigmoid(diff).mean()

    def config(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_vocab(cls, vocab_sizes: list[int], *, embed_dim: int = 64, **_: Any) -> BPRMF:
        """``vocab_sizes = [num_users, num_items]`` (OOV rows included)."""
        n_users, n_items = vocab_sizes
        return cls(DenseEmbedding([n_users], embed_dim, init_std=0.1), DenseEmbedding([n_items], embed_dim, init_std=0.1))

    @classmethod
    def from_parts(cls, embeddings: dict[str, EmbeddingLayer], **_: Any) -> BPRMF:
        return cls(embeddings["user_embedding"], embeddings["item_embedding"])
