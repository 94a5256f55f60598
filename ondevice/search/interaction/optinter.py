"""OptInter — per field pair, memorize, factorize or be naive (Lyu et al., "Memorize, Factorize,
or be Naive: Learning Optimal Feature Interaction Methods for CTR Prediction", ICDE'22; survey §8;
methods.md §6; reference code ``fuyuanlyu/OptInter``, ``learn/model/model_search.py::DNN_cart_search``).

Method
------
Search. A supernet holds, for every field pair ``p = (i, j)``, the three candidates of
:mod:`ondevice.models.optinter`: the memorized vector ``c_p`` (a row of the pair's cross table),
the factorized vector ``e_i ⊙ e_j`` and the naive zero vector, mixed by the annealed softmax
(the paper's code; no Gumbel noise)::

    o_p = w_p,mem · c_p + w_p,fact · (e_i ⊙ e_j) + w_p,none · 0,   w_p = softmax(α_p / t)
    logit = w0 + Σ_f w_f + MLP([e_1..e_F, o_1..o_P]),   α ∈ R^{P×3}

α starts at 0 (uniform weights; the paper draws it Xavier-normal, std ≈ 0.3 here: on small
data α moves less than that in a few hundred steps, so the argmax was the initial noise —
measured on planted data, where zero init puts the planted pairs on top).

One-level joint update: every training batch steps all weights (Adam; lazy Adam on the tables)
and α (its own Adam, lr ``alpha_lr``; paper 1e-3) on the same loss.

Temperature: the paper anneals ``t = max(0.01, 1 − 5e-5·step)``, reaching the floor after
19 800 steps. A small dataset has a few hundred steps, so ``temperature_decay="auto"`` rescales
the slope to the run: ``t = max(0.01, 1 − 0.99·step / T)`` with ``T`` the search steps (the
floor is reached at the last step; for ``T = 19 800`` this is the paper's 5e-5).
``temperature_decay`` may also be a number (the paper: ``5e-5``).

Choice under the byte budget. Each pair takes ``argmax α_p``; if the exact deployable bytes
(:meth:`ByteAccountant.file_bytes_estimate` of the built model, the first-order table in its
planned form) exceed the budget, pairs are downgraded one step at a time, smallest α margin
first: memorized → the better (by α) of factorized / none, factorized → none; the margin is
``α_current − α_target``. Bytes fall at every step (a memorized pair costs
``(buckets + 1) × dim × 4`` B of cross table, every non-none pair ``dim × hidden × 4`` B of
first MLP layer), so the shortest prefix of this fixed order that fits is found by bisection
with exact builds. If even all-none does not fit, ``BudgetTooSmallError`` is raised before any
training.

Buckets per memorized pair: ``min((v_i − 1)(v_j − 1), cap)`` — the exact cross when it is small
(every value pair its own row), else hashed (:func:`~ondevice.models.optinter.cross_ids`). The
cap (``max_buckets="auto"``) follows the paper's minimum count of 20 for a cross value:
``cap = max(16, train_rows // 20)``, the most crosses that can be seen 20 times. The search's
cross tables use the same buckets, so the searched candidate is the deployed one; the budget
decides how many memorized pairs fit, not their size.

Retrain (``argmax`` architecture, paper: from scratch). Here the field embeddings, the
first-order table and the bias start from the pretrained checkpoint; the MLP and the cross
tables start fresh (seeded); all trained with the shared loop (best validation epoch kept).

Base models: any CTR model with an ``embedding`` and an ``mlp`` (:class:`~ondevice.models.MLP`):
DeepFM, DeepFwFM, Wide&Deep, DCN and OptInter itself; the MLP's hidden sizes, dropout and
BatchNorm are kept. The supernet starts from the pretrained field/first-order tables and bias
with a fresh MLP (a pretrained MLP already models the interactions from the field inputs, which
hid the pair signal from α on planted data).
"""

from __future__ import annotations

import copy
import heapq
import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ondevice.embedding import DenseEmbedding, EmbeddingLayer
from ondevice.embedding.base import map_oov
from ondevice.errors import BadInputError
from ondevice.models import MLP, CTRModel, OptInter
from ondevice.models.fm import all_pairs
from ondevice.models.optinter import FUNCTIONS, cross_ids
from ondevice.search.base import (
    RetrainingSearcher,
    SearchContext,
    SearchResult,
    make_config,
    register_searcher,
)
from ondevice.search.retrain import fit_ctr
from ondevice.train.optim import make_optimizers

__all__ = ["MIN_CROSS_COUNT", "OptInterSearcher", "OptInterSupernet", "budget_choices", "downgrade_order",
           "pair_buckets", "temperature"]

#: The paper's minimum count for a cross value (its ``Y`` dictionaries); sets the bucket cap.
MIN_CROSS_COUNT = 20
#: The temperature floor of the annealed softmax (paper).
T_MIN = 0.01
_MEM, _FACT, _NONE = range(3)


def temperature(step: int, decay: float) -> float:
    """``t = max(0.01, 1 − decay·step)`` (paper code, ``DNN_cart_search.forward``)."""
    return max(T_MIN, 1.0 - decay * step)


def pair_buckets(vocab_sizes: list[int], pairs: list[list[int]], cap: int) -> list[int]:
    """Rows per pair's cross table (without the OOV row), ≥ 1: ``(v_i − 1)(v_j − 1)`` (exact, a
    bijection) when that is ≤ ``cap``; else the largest ``b ≤ cap`` coprime with the stride
    ``v_j − 1``. Without coprimality ``((a−1)(v_j−1) + (b−1)) mod b`` can ignore field ``i``
    entirely (e.g. ``v_j − 1 = 100,000`` and ``b = 50,000``: every ``a`` lands on one row)."""
    out = []
    for i, j in pairs:
        exact, stride = (vocab_sizes[i] - 1) * (vocab_sizes[j] - 1), max(1, vocab_sizes[j] - 1)
        b = max(1, min(exact, cap))
        if b < exact:
            while b > 1 and math.gcd(b, stride) != 1:
                b -= 1
        out.append(b)
    return out


class OptInterSupernet(CTRModel):
    """All three candidates per pair mixed by ``softmax(α / t)`` (module docstring). ``[B, F] -> [B]``."""

    name = "optinter-supernet"

    def __init__(self, embedding: EmbeddingLayer, linear: EmbeddingLayer | None, mlp: MLP, *,
                 pairs: list[list[int]], buckets: list[int]) -> None:
        super().__init__(embedding, linear)
        vocab = embedding.vocab_sizes
        self.pairs = pairs
        self.cross = DenseEmbedding([b + 1 for b in buckets], embedding.dim)
        idx = torch.tensor(pairs, dtype=torch.int64).reshape(-1, 2)
        self.register_buffer("pair_left", idx[:, 0].clone())
        self.register_buffer("pair_right", idx[:, 1].clone())
        self.register_buffer("pair_stride", torch.tensor([vocab[j] - 1 for _, j in pairs], dtype=torch.int64))
        self.register_buffer("pair_buckets", torch.tensor(buckets, dtype=torch.int64))
        self.mlp = mlp
        self.alpha = nn.Parameter(torch.zeros(len(pairs), len(FUNCTIONS)))  # uniform start (module docstring)
        self.temperature = 1.0

    def weights(self) -> torch.Tensor:
        """``softmax(α / t)`` ``[P, 3]`` (memorized, factorized, none)."""
        return F.softmax(self.alpha / self.temperature, dim=1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        emb = self.embedding(ids)  # [B, F, D]
        rows = cross_ids(map_oov(ids, self.embedding.vocab_size_tensor), self.pair_left, self.pair_right,
                         self.pair_stride, self.pair_buckets)
        memorized = self.cross(rows)  # [B, P, D]
        factorized = emb.index_select(1, self.pair_left) * emb.index_select(1, self.pair_right)  # [B, P, D]
        w = self.weights()
        mixed = w[:, _MEM, None] * memorized + w[:, _FACT, None] * factorized  # none adds w·0
        return self.first_order(ids) + self.mlp(torch.cat([emb.flatten(1), mixed.flatten(1)], dim=1)).squeeze(1)


def downgrade_order(alpha: torch.Tensor, choice: list[int]) -> list[tuple[int, int, int, float]]:
    """The fixed order of one-step downgrades ``(pair, from, to, margin)``, smallest α margin first.

    memorized → the better (by α) of factorized / none; factorized → none.
    """
    a = alpha.tolist()

    def step(p: int, c: int) -> tuple[float, int] | None:
        if c == _MEM:
            to = _FACT if a[p][_FACT] >= a[p][_NONE] else _NONE
        elif c == _FACT:
            to = _NONE
        else:
            return None
        return a[p][c] - a[p][to], to

    heap: list[tuple[float, int, int, int]] = []
    for p, c in enumerate(choice):
        nxt = step(p, c)
        if nxt is not None:
            heapq.heappush(heap, (nxt[0], p, c, nxt[1]))
    out = []
    while heap:
        margin, p, c, to = heapq.heappop(heap)
        out.append((p, c, to, margin))
        nxt = step(p, to)
        if nxt is not None:
            heapq.heappush(heap, (nxt[0], p, to, nxt[1]))
    return out


def budget_choices(alpha: torch.Tensor, fits: Any) -> tuple[list[int], list[tuple[int, int, int, float]]]:
    """``argmax α`` per pair, downgraded along :func:`downgrade_order` until ``fits(choice)``.

    Bisection over the prefix length (bytes fall along the order); the returned choice always
    passed ``fits``. Returns the choice and the applied downgrades; raises
    ``ValueError`` when even the end of the order (all ``none``) does not fit.
    """
    start = alpha.argmax(dim=1).tolist()
    order = downgrade_order(alpha, start)

    def apply(k: int) -> list[int]:
        c = list(start)
        for p, _, to, _ in order[:k]:
            c[p] = to
        return c

    if fits(start):
        return start, []
    if not fits(apply(len(order))):
        raise ValueError("all-none does not fit")
    lo, hi = 0, len(order)  # fits(apply(hi)) is True, fits(apply(lo)) is False
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(apply(mid)):
            hi = mid
        else:
            lo = mid
    return apply(hi), order[:hi]


def check_supernet_memory(buckets: list[int], dim: int, available: int | None = None) -> int:
    """Bytes the supernet's cross tables take while searching (fp32 weights + Adam's two
    moments: 12 B per value); a one-line error when that exceeds half the available memory."""
    need = 12 * dim * sum(b + 1 for b in buckets)
    if available is None:
        import psutil

        available = int(psutil.virtual_memory().available)
    if need > available // 2:
        raise BadInputError(f"the OptInter search would hold {need / 1e9:.1f} GB of cross tables ({len(buckets)} pairs, "
                            f"up to {max(buckets):,} rows each, Adam state included) but {available / 1e9:.1f} GB is "
                            "available; pass a smaller max_buckets")
    return need


def _mlp_settings(full: CTRModel) -> dict[str, Any]:
    mlp = getattr(full, "mlp", None)
    if not isinstance(mlp, MLP):
        raise BadInputError(f"method 'optinter' needs a CTR model with an MLP (deepfm, deepfwfm, widedeep, dcn, optinter); "
                            f"the checkpoint holds {full.name!r}: train with --model deepfm or pick another --method")
    linears = [m for m in mlp if isinstance(m, nn.Linear)]
    dropout = next((m.p for m in mlp if isinstance(m, nn.Dropout)), 0.0)
    return {"mlp_dims": [m.out_features for m in linears[:-1]], "dropout": float(dropout),
            "batch_norm": any(isinstance(m, nn.BatchNorm1d) for m in mlp)}


@register_searcher
class OptInterSearcher(RetrainingSearcher):
    """OptInter: annealed-softmax search over memorize / factorize / none per pair, budgeted argmax, retrain.

    Parameters
    ----------
    search_epochs : epochs of the supernet search.
    alpha_lr : Adam learning rate of α (paper 1e-3).
    temperature_decay : ``"auto"`` (floor at the last search step) or the per-step slope (paper 5e-5).
    max_buckets : cap on a memorized pair's rows: ``"auto"`` (``train_rows // 20``, min 16) or an int.
    epochs, lr, batch_size, seed, patience : Adam (search and retrain), batches, early stopping.
    first_order : the first-order table: ``auto`` | ``keep`` | ``fp16`` | ``drop`` (``search.base``).
    """

    name = "optinter"
    tasks = ("ctr",)

    def __init__(self, *, search_epochs: int = 2, alpha_lr: float = 1e-3,
                 temperature_decay: float | str = "auto",
                 max_buckets: int | str = "auto", epochs: int = 5, lr: float = 1e-3, batch_size: int = 1024,
                 seed: int = 0, patience: int = 2, first_order: str = "auto") -> None:
        self.search_epochs = search_epochs
        self.alpha_lr = alpha_lr
        self.temperature_decay = temperature_decay
        self.max_buckets = max_buckets
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.seed = seed
        self.patience = patience
        self.first_order = first_order

    # ------------------------------------------------------------------ settings
    def _check(self, full: CTRModel) -> None:
        if full.num_fields < 2:
            raise BadInputError(f"method 'optinter' needs at least 2 fields to form a pair; the model has {full.num_fields}")
        if self.search_epochs < 1 or self.epochs < 0 or self.alpha_lr <= 0:
            raise BadInputError(f"optinter needs search_epochs >= 1, epochs >= 0 and alpha_lr > 0; got "
                                f"{self.search_epochs}, {self.epochs}, {self.alpha_lr}")
        if not (self.temperature_decay == "auto" or (isinstance(self.temperature_decay, int | float)
                                                      and self.temperature_decay >= 0)):
            raise BadInputError(f"optinter temperature_decay must be 'auto' or a number >= 0; got {self.temperature_decay!r}")
        if not (self.max_buckets == "auto" or (isinstance(self.max_buckets, int) and self.max_buckets >= 1)):
            raise BadInputError(f"optinter max_buckets must be 'auto' or an int >= 1; got {self.max_buckets!r}")

    def bucket_cap(self, train_rows: int) -> int:
        return max(16, train_rows // MIN_CROSS_COUNT) if self.max_buckets == "auto" else int(self.max_buckets)

    def _build(self, full: CTRModel, pairs: list[list[int]], choice: list[int], buckets: list[int],
               mlp: dict[str, Any]) -> OptInter:
        """The retrain model for ``choice``: pretrained field/first-order tables and bias, fresh MLP and cross."""
        torch.manual_seed(self.seed)
        fns = [FUNCTIONS[c] for c in choice]
        model = OptInter(copy.deepcopy(full.embedding), copy.deepcopy(full.linear), pairs=pairs, functions=fns,
                         buckets=[b if f == "memorized" else 0 for b, f in zip(buckets, fns, strict=True)], **mlp)
        with torch.no_grad():
            model.bias.copy_(full.bias)
        return model

    def _supernet(self, full: CTRModel, pairs: list[list[int]], buckets: list[int], mlp: dict[str, Any]) -> OptInterSupernet:
        """Supernet on the pretrained field/first-order tables and bias; fresh MLP and cross tables."""
        torch.manual_seed(self.seed)
        in_dim = (full.num_fields + len(pairs)) * full.embed_dim
        head = MLP(in_dim, mlp["mlp_dims"], dropout=mlp["dropout"], batch_norm=mlp["batch_norm"])
        net = OptInterSupernet(copy.deepcopy(full.embedding), copy.deepcopy(full.linear), head, pairs=pairs,
                               buckets=buckets)
        with torch.no_grad():
            net.bias.copy_(full.bias)
        return net

    # ------------------------------------------------------------------ search
    def _search(self, ctx: SearchContext) -> SearchResult:
        full, acc, budget = ctx.model, ctx.accountant, ctx.budget_bytes
        self._check(full)
        mlp = _mlp_settings(full)
        names = ctx.data.schema.field_names
        pairs = all_pairs(full.num_fields)
        train_rows = len(ctx.data.split("train"))
        cap = self.bucket_cap(train_rows)
        buckets = pair_buckets(list(full.embedding.vocab_sizes), pairs, cap)
        check_supernet_memory(buckets, full.embed_dim)
        naive = self._build(full, pairs, [_NONE] * len(pairs), buckets, mlp)
        minimum = acc.planned_file_bytes(naive)
        if minimum > budget:  # before any training
            raise acc.too_small(self.method_name(), budget, minimum, naive)

        # --- search: one-level joint update of weights and α, annealed temperature
        t0 = time.perf_counter()
        net = self._supernet(full, pairs, buckets, mlp)
        steps = self.search_epochs * max(1, math.ceil(train_rows / self.batch_size))
        decay = 0.99 / steps if self.temperature_decay == "auto" else float(self.temperature_decay)
        net.alpha.requires_grad_(False)  # make_optimizers leaves frozen parameters out: Adam gets the rest
        opts = make_optimizers(net, lr=self.lr)
        net.alpha.requires_grad_(True)
        alpha_opt = torch.optim.Adam([net.alpha], lr=self.alpha_lr)
        opts.append(alpha_opt)  # one-level: α steps on the training batch's loss (paper)

        def anneal(step: int) -> bool:
            net.temperature = temperature(step, decay)
            return False

        search_fit = fit_ctr(net, ctx.data, epochs=self.search_epochs, batch_size=self.batch_size, seed=self.seed,
                             optimizers=opts, on_step=anneal, select_best=False, evaluate=True)
        alpha = net.alpha.detach().clone()
        probs = net.weights().detach()
        search_s = time.perf_counter() - t0

        # --- choice: argmax α, downgraded (smallest margin first) until the exact bytes fit
        sizes: dict[tuple[int, ...], int] = {}

        def nbytes(choice: list[int]) -> int:
            key = tuple(choice)
            if key not in sizes:
                sizes[key] = acc.planned_file_bytes(self._build(full, pairs, choice, buckets, mlp))
            return sizes[key]

        choice, downgrades = budget_choices(alpha, lambda c: nbytes(c) <= budget)
        model = self._build(full, pairs, choice, buckets, mlp)
        fit = self._retrain(ctx, model)
        model.eval()

        label = [f"{names[i]}×{names[j]}" for i, j in pairs]
        argmax = alpha.argmax(dim=1).tolist()
        kept = [{"pair": p, "fields": [names[p[0]], names[p[1]]], "function": FUNCTIONS[c]}
                for p, c in zip(pairs, choice, strict=True) if c != _NONE]
        trace: list[dict[str, Any]] = [
            {"search_steps": search_fit.steps, "temperature_decay": decay, "final_temperature": net.temperature,
             "bucket_cap": cap, "alpha_lr": self.alpha_lr, "search_history": search_fit.history,
             "pairs": [{"pair": p, "fields": label[k], "alpha": alpha[k].tolist(),
                        "softmax": dict(zip(FUNCTIONS, probs[k].tolist(), strict=True)),
                        "argmax": FUNCTIONS[argmax[k]], "choice": FUNCTIONS[choice[k]], "buckets": buckets[k]}
                       for k, p in enumerate(pairs)]},
            {"kept": kept, "kept_count": len(kept), "candidates": len(pairs), "counts": model.counts(),
             "argmax_counts": {fn: argmax.count(i) for i, fn in enumerate(FUNCTIONS)},
             "downgrades": [{"pair": label[p], "from": FUNCTIONS[a], "to": FUNCTIONS[b], "margin": m}
                            for p, a, b, m in downgrades],
             "bytes": nbytes(choice), "budget_bytes": budget, "minimum_bytes": minimum},
            {"retrain": fit.history},
        ]
        config = make_config("OptInterConfig", {"base": full.name, "pairs": pairs, "functions": model.functions,
                                                "buckets": model.buckets})
        return SearchResult(model=model, config=config, val=fit.val, metric="auc", trace=trace,
                            timings={"search_s": search_s, "retrain_s": fit.seconds})
