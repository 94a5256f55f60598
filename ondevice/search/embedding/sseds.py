"""SSEDS — Single-Shot Embedding Dimension Search (Qu et al., "Single-shot Embedding
Dimension Search in Recommender System", SIGIR'22). No public code from the authors;
procedure from the paper's abstract, the survey §5.3 and methods.md §2.

Method
------
1. Start from the **pretrained** model (uniform dim ``D``).
2. Salience. Put an indicator ``α ∈ R^{F×D}`` on the field embeddings, ``e'_f = e_f ⊙ α_f``,
   at ``α = 1`` and take the SNIP-style connection sensitivity (paper Eq. 7-8)::

       s_{f,j} = |∂L/∂α_{f,j}| / Σ_{f',j'} |∂L/∂α_{f',j'}|,
       ∂L/∂α_{f,j} = Σ_batch (∂L/∂e_{f,j})·e_{f,j}

   with the field-level indicator of the paper (not the per-row Σ|g·w| variant). The
   salience is ``Σ_b |∂L_b/∂α|`` over ``salience_batches`` training batches ``b`` (each
   batch's absolute gradient, summed); ``salience_batches=1`` is the literal single shot.
   Choice: the absolute value of the gradient *accumulated* over many batches, |Σ_b ∂L_b/∂α|,
   tends to 0 at a converged model precisely for the dimensions it fits best (measured on
   the planted test data: the informative field 0 ranked last); per-batch magnitudes keep
   the sensitivity signal.
3. Global ranking across fields; **greedy drop in ascending salience** until the layer's
   exact bytes fit the embedding byte target::

       Σ_g table_bytes(Σ_{f∈g} n_f, d_g) + Σ_{f: 0<d_f<D} 4·d_f·D + index buffers

   (:meth:`MixedDimEmbedding.expected_bytes`, the tables' dtype included, so ``sseds+int8``
   counts int8 rows). A dimension whose drop would leave its field empty is skipped
   (``min_dims=1``, the default: every field keeps ≥ 1 dim); ``min_dims=0`` lets fields drop
   entirely (they then yield the zero vector).
4. Build a :class:`MixedDimEmbedding` that **inherits the kept columns** of the pretrained
   table (the cheap variant methods.md lists; the paper's "standard way" suggests fresh
   initialisation) with projections ``W_f`` initialised to select those columns (rows of
   the identity), so the slim model starts exactly at the pretrained model with the dropped
   columns zeroed; then retrain it (all weights, projections included).
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
import torch.nn.functional as F

from ondevice.embedding import MixedDimEmbedding
from ondevice.embedding.quantized import check_table_dtype
from ondevice.search.base import (
    RetrainingSearcher,
    SearchContext,
    SearchResult,
    make_config,
    register_searcher,
)
from ondevice.search.embedding.quantize import quantize_layer
from ondevice.search.retrain import iter_batches, val_metrics

__all__ = ["SSEDSSearcher", "field_dim_salience", "greedy_dims"]


def field_dim_salience(model, data, *, batches: int, batch_size: int, seed: int) -> torch.Tensor:
    """Normalised ``Σ_b |∂L_b/∂α|`` ``[F, D]`` at ``α = 1`` over ``batches`` training batches (Eq. 7-8)."""
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


def greedy_dims(salience: torch.Tensor, vocab_sizes: list[int], dim: int, target: int, *,
                dtype: str = "float32", min_dims: int = 1) -> tuple[list[list[int]], list[dict[str, Any]]]:
    """Drop (field, dim) pairs in ascending salience until the bytes fit ``target``.

    Returns the kept columns per field and the drop trace. If even the smallest layout does
    not fit, the kept columns of that smallest layout are returned (the caller checks bytes).
    """
    F_, D = salience.shape
    keep = [set(range(D)) for _ in range(F_)]
    order = torch.argsort(salience.flatten(), stable=True).tolist()

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
    return [sorted(k) for k in keep], trace


@register_searcher
class SSEDSSearcher(RetrainingSearcher):
    """Single-shot field×dim salience, byte-greedy cut, mixed-dim retrain (module docstring).

    Parameters
    ----------
    salience_batches : training batches whose gradients are summed for the salience.
    min_dims : dims every field keeps (1 default; 0 lets fields drop entirely).
    dtype : table storage after retraining (``float32``; ``int8``/``float16`` = ``sseds+int8``...).
    epochs, lr, batch_size, seed, patience : retraining.
    first_order : the first-order table: ``auto`` | ``keep`` | ``fp16`` | ``drop`` (``search.base``).
    """

    name = "sseds"
    supports_dtype = True

    def __init__(self, *, salience_batches: int = 8, min_dims: int = 1, dtype: str = "float32", epochs: int = 5,
                 lr: float = 1e-3, batch_size: int = 1024, seed: int = 0, patience: int = 2,
                 first_order: str = "auto") -> None:
        self.salience_batches = salience_batches
        self.min_dims = min_dims
        self.dtype = dtype
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.seed = seed
        self.patience = patience
        self.first_order = first_order

    def _search(self, ctx: SearchContext) -> SearchResult:
        check_table_dtype(self.dtype, owner="sseds")
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
        keep, drops = greedy_dims(sal, vocab, D, target, dtype=self.dtype, min_dims=self.min_dims)
        model.zero_grad(set_to_none=True)
        model.embedding = MixedDimEmbedding.from_dense(full.embedding, keep=keep)
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
