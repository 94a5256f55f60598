"""AutoFIS: a gate per field pair, sparsified by gRDA while training, then a retrain on the kept pairs.

Liu et al., "AutoFIS: Automatic Feature Interaction Selection in Factorization Models for
Click-Through Rate Prediction", KDD 2020 (survey §6, Eq. 28-30; methods.md §5 and §9 item 5);
reference code ``zhuchenxv/AutoFIS`` (``tf_models.py::AutoFM/AutoDeepFM``, ``grda_tensorflow.py``).

Search stage (Eq. 28-29; :func:`search_model`, :func:`gated_search`). Every field pair ``(i, j)``
of an FM, DeepFM or DeepFwFM gets a gate ``α_ij`` (init ``0.6 ± 1e-3``) on its value after a
BatchNorm without scale and shift (the code's ``prune_BN``, not in the survey's Eq. 28), so a
gate's size is not confounded with the embeddings' norms::

    l_AutoFIS = <w, x> + Σ_{i<j} α_ij · BN(<e_i, e_j>)                        (Eq. 28)

One-level: every training batch steps the other parameters with Adam and α with gRDA
(:class:`ondevice.train.grda.GRDA`) on the same loss; gRDA's soft threshold
``ℓ_t = c·γ^{0.5+μ}·t^μ`` sets gates to exact zeros.

Re-train stage (Eq. 30; :func:`_retrain_model`): only the pairs with ``α_ij ≠ 0`` (the others are
neither computed nor exported), fresh initialisation, the gates kept as trainable attention weights
(init 0.6; DeepFwFM: its pair weights ``r_ij``), every parameter trained with Adam.

Deviations from the paper (``c="paper"`` restores the first three, :meth:`AutoFISSearcher.variant`):

* ``c="auto"`` (default) keeps the paper's zeroing time as a share of the run, not its constant
  c: tuned for ~10^8 rows, that constant zeroes no gate in a few hundred steps (:func:`auto_c`).
* Centred pair factors in the search (:class:`FieldCentre`): beside a main effect, a pair with a
  near-constant field is a second channel for it, and BatchNorm on the pair value does not remove it.
* Two-stage test: gRDA's survivors must also pass a held-out ablation test on validation
  (:func:`pair_ablation_test`, :func:`heldout_signal`): survivors include pairs of high-cardinality
  fields that memorise the training rows. If none passes, the search refuses (``WeakSignalError``).
* No learning-rate decay and no test-set reads in the search (the code decays per sub-epoch and
  reads the test set): validation is only logged.
* ``warm_start`` (off) and ``max_pairs`` (``None``) are ours: a cheaper search; a cap on the pairs.
* Bytes: kept pairs that do not fit are dropped smallest ``|α|`` first (:class:`AutoFISSearcher`).
* FM's search step is one fused op (:func:`fused_pair_sum`): same values up to rounding, less work.

Measured: ``benchmarks/results/autofis.md`` (planted pairs, auto vs paper c; Frappe and Criteo 10K
against the full DeepFM; main effects, default vs the paper's form, 3 seeds; search-step cost).
"""

from __future__ import annotations

import functools
import math
import time
import weakref
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
from ondevice.search.retrain import fit_ctr, val_metrics
from ondevice.train.grda import GRDA
from ondevice.train.optim import make_optimizers

__all__ = ["AutoFISSearcher", "PAPER_GRDA", "auto_c", "gated_search", "heldout_signal", "pair_ablation_test",
           "search_model", "zeroing_steps"]

#: gRDA (c, μ) per base model from the AutoFIS code (γ = 1.0); DeepFwFM takes DeepFM's.
PAPER_GRDA: dict[str, tuple[float, float]] = {"deepfm": (5e-4, 0.8), "deepfwfm": (5e-4, 0.8), "fm": (5e-3, 0.6)}
#: Search-stage gate initialisation: 0.6 ± U(0.001) (AutoFIS code).
ALPHA_INIT, ALPHA_JITTER = 0.6, 1e-3
#: Family-wise level of the held-out two-stage test (:func:`heldout_signal`).
DEFAULT_TEST_LEVEL = 0.1
#: A pair-free model this close to the full model's val AUC is a tie (no kept-none warning).
AUC_TIE = 5e-4
_BASES = (FM, DeepFM, DeepFwFM)


def zeroing_steps(c: float, mu: float, lr: float, alpha0: float = ALPHA_INIT) -> float:
    """(zeroing time) ``t* = (|α_0| / (c·γ^{0.5+μ}))^{1/μ}``, ℓ_{t*} = |α_0|: when a gate without
    loss signal hits exactly 0 (it moves only by the noise of its gradient, see :func:`auto_c`)."""
    return (abs(alpha0) / (c * lr ** (0.5 + mu))) ** (1.0 / mu)


def auto_c(mu: float, lr: float, steps: int, zero_at: float, alpha0: float = ALPHA_INIT) -> float:
    """c such that ℓ reaches |α_0| after ``zero_at · steps`` steps (``c="auto"``, a deviation)::

        c = |α_0| / (γ^{0.5+μ}·(zero_at·T)^μ)                                  (auto c)

    Why: the paper's defaults (DeepFM/DeepFwFM: c = 5e-4, μ = 0.8; FM: c = 5e-3, μ = 0.6; γ = 1,
    :data:`PAPER_GRDA`) were tuned for ~10^8 rows. A gate the loss does not push reaches zero at
    :func:`zeroing_steps`: ≈ 7 000 steps for DeepFM's defaults, ≈ 2 900 for FM's. The paper's single
    pass over Criteo's ≈ 41M training rows at batch 2000 is ≈ 20 600 steps, so t*/T ≈ 0.34 (DeepFM)
    and 0.14 (FM); a 40K-row dataset at batch 1024 has 40 steps per epoch, so the paper's constants
    zero nothing there and AutoFIS keeps (nearly) every pair (the tests; ``paper`` rows of
    ``benchmarks/results/autofis.md`` (a)). ``c="auto"`` keeps the paper's ratio instead of its
    constant (``zero_at`` 0.3 by default), and a pair survives only if its loss gradient has pushed
    its gate further from zero than ``ℓ_T − |α_0| = |α_0|·(zero_at^{−μ} − 1)``.
    """
    return abs(alpha0) / (lr ** (0.5 + mu) * max(1.0, zero_at * steps) ** mu)


class FieldCentre(nn.Module):
    """``e_f − μ_f``: each field's embedding minus its mean over the data ``[B,F,D] -> [B,F,D]``.

    Like a BatchNorm without scale: the batch mean in training (and a running mean, momentum
    0.1), the running mean in evaluation. For independent fields the centred product
    ``<e_i − μ_i, e_j − μ_j>`` has zero conditional mean given either field alone,
    ``E[<e_i − μ_i, e_j − μ_j> | v_i] = <e_i − μ_i, E[e_j] − μ_j> = 0``, so a pair term cannot
    carry a main effect of ``i`` or ``j``: a gate is pushed only by what the *combination* of two
    fields explains, and main effects stay with the first-order table (and DeepFM's MLP), which
    are not gated.

    Why (a deviation, issue 17; ``centred=True`` unless ``c="paper"``): on data with main effects
    (``ondevice generate --task ctr``: 4 fields with per-value effects, a numeric effect on I1, 2
    sign × sign pairs, 39 fields = 741 pairs) the paper's form keeps pairs of low precision
    (``benchmarks/results/autofis.md`` (c), "paper form" rows): ``<e_i, e_j>`` with a nearly
    constant ``e_j`` is a second channel for ``i``'s main effect, and BatchNorm on the pair value
    does not remove it (it centres ``<e_i, e_j>``, not the factors). Centring is a search device:
    the re-train stage is the paper's (Eq. 30, uncentred).
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


class _GatedGramNorm(torch.autograd.Function):
    """The search stage's gated pair term in training, ``Σ_p α_p · BN(<c_i, c_j>)`` per row (Eq. 28), as one op.

    Input: the embeddings ``e`` ``[B, F, D]``; ``centred``: the factors are ``c = e − mean_b e``
    (:class:`FieldCentre`'s training form, fused here), else ``c = e``. The pair values stay in the per-row
    Gram's ``[B, F·F]`` layout (no gather of the ``P`` upper-triangle entries, no scatter of their gradient):
    ``G = C Cᵀ`` (one ``bmm``), centred in place over the batch (``G − m``, ``σ² = mean_b (G − m)²``; the unused
    diagonal and lower-triangle columns cost one more pass), never normalised: the gates and ``1/σ`` sit in one
    symmetric vector ``a`` (``α_p/σ_p`` at ``(i, j)`` and ``(j, i)``, 0 on the diagonal), so
    ``out = ½ (G − m) a`` (one ``mv``). Backward, BatchNorm's in closed form for the rank-one output gradient,
    with ``x̂ = (G − m)/σ`` and ``ĝ_ij = Σ_b g_b x̂_b,ij``: ``Q_b = (g_b − ḡ) a − (G_b − m) ∘ a ĝ / (σ B)``,
    symmetric, so ``dC = Q C`` (one ``bmm``; autograd's path takes two, a gather, its scatter and BatchNorm's
    own backward), and ``de = dC − mean_b dC`` when centred. Also returns (not differentiable) the field
    means and the batch mean and biased variance of every Gram column, for the running statistics.
    """

    @staticmethod
    def forward(ctx: Any, e: torch.Tensor, w: torch.Tensor, flat: torch.Tensor, flat_t: torch.Tensor,
                centred: bool, eps: float, ws: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        b, f, _ = e.shape
        pending = ws.get("pending")  # a graph whose backward has not run still holds the saved c and gram
        saved = ws if pending is None or pending() is None else {}
        mu = e.mean(dim=0)
        c = torch.sub(e, mu, out=_workspace(saved, "c", e.shape, e)) if centred else e
        gram = torch.bmm(c, c.transpose(1, 2), out=_workspace(saved, "gram", (b, f, f), e)).view(b, f * f)
        per_row = _workspace(ws, "per_row", (b,), e).fill_(1.0 / b)
        mean = torch.mv(gram.t(), per_row)  # column means as one gemv (a dim-0 mean reduces slower)
        gram.sub_(mean)  # G − m: x̂ = (G − m)/σ is never materialised
        var = torch.mv(torch.square(gram, out=_workspace(ws, "q", (b, f * f), e)).t(), per_row)
        inv = var.add(eps).rsqrt_()
        a = w.new_zeros(f * f).index_copy_(0, flat, w).index_copy_(0, flat_t, w).mul_(inv)
        out = torch.mv(gram, a).mul_(0.5)
        ctx.centred, ctx.ws = centred, ws
        ws["pending"] = weakref.ref(ctx)
        ctx.save_for_backward(c, gram, a, inv, flat)
        ctx.mark_non_differentiable(mu, mean, var)
        return out, mu, mean, var

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor, *_: Any) -> tuple[Any, ...]:
        c, gram, a, inv, flat = ctx.saved_tensors
        if (pending := ctx.ws.get("pending")) is not None and pending() is ctx:
            del ctx.ws["pending"]  # the next forward may reuse c and gram
        b, f, _ = c.shape
        gw = torch.mv(gram.t(), grad).mul_(inv)  # Σ_b g_b x̂_b,ij; d out / d α_p = gw at (i, j)
        q = torch.outer(grad - grad.mean(), a, out=_workspace(ctx.ws, "q", gram.shape, gram))
        q.addcmul_(gram, a * inv * gw, value=-1.0 / b)
        dc = torch.bmm(q.view(b, f, f), c)
        if ctx.centred:
            dc.sub_(dc.mean(dim=0))
        return dc, gw.index_select(0, flat), None, None, None, None, None


class _Workspace(dict):
    """:func:`fused_pair_sum`'s reused tensors on a model (:func:`_workspace`); copied or pickled empty."""

    def __reduce__(self) -> tuple[Any, ...]:
        return _Workspace, ()


def _workspace(ws: dict[str, Any], name: str, shape: Any, like: torch.Tensor) -> torch.Tensor:
    """``ws[name]``, (re)allocated when the shape, dtype or device changes: :class:`_GatedGramNorm`'s per-step
    ``[B, F, D]`` and ``[B, F·F]`` tensors reused across steps (a fresh multi-MB tensor per step is a fresh
    ``mmap`` on glibc, page-faulted on first touch: ``benchmarks/results/autofis.md`` (d)). A forward while an
    earlier graph's backward is pending takes fresh tensors (``ws["pending"]``); were a saved one overwritten
    anyway, autograd's version check would make that backward raise, never return a wrong gradient."""
    t = ws.get(name)
    if t is None or t.shape != torch.Size(shape) or t.dtype != like.dtype or t.device != like.device:
        t = ws[name] = like.new_empty(shape)
    return t


def fused_pair_sum(model: Any, emb: torch.Tensor) -> torch.Tensor:
    """The search stage's gated pair term in training (Eq. 28, centred factors ``c``) as :class:`_GatedGramNorm`,
    :class:`FieldCentre`'s and BatchNorm's running statistics updated as the modules do; the same values and
    gradients as the module path (up to float rounding, tested) for less work. Evaluation, single rows and
    fewer pairs than fields take the module path.

    Only FM's search step uses it (:func:`search_model`). FM's sum-square training step does no per-pair
    work; this op's floor is the per-row Gram and its gradient (two ``bmm`` of ``B·F²·D``) and a few passes
    over ``B × F²`` values (centring, squares, three ``gemv``, ``Q``). Against the module path it saves the
    gather, the scatter, BatchNorm's normalised copy and its backward, and it reuses its ``[B, F·F]``
    tensors (:func:`_workspace`; the op before did not, and took its 6 MB of page faults every step).
    ``benchmarks/results/autofis.md`` (d), seed 7's data, 39 fields, batch 1024, 1 thread, CPU time: the
    search step 8.6 ms against FM's 4.7 ms training step (1.84×; the module path 2.35×; the op before
    2.17× in wall time on a busier host), one epoch of the searchers' loop 1.94×. Profiled: forward 3.4 ms
    and backward 1.6 ms (the pair term 2.3 + 1.3 ms, 1.9 ms of it the two ``bmm``) against the training
    step's 1.1 + 0.7 ms; lazy Adam on the tables, 3.0 ms, is the same in both. Issue 17's 1.5× would need a
    cheaper pair form (changed results). DeepFM keeps the module path:
    its search step is 1.14× its training step, and on seed 7 of the generated data this op's rounding
    once moved a planted pair's borderline held-out z below the threshold. With this op the kept pairs
    and gRDA survivors of (c) are unchanged on all 12 runs."""
    norm, centre = model.pair_norm, model.pair_centre
    if not model.training or emb.shape[0] < 2 or len(model.pairs) <= emb.shape[1] or not isinstance(
            norm, nn.BatchNorm1d) or norm.affine or norm.momentum is None or not (
            centre is None or isinstance(centre, FieldCentre)):
        return type(model).pair_sum(model, emb)
    f = emb.shape[1]
    flat, flat_t = model.pair_left * f + model.pair_right, model.pair_right * f + model.pair_left
    ws = model.__dict__.setdefault("_pair_workspace", _Workspace())  # plain attribute: not in the state dict
    out, mu, mean, var = _GatedGramNorm.apply(emb, model.pair_weight, flat, flat_t, centre is not None, norm.eps, ws)
    with torch.no_grad():  # the running statistics as FieldCentre and BatchNorm1d keep them (unbiased variance)
        if centre is not None:
            centre.running_mean.lerp_(mu, centre.momentum)
        norm.running_mean.lerp_(mean.index_select(0, flat), norm.momentum)
        b = emb.shape[0]
        norm.running_var.lerp_(var.index_select(0, flat).mul_(b / (b - 1)), norm.momentum)
        norm.num_batches_tracked += 1
    return out


def search_model(full: CTRModel, pairs: list[list[int]], *, seed: int, warm_start: bool,
                 centred: bool = False) -> CTRModel:
    """The search-stage model (Eq. 28): ``full``'s architecture with explicit ``pairs``, a
    BatchNorm without affine parameters on the pair values and gates ``0.6 ± U(1e-3)``;
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
    if isinstance(model, FM):  # FM's search step: the fused pair term (training only; fused_pair_sum says why)
        model.pair_sum = functools.partial(fused_pair_sum, model)
    return model


@torch.no_grad()
def pair_ablation_test(model: CTRModel, ids: Any, labels: Any, *, batch_size: int = 8192) -> dict[str, np.ndarray]:
    """Held-out test of every pair of a search-stage model (two-stage test, :func:`heldout_signal`).

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
    passed pairs stand from the rest (``separation``: min z passed − max z failed).

    Why (a deviation, issue 17; ``test_level`` 0.1 unless ``c="paper"``): gRDA's survivors still
    include pairs of high-cardinality fields that memorise the training rows (FM: tens of the 741
    pairs on the 200K-row generated data, ``benchmarks/results/autofis.md`` (c), "gRDA
    survivors"). Each survivor's held-out evidence is its ablation on the **validation** split
    (:func:`pair_ablation_test`: the log-loss gained per row when that pair alone is removed,
    ``z = mean / s.e.``). The result is the trace's ``signal_check`` (survivors, threshold, passed,
    best z, the largest failed z and the gap). If gRDA kept pairs and none passes, the gates carry
    no interaction signal and the searchers refuse to deploy (``WeakSignalError``, exit 2, one
    line); no survivor at all is still a valid result (``kept_none``)."""
    from scipy.stats import norm

    threshold = float(norm.isf(level / max(1, len(survivors))))
    passed = [k for k in survivors if z[k] >= threshold]
    failed = [float(z[k]) for k in survivors if z[k] < threshold]
    best = max((float(z[k]) for k in survivors), default=0.0)
    sep = (min(float(z[k]) for k in passed) - max(failed)) if passed and failed else None
    return {"test": "held-out ablation z, one-sided, Bonferroni over survivors", "level": level,
            "survivors": len(survivors), "threshold_z": threshold, "passed": passed, "passed_count": len(passed),
            "best_z": best, "max_failed_z": max(failed, default=None), "separation": sep}


def gated_search(model: CTRModel, data: Any, *, grda: dict[str, Any], epochs: int, batch_size: int, lr: float,
                 seed: int, level: float, on_step: Any = None) -> dict[str, Any]:
    """The search stage on a :func:`search_model` and the two-stage test (:func:`heldout_signal`).

    Adam steps every parameter but the gates, gRDA (``grda``: c, μ, γ) the gates, on the same
    batches (Eq. 28-29); then the gRDA survivors (``α ≠ 0``) go through the held-out test on the
    validation split at family-wise ``level`` (0: no test, every survivor passes). Returns the
    fit, the gates ``alpha``, the ``survivors``, the per-pair ``test``, the ``signal`` check
    and the ``passed`` pair indices (``test``/``signal`` ``None`` without a test).
    """
    gate = model.pair_weight
    gate.requires_grad_(False)  # make_optimizers leaves frozen parameters out: Adam gets the rest
    adam = make_optimizers(model, lr=lr)
    gate.requires_grad_(True)
    opts = [*adam, GRDA([gate], lr=grda["lr"], c=grda["c"], mu=grda["mu"])]
    fit = fit_ctr(model, data, epochs=epochs, batch_size=batch_size, seed=seed, optimizers=opts,
                  on_step=on_step, select_best=False, evaluate=True)
    model.__dict__.pop("_pair_workspace", None)  # fused_pair_sum's reused tensors (FM), tens of MB
    alpha = gate.detach().clone()
    survivors = [k for k in range(alpha.numel()) if alpha[k] != 0]
    test = signal = None
    passed = survivors
    if level > 0 and survivors:
        held = data.split("val")
        test = pair_ablation_test(model, held.ids, held.labels)
        signal = heldout_signal(test["z"], survivors, level)
        passed = signal["passed"]
    return {"fit": fit, "alpha": alpha, "survivors": survivors, "test": test, "signal": signal, "passed": passed}


def _retrain_model(full: CTRModel, pairs: list[list[int]], seed: int) -> CTRModel:
    """Fresh (seeded) model of ``full``'s architecture with only ``pairs`` (Eq. 30; gates 0.6, DeepFwFM:
    its pair weights ``r_ij``, N(0, 1/F)); the other pairs are neither computed nor exported."""
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
    c : gRDA threshold scale: ``"auto"`` (the paper's zeroing time rescaled to the run,
        :func:`auto_c`), ``"paper"`` (per base model, :data:`PAPER_GRDA`; also turns ``centred``
        and the held-out test off unless given) or a number.
    mu : gRDA exponent μ; ``None``: the paper's value for the base model.
    grda_lr : gRDA learning rate γ (paper 1.0).
    zero_at : with ``c="auto"``, the share of search steps after which an unpushed gate is 0.
    max_pairs : keep at most this many pairs (largest ``|α|``); ``None``: every non-zero gate.
    warm_start : start the search from the pretrained weights (default: fresh, as the paper).
    epochs, lr, batch_size, seed, patience : Adam (search and retrain), batches, early stopping.
    first_order : the first-order table: ``auto`` | ``keep`` | ``fp16`` | ``drop`` (``ondevice.search.fixed_parts``).
    centred : centred pair factors in the search (:class:`FieldCentre`); ``None``: on unless ``c="paper"``.
    test_level : family-wise level of the held-out test (:func:`heldout_signal`; 0: none);
        ``None``: 0.1 unless ``c="paper"``.

    Bytes: AutoFIS does not shrink tables. The model with no pairs at all is checked against the
    budget before anything runs (``BudgetTooSmallError`` otherwise); if the kept pairs do not fit
    (20 B each: gate + two int64 indices), the smallest ``|α|`` are dropped until they do, and the
    trace says so (``dropped_for_budget``). Zero kept pairs is a valid result (FM: first-order
    only; DeepFM: linear + MLP); the trace says ``"kept_none": true``.
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
        every = max(1, steps // 50)
        sparsity: list[dict[str, Any]] = []

        def record(step: int) -> bool:
            if step % every == 0 or step == steps:
                nz = int((gate.detach() != 0).sum())
                sparsity.append({"step": step, "nonzero": nz, "sparsity": 1.0 - nz / max(1, gate.numel())})
            return False

        gated = gated_search(model, ctx.data, grda=grda, epochs=self.search_epochs, batch_size=self.batch_size,
                             lr=self.lr, seed=self.seed, level=variant["test_level"], on_step=record)
        search_fit, alpha, survivors = gated["fit"], gated["alpha"], gated["survivors"]
        test, signal, passed = gated["test"], gated["signal"], gated["passed"]
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
        warnings = self._kept_none_warning(full, ctx, fit.val["auc"], grda, len(candidates)) if not survivors else []
        config = make_config("AutoFISConfig", {"base": full.name, "pairs": kept,
                                                "alpha": {f"{i},{j}": float(alpha[k]) for k, (i, j) in enumerate(candidates)}})
        return SearchResult(model=retrain, config=config, val=fit.val, metric="auc", trace=trace,
                            timings={"search_s": search_s, "retrain_s": fit.seconds}, warnings=warnings)

    @staticmethod
    def _kept_none_warning(full: Any, ctx: SearchContext, val_auc: float, grda: dict[str, Any],
                           candidates: int) -> list[str]:
        """When gRDA zeroed every gate, no pair reached the held-out test: "no interaction needed"
        is then an untested claim. Say so when the pair-free model scores below the full one by
        at least ``AUC_TIE`` (a smaller gap is a tie at the four decimals reported: MovieLens-1M's
        10k-row head warned "0.7478 is below the full model's 0.7478")."""
        full_auc = val_metrics(full, ctx.data)["auc"]
        if full_auc - val_auc < AUC_TIE:
            return []
        return [f"gRDA (c={grda['c']:.3g}) zeroed all {candidates} pair gates, so no pair was tested on held-out "
                f"data, and the pair-free model's val AUC {val_auc:.4f} is {full_auc - val_auc:.4f} below the full "
                f"model's {full_auc:.4f}: keep the full model, or lower --c to let pairs reach the test"]

