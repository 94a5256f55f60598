"""Dense fp32 embedding: one concatenated table, one row per (field, id)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ondevice.embedding.base import EmbeddingLayer, field_offsets, register_embedding


@register_embedding
class DenseEmbedding(EmbeddingLayer):
    """All fields' tables concatenated into one ``[sum(vocab), dim]`` fp32 parameter.

    One Gather serves every field (offsets are added to the ids), which is both the fastest
    layout for training on CPU and the smallest ONNX graph. With ``sparse=True`` the
    gradient is row-sparse, so the trainer updates only the rows a batch touched.

    Storage: ``sum(vocab_sizes) * dim * 4`` bytes, plus two int64 vectors of ``fields``
    entries (vocabulary sizes and offsets).
    """

    type_name = "dense"

    def __init__(
        self,
        vocab_sizes: Sequence[int],
        dim: int,
        *,
        sparse: bool = True,
        init_std: float = 1e-2,
    ) -> None:
        super().__init__(vocab_sizes, dim)
        self.sparse = bool(sparse)
        self.init_std = float(init_std)
        self.weight = nn.Parameter(torch.empty(sum(self.vocab_sizes), self.dim))
        self.register_buffer("offsets", torch.tensor(field_offsets(self.vocab_sizes), dtype=torch.int64))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=self.init_std)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids + self.offsets
        if self.sparse and self.training and torch.is_grad_enabled():
            return nn.functional.embedding(flat, self.weight, sparse=True)
        return self.weight[flat]

    def spec(self) -> dict[str, Any]:
        return {"type": self.type_name, "vocab_sizes": list(self.vocab_sizes), "dim": self.dim,
                "sparse": self.sparse, "init_std": self.init_std}

    def dense_weight(self) -> torch.Tensor:
        return self.weight.detach().clone()

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.weight] if self.sparse else []
