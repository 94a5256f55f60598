"""Factorization Machine (Rendle, ICDM'10); survey §3.1, Eq. (3)."""

from __future__ import annotations

from typing import Any

import torch

from ondevice.embedding import EmbeddingLayer
from ondevice.models.base import CTRModel, register_model


def fm_second_order(emb: torch.Tensor) -> torch.Tensor:
    """Σ_{i<j} <e_i, e_j> in O(F·d): ½ Σ_d [(Σ_i e_i)² − Σ_i e_i²]. ``[B,F,D] -> [B]``."""
    square_of_sum = emb.sum(dim=1).pow(2)
    sum_of_square = emb.pow(2).sum(dim=1)
    return 0.5 * (square_of_sum - sum_of_square).sum(dim=1)


@register_model
class FM(CTRModel):
    """y = w0 + Σ_i w_i + Σ_{i<j} <v_i, v_j> over the active feature of every field."""

    name = "fm"

    def __init__(self, embedding: EmbeddingLayer, linear: EmbeddingLayer | None = None) -> None:
        super().__init__(embedding, linear)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.first_order(ids) + fm_second_order(self.embedding(ids))

    def config(self) -> dict[str, Any]:
        return {}
