"""The hashing trick: each field's ids share fewer rows (``id mod buckets_f``).

Weinberger et al., "Feature Hashing for Large Scale Multitask Learning", ICML 2009; the
"hashing to fewer rows" baseline of embedding compression (e.g. Shi et al., "Compositional
Embeddings Using Complementary Partitions", KDD 2020). For field ``f`` with
``buckets_f <= vocab_f`` rows::

    row_f(id) = id mod buckets_f

A field with ``buckets_f == vocab_f`` is an ordinary table. Storage and ONNX ops:
:class:`HashedEmbedding`.

Deviations from the paper:

* Plain modulo, not a (universal) hash ``((a·id + b) mod p) mod m`` and no sign hash: ids are
  already dense integers ``0 .. vocab_f − 1`` (the schema's encoding), so ``mod`` spreads them
  evenly (every bucket holds ``floor`` or ``ceil(vocab_f / buckets_f)`` ids) and keeps the OOV
  id 0 on row 0 (out-of-range and negative ids are first mapped to 0, as in every layer).
* Lowered without ``Mod``, as ``id − (id / b)·b`` with integer Div (exact for the non-negative
  ids left after OOV mapping).

Measured: ``benchmarks/results/compress_quality_*.md`` (``hash`` rows).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ondevice.embedding.base import EmbeddingLayer, field_offsets, register_embedding
from ondevice.embedding.quantized import RowTable, check_table_dtype, table_bytes
from ondevice.errors import BadInputError


@register_embedding
class HashedEmbedding(EmbeddingLayer):
    """``buckets_f`` rows per field, id -> ``id mod buckets_f`` (see module docstring).

    ``buckets`` is one int for all fields or one per field; each is capped at the field's
    vocabulary size (more buckets than ids would only waste bytes).

    Storage, with ``B = sum(buckets_f)``, ``F = fields``, ``D = dim``::

        table_bytes(B, D, dtype) + 24*F      (int64 vocab sizes, buckets, offsets)

    (``16*F`` when no field is hashed: the exporter stores the equal buckets and vocabulary
    vectors once.) ``table_bytes`` is ``4*B*D`` for fp32, ``2*B*D`` for fp16 and ``B*D + 2*B``
    for int8 (row-wise, see :mod:`ondevice.embedding.quantized`).

    ONNX ops: GreaterOrEqual/Less/And/Where (OOV), Div, Mul, Sub, Add, Gather (+ Cast/Mul for
    quantized tables). fp32 tables train (row-sparse gradients with ``sparse=True``).
    """

    type_name = "hashed"

    def __init__(
        self,
        vocab_sizes: Sequence[int],
        dim: int,
        *,
        buckets: int | Sequence[int],
        dtype: str = "float32",
        sparse: bool = True,
        init_std: float = 1e-2,
    ) -> None:
        super().__init__(vocab_sizes, dim)
        per_field = [int(buckets)] * self.num_fields if isinstance(buckets, int) else [int(b) for b in buckets]
        if len(per_field) != self.num_fields or min(per_field) < 1:
            raise BadInputError(f"buckets must be a positive int or one positive int per field "
                                f"({self.num_fields} fields); got {buckets!r}")
        self.buckets: tuple[int, ...] = tuple(min(b, v) for b, v in zip(per_field, self.vocab_sizes, strict=True))
        self.dtype_name = check_table_dtype(dtype, owner="HashedEmbedding")
        self.sparse = bool(sparse)
        self.init_std = float(init_std)
        self.table = RowTable(sum(self.buckets), self.dim, dtype, sparse=sparse, init_std=init_std)
        self.register_buffer("bucket_tensor", torch.tensor(self.buckets, dtype=torch.int64))
        self.register_buffer("offsets", torch.tensor(field_offsets(self.buckets), dtype=torch.int64))

    @classmethod
    def from_dense(cls, layer: EmbeddingLayer, *, buckets: int | Sequence[int], dtype: str = "float32",
                   sparse: bool = True) -> HashedEmbedding:
        """Initialise each bucket with the mean of the dense rows hashed into it."""
        new = cls(layer.vocab_sizes, layer.dim, buckets=buckets, dtype=dtype, sparse=sparse)
        dense = layer.dense_weight()
        rows = torch.cat([torch.arange(v) % b + o for v, b, o in
                          zip(layer.vocab_sizes, new.buckets, field_offsets(new.buckets), strict=True)])
        total = torch.zeros(sum(new.buckets), layer.dim).index_add_(0, rows, dense)
        count = torch.zeros(sum(new.buckets)).index_add_(0, rows, torch.ones(len(rows)))
        new.table.set_dense(total / count.unsqueeze(1))
        return new

    @staticmethod
    def expected_bytes(vocab_sizes: Sequence[int], dim: int, buckets: Sequence[int],
                       dtype: str = "float32") -> int:
        """The docstring's byte formula (``buckets`` already capped per field)."""
        unhashed = list(buckets) == list(vocab_sizes)  # then the buckets vector is stored once
        return table_bytes(sum(buckets), dim, dtype) + (16 if unhashed else 24) * len(vocab_sizes)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        # ids >= 0 here, so truncating integer division == floor: id mod b = id - (id // b) * b
        quotient = torch.div(ids, self.bucket_tensor, rounding_mode="trunc")
        rows = ids - quotient * self.bucket_tensor + self.offsets  # [B, F]
        return self.table.gather(rows)  # [B, F, D]

    def spec(self) -> dict[str, Any]:
        return {"type": self.type_name, "vocab_sizes": list(self.vocab_sizes), "dim": self.dim,
                "buckets": list(self.buckets), "dtype": self.dtype_name, "sparse": self.sparse,
                "init_std": self.init_std}

    def sparse_parameters(self) -> list[torch.nn.Parameter]:
        return self.table.sparse_parameters()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, buckets={list(self.buckets)}, dtype={self.dtype_name}"
