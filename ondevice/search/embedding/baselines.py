"""The honest baselines: same pipeline, same byte budget, no learned structure.

None of them searches: a smaller uniform dimension, the hashing trick and post-training
quantization are the references every searcher must beat at equal bytes.

* ``uniform`` (:class:`UniformSearcher`) — a smaller model: every field at the largest dimension
  ``d <= D`` whose model fits (the MLP input shrinks with it and is counted), warm-started from
  the full table's global truncated SVD ``W ≈ U_d Σ_d V_dᵀ`` → ``E = U_d Σ_d`` (one rotation
  ``V_d`` for all fields keeps FM inner products ``<e_i, e_j>`` approximately; Eckart–Young gives
  the best rank-``d`` fit), other weights copied where shapes match, then retrained.
* ``hash`` (:class:`HashSearcher`) — the hashing trick (Weinberger et al., "Feature Hashing for
  Large Scale Multitask Learning", ICML 2009): field ``f`` keeps ``min(b, vocab_f)`` rows,
  ``id mod b``; the largest common ``b`` that fits, buckets initialised with the mean of their
  pretrained rows, then retrained.
* ``int8`` / ``fp16`` (:class:`Int8Searcher`, :class:`FP16Searcher`) — post-training
  quantization of the full model's tables (interaction and first-order), no retraining:
  row-wise symmetric int8 with an fp16 scale per row, or fp16 rows
  (:mod:`ondevice.embedding.quantized`). If the quantized model does not fit, a one-line
  ``BudgetTooSmallError`` states its size.

``uniform`` and ``hash`` compose with quantization (``uniform+int8``): the byte target uses the
quantized table's bytes and the retrained table is quantized at the end.

Top-K (BPR-MF): ``uniform``, ``int8`` and ``fp16`` compress the item table, the only table in
the artefact (the user table stays on the server); :meth:`UniformSearcher._search_topk`.

Measured: the ``uniform``, ``hash``, ``int8`` and ``fp16`` rows of
``benchmarks/results/compress_quality_*.md``; top-K also ``benchmarks/results/rule_ml1m.md`` and
``benchmarks/results/rule_cds.md``.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch

from ondevice.embedding import DenseEmbedding, HashedEmbedding, QuantizedEmbedding, table_bytes
from ondevice.embedding.quantized import check_table_dtype
from ondevice.models import BPRMF, CTRModel, model_from_description
from ondevice.search.base import (
    RetrainingSearcher,
    SearchContext,
    Searcher,
    SearchResult,
    make_config,
    register_searcher,
)
from ondevice.search.embedding.quantize import quantize_layer
from ondevice.search.retrain import RETRAIN_EPOCHS, topk_metric_name, val_metrics

__all__ = ["FP16Searcher", "HashSearcher", "Int8Searcher", "UniformSearcher"]


def _load_matching(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Copy every tensor of ``state`` whose name and shape match; returns the names skipped."""
    own = model.state_dict()
    fit = {k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    model.load_state_dict(fit, strict=False)
    return sorted(set(own) - set(fit))


@register_searcher
class UniformSearcher(RetrainingSearcher):
    """Uniform smaller dimension: the largest ``d`` whose whole model fits (module docstring)."""

    name = "uniform"
    supports_dtype = True
    tasks = ("ctr", "topk")

    def __init__(self, *, dtype: str = "float32", epochs: int = RETRAIN_EPOCHS, lr: float = 1e-3, batch_size: int = 1024,
                 seed: int = 0, patience: int = 2, first_order: str = "auto") -> None:
        self.dtype = dtype
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.seed = seed
        self.patience = patience
        self.first_order = first_order

    def _model_at(self, full: CTRModel, d: int) -> CTRModel:
        desc = copy.deepcopy(full.describe())
        desc["embeddings"]["embedding"] = DenseEmbedding(full.embedding.vocab_sizes, d).spec()
        return model_from_description(desc)  # type: ignore[return-value]

    def _search_topk(self, ctx: SearchContext) -> SearchResult:
        """Top-K: the largest ``d`` whose item table fits, warm-started from its SVD, BPR retrain.

        ``Q ≈ U_d Σ_d V_dᵀ``: items ``U_d Σ_d``, users ``P V_d``, so ``⟨p V_d, q'⟩`` is the
        rank-``d`` part of ``⟨p, q⟩``; both tables are retrained with BPR
        (``search.retrain.fit_topk``).
        """
        full: BPRMF = ctx.ckpt.model  # type: ignore[assignment]
        acc, budget = ctx.accountant, ctx.budget_bytes
        n, D = full.num_items, full.embed_dim
        t0 = time.perf_counter()
        target = acc.embedding_target(full, budget, "item_embedding")
        trace, chosen = [], None
        for d in range(D, 0, -1):
            est = table_bytes(n, d, self.dtype) + 16
            trace.append({"dim": d, "item_table_bytes": est, "fits": est <= target})
            if est <= target:
                chosen = d
                break
        if chosen is None:
            smallest = table_bytes(n, 1, self.dtype) + 16
            raise acc.too_small(self.method_name(), budget, smallest + acc.fixed_bytes(full), full, smallest)
        torch.manual_seed(self.seed)
        with torch.no_grad():
            u, s, vt = torch.linalg.svd(full.item_embedding.dense_weight(), full_matrices=False)
            items = DenseEmbedding([n], chosen, init_std=0.1)
            items.weight.copy_(u[:, :chosen] * s[:chosen])
            users = DenseEmbedding([full.num_users], chosen, init_std=0.1)
            users.weight.copy_(full.user_embedding.dense_weight() @ vt[:chosen].t())
        model = BPRMF(users, items)
        search_s = time.perf_counter() - t0
        fit = self._retrain(ctx, model)
        model.item_embedding = quantize_layer(model.item_embedding, self.dtype)
        val = val_metrics(model, ctx.data) if self.dtype != "float32" else fit.val
        model.eval()
        return SearchResult(model=model, config=make_config("UniformConfig", {"dim": chosen, "dtype": self.dtype}),
                            val=val, metric=topk_metric_name(), trace=trace + [{"retrain": fit.history}],
                            timings={"search_s": search_s, "retrain_s": fit.seconds})

    def _search(self, ctx: SearchContext) -> SearchResult:
        check_table_dtype(self.dtype, owner="uniform")
        if ctx.task == "topk":
            return self._search_topk(ctx)
        full, acc, budget = ctx.model, ctx.accountant, ctx.budget_bytes
        vocab, D = full.embedding.vocab_sizes, full.embedding.dim
        t0 = time.perf_counter()
        trace, chosen = [], None
        for d in range(D, 0, -1):
            m = self._model_at(full, d)
            est = acc.fixed_bytes(m) + table_bytes(sum(vocab), d, self.dtype) + 16 * len(vocab)
            trace.append({"dim": d, "bytes_estimate": est, "fits": est <= budget})
            if est <= budget:
                chosen = d
                break
        if chosen is None:
            smallest = table_bytes(sum(vocab), 1, self.dtype) + 16 * len(vocab)
            raise acc.too_small(self.method_name(), budget, trace[-1]["bytes_estimate"], self._model_at(full, 1), smallest)
        model = self._model_at(full, chosen)
        torch.manual_seed(self.seed)
        _load_matching(model, full.state_dict())
        with torch.no_grad():
            w = full.embedding.dense_weight()  # [Σ vocab, D]
            u, s, _vt = torch.linalg.svd(w, full_matrices=False)
            model.embedding.weight.copy_(u[:, :chosen] * s[:chosen])  # best rank-d fit, shared rotation
        search_s = time.perf_counter() - t0
        fit = self._retrain(ctx, model)
        model.embedding = quantize_layer(model.embedding, self.dtype)
        val = val_metrics(model, ctx.data) if self.dtype != "float32" else fit.val
        model.eval()
        return SearchResult(model=model, config=make_config("UniformConfig", {"dim": chosen, "dtype": self.dtype}),
                            val=val, metric="auc", trace=trace + [{"retrain": fit.history}],
                            timings={"search_s": search_s, "retrain_s": fit.seconds})


@register_searcher
class HashSearcher(RetrainingSearcher):
    """Hashing trick to ``min(b, vocab_f)`` rows per field, the largest ``b`` that fits."""

    name = "hash"
    supports_dtype = True

    def __init__(self, *, dtype: str = "float32", epochs: int = RETRAIN_EPOCHS, lr: float = 1e-3, batch_size: int = 1024,
                 seed: int = 0, patience: int = 2, first_order: str = "auto") -> None:
        self.dtype = dtype
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.seed = seed
        self.patience = patience
        self.first_order = first_order

    def _search(self, ctx: SearchContext) -> SearchResult:
        check_table_dtype(self.dtype, owner="hash")
        full, acc, budget = ctx.model, ctx.accountant, ctx.budget_bytes
        vocab, D = list(full.embedding.vocab_sizes), full.embedding.dim
        t0 = time.perf_counter()
        target = acc.embedding_target(full, budget)

        def cost(b: int) -> int:
            return HashedEmbedding.expected_bytes(vocab, D, [min(b, v) for v in vocab], self.dtype)

        if cost(1) > target:
            fixed = acc.fixed_bytes(full)
            raise acc.too_small(self.method_name(), budget, fixed + cost(1), full, cost(1))
        lo, hi = 1, max(vocab)  # invariant: cost(lo) fits
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if cost(mid) <= target else (lo, mid - 1)
        buckets = [min(lo, v) for v in vocab]
        model = copy.deepcopy(full)
        torch.manual_seed(self.seed)
        model.embedding = HashedEmbedding.from_dense(full.embedding, buckets=buckets)
        search_s = time.perf_counter() - t0
        fit = self._retrain(ctx, model)
        model.embedding = quantize_layer(model.embedding, self.dtype)
        val = val_metrics(model, ctx.data) if self.dtype != "float32" else fit.val
        model.eval()
        trace = [{"embedding_target": target, "buckets": lo, "embedding_bytes": cost(lo)}, {"retrain": fit.history}]
        return SearchResult(model=model, config=make_config("HashConfig", {"buckets": buckets, "dtype": self.dtype}),
                            val=val, metric="auc", trace=trace,
                            timings={"search_s": search_s, "retrain_s": fit.seconds})


class _PTQSearcher(Searcher):
    """Quantize every table of the full model (no retraining); top-K: the item table only."""

    dtype_name = "int8"
    tasks = ("ctr", "topk")

    def __init__(self) -> None:
        pass

    def _search(self, ctx: SearchContext) -> SearchResult:
        full, acc, budget = ctx.model, ctx.accountant, ctx.budget_bytes
        t0 = time.perf_counter()
        model = copy.deepcopy(full)
        if isinstance(model, BPRMF):
            model.item_embedding = QuantizedEmbedding.from_dense(full.item_embedding, dtype=self.dtype_name)  # type: ignore[attr-defined]
            est = acc.planned_file_bytes(model)
            if est > budget:
                raise acc.too_small(self.name, budget, est, model, model.item_embedding.storage_bytes())
            model.eval()
            val = val_metrics(model, ctx.data)
            model.eval()
            return SearchResult(model=model, config=make_config("PTQConfig", {"dtype": self.dtype_name, "layers": ["item_embedding"]}),
                                val=val, metric=topk_metric_name(), trace=[{"bytes_estimate": est}],
                                timings={"search_s": time.perf_counter() - t0, "retrain_s": 0.0})
        model.embedding = QuantizedEmbedding.from_dense(full.embedding, dtype=self.dtype_name)
        if model.linear is not None:
            model.linear = QuantizedEmbedding.from_dense(full.linear, dtype=self.dtype_name)
        est = acc.planned_file_bytes(model)  # the MLP in its planned (--mlp) form
        if est > budget:
            raise acc.too_small(self.name, budget, est, model, model.embedding.storage_bytes())
        model.eval()
        val = val_metrics(model, ctx.data)
        model.eval()
        data: dict[str, Any] = {"dtype": self.dtype_name, "layers": ["embedding"] + (["linear"] if model.linear is not None else [])}
        return SearchResult(model=model, config=make_config("PTQConfig", data), val=val, metric="auc",
                            trace=[{"bytes_estimate": est}], timings={"search_s": time.perf_counter() - t0, "retrain_s": 0.0})


@register_searcher
class Int8Searcher(_PTQSearcher):
    """Row-wise int8 post-training quantization of the full model (no retrain)."""

    name = "int8"
    dtype_name = "int8"


@register_searcher
class FP16Searcher(_PTQSearcher):
    """fp16 post-training quantization of the full model's tables (no retrain)."""

    name = "fp16"
    dtype_name = "float16"
