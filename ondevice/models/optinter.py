"""OptInter's retrained model, DNN_cart (Lyu et al., "Memorize, Factorize, or be Naive: Learning
Optimal Feature Interaction Methods for CTR Prediction", ICDE'22; survey §8; methods.md §6).

Every field pair ``(i, j)`` has one interaction function:

* ``memorized``: a row of the pair's own cross table, indexed by an in-graph hash of the two
  ids (:func:`cross_ids`); the tables of all memorized pairs are one :class:`DenseEmbedding`
  with one "field" per pair (``buckets_p + 1`` rows, row 0 the OOV row), so quantisation,
  bytes and lowering work as for any embedding layer;
* ``factorized``: the Hadamard product ``e_i ⊙ e_j`` of the shared field embeddings (the paper
  uses a second "addition" table; sharing the field table costs no bytes);
* ``none``: nothing (not computed, not exported).

``logit = w0 + Σ_f w_f + MLP([e_1..e_F, c_p for memorized p, e_i ⊙ e_j for factorized p])``:
the field embeddings, then the memorized pair vectors, then the factorized ones, each group in
pair order. Cross dim = field dim; each non-none pair adds ``dim`` MLP inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ondevice.embedding import DenseEmbedding, EmbeddingLayer
from ondevice.embedding.base import map_oov
from ondevice.errors import BadInputError
from ondevice.models.base import MLP, CTRModel, register_model
from ondevice.models.fm import all_pairs

__all__ = ["FUNCTIONS", "OptInter", "cross_ids", "cross_ids_reference"]

#: The three candidate interaction functions, in the order of OptInter's α columns.
FUNCTIONS = ("memorized", "factorized", "none")


def cross_ids(ids: torch.Tensor, left: torch.Tensor, right: torch.Tensor, stride: torch.Tensor,
              buckets: torch.Tensor) -> torch.Tensor:
    """Cross-table row per memorized pair: ``[B, F]`` in-range ids -> ``[B, M]`` rows.

    ``row_p = 1 + ((id_i − 1)·(v_j − 1) + (id_j − 1)) mod buckets_p`` (``stride = v_j − 1``), and
    0 (the OOV row) when either id is 0; with ``buckets_p = (v_i − 1)(v_j − 1)`` every value
    pair has its own row. Ops: Gather, Sub, Mul, Add, Mod, Greater, And, Where.
    """
    a = ids.index_select(1, left)  # [B, M]
    b = ids.index_select(1, right)
    row = torch.remainder((a - 1) * stride + (b - 1), buckets) + 1
    return torch.where((a > 0) & (b > 0), row, torch.zeros_like(row))


def cross_ids_reference(ids: Sequence[Sequence[int]], vocab_sizes: Sequence[int], pairs: Sequence[Sequence[int]],
                        buckets: Sequence[int]) -> list[list[int]]:
    """Plain-Python :func:`cross_ids` on raw ids (OOV and negative ids -> 0), for tests."""
    out = []
    for row in ids:
        valid = [int(v) if 0 <= int(v) < n else 0 for v, n in zip(row, vocab_sizes, strict=True)]
        out.append([0 if valid[i] == 0 or valid[j] == 0 else
                    1 + ((valid[i] - 1) * (vocab_sizes[j] - 1) + valid[j] - 1) % b
                    for (i, j), b in zip(pairs, buckets, strict=True)])
    return out


@register_model
class OptInter(CTRModel):
    """DNN_cart with one chosen function per pair (module docstring).

    ``pairs`` (default: all), ``functions`` (one of :data:`FUNCTIONS` per pair; default all
    ``factorized``), ``buckets`` (per pair; used by memorized pairs, 0 elsewhere), ``cross``:
    the memorized pairs' table (built fresh when ``None``).
    """

    name = "optinter"

    def __init__(self, embedding: EmbeddingLayer, linear: EmbeddingLayer | None = None, *,
                 cross: EmbeddingLayer | None = None, pairs: Sequence[Sequence[int]] | None = None,
                 functions: Sequence[str] | None = None, buckets: Sequence[int] | None = None,
                 mlp_dims: Sequence[int] = (400, 400, 400), dropout: float = 0.0, batch_norm: bool = False) -> None:
        super().__init__(embedding, linear)
        F_, D = self.num_fields, self.embed_dim
        self.pairs = all_pairs(F_) if pairs is None else [[int(i), int(j)] for i, j in pairs]
        self.functions = ["factorized"] * len(self.pairs) if functions is None else [str(f) for f in functions]
        self.buckets = [0] * len(self.pairs) if buckets is None else [int(b) for b in buckets]
        if not len(self.pairs) == len(self.functions) == len(self.buckets):
            raise BadInputError(f"optinter: {len(self.pairs)} pairs, {len(self.functions)} functions and "
                                f"{len(self.buckets)} bucket counts; give one of each per pair")
        for (i, j), fn, b in zip(self.pairs, self.functions, self.buckets, strict=True):
            if not 0 <= i < j < F_:
                raise BadInputError(f"optinter: pair {[i, j]} is not a field pair i < j of {F_} fields")
            if fn not in FUNCTIONS:
                raise BadInputError(f"optinter: unknown interaction function {fn!r}; use one of {', '.join(FUNCTIONS)}")
            if fn == "memorized" and b < 1:
                raise BadInputError(f"optinter: memorized pair {[i, j]} needs buckets >= 1, got {b}")
        mem = [(p, b) for p, fn, b in zip(self.pairs, self.functions, self.buckets, strict=True) if fn == "memorized"]
        fact = [p for p, fn in zip(self.pairs, self.functions, strict=True) if fn == "factorized"]
        vocab = self.embedding.vocab_sizes
        self.num_memorized, self.num_factorized = len(mem), len(fact)
        if mem:
            rows = [b + 1 for _, b in mem]
            cross = DenseEmbedding(rows, D) if cross is None else cross
            if list(cross.vocab_sizes) != rows or cross.dim != D:
                raise BadInputError(f"optinter: the cross table has rows {list(cross.vocab_sizes)} x {cross.dim}, "
                                    f"expected {rows} x {D}; the checkpoint is inconsistent")
            self.register_buffer("cross_left", torch.tensor([p[0] for p, _ in mem], dtype=torch.int64))
            self.register_buffer("cross_right", torch.tensor([p[1] for p, _ in mem], dtype=torch.int64))
            self.register_buffer("cross_stride", torch.tensor([vocab[p[1]] - 1 for p, _ in mem], dtype=torch.int64))
            self.register_buffer("cross_buckets", torch.tensor([b for _, b in mem], dtype=torch.int64))
        elif cross is not None:
            raise BadInputError("optinter: a cross table was given but no pair is memorized")
        self.cross = cross if mem else None
        if fact:
            self.register_buffer("fact_left", torch.tensor([p[0] for p in fact], dtype=torch.int64))
            self.register_buffer("fact_right", torch.tensor([p[1] for p in fact], dtype=torch.int64))
        self.mlp_dims = [int(h) for h in mlp_dims]
        self.dropout = float(dropout)
        self.batch_norm = bool(batch_norm)
        in_dim = (F_ + len(mem) + len(fact)) * D
        self.mlp = MLP(in_dim, self.mlp_dims, dropout=self.dropout, batch_norm=self.batch_norm)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        emb = self.embedding(ids)  # [B, F, D]
        parts = [emb.flatten(1)]
        if self.cross is not None:
            valid = map_oov(ids, self.embedding.vocab_size_tensor)
            rows = cross_ids(valid, self.cross_left, self.cross_right, self.cross_stride, self.cross_buckets)
            parts.append(self.cross(rows).flatten(1))  # [B, M*D]
        if self.num_factorized:
            parts.append((emb.index_select(1, self.fact_left) * emb.index_select(1, self.fact_right)).flatten(1))
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]  # [B, (F+M+Q)*D]
        return self.first_order(ids) + self.mlp(x).squeeze(1)

    def config(self) -> dict[str, Any]:
        return {"pairs": self.pairs, "functions": self.functions, "buckets": self.buckets,
                "mlp_dims": self.mlp_dims, "dropout": self.dropout, "batch_norm": self.batch_norm}

    def counts(self) -> dict[str, int]:
        """How many pairs use each function (``none`` includes the listed ``none`` pairs only)."""
        return {fn: self.functions.count(fn) for fn in FUNCTIONS}

    @classmethod
    def from_parts(cls, embeddings: dict[str, EmbeddingLayer], **config: Any) -> OptInter:
        return cls(embeddings["embedding"], embeddings.get("linear"), cross=embeddings.get("cross"), **config)
