"""Shared pieces of the models: the MLP, the CTR base class and the model registry.

Models own only the interaction and prediction layers; their inputs come from an
``EmbeddingLayer`` (``ondevice.embedding``) that compression may swap.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from ondevice.embedding import DenseEmbedding, EmbeddingLayer, embedding_from_spec
from ondevice.errors import BadInputError

MODEL_REGISTRY: dict[str, type[RecModel]] = {}


def register_model(cls: type[RecModel]) -> type[RecModel]:
    MODEL_REGISTRY[cls.name] = cls
    return cls


class MLP(nn.Sequential):
    """Linear -> [BatchNorm] -> ReLU -> [Dropout] blocks, optionally ending in a Linear."""

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int],
        *,
        dropout: float = 0.0,
        batch_norm: bool = False,
        out_dim: int | None = 1,
    ) -> None:
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers.append(nn.Linear(d, h))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(nn.ReLU(inplace=True))  # no extra activation buffer per layer (training hot path)
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d = h
        if out_dim is not None:
            layers.append(nn.Linear(d, out_dim))
        super().__init__(*layers)
        self.out_features = out_dim if out_dim is not None else d


class RecModel(nn.Module):
    """Base of every model: knows how to describe itself for checkpoints."""

    name: ClassVar[str] = "abstract"
    task: ClassVar[str] = "ctr"

    def config(self) -> dict[str, Any]:
        """Hyper-parameters of the interaction/prediction layers (JSON-able)."""
        return {}

    def embedding_layers(self) -> dict[str, EmbeddingLayer]:
        return {n: m for n, m in self.named_children() if isinstance(m, EmbeddingLayer)}

    def describe(self) -> dict[str, Any]:
        """Everything needed to rebuild an empty model of the same shape."""
        from ondevice.models.int8_linear import Int8Linear

        out = {
            "model": self.name,
            "config": self.config(),
            "embeddings": {n: m.spec() for n, m in self.embedding_layers().items()},
        }
        int8 = [n for n, m in self.named_modules() if isinstance(m, Int8Linear)]
        if int8:  # dense layers stored in int8 (``--mlp int8``)
            out["int8_linears"] = int8
        return out

    def dense_parameters(self) -> list[nn.Parameter]:
        sparse = {id(p) for m in self.embedding_layers().values() for p in m.sparse_parameters()}
        return [p for p in self.parameters() if id(p) not in sparse]

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.embedding_layers().values() for p in m.sparse_parameters()]


class CTRModel(RecModel):
    """A CTR model: ``forward(ids[batch, fields]) -> logits[batch]``.

    ``embedding`` gives the interaction vectors; ``linear`` (a dim-1 embedding layer) gives
    the first-order weights of FM-style models and is ``None`` where the model has none.
    """

    task = "ctr"

    def __init__(self, embedding: EmbeddingLayer, linear: EmbeddingLayer | None = None) -> None:
        super().__init__()
        self.embedding = embedding
        if linear is not None:
            if linear.dim != 1:
                raise BadInputError(f"linear embedding must have dim 1, got {linear.dim}")
            if linear.vocab_sizes != embedding.vocab_sizes:
                raise BadInputError("linear and interaction embeddings must cover the same fields")
        self.linear = linear
        self.bias = nn.Parameter(torch.zeros(1))

    @property
    def num_fields(self) -> int:
        return self.embedding.num_fields

    @property
    def embed_dim(self) -> int:
        return self.embedding.dim

    def first_order(self, ids: torch.Tensor) -> torch.Tensor:
        """Bias plus the sum of per-feature weights: ``[batch]`` (``[1]`` without a linear part)."""
        if self.linear is None:
            return self.bias  # [1], broadcasts against the [batch] terms (no Expand node)
        return self.linear(ids).sum(dim=(1, 2)) + self.bias

    def predict_proba(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self(ids))

    # ---------------------------------------------------------------- building
    uses_linear: ClassVar[bool] = True

    @classmethod
    def from_vocab(cls, vocab_sizes: Sequence[int], *, embed_dim: int = 16, **config: Any) -> CTRModel:
        """A fresh model on dense embeddings (the full, uncompressed model)."""
        embedding = DenseEmbedding(vocab_sizes, embed_dim)
        linear = DenseEmbedding(vocab_sizes, 1, init_std=0.0) if cls.uses_linear else None
        return cls(embedding, linear, **config)


def build_model(name: str, vocab_sizes: Sequence[int], **kwargs: Any) -> RecModel:
    """Build a fresh full model by registry name (``fm``, ``deepfm``, ``bprmf`` ...)."""
    try:
        cls = MODEL_REGISTRY[name]
    except KeyError:
        raise BadInputError(f"unknown model {name!r}; choose one of: {', '.join(sorted(MODEL_REGISTRY))}") from None
    return cls.from_vocab(vocab_sizes, **kwargs)


def model_from_description(desc: dict[str, Any]) -> RecModel:
    """Rebuild an empty model from ``RecModel.describe()`` (weights come from a state dict)."""
    try:
        cls = MODEL_REGISTRY[desc["model"]]
        embeddings = {n: embedding_from_spec(s) for n, s in desc["embeddings"].items()}
        model = cls.from_parts(embeddings, **desc.get("config", {}))
    except KeyError as err:
        raise BadInputError(f"model description lacks {err}; the checkpoint is from another version") from None
    if desc.get("int8_linears"):
        from ondevice.models.int8_linear import quantize_dense_layers_

        quantize_dense_layers_(model, desc["int8_linears"])  # shapes only; the state dict fills them
    return model


def _ctr_from_parts(cls: type[CTRModel], embeddings: dict[str, EmbeddingLayer], **config: Any) -> CTRModel:
    return cls(embeddings["embedding"], embeddings.get("linear"), **config)


CTRModel.from_parts = classmethod(_ctr_from_parts)  # type: ignore[attr-defined]
