"""Row pruning: rows removed entirely, the vocabulary re-indexed inside the graph.

Structured (row-level) embedding pruning: each field keeps only some rows in a compact table
``T`` (``[Σ kept_f, D]``) and a remap vector over the *original* vocabulary::

    row(f, id) = remap[offset_f + id]          (int32)
    e_f(id)    = T[row(f, id)]

It is where whole rows removed by PEP (Liu et al., "Learnable Embedding Sizes for Recommender
Systems", ICLR 2021, survey Eq. (23): a row whose every dimension fell below its threshold),
DeepLight's embedding pruning (Deng et al., WSDM 2021) or frequency filtering are stored. Each
field's OOV row (id 0) is always kept, as the field's first compact row. A pruned id reads
(``pruned_to``) the field's OOV row (``"oov"``, the default: what the app gets by mapping the id
to 0 itself, :meth:`RowPrunedEmbedding.remap_per_field`) or the zero vector (``"zero"``: remap
entry -1, reproducing a table whose pruned rows are zero, as ``MaskedEmbedding`` needs).

Deviations: none from the papers, which do not say how pruned rows are stored. The remap costs
4 bytes per original id, so with fp32 rows pruning pays only when more than ``1/D`` of the rows
go (int8: ``4/(D+2)``); ``MaskedEmbedding.to_deployable`` compares exact bytes and picks the
cheapest format. Storage and ONNX ops: :class:`RowPrunedEmbedding`.

Measured: no benchmark of its own; its bytes are checked exactly in
``tests/embedding/test_storage_contract.py``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ondevice.embedding.base import EmbeddingLayer, field_offsets, register_embedding
from ondevice.embedding.quantized import RowTable, check_table_dtype, table_bytes
from ondevice.errors import BadInputError

PRUNED_TO = ("oov", "zero")


@register_embedding
class RowPrunedEmbedding(EmbeddingLayer):
    """Kept rows only, plus an int32 remap over the original ids (module docstring).

    Storage, with ``V = Σ vocab_f``, ``K = Σ kept_f``, ``F`` fields, ``D = dim``::

        table_bytes(K, D, dtype) + 4·V + 16·F     (int32 remap; int64 vocab sizes, offsets)

    (``table_bytes``: ``4·K·D`` fp32, ``2·K·D`` fp16, ``K·D + 2·K`` row-wise int8 with fp16
    scales, see :mod:`ondevice.embedding.quantized`.)

    ONNX ops: OOV Where, Add (offsets), Gather (remap, int32), Cast (int64), Gather (table)
    [+ Cast/Mul when quantized] [+ GreaterOrEqual/Where/Cast/Unsqueeze/Mul for ``pruned_to="zero"``].
    fp32 tables train (row-sparse gradients); the remap is fixed.
    """

    type_name = "row_pruned"

    def __init__(
        self,
        vocab_sizes: Sequence[int],
        dim: int,
        *,
        kept_rows: Sequence[int],
        pruned_to: str = "oov",
        dtype: str = "float32",
        sparse: bool = True,
        init_std: float = 1e-2,
    ) -> None:
        super().__init__(vocab_sizes, dim)
        kept = [int(k) for k in kept_rows]
        if len(kept) != self.num_fields or any(not 1 <= k <= v for k, v in zip(kept, self.vocab_sizes, strict=True)):
            raise BadInputError(f"kept_rows must give, per field, 1 <= kept <= vocab_size "
                                f"(vocab_sizes {list(self.vocab_sizes)}); got {list(kept_rows)}")
        if pruned_to not in PRUNED_TO:
            raise BadInputError(f"pruned_to must be one of {', '.join(PRUNED_TO)}; got {pruned_to!r}")
        self.kept_rows: tuple[int, ...] = tuple(kept)
        self.pruned_to = pruned_to
        self.dtype_name = check_table_dtype(dtype, owner="RowPrunedEmbedding")
        self.sparse = bool(sparse)
        self.init_std = float(init_std)
        self.table = RowTable(sum(kept), self.dim, dtype, sparse=sparse, init_std=init_std)
        self.register_buffer("offsets", torch.tensor(field_offsets(self.vocab_sizes), dtype=torch.int64))
        # Default remap: the first kept_f ids of each field are kept, the rest pruned.
        remap = []
        for v, k, c in zip(self.vocab_sizes, kept, field_offsets(kept), strict=True):
            local = torch.arange(v)
            remap.append(torch.where(local < k, local + c, torch.full_like(local, self._pruned_value(c))))
        self.register_buffer("remap", torch.cat(remap).to(torch.int32))

    def _pruned_value(self, field_start: int) -> int:
        return field_start if self.pruned_to == "oov" else -1

    # ------------------------------------------------------------------ building
    @classmethod
    def from_dense(
        cls,
        layer: EmbeddingLayer,
        keep: torch.Tensor,
        *,
        pruned_to: str = "oov",
        dtype: str = "float32",
        sparse: bool = True,
        weight: torch.Tensor | None = None,
    ) -> RowPrunedEmbedding:
        """Keep the rows where ``keep`` (bool ``[Σ vocab]``, concatenated fields) is true.

        Each field's row 0 is kept regardless. The kept rows are copied from
        ``layer.dense_weight()`` (quantized to ``dtype``), or from ``weight`` when the caller
        already holds it (``[Σ vocab, dim]``).
        """
        total = sum(layer.vocab_sizes)
        keep = torch.as_tensor(keep, dtype=torch.bool).clone().reshape(-1)
        if keep.numel() != total:
            raise BadInputError(f"keep must have one flag per row ({total}); got {keep.numel()}")
        starts = field_offsets(layer.vocab_sizes)
        keep[starts] = True
        kept = [int(keep[s:s + v].sum()) for s, v in zip(starts, layer.vocab_sizes, strict=True)]
        new = cls(layer.vocab_sizes, layer.dim, kept_rows=kept, pruned_to=pruned_to, dtype=dtype, sparse=sparse)
        compact = torch.cumsum(keep.to(torch.int64), 0) - 1  # new global row of each kept row
        pruned = torch.zeros(total, dtype=torch.int64)
        for s, v, c in zip(starts, layer.vocab_sizes, field_offsets(kept), strict=True):
            pruned[s:s + v] = new._pruned_value(c)
        new.remap.copy_(torch.where(keep, compact, pruned).to(torch.int32))
        new.table.set_dense((layer.dense_weight() if weight is None else weight)[keep])
        return new

    @torch.no_grad()
    def with_dtype(self, dtype: str) -> RowPrunedEmbedding:
        """The same kept rows and remap with the table stored as ``dtype`` (``self`` when it already is)."""
        if check_table_dtype(dtype, owner="RowPrunedEmbedding") == self.dtype_name:
            return self
        new = RowPrunedEmbedding(self.vocab_sizes, self.dim, kept_rows=self.kept_rows, pruned_to=self.pruned_to,
                                 dtype=dtype, sparse=self.sparse, init_std=self.init_std)
        new.remap.copy_(self.remap)
        new.table.set_dense(self.table.dense())
        return new

    @torch.no_grad()
    def compact(self) -> EmbeddingLayer:
        """The kept rows as a plain table over ``kept_rows`` ids, no remap: what a raw artefact
        stores when its encoder emits the re-indexed ids itself (:meth:`remap_per_field`,
        ``pruned_to="oov"`` only). Same stored values (fp32 dense, or the int8/fp16 rows as they are)."""
        from ondevice.embedding.dense import DenseEmbedding
        from ondevice.embedding.quantized import QuantizedEmbedding

        if self.pruned_to != "oov":
            raise BadInputError("only rows pruned to the OOV row can be re-indexed away (pruned_to='oov')")
        if self.dtype_name == "float32":
            dense = DenseEmbedding(self.kept_rows, self.dim, sparse=self.sparse, init_std=self.init_std)
            dense.weight.copy_(self.table.dense())
            return dense
        quantized = QuantizedEmbedding(self.kept_rows, self.dim, dtype=self.dtype_name)
        quantized.table.load_state_dict(self.table.state_dict())
        return quantized

    @staticmethod
    def expected_bytes(vocab_sizes: Sequence[int], dim: int, kept_rows: Sequence[int],
                       dtype: str = "float32") -> int:
        """The docstring's byte formula."""
        return table_bytes(sum(kept_rows), dim, dtype) + 4 * sum(vocab_sizes) + 16 * len(vocab_sizes)

    def remap_per_field(self) -> list[torch.Tensor]:
        """Per field, int64 ``[vocab_f]``: old id -> new local id in ``[0, kept_f)``.

        Pruned ids map to 0 (the OOV id) with ``pruned_to="oov"`` and to -1 with ``"zero"``.
        This is the mapping a schema/manifest can carry so an app re-indexes before lookup.
        """
        out = []
        for s, v, c in zip(field_offsets(self.vocab_sizes), self.vocab_sizes, field_offsets(self.kept_rows),
                           strict=True):
            r = self.remap[s:s + v].to(torch.int64)
            out.append(torch.where(r >= 0, r - c, r))
        return out

    # ------------------------------------------------------------------ protocol
    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.remap[ids + self.offsets].to(torch.int64)  # Gather(int32) -> Cast: [B, F]
        if self.pruned_to == "oov":
            return self.table.gather(rows)  # [B, F, D]
        kept = rows >= 0
        out = self.table.gather(torch.where(kept, rows, torch.zeros_like(rows)))
        return out * kept.unsqueeze(-1).to(out.dtype)  # pruned ids -> zero vector

    def spec(self) -> dict[str, Any]:
        return {"type": self.type_name, "vocab_sizes": list(self.vocab_sizes), "dim": self.dim,
                "kept_rows": list(self.kept_rows), "pruned_to": self.pruned_to, "dtype": self.dtype_name,
                "sparse": self.sparse, "init_std": self.init_std}

    def sparse_parameters(self) -> list[nn.Parameter]:
        return self.table.sparse_parameters()

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, kept_rows={list(self.kept_rows)}, pruned_to={self.pruned_to}, "
                f"dtype={self.dtype_name}")


def compact_rows(model: nn.Module) -> tuple[nn.Module, list[torch.Tensor]] | None:
    """``model`` with every embedding table re-indexed to its kept rows (:meth:`RowPrunedEmbedding.compact`,
    a shallow copy) and, per field, old id -> new id; None unless every embedding table of the
    model is a :class:`RowPrunedEmbedding` pruned to OOV with the same remap."""
    names = [n for n, m in model.named_children() if isinstance(m, EmbeddingLayer)]
    layers = [getattr(model, n) for n in names]
    if sum(isinstance(m, EmbeddingLayer) for m in model.modules()) != len(layers):  # a nested table too
        return None
    if not layers or not all(isinstance(m, RowPrunedEmbedding) and m.pruned_to == "oov" for m in layers):
        return None
    if any(not torch.equal(m.remap, layers[0].remap) for m in layers[1:]):
        return None
    view = copy.copy(model)
    view._modules = {**model._modules, **{n: getattr(model, n).compact() for n in names}}
    return view, layers[0].remap_per_field()
