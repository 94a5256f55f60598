"""DeepFM (Guo et al., IJCAI'17): FM and an MLP sharing one embedding; survey §3.1.

With ``pairs`` the FM part is AutoFIS's gated form (Liu et al., KDD'20, survey Eq. 30):
only the listed field pairs are computed, each times a trainable gate (init 0.6).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ondevice.embedding import EmbeddingLayer
from ondevice.models.base import MLP, CTRModel, register_model
from ondevice.models.fm import GATE_INIT, PairInteraction, fm_second_order


@register_model
class DeepFM(PairInteraction, CTRModel):
    """logit = w0 + Σ w_i + Σ_{i<j} <e_i,e_j> + MLP(concat(e_1..e_F)).

    ``pairs``: ``None`` (all pairs, sum-square trick) or the kept pairs, each gated.
    """

    name = "deepfm"

    def __init__(
        self,
        embedding: EmbeddingLayer,
        linear: EmbeddingLayer | None = None,
        *,
        mlp_dims: Sequence[int] = (400, 400, 400),
        dropout: float = 0.0,
        batch_norm: bool = False,
        pairs: Sequence[Sequence[int]] | None = None,
    ) -> None:
        super().__init__(embedding, linear)
        self.mlp_dims = [int(h) for h in mlp_dims]
        self.dropout = float(dropout)
        self.batch_norm = bool(batch_norm)
        self.mlp = MLP(self.num_fields * self.embed_dim, self.mlp_dims, dropout=dropout, batch_norm=batch_norm)
        self.explicit_pairs = pairs is not None
        if self.explicit_pairs:
            self._init_pairs(pairs, self.num_fields, GATE_INIT)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        emb = self.embedding(ids)  # [B, F, D]
        out = self.first_order(ids) + self.mlp(emb.flatten(1)).squeeze(1)
        if not self.explicit_pairs:
            return out + fm_second_order(emb)
        return out + self.pair_sum(emb) if self.pairs else out

    def config(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mlp_dims": self.mlp_dims, "dropout": self.dropout, "batch_norm": self.batch_norm}
        if self.explicit_pairs:
            out["pairs"] = self.pairs
        return out
