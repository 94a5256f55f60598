"""Mixed-dimension embeddings: per-field tables ``[vocab_f, d_f]`` projected to the common dim.

The mixed-dimension (MD) layer of Ginart et al., "Mixed Dimension Embeddings with Application to
Memory-Efficient Recommendation Systems", ISIT 2021 (``PrEmbeddingBag`` in
``facebookresearch/dlrm``; survey §5.1): field ``f`` has its own table
``E_f ∈ R^{vocab_f × d_f}`` and a bias-free projection ``P_f ∈ R^{d_f × D}`` to the interaction dimension ``D``, so FM /
inner-product models still see equal-width vectors::

    e_f(id) = E_f[id] @ P_f

It is also the storage of SSEDS's retrained slim model (Qu et al., SIGIR 2022, "transform
matrices") and of AutoDim (Zhao et al., WWW 2021). How the ``d_f`` are chosen (MDE's
popularity rule, survey Eq. (19); SSEDS; a uniform dim) is the searchers' business. Exact bytes:
:meth:`MixedDimEmbedding.expected_bytes`; lowering: :class:`MixedDimEmbedding`.

Deviations from the paper:

* ``d_f == D``: no projection (``E_f P_f`` with a square ``P_f`` is just another table).
* ``d_f == 0``: the field is dropped and yields the zero vector (SSEDS may remove a whole field).
* Fields of equal width share one table and one stacked projection ``[G, d, D]``: a handful of
  graph nodes per distinct width instead of per field (each node costs time at batch 1 and bytes).
* Tables may be fp16 or row-wise int8 (:mod:`ondevice.embedding.quantized`, frozen); projections
  stay fp32 and trainable.

Measured: ``benchmarks/results/compress_quality_*.md`` (``mde``, ``sseds`` rows).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ondevice.embedding.base import (
    EmbeddingLayer,
    distinct_tensors,
    field_offsets,
    register_embedding,
)
from ondevice.embedding.quantized import RowTable, check_table_dtype, table_bytes
from ondevice.errors import BadInputError


def _layout(vocab_sizes: Sequence[int], dims: Sequence[int]) -> tuple[list[tuple[int, list[int]]], list[int], list[int]]:
    """Width groups ``[(d, fields)]`` (ascending ``d > 0``), dropped fields, and output order.

    ``order[f]`` is the position of field ``f`` in the concatenation of the groups (dropped
    fields last), so ``concat[:, order]`` restores field order.
    """
    groups = [(d, [f for f, df in enumerate(dims) if df == d]) for d in sorted({d for d in dims if d > 0})]
    dropped = [f for f, d in enumerate(dims) if d == 0]
    concat = [f for _, fs in groups for f in fs] + dropped
    order = [concat.index(f) for f in range(len(dims))]
    return groups, dropped, order


def _index_buffers(vocab_sizes: Sequence[int], dim: int, dims: Sequence[int]) -> dict[str, torch.Tensor]:
    """The small int64 index vectors (and zero row) the layer stores, by buffer name."""
    groups, dropped, order = _layout(vocab_sizes, dims)
    out: dict[str, torch.Tensor] = {}
    for i, (_, fs) in enumerate(groups):
        out[f"group{i}_fields"] = torch.tensor(fs, dtype=torch.int64)
        if len(fs) > 1:  # a one-field group's offset is 0: no vector, no Add node
            out[f"group{i}_offsets"] = torch.tensor(field_offsets([vocab_sizes[f] for f in fs]), dtype=torch.int64)
    if dropped:
        out["dropped_fields"] = torch.tensor(dropped, dtype=torch.int64)
        out["zero_row"] = torch.zeros(dim)
    if order != sorted(order):
        out["order"] = torch.tensor(order, dtype=torch.int64)
    return out


@register_embedding
class MixedDimEmbedding(EmbeddingLayer):
    """Per-field tables of width ``dims[f]`` plus projections to ``dim`` (module docstring).

    Storage, with groups ``g`` of fields of equal width ``d_g > 0`` (``G_g`` fields each),
    ``P = {f : 0 < d_f < D}``, ``Z`` = number of dropped fields, ``F`` fields::

        Σ_g table_bytes(Σ_{f∈g} vocab_f, d_g, dtype) + Σ_{f∈P} 4·d_f·D      (tables, projections)
        + 8·F                          (int64 vocabulary sizes)
        + Σ_g 8·G_g·(1 + [G_g > 1])    (int64 field index, and row offset in multi-field groups)
        + [Z > 0]·(8·Z + 4·D)          (int64 index of the dropped fields, fp32 zero row)
        + [fields not in group order]·8·F   (int64 permutation back to field order)

    (``table_bytes``: ``4·n·d`` fp32, ``2·n·d`` fp16, ``n·d + 2·n`` int8.) Tensors with equal
    dtype, shape and values are stored once by the exporter and counted once
    (``distinct_tensors``), e.g. two groups' ``[0, 600]`` offsets; ``expected_bytes`` does the
    same.

    ONNX ops per width group: Gather (id columns), [Add (offsets) when ``G_g > 1``], Gather
    (table) [+ Gather (scale), Cast, Unsqueeze, Mul when quantized], MatMul (projection, with
    Unsqueeze/Squeeze when ``G_g > 1``); dropped fields: Gather, Cast, Unsqueeze, Mul; then
    Concat over groups and one Gather to restore field order (skipped when already in order).
    """

    type_name = "mixed_dim"

    def __init__(
        self,
        vocab_sizes: Sequence[int],
        dim: int,
        *,
        dims: Sequence[int],
        dtype: str = "float32",
        sparse: bool = True,
        init_std: float = 1e-2,
    ) -> None:
        super().__init__(vocab_sizes, dim)
        field_dims = [int(d) for d in dims]
        if len(field_dims) != self.num_fields or min(field_dims) < 0 or max(field_dims) > self.dim:
            raise BadInputError(f"dims must give one width in [0, {self.dim}] per field "
                                f"({self.num_fields} fields); got {list(dims)}")
        self.dims: tuple[int, ...] = tuple(field_dims)
        self.dtype_name = check_table_dtype(dtype, owner="MixedDimEmbedding")
        self.sparse = bool(sparse)
        self.init_std = float(init_std)
        self._groups, self._dropped, order = _layout(self.vocab_sizes, self.dims)
        self._reorder = order != sorted(order)
        self.tables = nn.ModuleList(
            RowTable(sum(self.vocab_sizes[f] for f in fs), d, dtype, sparse=sparse, init_std=init_std)
            for d, fs in self._groups
        )
        # Stacked projections [G, d, D] for d < D; an empty placeholder for d == D (identity).
        self.projections = nn.ParameterList(
            nn.Parameter(torch.empty(len(fs), d, self.dim) if d < self.dim else torch.empty(0))
            for d, fs in self._groups
        )
        for (d, _), w in zip(self._groups, self.projections, strict=True):
            if d < self.dim:
                nn.init.normal_(w, std=(1.0 / d) ** 0.5)
        for name, t in _index_buffers(self.vocab_sizes, self.dim, self.dims).items():
            self.register_buffer(name, t)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_dense(
        cls,
        layer: EmbeddingLayer,
        *,
        dims: Sequence[int] | None = None,
        keep: Sequence[Sequence[int]] | None = None,
        dtype: str = "float32",
        sparse: bool = True,
    ) -> MixedDimEmbedding:
        """Keep columns ``keep[f]`` of field ``f`` (default: the first ``dims[f]``).

        The projection is the matching rows of the identity, so the new layer reproduces
        the kept columns exactly and zeros elsewhere (the SSEDS "inherit kept dims" start).
        A field keeping all ``dim`` columns keeps them in order (no projection).
        """
        if keep is None:
            if dims is None:
                raise BadInputError("MixedDimEmbedding.from_dense needs dims= or keep=")
            keep = [list(range(int(d))) for d in dims]
        keep = [sorted(int(c) for c in cols) for cols in keep]
        new = cls(layer.vocab_sizes, layer.dim, dims=[len(c) for c in keep], dtype=dtype, sparse=sparse)
        dense = layer.dense_weight()
        starts = field_offsets(layer.vocab_sizes)
        eye = torch.eye(layer.dim)
        with torch.no_grad():
            for g, (d, fs) in enumerate(new._groups):
                rows = [dense[starts[f]:starts[f] + layer.vocab_sizes[f], keep[f]] for f in fs]
                new.tables[g].set_dense(torch.cat(rows, dim=0))
                if d < layer.dim:
                    new.projections[g].copy_(torch.stack([eye[keep[f]] for f in fs]))
        return new

    @staticmethod
    def expected_bytes(vocab_sizes: Sequence[int], dim: int, dims: Sequence[int],
                       dtype: str = "float32") -> int:
        """The class docstring's byte formula."""
        groups, _, _ = _layout(vocab_sizes, dims)
        tables = sum(table_bytes(sum(vocab_sizes[f] for f in fs), d, dtype) for d, fs in groups)
        projections = sum(4 * d * dim for d in dims if 0 < d < dim)
        vocab = torch.tensor(list(vocab_sizes), dtype=torch.int64)
        small = distinct_tensors([vocab, *_index_buffers(vocab_sizes, dim, dims).values()])
        return tables + projections + sum(t.numel() * t.element_size() for t in small)

    # ------------------------------------------------------------------ protocol
    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        parts = []
        for g, (d, fs) in enumerate(self._groups):
            rows = ids[:, getattr(self, f"group{g}_fields")]  # [B, G]
            if len(fs) > 1:
                rows = rows + getattr(self, f"group{g}_offsets")
            e = self.tables[g].gather(rows)  # [B, G, d]
            if d < self.dim and len(fs) == 1:
                e = e @ self.projections[g]  # [B, 1, d] @ [1, d, D] -> [B, 1, D]
            elif d < self.dim:
                e = (e.unsqueeze(-2) @ self.projections[g]).squeeze(-2)  # [B,G,1,d] @ [G,d,D] -> [B, G, D]
            parts.append(e)
        if self._dropped:
            # [B, Z, 1] float * [D] -> [B, Z, D] zeros: no table, no dynamic-shape ops.
            parts.append(ids[:, self.dropped_fields].to(torch.float32).unsqueeze(-1) * self.zero_row)
        out = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]  # [B, F, D] in group order
        return out[:, self.order] if self._reorder else out

    def spec(self) -> dict[str, Any]:
        return {"type": self.type_name, "vocab_sizes": list(self.vocab_sizes), "dim": self.dim,
                "dims": list(self.dims), "dtype": self.dtype_name, "sparse": self.sparse,
                "init_std": self.init_std}

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [p for t in self.tables for p in t.sparse_parameters()]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dims={list(self.dims)}, dtype={self.dtype_name}"
