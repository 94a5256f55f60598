"""DeepFwFM (Deng et al., WSDM'21, DeepLight's base model).

Field-weighted FM (Pan et al., WWW'18): every field pair (i, j) has its own weight r_ij,
    φ_FwFM = Σ_{i<j} <e_i, e_j> · r_ij,
plus an MLP on the concatenated embeddings. The pair weights live as a vector over an
explicit list of kept pairs, so a pruned pair (DeepLight, AutoFIS) is removed from the
computation and from the exported graph, not multiplied by zero.

Deviation from the original code: the original stores a full F×F matrix and symmetrises
it, (R + Rᵀ)/2; we store the upper triangle directly, which is the same function with
half the parameters. DeepLight prunes on that symmetrised value, i.e. on our vector.
The pair list, its weights and ``drop_pairs`` are :class:`ondevice.models.fm.PairInteraction`,
shared with FM/DeepFM's AutoFIS gates.

Compressed forms (DeepLight): ``drop_pairs`` removes pruned pairs from the list (and the
graph); ``sparse_mlp`` (one entry per MLP Linear, ``None`` or a ``SparseLinear.spec()``)
rebuilds MLP layers stored with their zeros dropped (``models/sparse_linear.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ondevice.embedding import EmbeddingLayer
from ondevice.models.base import MLP, CTRModel, register_model
from ondevice.models.fm import PairInteraction, all_pairs
from ondevice.models.sparse_linear import sparsify_mlp_

__all__ = ["DeepFwFM", "all_pairs"]


@register_model
class DeepFwFM(PairInteraction, CTRModel):
    """logit = w0 + Σ w_i + Σ_{(i,j) kept} r_ij <e_i, e_j> + MLP(concat(e))."""

    name = "deepfwfm"

    def __init__(
        self,
        embedding: EmbeddingLayer,
        linear: EmbeddingLayer | None = None,
        *,
        mlp_dims: Sequence[int] = (400, 400, 400),
        dropout: float = 0.0,
        batch_norm: bool = False,
        pairs: Sequence[Sequence[int]] | None = None,
        sparse_mlp: Sequence[dict[str, Any] | None] | None = None,
    ) -> None:
        super().__init__(embedding, linear)
        self.mlp_dims = [int(h) for h in mlp_dims]
        self.dropout = float(dropout)
        self.batch_norm = bool(batch_norm)
        # Init as in DeepLight's code: N(0, 1/F) on the field-pair weights.
        self._init_pairs(pairs, self.num_fields, "normal")
        self.mlp = MLP(self.num_fields * self.embed_dim, self.mlp_dims, dropout=dropout, batch_norm=batch_norm)
        self.sparse_mlp = None if sparse_mlp is None else [None if s is None else dict(s) for s in sparse_mlp]
        if self.sparse_mlp is not None:
            sparsify_mlp_(self.mlp, self.sparse_mlp)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        emb = self.embedding(ids)
        out = self.first_order(ids) + self.mlp(emb.flatten(1)).squeeze(1)
        return out + self.pair_sum(emb) if self.pairs else out

    def config(self) -> dict[str, Any]:
        out = {"mlp_dims": self.mlp_dims, "dropout": self.dropout, "batch_norm": self.batch_norm,
               "pairs": self.pairs}
        if self.sparse_mlp is not None:
            out["sparse_mlp"] = self.sparse_mlp
        return out
