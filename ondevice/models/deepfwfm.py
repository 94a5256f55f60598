"""DeepFwFM (Deng et al., WSDM'21, DeepLight's base model).

Field-weighted FM (Pan et al., WWW'18): every field pair (i, j) has its own weight r_ij,
    φ_FwFM = Σ_{i<j} <e_i, e_j> · r_ij,
plus an MLP on the concatenated embeddings. The pair weights live as a vector over an
explicit list of kept pairs, so a pruned pair (DeepLight, AutoFIS) is removed from the
computation and from the exported graph, not multiplied by zero.

Deviation from the original code: the original stores a full F×F matrix and symmetrises
it, (R + Rᵀ)/2; we store the upper triangle directly, which is the same function with
half the parameters. DeepLight prunes on that symmetrised value, i.e. on our vector.

Compressed forms (DeepLight): ``drop_pairs`` removes pruned pairs from the list (and the
graph); ``sparse_mlp`` (one entry per MLP Linear, ``None`` or a ``SparseLinear.spec()``)
rebuilds MLP layers stored with their zeros dropped (``models/sparse_linear.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ondevice.embedding import EmbeddingLayer
from ondevice.models.base import MLP, CTRModel, register_model
from ondevice.models.sparse_linear import sparsify_mlp_


def all_pairs(num_fields: int) -> list[list[int]]:
    return [[i, j] for i in range(num_fields) for j in range(i + 1, num_fields)]


@register_model
class DeepFwFM(CTRModel):
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
        pairs = all_pairs(self.num_fields) if pairs is None else [[int(i), int(j)] for i, j in pairs]
        self.pairs = pairs
        idx = torch.tensor(pairs, dtype=torch.int64).reshape(-1, 2)
        self.register_buffer("pair_left", idx[:, 0].clone())
        self.register_buffer("pair_right", idx[:, 1].clone())
        # Init as in DeepLight's code: N(0, 1/F) on the field-pair weights.
        self.pair_weight = nn.Parameter(torch.randn(len(pairs)) / max(self.num_fields, 1) ** 0.5)
        self.mlp = MLP(self.num_fields * self.embed_dim, self.mlp_dims, dropout=dropout, batch_norm=batch_norm)
        self.sparse_mlp = None if sparse_mlp is None else [None if s is None else dict(s) for s in sparse_mlp]
        if self.sparse_mlp is not None:
            sparsify_mlp_(self.mlp, self.sparse_mlp)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        emb = self.embedding(ids)
        out = self.first_order(ids) + self.mlp(emb.flatten(1)).squeeze(1)
        if self.pairs:
            left = emb.index_select(1, self.pair_left)
            right = emb.index_select(1, self.pair_right)
            out = out + ((left * right).sum(dim=2) * self.pair_weight).sum(dim=1)
        return out

    @torch.no_grad()
    def drop_pairs(self, keep: torch.Tensor) -> DeepFwFM:
        """Remove the pairs where ``keep`` (bool ``[P]``) is False: their terms leave the graph (in place)."""
        keep = keep.to(torch.bool).reshape(-1)
        if keep.numel() != len(self.pairs):
            raise ValueError(f"keep has {keep.numel()} entries for {len(self.pairs)} pairs")
        self.pairs = [p for p, k in zip(self.pairs, keep.tolist(), strict=True) if k]
        self.pair_left = self.pair_left[keep].clone()
        self.pair_right = self.pair_right[keep].clone()
        self.pair_weight = nn.Parameter(self.pair_weight.detach()[keep].clone())
        return self

    def config(self) -> dict[str, Any]:
        out = {"mlp_dims": self.mlp_dims, "dropout": self.dropout, "batch_norm": self.batch_norm,
               "pairs": self.pairs}
        if self.sparse_mlp is not None:
            out["sparse_mlp"] = self.sparse_mlp
        return out
