"""AutoFIS — automatic feature interaction selection (Liu et al., "AutoFIS: Automatic Feature
Interaction Selection in Factorization Models for Click-Through Rate Prediction", KDD'20;
survey Eq. 28-30; methods.md §5 and §9 item 5; reference code ``huawei-noah/AutoFIS``,
``tf_models.py::AutoFM/AutoDeepFM``, ``grda_tensorflow.py``).

Method
------
Search stage (survey Eq. 28-29). Every field pair ``(i, j)`` of the base model (FM, DeepFM,
or DeepFwFM) gets a gate ``α_ij``, initialised ``0.6 ± U(0.001)``; the pair value goes
through a BatchNorm without scale and shift (``BatchNorm1d(P, affine=False)``, the code's
``prune_BN``) before the gate, so the gate's magnitude is not confounded with the norms of
the embeddings::

    l_AutoFIS = <w, x> + Σ_{i<j} α_ij · BN(<e_i, e_j>)                        (Eq. 28)

One-level optimisation: on every training batch Adam steps all other parameters and gRDA
(:class:`ondevice.train.grda.GRDA`) steps α, from the same loss. gRDA's soft threshold
ℓ_t = c·γ^{0.5+μ}·t^μ sets gates to exact zeros.

Re-train stage (Eq. 30). Keep the pairs with ``α_ij ≠ 0``, rebuild the model with only those
pairs (``pairs=[...]`` on FM/DeepFM: the others are neither computed nor exported), **fresh
initialisation**, the gates kept as trainable attention weights initialised at 0.6 (DeepFwFM:
its field-pair weights r_ij, N(0, 1/F), are the gates), all parameters trained with Adam.

The threshold on small data
---------------------------
The paper's defaults (DeepFM/DeepFwFM: c = 5e-4, μ = 0.8; FM: c = 5e-3, μ = 0.6; γ = 1)
were tuned for ~10^8 rows. A gate the loss does not push moves only by the noise of its
gradient, and it reaches zero once ℓ_t ≥ |α_0| = 0.6, i.e. after

    t* = (0.6 / (c·γ^{0.5+μ}))^{1/μ}   steps                              (zeroing time)

≈ 7 000 steps for DeepFM's defaults, ≈ 2 900 for FM's. The paper's single pass over
Criteo's ≈ 41M training rows at batch 2000 is ≈ 20 600 steps, so t*/T ≈ 0.34 (DeepFM) and
0.14 (FM); a 40K-row dataset at batch 1024 has 40 steps per epoch, so the paper's constants
zero nothing there and AutoFIS keeps every pair (measured in the tests). ``c="auto"``
(default) keeps the paper's ratio instead of its constant: c is chosen so that t* falls at
``zero_at`` (default 0.3) of the search steps ``T``::

    c = 0.6 / (γ^{0.5+μ}·(zero_at·T)^μ)                                    (auto c)

and a pair survives only if its loss gradient has pushed its gate further from zero than
ℓ_T − 0.6 = 0.6·(zero_at^{−μ} − 1). ``c="paper"`` gives the paper's constants.

Main effects: centred pair factors and a held-out two-stage test (deviations, issue 17)
------------------------------------------------------------------------------------
On data with main effects (``ondevice generate --task ctr``: 4 fields with per-value effects,
a numeric effect on I1, 2 sign × sign pairs, 39 fields = 741 pairs) the paper's form kept 9
of 741 pairs with precision 0.11: ``<e_i, e_j>`` with a nearly constant ``e_j`` is a second
channel for ``i``'s main effect, and BatchNorm on the pair value does not remove it (it centres
``<e_i, e_j>``, not the factors). Two changes, both on by default, both off with ``c="paper"``
(or set with ``centred=`` and ``test_level=``):

1. **Centred factors** (``centred=True``): in the search stage the pairs multiply
   ``e_f − μ_f`` (:class:`FieldCentre`: batch mean in training, running mean in evaluation),
   ``α_ij · BN(<e_i − μ_i, e_j − μ_j>)``. For independent fields
   ``E[<e_i − μ_i, e_j − μ_j> | v_i] = <e_i − μ_i, E[e_j] − μ_j> = 0``: the pair term has no
   main effect, so a gate is pushed only by what the *combination* of two fields explains;
   main effects stay with the first-order table (and DeepFM's MLP), which are not gated.
   The re-train stage is the paper's (Eq. 30, uncentred): centring is a search device.
2. **Two-stage test** (``test_level=0.1``): gRDA's survivors still include pairs of
   high-cardinality fields that memorise the training rows (FM: 74-82 of 741 on the 200K-row
   data). Each survivor's held-out evidence is its ablation on the **validation** split
   (:func:`pair_ablation_test`: the log-loss gained per row when that pair alone is removed
   from the search model, z = mean / s.e.); a pair is kept when ``z ≥ Φ⁻¹(1 − level/S)``,
   one-sided, Bonferroni over the ``S`` survivors (family-wise error ``level``). This is the
   signal check reported in the trace (``signal_check``: survivors, threshold, passed, best z,
   the largest failed z and the gap). If gRDA kept pairs and none passes, the gates carry no
   interaction signal and the search refuses to deploy (``WeakSignalError``, exit 2, one line);
   no survivor at all is still a valid result (``kept_none``).

Measured (``benchmarks/autofis.py``, 200K rows, 3 seeds, FM and DeepFM, 3 search epochs):
precision and recall 1.0 on all six runs; the paper's form on the same data is in the table.

Search-step cost: the pair values of all ``P`` pairs are one batched Gram product in training
(:meth:`ondevice.models.fm.PairInteraction.pair_values`), not ``P`` gathered vector pairs.
Measured on the 741-pair data, 1 thread: a DeepFM (400³) search step is 1.18× its training step
(4.2× before); an FM search step 2.4× (27× before) — FM's sum-square training step does no
per-pair work, and computing, centring, normalising and gating 741 pair values per row costs
about as much as that whole step (≈ 7 ms forward + backward at batch 1024).

Choices and deviations (documented)
-----------------------------------
* The search trains from scratch (fresh initialisation, as the paper); ``warm_start=True``
  starts it from the pretrained checkpoint's weights instead (cheaper, not in the paper).
* No learning-rate decay in the search (the code decays Adam ×0.7 or gRDA ×0.6 per
  sub-epoch); no selection on validation in the search stage (the code reads the test set
  every sub-epoch; we only log the validation AUC in the trace).
* ``max_pairs`` (default ``None``) caps the kept pairs by ``|α|``; not in the paper.
* Bytes: AutoFIS does not shrink tables. The model with no pairs at all is checked against
  the budget before anything runs (``BudgetTooSmallError`` otherwise); if the kept pairs do
  not fit (20 B each: gate + two int64 indices), the smallest ``|α|`` are dropped until they
  do, and the trace says so.
* Zero kept pairs is a valid result (FM: first-order only; DeepFM: linear + MLP); the trace
  says ``"kept_none": true``.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ondevice.embedding import DenseEmbedding
from ondevice.errors import BadInputError, WeakSignalError
from ondevice.models import FM, CTRModel, DeepFM, DeepFwFM, model_from_description
from ondevice.models.fm import all_pairs
from ondevice.search.base import (
    RetrainingSearcher,
    SearchContext,
    SearchResult,
    make_config,
    register_searcher,
)
from ondevice.search.retrain import fit_ctr
from ondevice.train.grda import GRDA
from ondevice.train.optim import make_optimizers

__all__ = ["AutoFISSearcher", "PAPER_GRDA", "auto_c", "search_model", "zeroing_steps"]

#: gRDA (c, μ) per base model from the AutoFIS code (γ = 1.0); DeepFwFM takes DeepFM's.
PAPER_GRDA: dict[str, tuple[float, float]] = {"deepfm": (5e-4, 0.8), "deepfwfm": (5e-4, 0.8), "fm": (5e-3, 0.6)}
#: Search-stage gate initialisation: 0.6 ± U(0.001) (AutoFIS code).
ALPHA_INIT, ALPHA_JITTER = 0.6, 1e-3
#: Family-wise level of the held-out two-stage test (module docstring).
DEFAULT_TEST_LEVEL = 0.1
_BASES = (FM, DeepFM, DeepFwFM)


def zeroing_steps(c: float, mu: float, lr: float, alpha0: float = ALPHA_INIT) -> float:
    """(zeroing time) t* with ℓ_{t*} = |α_0|: when a gate without loss signal hits exactly 0."""
    return (abs(alpha0) / (c * lr ** (0.5 + mu))) ** (1.0 / mu)


def auto_c(mu: float, lr: float, steps: int, zero_at: float, alpha0: float = ALPHA_INIT) -> float:
    """c such that ℓ reaches |α_0| after ``zero_at · steps`` steps (module docstring)."""
    return abs(alpha0) / (lr ** (0.5 + mu) * max(1.0, zero_at * steps) ** mu)


class FieldCentre(nn.Module):
    """``e_f − μ_f``: each field's embedding minus its mean over the data ``[B,F,D] -> [B,F,D]``.

    Like a BatchNorm without scale: the batch mean in training (and a running mean, momentum
    0.1), the running mean in evaluation. For independent fields the centred product
    ``<e_i − μ_i, e_j − μ_j>`` has zero conditional mean given either field alone, so a pair
    term cannot carry a main effect of ``i`` or ``j`` (module docstring, "main effects").
    """

    def __init__(self, num_fields: int, dim: int, momentum: float = 0.1) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("running_mean", torch.zeros(num_fields, dim))

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        if self.training and emb.shape[0] > 1:
            mean = emb.mean(dim=0)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach(), self.momentum)
            return emb - mean
        return emb - self.running_mean


def search_model(full: CTRModel, pairs: list[list[int]], *, seed: int, warm_start: bool,
                 centred: bool = False) -> CTRModel:
    """The search-stage model (Eq. 28): ``full``'s architecture with explicit ``pairs``, a
    BatchNorm without affine parameters on the pair values and gates ``0.6 ± U(0.001)``;
    ``centred``: the pairs multiply centred embeddings (:class:`FieldCentre`)."""
    desc = full.describe()
    desc["config"] = {**desc["config"], "pairs": pairs}
    torch.manual_seed(seed)
    model = model_from_description(desc)
    if warm_start:  # every tensor the two models share (not the pair list and its weights)
        own = model.state_dict()
        own.update({k: v for k, v in full.state_dict().items()
                    if k in own and not k.startswith("pair_") and v.shape == own[k].shape})
        model.load_state_dict(own)
    with torch.no_grad():
        model.pair_weight.uniform_(ALPHA_INIT - ALPHA_JITTER, ALPHA_INIT + ALPHA_JITTER)
    model.pair_norm = nn.BatchNorm1d(len(pairs), affine=False)
    if centred:
        model.pair_centre = FieldCentre(model.num_fields, model.embed_dim)
    return model


@torch.no_grad()
def pair_ablation_test(model: CTRModel, ids: Any, labels: Any, *, batch_size: int = 8192) -> dict[str, np.ndarray]:
    """Held-out test of every pair of a search-stage model (two-stage test, module docstring).

    For each row ``n`` and pair ``k``: ``Δ_nk = ℓ(y_n, z_n − α_k·BN(v_nk)) − ℓ(y_n, z_n)``,
    the log-loss the row gains when pair ``k`` alone is removed (``z``: the logit, ``ℓ``: the
    binary cross-entropy). Returns per pair the mean ``Δ`` (nats per row), its standard error
    and ``z = mean / se`` (0 for pairs whose gate is 0). One ``[B, P]`` pass per batch.
    """
    model.eval()
    n_pairs = len(model.pairs)
    total = torch.zeros(n_pairs, dtype=torch.float64)
    total_sq = torch.zeros(n_pairs, dtype=torch.float64)
    rows = 0
    for start in range(0, len(labels), batch_size):
        x = torch.as_tensor(np.array(ids[start:start + batch_size]), dtype=torch.int64)
        y = torch.as_tensor(np.array(labels[start:start + batch_size]), dtype=torch.float32)
        logit = model(x)  # [B]
        contrib = model.pair_values(model.embedding(x)) * model.pair_weight  # [B, P]
        full = F.binary_cross_entropy_with_logits(logit, y, reduction="none")  # [B]
        ablated = F.binary_cross_entropy_with_logits(logit[:, None] - contrib, y[:, None].expand_as(contrib),
                                                     reduction="none")
        delta = (ablated - full[:, None]).double()
        total += delta.sum(0)
        total_sq += delta.pow(2).sum(0)
        rows += len(y)
    mean = total / max(rows, 1)
    var = (total_sq / max(rows, 1) - mean.pow(2)).clamp(min=0)
    se = (var / max(rows - 1, 1)).sqrt()
    z = torch.where(se > 0, mean / se.clamp(min=1e-30), torch.zeros_like(mean))
    return {"delta": mean.numpy(), "se": se.numpy(), "z": z.numpy()}


def heldout_signal(z: np.ndarray, survivors: list[int], level: float) -> dict[str, Any]:
    """The signal check: which gRDA survivors pass the one-sided held-out test at family-wise
    ``level`` (Bonferroni over the ``S`` survivors: ``z ≥ Φ⁻¹(1 − level/S)``), and how far the
    passed pairs stand from the rest (``separation``: min z passed − max z failed)."""
    from scipy.stats import norm

    threshold = float(norm.isf(level / max(1, len(survivors))))
    passed = [k for k in survivors if z[k] >= threshold]
    failed = [float(z[k]) for k in survivors if z[k] < threshold]
    best = max((float(z[k]) for k in survivors), default=0.0)
    sep = (min(float(z[k]) for k in passed) - max(failed)) if passed and failed else None
    return {"test": "held-out ablation z, one-sided, Bonferroni over survivors", "level": level,
            "survivors": len(survivors), "threshold_z": threshold, "passed": passed, "passed_count": len(passed),
            "best_z": best, "max_failed_z": max(failed, default=None), "separation": sep}


def _retrain_model(full: CTRModel, pairs: list[list[int]], seed: int) -> CTRModel:
    """Fresh (seeded) model of ``full``'s architecture with only ``pairs`` (Eq. 30; gates 0.6)."""
    desc = full.describe()
    desc["config"] = {**desc["config"], "pairs": pairs}
    torch.manual_seed(seed)
    return model_from_description(desc)  # type: ignore[return-value]


@register_searcher
class AutoFISSearcher(RetrainingSearcher):
    """AutoFIS: gRDA-gated pair search, then a from-scratch retrain on the kept pairs.

    Parameters
    ----------
    search_epochs : epochs of the search stage (paper: one pass over 10^8 rows).
    c : gRDA threshold scale: ``"auto"`` (the paper's zeroing time rescaled to the run, module
        docstring), ``"paper"`` (per base model, :data:`PAPER_GRDA`) or a number.
    mu : gRDA exponent μ; ``None``: the paper's value for the base model.
    grda_lr : gRDA learning rate γ (paper 1.0).
    zero_at : with ``c="auto"``, the share of search steps after which an unpushed gate is 0.
    max_pairs : keep at most this many pairs (largest ``|α|``); ``None``: every non-zero gate.
    warm_start : start the search from the pretrained weights (default: fresh, as the paper).
    epochs, lr, batch_size, seed, patience : Adam (search and retrain), batches, early stopping.
    first_order : the first-order table: ``auto`` | ``keep`` | ``fp16`` | ``drop`` (``search.base``).
    """

    name = "autofis"
    tasks = ("ctr",)

    def __init__(self, *, search_epochs: int = 3, c: float | str = "auto", mu: float | None = None,
                 grda_lr: float = 1.0, zero_at: float = 0.3, max_pairs: int | None = None,
                 warm_start: bool = False, epochs: int = 5, lr: float = 1e-3, batch_size: int = 1024,
                 seed: int = 0, patience: int = 2, first_order: str = "auto",
                 centred: bool | None = None, test_level: float | None = None) -> None:
        self.search_epochs = search_epochs
        self.centred = centred
        self.test_level = test_level
        self.c = c
        self.mu = mu
        self.grda_lr = grda_lr
        self.zero_at = zero_at
        self.max_pairs = max_pairs
        self.warm_start = warm_start
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.seed = seed
        self.patience = patience
        self.first_order = first_order

    # ------------------------------------------------------------------ checks
    def _check(self, full: Any) -> None:
        if not isinstance(full, _BASES):
            raise BadInputError(f"method 'autofis' gates the field pairs of fm, deepfm or deepfwfm models; the "
                                f"checkpoint holds {full.name!r}: train with --model deepfm or pick another --method")
        if not isinstance(full.embedding, DenseEmbedding) or getattr(full, "sparse_mlp", None) is not None:
            raise BadInputError("method 'autofis' starts from a full (uncompressed) checkpoint; "
                                "pass the run `ondevice train` wrote")
        if full.num_fields < 2:
            raise BadInputError(f"method 'autofis' needs at least 2 fields to form a pair; the model has {full.num_fields}")
        if self.search_epochs < 1 or self.epochs < 0:
            raise BadInputError(f"autofis needs search_epochs >= 1 and epochs >= 0; got {self.search_epochs}, {self.epochs}")
        if not (self.c in ("paper", "auto") or (isinstance(self.c, int | float) and self.c >= 0)):
            raise BadInputError(f"autofis c must be 'paper', 'auto' or a number >= 0; got {self.c!r}")
        if self.mu is not None and not 0 < self.mu < 1:
            raise BadInputError(f"autofis mu must be in (0, 1) (μ = 0 never grows the threshold); got {self.mu}")
        if self.grda_lr <= 0 or not 0 < self.zero_at <= 1:
            raise BadInputError(f"autofis needs grda_lr > 0 and zero_at in (0, 1]; got {self.grda_lr}, {self.zero_at}")
        if self.max_pairs is not None and self.max_pairs < 0:
            raise BadInputError(f"autofis max_pairs must be >= 0 or None; got {self.max_pairs}")
        if self.test_level is not None and not 0 <= self.test_level < 1:
            raise BadInputError(f"autofis test_level must be in [0, 1) (0: no held-out test); got {self.test_level}")

    def variant(self) -> dict[str, Any]:
        """The resolved deviations: centred pair factors and the held-out test's level (module docstring);
        ``c="paper"`` turns both off unless they are given."""
        paper = self.c == "paper"
        centred = (not paper) if self.centred is None else bool(self.centred)
        level = (0.0 if paper else DEFAULT_TEST_LEVEL) if self.test_level is None else float(self.test_level)
        return {"centred": centred, "test_level": level}

    def grda_settings(self, base: str, steps: int) -> dict[str, float | None]:
        """The resolved (c, μ, γ) for a base model and a search of ``steps`` steps."""
        paper_c, paper_mu = PAPER_GRDA[base]
        mu = paper_mu if self.mu is None else float(self.mu)
        if self.c == "paper":
            c = paper_c
        elif self.c == "auto":
            c = auto_c(mu, self.grda_lr, steps, self.zero_at)
        else:
            c = float(self.c)
        return {"c": c, "mu": mu, "lr": float(self.grda_lr),
                "zeroing_steps": zeroing_steps(c, mu, self.grda_lr) if c > 0 else None}  # None: never

    def _bytes(self, ctx: SearchContext, model: CTRModel) -> int:
        return ctx.accountant.fixed_bytes(model) + model.embedding.storage_bytes()

    # ------------------------------------------------------------------ search
    def _search(self, ctx: SearchContext) -> SearchResult:
        full, acc, budget = ctx.model, ctx.accountant, ctx.budget_bytes
        self._check(full)
        names = [f.name for f in ctx.data.schema.fields]
        candidates = [list(p) for p in full.pairs] if getattr(full, "explicit_pairs", True) else all_pairs(full.num_fields)
        empty = _retrain_model(full, [], self.seed)
        if self._bytes(ctx, empty) > budget:  # before any training
            raise acc.too_small(self.method_name(), budget, self._bytes(ctx, empty), empty,
                                empty.embedding.storage_bytes())

        # --- search stage (Eq. 28-29): Adam on everything but α, gRDA on α, same batches
        t0 = time.perf_counter()
        variant = self.variant()
        model = search_model(full, candidates, seed=self.seed, warm_start=self.warm_start, centred=variant["centred"])
        steps = self.search_epochs * max(1, math.ceil(len(ctx.data.split("train")) / self.batch_size))
        grda = self.grda_settings(full.name, steps)
        gate = model.pair_weight
        gate.requires_grad_(False)  # make_optimizers leaves frozen parameters out: Adam gets the rest
        adam = make_optimizers(model, lr=self.lr)
        gate.requires_grad_(True)
        opts = [*adam, GRDA([gate], lr=grda["lr"], c=grda["c"], mu=grda["mu"])]
        every = max(1, steps // 50)
        sparsity: list[dict[str, Any]] = []

        def record(step: int) -> bool:
            if step % every == 0 or step == steps:
                nz = int((gate.detach() != 0).sum())
                sparsity.append({"step": step, "nonzero": nz, "sparsity": 1.0 - nz / max(1, gate.numel())})
            return False

        search_fit = fit_ctr(model, ctx.data, epochs=self.search_epochs, batch_size=self.batch_size, seed=self.seed,
                             optimizers=opts, on_step=record, select_best=False, evaluate=True)
        alpha = gate.detach().clone()
        survivors = [k for k in range(len(candidates)) if alpha[k] != 0]
        signal = None
        if variant["test_level"] > 0 and survivors:  # two-stage test on the validation split
            held = ctx.data.split("val")
            test = pair_ablation_test(model, held.ids, held.labels)
            signal = heldout_signal(test["z"], survivors, variant["test_level"])
            passed = signal["passed"]
        else:
            test, passed = None, survivors
        search_s = time.perf_counter() - t0
        if signal is not None and not passed:
            best = signal["best_z"]
            raise WeakSignalError(
                f"autofis: none of the {len(survivors)} pairs the gates kept holds up on validation (best held-out z "
                f"{best:.2f} < {signal['threshold_z']:.2f}, family-wise level {variant['test_level']:g}); the gates "
                "carry no interaction signal on this data: deploy the full model or search longer",
                statistic=best, threshold=signal["threshold_z"])

        # --- selection: α ≠ 0 and (two-stage test) passed, optionally the max_pairs largest |α|, then the budget
        order = sorted(passed, key=lambda k: -abs(float(alpha[k])))
        capped = self.max_pairs is not None and len(order) > self.max_pairs
        if capped:
            order = order[: self.max_pairs]
        dropped_for_budget: list[list[int]] = []
        while True:
            kept = [candidates[k] for k in sorted(order)]
            retrain = _retrain_model(full, kept, self.seed)
            if self._bytes(ctx, retrain) <= budget or not order:
                break
            dropped_for_budget.append(candidates[order.pop()])

        # --- re-train stage (Eq. 30): fresh init, kept pairs, gates trainable (init 0.6)
        fit = self._retrain(ctx, retrain)
        retrain.eval()
        trace: list[dict[str, Any]] = [
            {"grda": grda, "search_steps": search_fit.steps, "warm_start": self.warm_start,
             "variant": variant, "signal_check": signal,
             "pairs": [{"pair": p, "fields": [names[p[0]], names[p[1]]], "alpha": float(alpha[k]),
                        **({"heldout_delta": float(test["delta"][k]), "heldout_z": float(test["z"][k])}
                           if test is not None else {})}
                       for k, p in enumerate(candidates)],
             "sparsity": sparsity, "search_history": search_fit.history},
            {"kept": [{"pair": p, "fields": [names[p[0]], names[p[1]]]} for p in kept], "kept_count": len(kept),
             "candidates": len(candidates), "kept_none": not kept, "capped_by_max_pairs": capped,
             "dropped_for_budget": dropped_for_budget, "bytes": self._bytes(ctx, retrain)},
            {"retrain": fit.history},
        ]
        config = make_config("AutoFISConfig", {"base": full.name, "pairs": kept,
                                                "alpha": {f"{i},{j}": float(alpha[k]) for k, (i, j) in enumerate(candidates)}})
        return SearchResult(model=retrain, config=config, val=fit.val, metric="auc", trace=trace,
                            timings={"search_s": search_s, "retrain_s": fit.seconds})

