"""Training-time masked embedding: dense weight × fixed 0/1 mask; deploys to the smallest exact format.

Method
------
The retrain stage of PEP (Liu et al., ICLR'21, §3.3: the pruned structure is fixed and the
rewound weights are retrained, lottery-ticket style) and any other fixed-mask retraining
(DeepLight, Deng et al., WSDM'21). The forward pass is ``(V ⊙ M)[id]``, so the gradient of
a masked entry is exactly zero and it stays pruned under any optimiser.

Exported, the mask is not stored: :meth:`MaskedEmbedding.to_deployable` returns the
smallest *exact* format for the effective table ``V ⊙ M`` (its non-zeros), comparing the
byte formulas of

* ``DenseEmbedding`` (or ``QuantizedEmbedding`` when ``deploy_dtype`` is fp16/int8),
* ``RowPrunedEmbedding(pruned_to="zero")`` — rows without a non-zero dropped,
* ``SparseEmbedding`` in ``csr`` and ``ell`` layouts (fp32/fp16 values only),

and :meth:`storage_bytes` reports that form's bytes: ``min`` over the candidates'
``expected_bytes`` (see each module). ``deploy_dtype="int8"`` composes PEP with row-wise
int8 (dense or row-pruned int8 tables; the sparse layouts store fp32/fp16 values only).
The training-time form itself (weight + bool mask) is never exported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ondevice.embedding.base import EmbeddingLayer, field_offsets, register_embedding
from ondevice.embedding.dense import DenseEmbedding
from ondevice.embedding.quantized import QuantizedEmbedding, check_table_dtype
from ondevice.embedding.row_pruned import RowPrunedEmbedding
from ondevice.embedding.sparse import SPARSE_LAYOUTS, SparseEmbedding
from ondevice.errors import BadInputError


def deployable_bytes(vocab_sizes: Sequence[int], dim: int, nonzero: torch.Tensor,
                     dtype: str = "float32") -> tuple[dict[str, int], torch.Tensor]:
    """Exact bytes of every exact deployable format of a ``[Σ vocab, D]`` table whose non-zero
    entries are ``nonzero``, stored at ``dtype``; and the rows row pruning keeps (non-empty
    rows plus each field's OOV row). From counts only: PEP and DeepLight call it every step.
    """
    row_nnz = nonzero.sum(dim=1)
    nnz, k = int(row_nnz.sum()), int(row_nnz.max()) if row_nnz.numel() else 0
    keep = row_nnz > 0
    keep[field_offsets(vocab_sizes)] = True  # each field's OOV row is always kept
    kept = [int(keep[s:s + n].sum()) for s, n in zip(field_offsets(vocab_sizes), vocab_sizes, strict=True)]
    v = list(vocab_sizes)
    out = {"dense": sum(v) * dim * 4 + 16 * len(v) if dtype == "float32" else QuantizedEmbedding.expected_bytes(v, dim, dtype),
           "row_pruned": RowPrunedEmbedding.expected_bytes(v, dim, kept, dtype)}
    if dtype != "int8":  # int8 rows have no sparse form
        for layout in SPARSE_LAYOUTS:
            out[f"sparse_{layout}"] = SparseEmbedding.expected_bytes(v, dim, nnz, k, layout=layout, dtype=dtype,
                                                                     row_nnz=row_nnz)
    return out, keep


@register_embedding
class MaskedEmbedding(EmbeddingLayer):
    """Dense fp32 weight with a fixed bool mask buffer; ``to_deployable()`` drops the zeros."""

    type_name = "masked"

    def __init__(
        self,
        vocab_sizes: Sequence[int],
        dim: int,
        *,
        sparse: bool = True,
        init_std: float = 1e-2,
        deploy_dtype: str = "float32",
    ) -> None:
        super().__init__(vocab_sizes, dim)
        self.sparse = bool(sparse)
        self.init_std = float(init_std)
        self.deploy_dtype = check_table_dtype(deploy_dtype, owner="MaskedEmbedding deploy")
        self.weight = nn.Parameter(torch.empty(sum(self.vocab_sizes), self.dim))
        nn.init.normal_(self.weight, std=self.init_std)
        self.register_buffer("mask", torch.ones(sum(self.vocab_sizes), self.dim, dtype=torch.bool))
        self.register_buffer("offsets", torch.tensor(field_offsets(self.vocab_sizes), dtype=torch.int64))

    @classmethod
    def from_dense(cls, layer: EmbeddingLayer, mask: torch.Tensor | None = None, *,
                   deploy_dtype: str = "float32") -> MaskedEmbedding:
        """Copy ``layer``'s table; ``mask`` (bool/0-1 ``[Σ vocab, D]``) defaults to its non-zeros."""
        weight = layer.dense_weight()
        new = cls(layer.vocab_sizes, layer.dim, deploy_dtype=deploy_dtype)
        with torch.no_grad():
            new.weight.copy_(weight)
        new.set_mask(weight != 0 if mask is None else mask)
        return new

    @torch.no_grad()
    def set_mask(self, mask: torch.Tensor) -> MaskedEmbedding:
        if tuple(mask.shape) != tuple(self.mask.shape):
            raise BadInputError(f"mask shape {tuple(mask.shape)} != table shape {tuple(self.mask.shape)}")
        self.mask.copy_(mask.to(torch.bool))
        return self

    def effective_weight(self) -> torch.Tensor:
        """``V ⊙ M`` as fp32 ``[Σ vocab, D]`` (detached)."""
        return (self.weight.detach() * self.mask).clone()

    # ------------------------------------------------------------------ protocol
    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids + self.offsets  # [B, F]
        if self.sparse and self.training and torch.is_grad_enabled():
            rows = nn.functional.embedding(flat, self.weight, sparse=True)
        else:
            rows = self.weight[flat]
        return rows * self.mask[flat].to(rows.dtype)  # [B, F, D]; masked entries get zero gradient

    def spec(self) -> dict[str, Any]:
        return {"type": self.type_name, "vocab_sizes": list(self.vocab_sizes), "dim": self.dim,
                "sparse": self.sparse, "init_std": self.init_std, "deploy_dtype": self.deploy_dtype}

    def dense_weight(self) -> torch.Tensor:
        return self.effective_weight()

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.weight] if self.sparse else []

    # ------------------------------------------------------------------ deployment
    def deploy_candidates(self) -> dict[str, tuple[int, Callable[[], EmbeddingLayer]]]:
        """Exact bytes and a builder for every format that reproduces ``V ⊙ M`` (at ``deploy_dtype``)."""
        w = self.effective_weight()
        if self.deploy_dtype == "float16":
            w = w.clamp(-65504.0, 65504.0).to(torch.float16).to(torch.float32)
        v, dt = self.vocab_sizes, self.deploy_dtype
        sizes, keep = deployable_bytes(v, self.dim, w != 0, dt)
        builders: dict[str, Callable[[], EmbeddingLayer]] = {
            "dense": self._build_dense if dt == "float32" else lambda: QuantizedEmbedding.from_dense(self, dtype=dt),
            "row_pruned": lambda: RowPrunedEmbedding.from_dense(self, keep, pruned_to="zero", dtype=dt),
            **{f"sparse_{layout}": (lambda layout=layout: SparseEmbedding.from_weight(v, w, layout=layout, dtype=dt))
               for layout in SPARSE_LAYOUTS},
        }
        return {name: (nbytes, builders[name]) for name, nbytes in sizes.items()}

    def _build_dense(self) -> DenseEmbedding:
        new = DenseEmbedding(self.vocab_sizes, self.dim, sparse=self.sparse)
        with torch.no_grad():
            new.weight.copy_(self.effective_weight())
        return new

    def best_format(self) -> tuple[str, int]:
        """Name and exact bytes of the smallest exact deployable format."""
        name, (nbytes, _) = min(self.deploy_candidates().items(), key=lambda kv: kv[1][0])
        return name, nbytes

    def to_deployable(self) -> EmbeddingLayer:
        name, _ = self.best_format()
        return self.deploy_candidates()[name][1]()

    def storage_bytes(self) -> int:
        return self.best_format()[1]

    def extra_repr(self) -> str:
        name, nbytes = self.best_format()
        return (f"fields={self.num_fields}, rows={sum(self.vocab_sizes)}, dim={self.dim}, "
                f"kept={int(self.mask.sum()):,}/{self.mask.numel():,}, deploys_as={name}, "
                f"storage_bytes={nbytes:,}")
