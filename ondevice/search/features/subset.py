"""What AutoField and AdaFS share: the model over a subset of fields, gating, the byte-fitting pick.

A model with dropped fields is an ordinary CTR model of the same class built over the kept
fields only (the seam the lead decided): its tables cover only those fields, its MLP input
shrinks, its input is ``ids [B, F_kept]``. :func:`select_model_fields` builds it and
inherits every weight that survives from the source model: the kept fields' table rows,
the MLP's (and DCN's cross/head) columns of the kept fields' embedding slots, the weights
of pairs between kept fields (DeepFwFM r_ij, AutoFIS gates).

:func:`fit_ranked_fields` keeps the largest top-k of a ranking whose model fits a byte
budget, counted exactly by the :class:`ByteAccountant` on the candidate model.

Signal check (issue 17; ``signal_level``, default 0.1, 0 = off). A learned ranking is deployed
only if the fields it keeps matter more on held-out data than the fields it drops:
:func:`field_ablation_importance` measures each field's importance on the **validation** split
with the full pretrained model (the log-loss a row gains when the field's embedding and
first-order weight are replaced by their batch mean), and :func:`ranking_signal` ranks the
kept-minus-dropped mean importance among every subset of as many fields (permutation test,
one-sided; p ≤ max(level, 1/C(F, k))). AutoField's keep probabilities all ≈ 0.51 on unseen
data keep an arbitrary subset, which such a test rejects ~90 % of the time at level 0.1:
``WeakSignalError`` (exit 2, one line). Nothing dropped (no budget pressure, ``k = F``)
decides nothing and passes. The trace's ``signal_check`` has p, the needed p, Spearman's rho
between the method's scores and the held-out importance, and the importance per field.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from ondevice.embedding import DenseEmbedding, EmbeddingLayer
from ondevice.embedding.base import field_offsets
from ondevice.errors import BadInputError, WeakSignalError
from ondevice.models import CTRModel
from ondevice.search.base import (
    RetrainingSearcher,
    SearchContext,
    SearchResult,
    make_config,
)
from ondevice.search.byte_accountant import ByteAccountant

#: Models whose structure is a function of the field count alone (``select_model_fields``).
SELECTABLE_MODELS = ("fm", "deepfm", "deepfwfm", "widedeep", "dcn")

__all__ = ["SELECTABLE_MODELS", "SIGNAL_LEVEL", "field_ablation_importance", "fit_ranked_fields", "gated_fields",
           "ranking_signal", "search_ranked_fields", "select_model_fields"]


def _select_table(layer: EmbeddingLayer, keep: list[int]) -> DenseEmbedding:
    """A dense table over the kept fields, rows copied from ``layer`` (fp32)."""
    if not isinstance(layer, DenseEmbedding):
        raise BadInputError(f"feature selection starts from a model with dense tables, got {type(layer).__name__}; "
                            "select fields first, then compress the selected run")
    vocab, offsets = list(layer.vocab_sizes), field_offsets(layer.vocab_sizes)
    rows = torch.cat([torch.arange(offsets[f], offsets[f] + vocab[f]) for f in keep])
    out = DenseEmbedding([vocab[f] for f in keep], layer.dim, sparse=layer.sparse, init_std=layer.init_std)
    with torch.no_grad():
        out.weight.copy_(layer.weight.detach()[rows])
    return out


@torch.no_grad()
def select_model_fields(model: CTRModel, keep: Sequence[int]) -> CTRModel:
    """``model``'s class over the fields ``keep`` (in that order), surviving weights inherited.

    A parameter whose size along some dim shrank by ``(F − K)·D`` is a consumer of the
    flattened ``[B, F·D]`` embedding (MLP input layer, DCN cross weights; a trailing block
    of other inputs, DCN's head, is kept after it): the kept fields' columns are copied.
    Pair parameters (``pair_*`` of size P) keep the entries of pairs between kept fields.
    """
    if model.name not in SELECTABLE_MODELS:
        raise BadInputError(f"feature selection supports {', '.join(SELECTABLE_MODELS)} models; {model.name}'s "
                            "structure names fields itself (blocks, per-pair choices): search its fields before it")
    keep = [int(f) for f in keep]
    F_, D = model.num_fields, model.embed_dim
    if not keep or len(set(keep)) != len(keep) or not all(0 <= f < F_ for f in keep):
        raise BadInputError(f"keep must list distinct fields in 0..{F_ - 1}, got {keep}")
    config = copy.deepcopy(model.config())
    if config.get("sparse_mlp"):
        raise BadInputError("the model's MLP is already pruned (DeepLight); select fields on the dense model first")
    pos = {f: i for i, f in enumerate(keep)}
    old_pairs = config.get("pairs")
    kept_pairs: list[int] = []
    if old_pairs is not None:
        kept_pairs = [k for k, (i, j) in enumerate(old_pairs) if i in pos and j in pos]
        config["pairs"] = [sorted((pos[old_pairs[k][0]], pos[old_pairs[k][1]])) for k in kept_pairs]
    parts = {"embedding": _select_table(model.embedding, keep)}
    if model.linear is not None:
        parts["linear"] = _select_table(model.linear, keep)
    sub = type(model).from_parts(parts, **config)  # type: ignore[attr-defined]
    cols = (torch.tensor(keep)[:, None] * D + torch.arange(D)).flatten()  # kept slots of concat(e) [K·D]
    full, state = model.state_dict(), sub.state_dict()
    for name, value in state.items():
        if name.startswith(("embedding.", "linear.")) or name in ("pair_left", "pair_right"):
            continue
        old = full[name]
        if old.shape == value.shape:
            value.copy_(old)
            continue
        for d in range(old.dim()):
            n_old, n_new = old.shape[d], value.shape[d]
            if n_old == n_new:
                continue
            if old_pairs is not None and name.startswith("pair_") and n_old == len(old_pairs):
                index = torch.tensor(kept_pairs, dtype=torch.int64)
            elif n_old - n_new == (F_ - len(keep)) * D and n_old >= F_ * D:
                index = torch.cat([cols, torch.arange(F_ * D, n_old)])
            else:
                raise BadInputError(f"cannot map {name} {tuple(old.shape)} -> {tuple(value.shape)} onto the kept fields")
            old = old.index_select(d, index)
        value.copy_(old)
    sub.load_state_dict(state)
    sub.train(model.training)
    return sub


def fit_ranked_fields(model: CTRModel, ranking: Sequence[int], acc: ByteAccountant, budget_bytes: int, *,
                      max_fields: int | None = None) -> tuple[list[int], list[dict[str, Any]]]:
    """The largest top-k of ``ranking`` (best first) whose model fits ``budget_bytes``, k ≤ ``max_fields``.

    A prefix, never a skip: a top-ranked field too large for the budget is not traded for a
    smaller lower-ranked one (on Frappe that kept 9 context fields without the item and
    scored AUC 0.48). Returns the kept fields (in schema order) and the trace; an empty
    list means the top-ranked field alone does not fit.
    """
    keep: list[int] = []
    trace: list[dict[str, Any]] = []
    for f in ranking:
        if max_fields is not None and len(keep) >= max_fields:
            break
        nbytes = acc.planned_file_bytes(select_model_fields(model, sorted([*keep, f])))
        trace.append({"field": int(f), "k": len(keep) + 1, "bytes": nbytes, "fits": nbytes <= budget_bytes})
        if nbytes > budget_bytes:
            break
        keep.append(int(f))
    return sorted(keep), trace


def smallest_single_field(model: CTRModel, acc: ByteAccountant) -> tuple[int, int, CTRModel]:
    """(field, bytes, model) of the cheapest one-field model: the least any selection costs."""
    best: tuple[int, int, CTRModel] | None = None
    for f in range(model.num_fields):
        sub = select_model_fields(model, [f])
        nbytes = acc.planned_file_bytes(sub)
        if best is None or nbytes < best[1]:
            best = (f, nbytes, sub)
    assert best is not None
    return best


@contextlib.contextmanager
def gated_fields(model: CTRModel, weights: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Multiply each field's embedding and first-order weight by ``weights(ids)`` ``[B, F]`` or ``[F]``.

    A forward pre-hook on ``model`` computes the weights once per call from the input ids
    (``weights`` may itself call ``model.embedding``: gating is off while it runs); forward
    hooks on ``model.embedding`` (``[B, F, D]``) and ``model.linear`` (``[B, F, 1]``) apply
    them, whichever of the two the model calls first.
    """
    current: dict[str, torch.Tensor | None] = {"w": None}

    def _pre(_m: Any, args: tuple[Any, ...]) -> None:
        current["w"] = None
        current["w"] = weights(args[0])

    def _gate(_m: Any, _i: Any, out: torch.Tensor) -> torch.Tensor:
        w = current["w"]
        return out if w is None else out * w.unsqueeze(-1)  # [B, F, D|1] * [B|1, F, 1]

    handles = [model.register_forward_pre_hook(_pre), model.embedding.register_forward_hook(_gate)]
    if model.linear is not None:
        handles.append(model.linear.register_forward_hook(_gate))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


#: Level of the ranking's signal check (:func:`ranking_signal`): the kept fields' held-out
#: importance must beat random field subsets of the same size at this one-sided level.
SIGNAL_LEVEL = 0.1
_MAX_SPLITS = 20_000


@torch.no_grad()
def field_ablation_importance(model: CTRModel, ids: Any, labels: Any, *, batch_size: int = 8192) -> dict[str, list[float]]:
    """Held-out importance of every field of a trained model: the log-loss a row gains when field
    ``f``'s embedding and first-order weight are replaced by their mean over the batch (the model
    without that field's information, no retraining). Returns per field the mean gain (nats per
    row), its standard error and ``z``; ``F`` forward passes per batch."""
    import numpy as np
    import torch.nn.functional as F

    model.eval()
    n_fields = model.num_fields
    total = torch.zeros(n_fields, dtype=torch.float64)
    total_sq = torch.zeros(n_fields, dtype=torch.float64)
    rows = 0
    for start in range(0, len(labels), batch_size):
        x = torch.as_tensor(np.array(ids[start:start + batch_size]), dtype=torch.int64)
        y = torch.as_tensor(np.array(labels[start:start + batch_size]), dtype=torch.float32)
        base = F.binary_cross_entropy_with_logits(model(x), y, reduction="none")
        for f in range(n_fields):
            def _mean_field(_m: Any, _i: Any, out: torch.Tensor, f: int = f) -> torch.Tensor:
                out = out.clone()
                out[:, f] = out[:, f].mean(dim=0, keepdim=True)
                return out

            handles = [model.embedding.register_forward_hook(_mean_field)]
            if model.linear is not None:
                handles.append(model.linear.register_forward_hook(_mean_field))
            try:
                delta = (F.binary_cross_entropy_with_logits(model(x), y, reduction="none") - base).double()
            finally:
                for h in handles:
                    h.remove()
            total[f] += delta.sum()
            total_sq[f] += delta.pow(2).sum()
        rows += len(y)
    mean = total / max(rows, 1)
    se = ((total_sq / max(rows, 1) - mean.pow(2)).clamp(min=0) / max(rows - 1, 1)).sqrt()
    z = torch.where(se > 0, mean / se.clamp(min=1e-30), torch.zeros_like(mean))
    return {"delta": mean.tolist(), "se": se.tolist(), "z": z.tolist()}


def ranking_signal(importance: Sequence[float], scores: Sequence[float], keep: Sequence[int], *,
                   level: float = SIGNAL_LEVEL, seed: int = 0) -> dict[str, Any]:
    """The signal check of a field ranking: do the kept fields matter more on held-out data than
    the dropped ones, beyond what a random choice of as many fields gives?

    Statistic: mean held-out importance of the kept fields minus that of the dropped fields;
    p-value: its rank among all ``C(F, k)`` splits (exact when there are at most 20,000, else
    20,000 seeded random splits), one-sided. Passes when ``p ≤ max(level, 1/C(F, k))`` (with so
    few splits that ``level`` is out of reach, the kept set must be the best split). Also
    reports Spearman's rho between the searcher's scores and the held-out importance.
    Nothing dropped: nothing was decided by the ranking, the check passes.
    """
    import itertools
    import math

    import numpy as np
    from scipy.stats import spearmanr

    imp = np.asarray(importance, dtype=np.float64)
    n, k = len(imp), len(keep)
    rho = float(spearmanr(np.asarray(scores, dtype=np.float64), imp).statistic) if n > 2 else None
    rho = None if rho is not None and math.isnan(rho) else rho
    out: dict[str, Any] = {"test": "kept vs dropped held-out importance, permutation over field subsets",
                           "level": level, "spearman_score_vs_heldout": rho, "kept": k, "fields": n}
    if k >= n or k == 0:
        return {**out, "passed": True, "p_value": None, "reason": "no field dropped"}

    def stat(mask: np.ndarray) -> float:
        return float(imp[mask].mean() - imp[~mask].mean())

    mask = np.zeros(n, dtype=bool)
    mask[list(keep)] = True
    observed = stat(mask)
    n_splits = math.comb(n, k)
    if n_splits <= _MAX_SPLITS:
        null = [stat(np.isin(np.arange(n), c)) for c in itertools.combinations(range(n), k)]
    else:
        rng = np.random.default_rng([seed, 23])
        null = []
        for _ in range(_MAX_SPLITS):
            m = np.zeros(n, dtype=bool)
            m[rng.choice(n, size=k, replace=False)] = True
            null.append(stat(m))
        null.append(observed)
    p = float(np.mean(np.asarray(null) >= observed - 1e-12))
    needed = max(level, 1.0 / n_splits)
    return {**out, "passed": p <= needed, "p_value": p, "needed_p": needed, "separation": observed,
            "splits": min(n_splits, _MAX_SPLITS + 1)}


def search_ranked_fields(searcher: RetrainingSearcher, ctx: SearchContext,
                         score_fields: Callable[[CTRModel], tuple[torch.Tensor, list[dict[str, Any]]]], *,
                         score_name: str, config_type: str, max_fields: int | None) -> SearchResult:
    """The part AutoField and AdaFS share: check the smallest model, score the fields on a copy
    of the pretrained model (``score_fields(copy) -> (scores [F], trace)``, higher = keep), keep
    the largest top-k that fits, retrain it on the kept columns, report.

    ``BudgetTooSmallError`` comes before any training when no single field fits, and after the
    search when the top-ranked field alone does not (``first_order=auto`` moves on either way).
    """
    full, acc, budget = ctx.model, ctx.accountant, ctx.budget_bytes
    _, minimum, smallest = smallest_single_field(full, acc)
    if minimum > budget:
        raise acc.too_small(searcher.method_name(), budget, minimum, smallest,
                            smallest_embedding=smallest.embedding.storage_bytes())
    t0 = time.perf_counter()
    torch.manual_seed(searcher.seed)
    scores, search_trace = score_fields(copy.deepcopy(full))
    ranking = [int(f) for f in torch.argsort(-scores, stable=True)]
    keep, fit_trace = fit_ranked_fields(full, ranking, acc, budget, max_fields=max_fields)
    names = ctx.data.schema.field_names
    if not keep:
        top = select_model_fields(full, ranking[:1])
        raise acc.too_small(searcher.method_name(), budget, fit_trace[0]["bytes"], top,
                            what=f"the top-ranked field {names[ranking[0]]!r} alone")
    level = getattr(searcher, "signal_level", SIGNAL_LEVEL)
    signal: dict[str, Any] | None = None
    if level > 0:
        held = ctx.data.split("val")
        importance = field_ablation_importance(copy.deepcopy(full), held.ids, held.labels)
        signal = {**ranking_signal(importance["delta"], scores.tolist(), keep, level=level, seed=searcher.seed),
                  "heldout_importance": {names[f]: importance["delta"][f] for f in range(len(names))},
                  "heldout_z": {names[f]: importance["z"][f] for f in range(len(names))}}
        if not signal["passed"]:
            raise WeakSignalError(
                f"{searcher.method_name()}: the {len(keep)} fields its {score_name.replace('_', ' ')} ranks first do not "
                f"matter more on validation than the {len(names) - len(keep)} it drops (permutation p = "
                f"{signal['p_value']:.2f} > {signal['needed_p']:.2f}): no field-selection signal, not deployed",
                statistic=signal["p_value"], threshold=signal["needed_p"])
    search_s = time.perf_counter() - t0
    model = select_model_fields(full, keep)  # pretrained rows and columns of the kept fields
    sub_data = ctx.data.select_fields(keep)
    fit = searcher._retrain(dataclasses.replace(ctx, data=sub_data), model)
    model.eval()
    kept_names = [names[f] for f in keep]
    trace = [{score_name: {names[f]: float(scores[f]) for f in range(len(names))},
              "ranking": [names[f] for f in ranking], "search": search_trace, "budget_walk": fit_trace,
              "fields_kept": kept_names, "signal_check": signal},
             {"retrain": fit.history}]
    config = make_config(config_type, {"fields_kept": kept_names, "keep": keep,
                                       score_name: [float(scores[f]) for f in keep]})
    return SearchResult(model=model, config=config, val=fit.val, metric="auc", trace=trace,
                        timings={"search_s": search_s, "retrain_s": fit.seconds}, schema=sub_data.schema)
