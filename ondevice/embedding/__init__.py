"""Embedding layers: the seam where compression plugs into every model."""

from ondevice.embedding.base import (
    EmbeddingLayer,
    embedding_from_spec,
    field_offsets,
    map_oov,
    register_embedding,
    swap_embedding_,
)
from ondevice.embedding.dense import DenseEmbedding

__all__ = [
    "DenseEmbedding",
    "EmbeddingLayer",
    "embedding_from_spec",
    "field_offsets",
    "map_oov",
    "register_embedding",
    "swap_embedding_",
]
