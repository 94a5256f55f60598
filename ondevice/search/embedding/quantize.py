"""Post-training quantization of an embedding layer into its int8/fp16 storage twin.

Shared by the ``int8``/``fp16`` baselines and every ``--method X+int8`` composition
(quantize after the search and the retrain). Row-wise symmetric int8 with an fp16 scale
per row, or fp16 rows: see :mod:`ondevice.embedding.quantized` for the scheme, its error
bound and its bytes. Projections of mixed-dimension layers stay fp32; row-pruned tables keep
their remap (``frequency+int8``).
"""

from __future__ import annotations

import torch

from ondevice.embedding import (
    EmbeddingLayer,
    HashedEmbedding,
    MaskedEmbedding,
    MixedDimEmbedding,
    QuantizedEmbedding,
    RowPrunedEmbedding,
)

__all__ = ["quantize_layer"]


@torch.no_grad()
def quantize_layer(layer: EmbeddingLayer, dtype: str) -> EmbeddingLayer:
    """``layer`` with its tables stored as ``dtype`` (``float32`` returns ``layer`` itself)."""
    if dtype == "float32":
        return layer
    if isinstance(layer, MixedDimEmbedding):
        new = MixedDimEmbedding(layer.vocab_sizes, layer.dim, dims=layer.dims, dtype=dtype, sparse=layer.sparse)
        for t_new, t_old in zip(new.tables, layer.tables, strict=True):
            t_new.set_dense(t_old.dense())
        for p_new, p_old in zip(new.projections, layer.projections, strict=True):
            p_new.copy_(p_old)
        return new
    if isinstance(layer, HashedEmbedding):
        new_h = HashedEmbedding(layer.vocab_sizes, layer.dim, buckets=list(layer.buckets), dtype=dtype,
                                sparse=layer.sparse)
        new_h.table.set_dense(layer.table.dense())
        return new_h
    if isinstance(layer, RowPrunedEmbedding):  # kept rows only: the remap (and the dropped keys) stay
        return layer.with_dtype(dtype)
    if isinstance(layer, MaskedEmbedding):
        return MaskedEmbedding.from_dense(layer, layer.mask, deploy_dtype=dtype)
    return QuantizedEmbedding.from_dense(layer, dtype=dtype)
