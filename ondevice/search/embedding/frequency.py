"""Frequency filtering: keep the most frequent ids' rows, every other id reads its field's OOV row.

The classic min-count filter of CTR pipelines (FuxiCTR's ``min_categr_count``; the standard
Criteo practice of mapping values seen fewer than ``t`` times to one OOV id, e.g. Guo et al.,
"DeepFM", IJCAI 2017, §3) turned into a byte budget: instead of a fixed count ``t``, ids are kept
in order of training occurrences per byte until the budget is met.

Each id's occurrences ``n_i`` are counted on the **train split only**. Its cost is::

    c_i = row(D, dtype) + row_linear + key_i

``row``: the embedding row (``4D`` fp32, ``2D`` fp16, ``D + 2`` int8), ``row_linear``: the
first-order row in its planned form (4 / 2 / 0 B), ``key_i``: the bytes of the id's keys in a
raw artefact's vocabulary (``ByteAccountant.vocabulary``, :func:`ondevice.vocabulary.key_bytes`;
0 for id artefacts). Ids with ``n_i >= min_count`` are ranked by ``n_i / c_i`` and the longest
prefix whose whole model fits is kept (the model's exact bytes, vocabulary included, found by
bisection from the additive estimate). Both tables (``embedding`` and ``linear``) keep the same
ids as a :class:`~ondevice.embedding.row_pruned.RowPrunedEmbedding` (``pruned_to="oov"``): a raw
artefact leaves the dropped ids' keys out (:func:`ondevice.vocabulary.dropped_ids`) and stores
the kept rows only, its tables emitting the re-indexed ids (``ByteAccountant.as_shipped``); an
id artefact keeps one int32 remap (4 B per original id whatever is kept), the app sending
prepare's ids. Each field keeps its OOV row; a field may keep only it.

Warm start: kept rows are copied from the full model; each field's new OOV row is the
occurrence-weighted mean of the rows it now stands for (the old OOV row, weighted by the train
occurrences of id 0, and every dropped row): the single vector closest in squared error, over
the training occurrences, to the rows those ids had (:func:`oov_warm_start`). Then the model
is retrained (``search.retrain``), selection on validation.

Deviations: the count threshold is replaced by the byte budget (ties by field, then id); the
embedding dimension stays the full one (``uniform`` is the smaller-dimension baseline;
``frequency+int8`` / ``+fp16`` quantize the kept rows after the retrain).

Measured: ``benchmarks/results/vocabulary_budget.md``.
"""

from __future__ import annotations

import copy
import time
from typing import ClassVar

import numpy as np
import torch

from ondevice.data import EncodedDataset
from ondevice.embedding import EmbeddingLayer, RowPrunedEmbedding, field_offsets, table_bytes
from ondevice.embedding.quantized import check_table_dtype
from ondevice.models import CTRModel
from ondevice.search.base import (
    RetrainingSearcher,
    SearchContext,
    SearchResult,
    make_config,
    register_searcher,
)
from ondevice.search.embedding.quantize import quantize_layer
from ondevice.search.retrain import RETRAIN_EPOCHS, val_metrics

__all__ = ["FrequencySearcher", "id_costs", "oov_warm_start", "rank_ids", "train_counts"]

#: Rows of the train split counted at a time (memory stays flat on large splits).
COUNT_CHUNK_ROWS = 1_000_000
#: First-order row bytes per planned form (``search.fixed_parts``).
LINEAR_ROW_BYTES = {"keep": 4, "fp16": 2, "drop": 0}


def train_counts(data: EncodedDataset, vocab_sizes: list[int]) -> np.ndarray:
    """int64 ``[Σ vocab]``: occurrences of each (field, id) in the train split, fields concatenated."""
    ids = data.split("train").ids  # [N, F]
    counts = [np.zeros(v, dtype=np.int64) for v in vocab_sizes]
    for start in range(0, len(ids), COUNT_CHUNK_ROWS):
        chunk = np.asarray(ids[start:start + COUNT_CHUNK_ROWS], dtype=np.int64)
        for j, v in enumerate(vocab_sizes):
            col = chunk[:, j]
            counts[j] += np.bincount(col[(col >= 0) & (col < v)], minlength=v)
    return np.concatenate(counts)


def id_costs(vocab_sizes: list[int], dim: int, dtype: str, linear_row_bytes: int,
             key_bytes: tuple[np.ndarray, ...] | None) -> np.ndarray:
    """float64 ``[Σ vocab]``: bytes each kept id adds (embedding row + first-order row + its keys)."""
    cost = np.full(sum(vocab_sizes), float(table_bytes(1, dim, dtype) + linear_row_bytes))
    if key_bytes is not None:
        cost += np.concatenate(key_bytes)
    return cost


def rank_ids(counts: np.ndarray, costs: np.ndarray, vocab_sizes: list[int], min_count: int = 1) -> np.ndarray:
    """Global rows of the ids that may be kept (not OOV, ``count >= min_count``), best first:
    occurrences per byte descending, ties by row (field, then id)."""
    eligible = counts >= max(1, min_count)
    eligible[field_offsets(vocab_sizes)] = False  # each field's OOV row is always kept
    rows = np.flatnonzero(eligible)
    density = counts[rows] / costs[rows]
    return rows[np.lexsort((rows, -density))]


@torch.no_grad()
def oov_warm_start(weight: torch.Tensor, keep: torch.Tensor, counts: np.ndarray,
                   vocab_sizes: list[int]) -> torch.Tensor:
    """Per field, the new OOV row ``[F, D]``: Σ n_i w_i / Σ n_i over the old OOV row and every
    dropped row (``n_i`` train occurrences); the old OOV row where they never occur."""
    n = torch.as_tensor(counts, dtype=weight.dtype)
    out = []
    for s, v in zip(field_offsets(vocab_sizes), vocab_sizes, strict=True):
        stands_for = ~keep[s:s + v].clone()
        stands_for[0] = True  # the old OOV row itself
        w = n[s:s + v] * stands_for
        total = float(w.sum())
        out.append(weight[s] if total == 0 else (w.unsqueeze(1) * weight[s:s + v]).sum(0) / total)
    return torch.stack(out)


def _pruned_layer(layer: EmbeddingLayer, weight: torch.Tensor, keep: torch.Tensor,
                  counts: np.ndarray) -> RowPrunedEmbedding:
    """``layer``'s kept rows (fp32, trainable; ``weight`` its dense table) with the warm-started OOV rows."""
    new = RowPrunedEmbedding.from_dense(layer, keep, pruned_to="oov", weight=weight)
    oov = oov_warm_start(weight, keep, counts, list(layer.vocab_sizes))
    with torch.no_grad():
        new.table.weight[field_offsets(new.kept_rows)] = oov
    return new


def _build(full: CTRModel, weights: dict[str, torch.Tensor], keep: torch.Tensor, counts: np.ndarray, *,
           view: bool = False) -> CTRModel:
    """``full`` with both tables pruned to the kept ids (same ids: one stored remap); ``weights``:
    the full tables' dense weights by name. ``view``: a shallow copy for byte counts only."""
    tables = {name: _pruned_layer(getattr(full, name), w, keep, counts) for name, w in weights.items()}
    if view:
        model = copy.copy(full)
        model._modules = {**full._modules, **tables}
        return model
    model = copy.deepcopy(full, memo={id(getattr(full, name)): None for name in weights})  # the tables: not copied
    for name, table in tables.items():
        setattr(model, name, table)
    return model


def _deployed_view(model: CTRModel, dtype: str) -> CTRModel:
    """``model`` with its embedding stored as ``dtype`` (a shallow view for byte counts)."""
    if dtype == "float32":
        return model
    view = copy.copy(model)
    view._modules = {**model._modules, "embedding": quantize_layer(model.embedding, dtype)}
    return view


@register_searcher
class FrequencySearcher(RetrainingSearcher):
    """Keep the ids with the most train occurrences per byte; the rest read the OOV row (module docstring)."""

    name = "frequency"
    supports_dtype = True
    prunes_vocabulary: ClassVar[bool] = True

    def __init__(self, *, dtype: str = "float32", min_count: int = 1, epochs: int = RETRAIN_EPOCHS, lr: float = 1e-3,
                 batch_size: int = 1024, seed: int = 0, patience: int = 2, first_order: str = "auto") -> None:
        self.dtype = dtype
        self.min_count = min_count
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.seed = seed
        self.patience = patience
        self.first_order = first_order

    def _keep(self, ranked: np.ndarray, n: int, total: int) -> torch.Tensor:
        keep = torch.zeros(total, dtype=torch.bool)
        keep[torch.as_tensor(ranked[:n], dtype=torch.int64)] = True
        return keep

    def _largest_fit(self, ctx: SearchContext, weights: dict[str, torch.Tensor], ranked: np.ndarray,
                     costs: np.ndarray, counts: np.ndarray, base: int, row_bytes: int) -> tuple[int, int, int]:
        """(ids kept, exact bytes, models measured): the longest prefix of ``ranked`` whose model
        fits, by bisection around the additive estimate (bytes grow with every id kept)."""
        full, acc, budget = ctx.model, ctx.accountant, ctx.budget_bytes
        total = sum(full.embedding.vocab_sizes)
        sizes: dict[int, int] = {0: base}

        def fits(n: int) -> bool:
            if n not in sizes:
                model = _build(full, weights, self._keep(ranked, n, total), counts, view=True)
                sizes[n] = acc.planned_file_bytes(_deployed_view(model, self.dtype))
            return sizes[n] <= budget

        n0 = int(np.searchsorted(np.cumsum(costs[ranked]), budget - base, side="right"))
        if fits(n0):  # each further id adds at least its rows (exact): a bound on the prefix that fits
            lo, hi = n0, min(len(ranked) + 1, n0 + (budget - sizes[n0]) // max(row_bytes, 1) + 1)
        else:
            lo, hi = 0, n0
        while hi - lo > 1:  # invariant: lo fits, hi does not (or is past the end)
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return lo, sizes[lo], len(sizes)

    def _search(self, ctx: SearchContext) -> SearchResult:
        check_table_dtype(self.dtype, owner="frequency")
        full, acc, budget = ctx.model, ctx.accountant, ctx.budget_bytes
        vocab, D = list(full.embedding.vocab_sizes), full.embedding.dim
        t0 = time.perf_counter()
        counts = train_counts(ctx.data, vocab)
        weights = {name: getattr(full, name).dense_weight() for name in ("embedding", "linear")
                   if getattr(full, name, None) is not None}
        none_kept = torch.zeros(sum(vocab), dtype=torch.bool)
        smallest = _deployed_view(_build(full, weights, none_kept, counts, view=True), self.dtype)
        base = acc.planned_file_bytes(smallest)  # every field keeps only its OOV row
        if base > budget:
            raise acc.too_small(self.method_name(), budget, base, smallest)
        linear_row = LINEAR_ROW_BYTES[acc.first_order] if full.linear is not None else 0
        costs = id_costs(vocab, D, self.dtype, linear_row, acc.vocabulary.per_id if acc.vocabulary else None)
        ranked = rank_ids(counts, costs, vocab, self.min_count)
        n, est, measured = self._largest_fit(ctx, weights, ranked, costs, counts, base,
                                             table_bytes(1, D, self.dtype) + linear_row)
        keep = self._keep(ranked, n, sum(vocab))
        model = _build(full, weights, keep, counts)
        kept_rows = list(model.embedding.kept_rows)
        search_s = time.perf_counter() - t0
        fit = self._retrain(ctx, model)
        model.embedding = quantize_layer(model.embedding, self.dtype)
        val = val_metrics(model, ctx.data) if self.dtype != "float32" else fit.val
        model.eval()
        trace = [{"budget_bytes": budget, "only_oov_rows_bytes": base, "ids_seen_in_train": int((counts > 0).sum()),
                  "eligible_ids": len(ranked), "kept_ids": n, "kept_rows": kept_rows, "bytes_estimate": est,
                  "models_measured": measured, "vocabulary_bytes": acc.vocabulary_bytes(model),
                  "kept_train_occurrences": float(counts[ranked[:n]].sum() / max(1, counts.sum()))},
                 {"retrain": fit.history}]
        config = make_config("FrequencyConfig", {"kept_ids": n, "kept_rows": kept_rows, "min_count": self.min_count,
                                                 "order": "train occurrences per byte", "dtype": self.dtype})
        return SearchResult(model=model, config=config, val=val, metric="auc", trace=trace,
                            timings={"search_s": search_s, "retrain_s": fit.seconds})

