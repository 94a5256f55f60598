"""MDE: mixed-dimension embeddings, each field's dimension set by a power law of its size.

Ginart et al., "Mixed Dimension Embeddings with Application to Memory-Efficient Recommendation
Systems", ISIT 2021 (survey §5.1, eq. 19; methods.md §6); reference code ``facebookresearch/dlrm``
(``tricks/md_embedding_bag.py::md_solver``, ``PrEmbeddingBag``).

Dimensions (:func:`mde_dims`; survey eq. 19, the paper's Eq. 10, ``md_solver``'s table-size form)::

    d_f = λ · n_f^{−α},   clipped to [1, D] and rounded

with ``n_f`` the vocabulary size of field ``f`` and temperature ``α`` (default 0.3, the dlrm
default; the popularity variant divides ``n_f`` by query counts). Each field whose ``d_f < D``
is projected to the base dim ``D`` by a bias-free linear map (``PrEmbeddingBag``), and the
mixed-dim model is retrained.

Deviations from the paper:

* ``λ`` is found by bisection so that the layer's exact bytes
  (:meth:`MixedDimEmbedding.expected_bytes`: tables + projections + index buffers, in the
  tables' dtype) fit the embedding byte target, not ``λ = B / Σ n_f^{1−α}`` for a parameter budget.
* Each field's table starts from the best rank-``d_f`` approximation of its pretrained table
  (truncated SVD, ``E_f = U Σ``, ``W_f = Vᵀ``; :func:`svd_mixed_dim`), not a fresh
  initialisation, so retraining starts close to the full model.
* Every table is mixed-dim: no dlrm ``md_threshold`` (small tables simply get large ``d_f``).
* ``dtype`` (``mde+int8``, ``mde+fp16``): the retrained tables quantized, metric read on them.

Measured: the ``mde`` and ``mde+int8`` rows of ``benchmarks/results/compress_quality_*.md``.
"""

from __future__ import annotations

import copy
import time

import torch

from ondevice.embedding import EmbeddingLayer, MixedDimEmbedding, field_offsets
from ondevice.embedding.quantized import check_table_dtype
from ondevice.search.base import (
    RetrainingSearcher,
    SearchContext,
    SearchResult,
    make_config,
    register_searcher,
)
from ondevice.search.embedding.quantize import quantize_layer
from ondevice.search.retrain import RETRAIN_EPOCHS, val_metrics

__all__ = ["MDESearcher", "mde_dims", "svd_mixed_dim"]


def mde_dims(vocab_sizes: list[int], dim: int, lam: float, alpha: float) -> list[int]:
    """Eq. (10): ``d_f = round(λ · n_f^{−α})`` clipped to ``[1, dim]``."""
    return [int(min(dim, max(1, round(lam * n ** (-alpha))))) for n in vocab_sizes]


@torch.no_grad()
def svd_mixed_dim(layer: EmbeddingLayer, dims: list[int]) -> MixedDimEmbedding:
    """A ``MixedDimEmbedding`` whose field ``f`` is the rank-``d_f`` SVD fit of ``layer``'s table."""
    new = MixedDimEmbedding(layer.vocab_sizes, layer.dim, dims=dims)
    dense = layer.dense_weight()
    starts = field_offsets(layer.vocab_sizes)
    for g, (d, fs) in enumerate(new._groups):
        tables, projs = [], []
        for f in fs:
            w = dense[starts[f]:starts[f] + layer.vocab_sizes[f]]  # [n_f, D]
            if d == layer.dim:
                tables.append(w)
                continue
            u, s, vt = torch.linalg.svd(w, full_matrices=False)
            k = min(d, s.numel())
            t = torch.zeros(w.shape[0], d)
            t[:, :k] = u[:, :k] * s[:k]
            p = torch.zeros(d, layer.dim)
            p[:k] = vt[:k]
            tables.append(t)
            projs.append(p)
        new.tables[g].set_dense(torch.cat(tables, dim=0))
        if d < layer.dim:
            new.projections[g].copy_(torch.stack(projs))
    return new


@register_searcher
class MDESearcher(RetrainingSearcher):
    """Mixed-dimension embeddings with ``d_f ∝ n_f^{−α}`` fitted to the byte target.

    Parameters
    ----------
    alpha : temperature α (0 = uniform dims; dlrm default 0.3).
    dtype : table storage after retraining (``mde+int8``...).
    epochs, lr, batch_size, seed, patience : retraining.
    first_order : the first-order table: ``auto`` | ``keep`` | ``fp16`` | ``drop``
        (:mod:`ondevice.search.fixed_parts`).
    """

    name = "mde"
    supports_dtype = True

    def __init__(self, *, alpha: float = 0.3, dtype: str = "float32", epochs: int = RETRAIN_EPOCHS, lr: float = 1e-3,
                 batch_size: int = 1024, seed: int = 0, patience: int = 2, first_order: str = "auto") -> None:
        self.alpha = alpha
        self.dtype = dtype
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.seed = seed
        self.patience = patience
        self.first_order = first_order

    def _search(self, ctx: SearchContext) -> SearchResult:
        check_table_dtype(self.dtype, owner="mde")
        full, acc, budget = ctx.model, ctx.accountant, ctx.budget_bytes
        vocab, D = list(full.embedding.vocab_sizes), full.embedding.dim
        target = acc.embedding_target(full, budget)

        def cost(lam: float) -> int:
            return MixedDimEmbedding.expected_bytes(vocab, D, mde_dims(vocab, D, lam, self.alpha), self.dtype)

        smallest = MixedDimEmbedding.expected_bytes(vocab, D, [1] * len(vocab), self.dtype)
        if smallest > target:
            raise acc.too_small(self.method_name(), budget, acc.fixed_bytes(full) + smallest, full, smallest)
        t0 = time.perf_counter()
        lo, hi = 0.0, float(D) * max(vocab) ** self.alpha + 1.0  # cost(lo) = all dims 1 fits; hi: all dims D
        trace = []
        for _ in range(60):
            mid = (lo + hi) / 2
            c = cost(mid)
            trace.append({"lambda": mid, "bytes": c, "fits": c <= target})
            lo, hi = (mid, hi) if c <= target else (lo, mid)
        dims = mde_dims(vocab, D, lo, self.alpha)
        model = copy.deepcopy(full)
        model.embedding = svd_mixed_dim(full.embedding, dims)
        search_s = time.perf_counter() - t0
        fit = self._retrain(ctx, model)
        model.embedding = quantize_layer(model.embedding, self.dtype)
        val = val_metrics(model, ctx.data) if self.dtype != "float32" else fit.val
        model.eval()
        config = make_config("MDEConfig", {"dims": dims, "lambda": lo, "alpha": self.alpha, "dtype": self.dtype})
        return SearchResult(model=model, config=config, val=val, metric="auc",
                            trace=[{"embedding_target": target, "embedding_bytes": cost(lo), "bisection": trace[-8:]},
                                   {"retrain": fit.history}],
                            timings={"search_s": search_s, "retrain_s": fit.seconds})
