"""DeepLight: prune the embeddings, every DNN weight and the field-pair weights while training.

Deng et al., "DeepLight: Deep Lightweight Feature Interactions for Accelerating CTR Predictions
in Ad Serving", WSDM 2021 (survey §5.3); reference code
``WayneDW/DeepLight_Deep-Lightweight-Feature-Interactions`` (``DeepFMs.fit``, methods.md §3).
It prunes a whole DeepFwFM, hence ``pruning/`` and not ``embedding/``. The survey gives no
equation for it; the schedule below is read from the reference code and labelled here.

After ``t`` post-warm-up iterations a part with final sparsity ``S`` is pruned by magnitude to::

    S_t = S · (1 − D^{t/Q})                      (schedule, :func:`target_sparsity`)

every ``prune_every`` iterations and at each epoch's end: the embeddings under one global
threshold over all fields' tables, each hidden ``Linear`` weight under its own (output layer and
biases untouched), and the field-pair weights R (our upper-triangle vector is the symmetrised
``(R + Rᵀ)/2`` the original thresholds). No mask is kept: pruned weights may regrow until the
next prune, as in the original. The byte budget sets the table's final sparsity, DNN and R keep
theirs (:meth:`DeepLightSearcher._plan`).

Deviations from the paper:

* Period ``Q`` from the run length (:func:`period_for`): the paper's ``Q = 100`` iterations
  needs about 1.5 Criteo epochs, hundreds on small data. ``period=100`` restores it.
* No dense warm-up by default: we start from the trained checkpoint (paper: 2 epochs from scratch).
* A final phase at exactly the final targets with fixed masks, then ``finetune_epochs``: the
  exported weights are exactly sparse and fit the budget (the original keeps its last prune).
* Exact quantile thresholds (``torch.kthvalue``) instead of bisection to ±1e-4 sparsity.
* Batch 1024, not 2048 (small data); one Adam with coupled L2, as the published run.
* The first-order table stays dense (as in PEP); the original prunes its FwFM linear vector.
* DNN/R targets escalate (:data:`ESCALATION`) when the budget leaves no room for the table.
* Export: pruned pairs leave the graph, sparse layers are stored as ``SparseLinear`` where smaller,
  dead neurons are removed (``structured``); ``neuron_sparsity`` (off) prunes whole neurons.
  Unstructured sparsity does not speed up ONNX Runtime's dense kernels; removed neurons do.

Measured: ``benchmarks/results/deeplight.md`` (AUC per byte against the full DeepFwFM and PEP,
latency) and ``benchmarks/results/original_protocol.md`` (the original code's Frappe rows).
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import torch

from ondevice.embedding import DenseEmbedding, MaskedEmbedding
from ondevice.errors import BadInputError
from ondevice.models import DeepFwFM
from ondevice.models.sparse_linear import SparseLinear, linear_layers, remove_dead_neurons
from ondevice.search.base import (
    RetrainingSearcher,
    SearchContext,
    SearchResult,
    make_config,
    register_searcher,
)
from ondevice.search.embedding.pep import _magnitude_mask, masked_bytes
from ondevice.search.retrain import fit_ctr

__all__ = ["DeepLightSearcher", "compact_deepfwfm", "magnitude_keep", "period_for", "target_sparsity"]

#: Share of the target reached (REACH) after this share of the pruning iterations (AT).
REACH, AT = 0.95, 0.8
#: Graph bytes one SparseLinear adds over a dense Linear (its ~20 expansion nodes; measured
#: 1.48-1.50 KB on DeepFwFM 64x32 and 400x400x400 after name compaction), on top of the
#: accountant's shared FORMAT_MARGIN_BYTES.
SPARSE_LINEAR_GRAPH_BYTES = 2048
#: DNN/R sparsities tried, in order, when the budget leaves no room for the table.
ESCALATION = (0.95, 0.98, 0.99)


# ---------------------------------------------------------------------- equations
def target_sparsity(t: float, final: float, damping: float, period: float) -> float:
    """(schedule) ``S_t = S·(1 − D^{t/Q})``; 0 for ``t ≤ 0``."""
    if t <= 0:
        return 0.0
    return float(final) * (1.0 - float(damping) ** (float(t) / float(period)))


def period_for(iterations: int, damping: float, *, reach: float = REACH, at: float = AT) -> float:
    """(period) ``Q = at·T·ln D / ln(1 − reach)`` — ``−0.8·T·ln D / ln 20`` for the defaults.

    The paper's D = 0.99, Q = 100 are in *iterations*: 95 % of the target needs
    ``t = Q·ln 0.05 / ln D ≈ 29.8k`` iterations, 1.5 Criteo epochs and hundreds of epochs on small
    data (methods.md §3). We keep D and choose Q so that ``D^{at·T/Q} = 1 − reach`` with ``T`` the
    pruning iterations (``epochs × ⌈rows / batch⌉``): 95 % of the target after 80 % of them
    (D = 0.99, T = 1000 → Q ≈ 2.68; at the last iteration ``S_T = S·(1 − 0.05^{1.25})``). Only
    ``ln D / Q`` matters, so D and Q are not separately identifiable.
    """
    if not 0 < damping < 1:
        raise BadInputError(f"DeepLight damping D must be in (0, 1); got {damping}")
    return at * max(1, int(iterations)) * math.log(damping) / math.log(1.0 - reach)


def magnitude_keep(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Bool mask keeping entries above the ``sparsity`` quantile of ``|w|`` (one threshold over ``w``)."""
    n = w.numel()
    k = int(round(float(sparsity) * n))
    if k <= 0:
        return torch.ones_like(w, dtype=torch.bool)
    if k >= n:
        return torch.zeros_like(w, dtype=torch.bool)
    a = w.detach().abs().flatten()
    threshold = a.kthvalue(k).values
    return (a > threshold).view_as(w)


def _neuron_keep(weight: torch.Tensor, share: float) -> torch.Tensor:
    """Bool ``[out]``: neurons kept when ``share`` of them (smallest incoming L2 norm) are pruned."""
    return magnitude_keep(weight.detach().norm(dim=1), share)


# ---------------------------------------------------------------------- pruning
class _Pruner:
    """The parts DeepLight prunes in one model, and how to prune them to given sparsities."""

    def __init__(self, model: DeepFwFM, neuron_sparsity: float = 0.0) -> None:
        self.model = model
        idx = linear_layers(model.mlp)
        self.hidden = [model.mlp[i] for i in idx[:-1]]  # the output layer is not pruned
        self.nexts = [model.mlp[i] for i in idx[1:]]
        self.neuron_sparsity = float(neuron_sparsity)

    def embedding_weight(self) -> torch.Tensor:
        return self.model.embedding.weight

    @torch.no_grad()
    def masks(self, s_emb: float, s_dnn: float, s_pair: float, neuron_share: float = 0.0) -> dict[str, Any]:
        out: dict[str, Any] = {"embedding": magnitude_keep(self.embedding_weight(), s_emb),
                               "pairs": magnitude_keep(self.model.pair_weight, s_pair), "dnn": [], "next": []}
        for lin in self.hidden:
            w = lin.weight
            if neuron_share > 0:
                alive = _neuron_keep(w, neuron_share)  # [out]
                w = w * alive.unsqueeze(1)
                out["next"].append(alive)
            else:
                out["next"].append(None)
            out["dnn"].append(magnitude_keep(w, s_dnn) & (w != 0) if neuron_share > 0 else magnitude_keep(w, s_dnn))
        return out

    @torch.no_grad()
    def apply(self, masks: dict[str, Any]) -> None:
        self.embedding_weight().mul_(masks["embedding"])
        self.model.pair_weight.mul_(masks["pairs"])
        for lin, nxt, m, alive in zip(self.hidden, self.nexts, masks["dnn"], masks["next"], strict=True):
            lin.weight.mul_(m)
            if alive is not None:
                nxt.weight.mul_(alive.unsqueeze(0))  # a pruned neuron's outgoing column

    @torch.no_grad()
    def sparsity(self) -> dict[str, Any]:
        def s(t: torch.Tensor) -> float:
            return float((t == 0).sum()) / max(1, t.numel())

        dnn = [lin.weight for lin in self.hidden]
        return {"embedding": s(self.embedding_weight()), "pairs": s(self.model.pair_weight),
                "dnn": sum(float((w == 0).sum()) for w in dnn) / max(1, sum(w.numel() for w in dnn)),
                "dnn_per_layer": [s(w) for w in dnn]}


# ---------------------------------------------------------------------- export form
@torch.no_grad()
def compact_deepfwfm(model: DeepFwFM, *, structured: bool = True, embedding_mask: torch.Tensor | None = None) -> DeepFwFM:
    """The exported form of a pruned DeepFwFM (a copy): pairs with ``r = 0`` removed, dead
    neurons removed (``structured``), hidden layers stored as ``SparseLinear`` where smaller,
    the table as a ``MaskedEmbedding`` of its non-zeros (or ``embedding_mask``)."""
    model = copy.deepcopy(model).eval()
    if not isinstance(model.embedding, MaskedEmbedding):
        masked = MaskedEmbedding.from_dense(model.embedding, embedding_mask)
        masked.sparse = False
        model.embedding = masked
    model.drop_pairs(model.pair_weight.detach() != 0)
    if structured and not model.batch_norm and model.sparse_mlp is None:
        model.mlp, model.mlp_dims = remove_dead_neurons(model.mlp)
    if model.sparse_mlp is None:
        specs: list[dict[str, Any] | None] = []
        idx = linear_layers(model.mlp)
        for i in idx:
            lin = model.mlp[i]
            sparse = SparseLinear.from_linear(lin) if i != idx[-1] else None
            dense_bytes = 4 * lin.weight.numel() + 4 * lin.out_features
            if sparse is not None and sparse.storage_bytes() < dense_bytes:
                model.mlp[i] = sparse
                specs.append(sparse.spec())
            else:
                specs.append(None)
        model.sparse_mlp = specs if any(s is not None for s in specs) else None
    return model


def _embedding_target(acc: Any, compact: DeepFwFM, budget: int) -> int:
    """Bytes left for the table once the exported DNN, R, first-order part and graph are paid."""
    n_sparse = sum(isinstance(m, SparseLinear) for m in compact.mlp)
    return acc.embedding_target(compact, budget) - SPARSE_LINEAR_GRAPH_BYTES * n_sparse


# ---------------------------------------------------------------------- searcher
@register_searcher
class DeepLightSearcher(RetrainingSearcher):
    """DeepLight: prune embeddings (global), DNN (per layer) and R while training (module docstring).

    Parameters
    ----------
    dnn_sparsity, pair_sparsity : final sparsity of every hidden DNN weight / of R (paper 0.9).
    embedding_sparsity : floor of the table's final sparsity (paper ≈ 0.4); ``None``: exactly
        what the byte budget needs (possibly 0).
    damping : D of the schedule (paper 0.99).
    period : Q in iterations; ``None`` derives it from the run length (:func:`period_for`),
        100 is the paper's constant.
    prune_every : iterations between prunes (paper 10); also prunes at each epoch end.
    warmup_epochs : dense epochs before pruning (paper 2 from scratch; 0 from a checkpoint).
    epochs : pruning epochs after the warm-up. finetune_epochs : fixed-mask epochs at the end.
    structured : remove dead hidden neurons in the exported model.
    neuron_sparsity : extension (default 0): share of hidden neurons pruned whole.
    lr, weight_decay, batch_size, seed, patience : Adam (paper lr 1e-3, L2 6e-7), batches,
        seeding, early stopping of the fine-tune phase.
    """

    name = "deeplight"

    def __init__(self, *, dnn_sparsity: float = 0.9, pair_sparsity: float = 0.9,
                 embedding_sparsity: float | None = None, damping: float = 0.99, period: float | None = None,
                 prune_every: int = 10, warmup_epochs: int = 0, epochs: int = 4, finetune_epochs: int = 1,
                 structured: bool = True, neuron_sparsity: float = 0.0, lr: float = 1e-3,
                 weight_decay: float = 6e-7, batch_size: int = 1024, seed: int = 0, patience: int = 2) -> None:
        self.dnn_sparsity = dnn_sparsity
        self.pair_sparsity = pair_sparsity
        self.embedding_sparsity = embedding_sparsity
        self.damping = damping
        self.period = period
        self.prune_every = prune_every
        self.warmup_epochs = warmup_epochs
        self.epochs = epochs
        self.finetune_epochs = finetune_epochs
        self.structured = structured
        self.neuron_sparsity = neuron_sparsity
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.seed = seed
        self.patience = patience

    # ------------------------------------------------------------------ checks
    def _check(self, model: Any) -> None:
        if not isinstance(model, DeepFwFM):
            raise BadInputError(f"method 'deeplight' prunes DeepFwFM models (embeddings, DNN and field-pair weights); "
                                f"the checkpoint holds {model.name!r}: train with --model deepfwfm or pick another --method")
        if model.sparse_mlp is not None or not isinstance(model.embedding, DenseEmbedding):
            raise BadInputError("method 'deeplight' starts from a full (uncompressed) DeepFwFM checkpoint")
        for name in ("dnn_sparsity", "pair_sparsity", "neuron_sparsity"):
            if not 0 <= getattr(self, name) < 1:
                raise BadInputError(f"deeplight {name} must be in [0, 1); got {getattr(self, name)}")
        if self.embedding_sparsity is not None and not 0 <= self.embedding_sparsity < 1:
            raise BadInputError(f"deeplight embedding_sparsity must be in [0, 1) or None; got {self.embedding_sparsity}")
        if self.prune_every < 1 or self.epochs < 1:
            raise BadInputError(f"deeplight needs prune_every >= 1 and epochs >= 1; got {self.prune_every}, {self.epochs}")

    # ------------------------------------------------------------------ budget
    def _plan(self, ctx: SearchContext, full: DeepFwFM) -> dict[str, Any]:
        """Final sparsities from the budget. Bytes are the truth.

        DNN and R keep their targets (paper 90 % / 90 %); they are pruned by magnitude on the
        pretrained weights and stored in their exported form (``SparseLinear`` where smaller,
        dropped pairs); ``_embedding_target`` gives the table's byte target, and the largest
        global-magnitude mask whose exact deployable bytes (``pep.masked_bytes``: the cheapest of
        dense / row-pruned / CSR / ELL) fit it gives the table's sparsity. ``embedding_sparsity``
        (paper ≈ 0.4) is a floor. When not even an empty table fits, the DNN and R targets are
        raised along ``ESCALATION`` before the budget is declared too small.
        """
        acc, budget = ctx.accountant, ctx.budget_bytes
        vocab, dim = list(full.embedding.vocab_sizes), full.embedding.dim
        w = full.embedding.dense_weight()
        smallest = masked_bytes(vocab, dim, torch.zeros_like(w, dtype=torch.bool))
        ladder = [(self.dnn_sparsity, self.pair_sparsity)] + [
            (max(s, self.dnn_sparsity), max(s, self.pair_sparsity)) for s in ESCALATION
            if s > min(self.dnn_sparsity, self.pair_sparsity)]
        planned = None
        for s_dnn, s_pair in ladder:
            planned = copy.deepcopy(full)
            pr = _Pruner(planned)
            masks = pr.masks(0.0, s_dnn, s_pair, self.neuron_sparsity)
            pr.apply(masks)
            planned = compact_deepfwfm(planned, structured=False)
            target = _embedding_target(acc, planned, budget)
            if target >= smallest:
                keep = _magnitude_mask(w, vocab, dim, target)
                s_emb = 1.0 - float(keep.sum()) / keep.numel()
                if self.embedding_sparsity is not None:
                    s_emb = max(s_emb, float(self.embedding_sparsity))
                return {"embedding": s_emb, "dnn": s_dnn, "pairs": s_pair, "embedding_target_bytes": target,
                        "escalated": (s_dnn, s_pair) != (self.dnn_sparsity, self.pair_sparsity)}
        assert planned is not None
        raise acc.too_small(self.name, budget, acc.fixed_bytes(planned) + smallest, planned, smallest)

    # ------------------------------------------------------------------ search
    def _search(self, ctx: SearchContext) -> SearchResult:
        full = ctx.model
        self._check(full)
        assert isinstance(full, DeepFwFM)
        plan = self._plan(ctx, full)
        finals = {"embedding": plan["embedding"], "dnn": plan["dnn"], "pairs": plan["pairs"],
                  "neurons": self.neuron_sparsity}
        torch.manual_seed(self.seed)
        model = copy.deepcopy(full)
        dense = DenseEmbedding(full.embedding.vocab_sizes, full.embedding.dim, sparse=False)
        with torch.no_grad():
            dense.weight.copy_(full.embedding.dense_weight())
        model.embedding = dense
        for layer in model.embedding_layers().values():  # dense gradients: one Adam on everything (paper)
            if hasattr(layer, "sparse"):
                layer.sparse = False
        pruner = _Pruner(model, self.neuron_sparsity)
        rows = len(ctx.data.split("train"))
        per_epoch = max(1, math.ceil(rows / self.batch_size))
        warm, total = self.warmup_epochs * per_epoch, self.epochs * per_epoch
        period = float(self.period) if self.period is not None else period_for(total, self.damping)
        trace: list[dict[str, Any]] = [{"plan": plan, "period": period, "damping": self.damping,
                                        "pruning_iterations": total, "warmup_iterations": warm}]

        def prune_to(t: int) -> dict[str, float]:
            s = {part: target_sparsity(t, final, self.damping, period) for part, final in finals.items()}
            pruner.apply(pruner.masks(s["embedding"], s["dnn"], s["pairs"], s["neurons"]))
            return s

        def on_step(step: int) -> bool:
            t = step - warm
            if t > 0 and (t % self.prune_every == 0 or step % per_epoch == 0):
                s = prune_to(t)
                if step % per_epoch == 0 or t % (10 * self.prune_every) == 0:
                    trace.append({"step": step, "t": t, "target": s, "sparsity": pruner.sparsity()})
            return False

        t0 = time.perf_counter()
        opt = torch.optim.Adam(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        fit = fit_ctr(model, ctx.data, epochs=self.warmup_epochs + self.epochs, batch_size=self.batch_size,
                      seed=self.seed, optimizers=[opt], on_step=on_step, select_best=False, evaluate=True)
        prune_s = time.perf_counter() - t0
        trace.append({"prune_phase": fit.history})

        # --- final phase: exact targets, exact bytes, persistent masks, fine-tune.
        masks = pruner.masks(finals["embedding"], finals["dnn"], finals["pairs"], finals["neurons"])
        pruner.apply(masks)
        vocab, dim = list(model.embedding.vocab_sizes), model.embedding.dim
        target = _embedding_target(ctx.accountant, compact_deepfwfm(model, structured=False), ctx.budget_bytes)
        emb_mask = model.embedding.weight.detach() != 0
        if masked_bytes(vocab, dim, emb_mask) > target:
            emb_mask = _magnitude_mask(model.embedding.weight.detach(), vocab, dim, target)
        masked = MaskedEmbedding.from_dense(model.embedding, emb_mask)
        masked.sparse = False
        model.embedding = masked
        pruner = _Pruner(model)
        fixed = {"pairs": model.pair_weight.detach() != 0, "dnn": [lin.weight.detach() != 0 for lin in pruner.hidden],
                 "next": [nxt.weight.detach() != 0 for nxt in pruner.nexts]}

        @torch.no_grad()
        def keep_masks(_step: int) -> bool:
            model.pair_weight.mul_(fixed["pairs"])
            for lin, nxt, m, n in zip(pruner.hidden, pruner.nexts, fixed["dnn"], fixed["next"], strict=True):
                lin.weight.mul_(m)
                if self.neuron_sparsity > 0:
                    nxt.weight.mul_(n)
            return False

        torch.manual_seed(self.seed)
        opt = torch.optim.Adam(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        refit = fit_ctr(model, ctx.data, epochs=self.finetune_epochs, batch_size=self.batch_size, seed=self.seed,
                        patience=self.patience, optimizers=[opt], on_step=keep_masks)
        achieved = _Pruner(model).sparsity()
        achieved["embedding"] = 1.0 - float(model.embedding.mask.sum()) / model.embedding.mask.numel()
        compact = compact_deepfwfm(model, structured=self.structured)
        removed = [a - b for a, b in zip(full.mlp_dims, compact.mlp_dims, strict=True)]
        config = make_config("DeepLightConfig", {
            "targets": finals, "achieved": achieved, "period": period, "damping": self.damping,
            "pruning_iterations": total, "escalated": plan["escalated"],
            "pairs_kept": len(compact.pairs), "pairs_total": len(full.pairs),
            "mlp_dims": compact.mlp_dims, "neurons_removed": removed, "sparse_mlp": compact.sparse_mlp,
            "embedding_nnz": int(compact.embedding.mask.sum()), "embedding_target_bytes": target,
            "embedding_bytes": compact.embedding.storage_bytes()})
        trace.append({"finetune": refit.history, "achieved": achieved})
        return SearchResult(model=compact, config=config, val=refit.val, metric="auc", trace=trace,
                            timings={"prune_s": prune_s, "finetune_s": refit.seconds})
