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
from ondevice.embedding.elastic import ElasticBlockEmbedding, ElasticSubsetEmbedding
from ondevice.embedding.hashed import HashedEmbedding
from ondevice.embedding.masked import MaskedEmbedding
from ondevice.embedding.mixed_dim import MixedDimEmbedding
from ondevice.embedding.quantized import QuantizedEmbedding, RowTable, table_bytes
from ondevice.embedding.row_pruned import RowPrunedEmbedding
from ondevice.embedding.sparse import SparseEmbedding, sparse_bytes

__all__ = [
    "DenseEmbedding",
    "ElasticBlockEmbedding",
    "ElasticSubsetEmbedding",
    "EmbeddingLayer",
    "HashedEmbedding",
    "MaskedEmbedding",
    "MixedDimEmbedding",
    "QuantizedEmbedding",
    "RowPrunedEmbedding",
    "RowTable",
    "SparseEmbedding",
    "embedding_from_spec",
    "field_offsets",
    "map_oov",
    "register_embedding",
    "sparse_bytes",
    "swap_embedding_",
    "table_bytes",
]
