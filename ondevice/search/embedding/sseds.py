"""SSEDS: single-shot salience per field × dimension, a greedy cut to the bytes, a mixed-dim retrain.

Qu et al., "Single-shot Embedding Dimension Search in Recommender System", SIGIR 2022 (survey
§5.3, which numbers no SSEDS equation; methods.md §2 and §9 item 4). No author code is public:
the procedure is read from the paper's abstract, the survey and methods.md.

1. Start from the pretrained model (uniform dim ``D``).
2. Salience (:func:`field_dim_salience`): an indicator ``α ∈ R^{F×D}`` on the field embeddings,
   ``e'_f = e_f ⊙ α_f``, at ``α = 1``, scored by SNIP-style connection sensitivity (the paper's
   Eq. 7-8; the reference has no copy of them and methods.md §2 marks the form unverified)::

       s_{f,j} = |∂L/∂α_{f,j}| / Σ_{f',j'} |∂L/∂α_{f',j'}|,
       ∂L/∂α_{f,j} = Σ_batch (∂L/∂e_{f,j})·e_{f,j}

   with the paper's field-level indicator (not the per-row ``Σ|g·w|`` variant).
3. Rank all ``(f, j)`` globally and drop in ascending salience until the layer's exact bytes fit
   the embedding byte target (:func:`greedy_dims`)::

       Σ_g table_bytes(Σ_{f∈g} n_f, d_g) + Σ_{f: 0<d_f<D} 4·d_f·D + index buffers

   (:meth:`MixedDimEmbedding.expected_bytes`, in the tables' dtype: ``sseds+int8`` counts int8).
4. Align: a :class:`MixedDimEmbedding` projects each slim field to ``D`` by ``W_f ∈ R^{d_f×D}``;
   every weight, the projections included, is retrained.

Deviations from the paper:

* The salience sums per-batch magnitudes over ``salience_batches`` (8) training batches;
  ``salience_batches=1`` is the literal single shot (:func:`field_dim_salience` says why).
* A byte budget, not a parameter count; after the drop, dropped pairs that still fit are re-added,
  most salient first (the last drop may free a whole column of a large field). ``rank="per_byte"``
  (salience per value freed) is an option, not the default (:func:`greedy_dims`).
* ``min_dims=1``: every field keeps ≥ 1 dim (``0`` lets a field drop out, to the zero vector).
* ``start="svd"`` (default, :func:`svd_start`): each slim field starts at its best rank-``d_f`` fit
  of the pretrained table; ``start="columns"`` inherits the kept columns (the cheap variant of
  methods.md). The paper's "standard way" suggests a fresh initialisation.
* ``dtype`` (``sseds+int8``, ``sseds+fp16``): the retrained tables quantized, metric read on them.

Measured: the ``sseds`` rows of ``benchmarks/results/compress_quality_*.md`` (against ``uniform`` at
equal budget); ``rank="per_byte"``: ``compress_quality_frappe-small.md`` at commit 17b1411.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
import torch.nn.functional as F

from ondevice.embedding import MixedDimEmbedding, field_offsets
from ondevice.embedding.quantized import check_table_dtype
from ondevice.errors import BadInputError
from ondevice.search.base import (
    RetrainingSearcher,
    SearchContext,
    SearchResult,
    make_config,
    register_searcher,
)
from ondevice.search.embedding.quantize import quantize_layer
from ondevice.search.retrain import RETRAIN_EPOCHS, iter_batches, val_metrics

__all__ = ["SSEDSSearcher", "field_dim_salience", "greedy_dims", "svd_start"]


def field_dim_salience(model, data, *, batches: int, batch_size: int, seed: int) -> torch.Tensor:
    """Normalised ``Σ_b |∂L_b/∂α|`` ``[F, D]`` at ``α = 1`` over ``batches`` training batches (Eq. 7-8).

    Each batch's absolute gradient is summed; ``batches=1`` is the literal single shot. Choice:
    the absolute value of the gradient *accumulated* over many batches, ``|Σ_b ∂L_b/∂α|``, tends
    to 0 at a converged model precisely for the dimensions it fits best (seen on the planted
    test data: the informative field 0 ranked last); per-batch magnitudes keep the sensitivity
    signal.
    """
    emb = model.embedding
    alpha = torch.ones(emb.num_fields, emb.dim, requires_grad=True)
    handle = emb.register_forward_hook(lambda _m, _i, out: out * alpha)  # [B, F, D] ⊙ [F, D]
    was_training = model.training
    model.eval()  # BN/dropout in inference mode: the salience of the trained model as deployed
    total = torch.zeros(emb.num_fields, emb.dim)
    try:
        for i, (x, y) in enumerate(iter_batches(data, "train", batch_size, seed, epoch=0)):
            if i >= batches:
                break
            alpha.grad = None
            loss = F.binary_cross_entropy_with_logits(model(x), y, reduction="sum")
            loss.backward()
            total += alpha.grad.abs()
    finally:
        handle.remove()
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    return total / total.sum().clamp(min=1e-30)


RANKS = ("per_byte", "salience")


STARTS = ("svd", "columns")


@torch.no_grad()
def svd_start(layer: MixedDimEmbedding, full: Any) -> MixedDimEmbedding:
    """Overwrite a mixed-dim ``layer``'s narrow fields with each field's best rank-``d_f`` fit of ``full``.

    ``start="svd"``, the default, a deviation: salience decides *how many* dimensions field ``f``
    keeps (``d_f``); the slim field then starts at its best rank-``d_f`` fit (Eckart–Young)
    instead of the kept raw columns (``start="columns"``), which lose whatever the dropped
    columns carried. ``uniform`` starts from the same kind of fit (one SVD for all fields).

    Field ``f`` (``n_f × D``, SVD ``U Σ Vᵀ``): table ``U_{:, :d_f} Σ_{:d_f}``, projection
    ``Vᵀ_{:d_f}``; beyond the field's rank the table columns are 0 and the projection rows
    complete ``V`` to an orthonormal basis (so those dimensions still get gradient).
    """
    dense = full.dense_weight()
    starts = field_offsets(full.vocab_sizes)
    for g, (d, fs) in enumerate(layer._groups):
        if d >= layer.dim:
            continue
        tables, projections = [], []
        for f in fs:
            e = dense[starts[f]:starts[f] + full.vocab_sizes[f]]  # [n_f, D]
            u, sv, vh = torch.linalg.svd(e, full_matrices=True)
            k = min(d, sv.numel())
            t = torch.zeros(e.shape[0], d)
            t[:, :k] = u[:, :k] * sv[:k]
            tables.append(t)
            projections.append(vh[:d])
        layer.tables[g].set_dense(torch.cat(tables, dim=0))
        layer.projections[g].copy_(torch.stack(projections))
    return layer


def greedy_dims(salience: torch.Tensor, vocab_sizes: list[int], dim: int, target: int, *,
                dtype: str = "float32", min_dims: int = 1,
                rank: str = "salience") -> tuple[list[list[int]], list[dict[str, Any]]]:
    """Drop (field, dim) pairs in ascending salience until the bytes fit ``target``.

    ``rank="salience"`` (default) is the paper's order. ``rank="per_byte"``: the paper ranks
    dimensions by salience alone under a parameter budget; under a byte budget a dimension of
    field ``f`` costs ``n_f`` values, so ``per_byte`` drops in ascending ``s_{f,j} / n_f``
    (salience per value freed, the fractional-knapsack greedy rule) and small fields keep their
    dimensions almost for free. It is not the default: on Frappe (2 to 4,082 ids per field) it
    starved the 4,082-row item field (one dimension at ¼ of frappe-small's bytes,
    ``benchmarks/results/compress_quality_frappe-small.md`` at commit 17b1411) and scored below
    the paper's order there.

    A dimension whose drop would leave its field with fewer than ``min_dims`` is skipped
    (``min_dims=0`` lets fields drop entirely; they then yield the zero vector). Then the
    dropped pairs are re-added, most salient first, wherever they still fit: the last drop can
    free a whole column of the largest field, far more than was missing.

    Returns the kept columns per field and the drop trace. If even the smallest layout does
    not fit, the kept columns of that smallest layout are returned (the caller checks bytes).
    """
    F_, D = salience.shape
    if rank not in RANKS:
        raise BadInputError(f"SSEDS rank must be one of {', '.join(RANKS)}; got {rank!r}")
    keep = [set(range(D)) for _ in range(F_)]
    score = salience
    if rank == "per_byte":
        score = salience / torch.tensor(vocab_sizes, dtype=salience.dtype).clamp(min=1).unsqueeze(1)
    order = torch.argsort(score.flatten(), stable=True).tolist()

    def cost() -> int:
        return MixedDimEmbedding.expected_bytes(vocab_sizes, dim, [len(k) for k in keep], dtype)

    trace: list[dict[str, Any]] = []
    nbytes = cost()
    for idx in order:
        if nbytes <= target:
            break
        f, j = divmod(idx, D)
        if len(keep[f]) <= min_dims:
            continue
        keep[f].discard(j)
        nbytes = cost()
        trace.append({"drop": [f, j], "salience": float(salience[f, j]), "bytes": nbytes})
    if nbytes <= target:  # fill back: the last drop may free far more than needed (one column of a large field)
        for step in reversed(trace[:-1]):
            f, j = step["drop"]
            keep[f].add(j)
            if cost() <= target:
                trace.append({"restore": [f, j], "salience": step["salience"], "bytes": cost()})
            else:
                keep[f].discard(j)
    return [sorted(k) for k in keep], trace


@register_searcher
class SSEDSSearcher(RetrainingSearcher):
    """Single-shot field×dim salience, byte-greedy cut, mixed-dim retrain (module docstring).

    Parameters
    ----------
    salience_batches : training batches whose gradients are summed for the salience.
    min_dims : dims every field keeps (1 default; 0 lets fields drop entirely).
    rank : ``salience`` (the paper's order, default) or ``per_byte`` (salience per value freed).
    start : ``svd`` (each slim field at its best rank-``d_f`` fit, default; :func:`svd_start`) or
        ``columns``: the :class:`MixedDimEmbedding` inherits the kept columns of the pretrained
        table (the cheap variant methods.md lists; the paper's "standard way" suggests fresh
        initialisation) with projections ``W_f`` initialised to select those columns (rows of
        the identity), so the slim model starts exactly at the pretrained model with the
        dropped columns zeroed.
    dtype : table storage after retraining (``float32``; ``int8``/``float16`` = ``sseds+int8``...).
    epochs, lr, batch_size, seed, patience : retraining (all weights, projections included).
    first_order : the first-order table: ``auto`` | ``keep`` | ``fp16`` | ``drop``
        (:mod:`ondevice.search.fixed_parts`).
    """

    name = "sseds"
    supports_dtype = True

    def __init__(self, *, salience_batches: int = 8, min_dims: int = 1, rank: str = "salience", start: str = "svd",
                 dtype: str = "float32", epochs: int = RETRAIN_EPOCHS,
                 lr: float = 1e-3, batch_size: int = 1024, seed: int = 0, patience: int = 2,
                 first_order: str = "auto") -> None:
        self.salience_batches = salience_batches
        self.min_dims = min_dims
        self.rank = rank
        self.start = start
        self.dtype = dtype
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.seed = seed
        self.patience = patience
        self.first_order = first_order

    def _search(self, ctx: SearchContext) -> SearchResult:
        check_table_dtype(self.dtype, owner="sseds")
        if self.start not in STARTS:
            raise BadInputError(f"SSEDS start must be one of {', '.join(STARTS)}; got {self.start!r}")
        full, acc, budget = ctx.model, ctx.accountant, ctx.budget_bytes
        vocab, D = list(full.embedding.vocab_sizes), full.embedding.dim
        target = acc.embedding_target(full, budget)
        smallest = MixedDimEmbedding.expected_bytes(vocab, D, [self.min_dims] * len(vocab), self.dtype)
        if smallest > target:
            raise acc.too_small(self.method_name(), budget, acc.fixed_bytes(full) + smallest, full, smallest)
        t0 = time.perf_counter()
        model = copy.deepcopy(full)
        torch.manual_seed(self.seed)
        sal = field_dim_salience(model, ctx.data, batches=self.salience_batches, batch_size=self.batch_size,
                                 seed=self.seed)
        keep, drops = greedy_dims(sal, vocab, D, target, dtype=self.dtype, min_dims=self.min_dims,
                                  rank=self.rank)
        model.zero_grad(set_to_none=True)
        model.embedding = MixedDimEmbedding.from_dense(full.embedding, keep=keep)
        if self.start == "svd":
            svd_start(model.embedding, full.embedding)
        search_s = time.perf_counter() - t0
        fit = self._retrain(ctx, model)
        model.embedding = quantize_layer(model.embedding, self.dtype)
        val = val_metrics(model, ctx.data) if self.dtype != "float32" else fit.val
        model.eval()
        dims = [len(k) for k in keep]
        trace = [{"salience": sal.tolist(), "embedding_target": target,
                  "embedding_bytes": MixedDimEmbedding.expected_bytes(vocab, D, dims, self.dtype), "drops": drops},
                 {"retrain": fit.history}]
        return SearchResult(model=model, config=make_config("SSEDSConfig", {"keep": keep, "dims": dims, "dtype": self.dtype}),
                            val=val, metric="auc", trace=trace, timings={"search_s": search_s, "retrain_s": fit.seconds})
