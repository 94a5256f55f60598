"""DeepFM (Guo et al., IJCAI'17): FM and an MLP sharing one embedding; survey §3.1."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ondevice.embedding import EmbeddingLayer
from ondevice.models.base import MLP, CTRModel, register_model
from ondevice.models.fm import fm_second_order


@register_model
class DeepFM(CTRModel):
    """logit = w0 + Σ w_i + Σ_{i<j} <e_i,e_j> + MLP(concat(e_1..e_F))."""

    name = "deepfm"

    def __init__(
        self,
        embedding: EmbeddingLayer,
        linear: EmbeddingLayer | None = None,
        *,
        mlp_dims: Sequence[int] = (400, 400, 400),
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__(embedding, linear)
        self.mlp_dims = [int(h) for h in mlp_dims]
        self.dropout = float(dropout)
        self.batch_norm = bool(batch_norm)
        self.mlp = MLP(self.num_fields * self.embed_dim, self.mlp_dims, dropout=dropout, batch_norm=batch_norm)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        emb = self.embedding(ids)
        deep = self.mlp(emb.flatten(1)).squeeze(1)
        return self.first_order(ids) + fm_second_order(emb) + deep

    def config(self) -> dict[str, Any]:
        return {"mlp_dims": self.mlp_dims, "dropout": self.dropout, "batch_norm": self.batch_norm}
