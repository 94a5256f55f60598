"""AutoField: field selection with learned keep/drop controllers, then retraining.

Wang et al., "AutoField: Automating Feature Selection in Deep Recommender Systems", WWW 2022
(survey §4; methods.md §6). The authors' code was not located: details follow the survey and
third-party notes.

1. Controllers: per field ``f`` logits ``α_f = [α_f^drop, α_f^keep]``, both initialised to 0.5.
2. Relaxed selection, Gumbel-softmax (survey Eq. (12), logits for ``log α``, ``g ~ Gumbel``)::

       w_f = softmax((α_f + g) / τ)_keep

   ``w_f`` multiplies field ``f``'s embedding and first-order weight; noise is drawn per sample.
3. Temperature ``τ_t = max(τ_min, 1 − r·t)``, ``r = 5e-5``, ``τ_min = 0.01`` (the notes).
4. Bi-level optimisation, first-order DARTS (survey §3.2.3): a model step on a training batch,
   then a controller step on an architecture batch; from the pretrained checkpoint.
5. Fields ranked by ``p_f = softmax(α_f)_keep``; the largest top-k whose exact deployable bytes
   fit the budget is kept (``subset.fit_ranked_fields``); a lower-ranked field never replaces the
   top one. ``signal_level``: the kept fields must matter more on validation than the dropped.
6. Retrain the same model class over the kept fields (pretrained rows and MLP columns inherited).

Deviations from the paper:

* ``r = max(5e-5, (1 − τ_min)/T)`` over ``T`` search steps: 5e-5 needs ~20k steps to anneal.
* Architecture batches come from a held-out ``arch_fraction`` of **train**, not validation, so
  the validation metric after retraining is not one the selection was fitted on.
* Controllers step with plain SGD, not Adam: from a pretrained model every keep gradient points
  the same way and Adam's per-parameter normalisation erases their ranking (on planted data it
  ranked a noise field above planted ones).
* Top-k by the byte budget (the paper keeps a fixed k); ``num_fields`` caps k.
* Gumbel noise per sample (``[B, F]``), not per batch: the same expected gradient, lower variance.

Measured: ``benchmarks/results/feature_selection.md`` (planted-field ranks, signal check, Frappe
and Criteo at ½ and ¼ of the bytes), ``benchmarks/results/compress_quality_*.md`` (``autofield``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ondevice.search.base import (
    RetrainingSearcher,
    SearchContext,
    SearchResult,
    register_searcher,
)
from ondevice.search.features.subset import SIGNAL_LEVEL, gated_fields, search_ranked_fields
from ondevice.search.retrain import default_optimizers
from ondevice.train.batches import epoch_order, in_memory_ctr, iter_ctr_batches
from ondevice.train.distributed import DistInfo
from ondevice.train.loop import fit

__all__ = ["AutoFieldSearcher", "FieldControllers", "annealing_rate", "train_field_controllers"]

PAPER_TAU_DECAY = 5e-5  # per step (methods.md §6)
PAPER_TAU_MIN = 0.01


def annealing_rate(total_steps: int, tau_min: float = PAPER_TAU_MIN, decay: float = PAPER_TAU_DECAY) -> float:
    """``r = max(decay, (1 − τ_min)/T)``: the paper's rate, or faster so τ reaches τ_min at step T (step 3)."""
    return max(decay, (1.0 - tau_min) / max(total_steps, 1))


class FieldControllers(nn.Module):
    """The ``[F, 2]`` drop/keep logits (step 1) and their Gumbel-softmax keep weights (step 2)."""

    def __init__(self, num_fields: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.full((num_fields, 2), 0.5))  # [:, 0] drop, [:, 1] keep

    def keep_weights(self, batch: int, tau: float) -> torch.Tensor:
        """Relaxed keep weights ``w`` ``[B, F]`` (step 2)."""
        return F.gumbel_softmax(self.alpha.expand(batch, -1, -1), tau=tau, hard=False)[..., 1]

    def keep_probability(self) -> torch.Tensor:
        """``p_f = softmax(α_f)_keep`` ``[F]``."""
        return torch.softmax(self.alpha.detach(), dim=1)[:, 1]


def train_field_controllers(model, data, *, epochs: int, batch_size: int, lr: float, arch_lr: float,
                            arch_fraction: float, seed: int) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Bi-level search (steps 2-4) on ``model`` (trained in place); returns ``p`` ``[F]`` and the trace."""
    split = data.split("train")
    ids, labels = in_memory_ctr(split)
    n = len(split)
    perm = np.random.default_rng([seed, 17]).permutation(n)
    n_arch = min(max(int(round(n * arch_fraction)), 1), n - 1)
    arch_rows, weight_rows = np.sort(perm[:n_arch]), np.sort(perm[n_arch:])
    steps_per_epoch = math.ceil(len(weight_rows) / batch_size)
    rate = annealing_rate(epochs * steps_per_epoch)
    controllers = FieldControllers(model.num_fields)
    model_opts = default_optimizers(model, lr)
    arch_opt = torch.optim.SGD(controllers.parameters(), lr=arch_lr)  # plain SGD: step 4, choice
    cpu, dist = torch.device("cpu"), DistInfo()

    def arch_batches():
        for e in range(1, 1_000_000):
            order = arch_rows[epoch_order(len(arch_rows), seed + 1, e)]
            yield from iter_ctr_batches(ids, labels, order, batch_size, dist, cpu)

    arch_iter = arch_batches()
    tau, step, detach = 1.0, 0, True
    weights = (lambda x: controllers.keep_weights(x.shape[0], tau).detach() if detach  # noqa: E731
               else controllers.keep_weights(x.shape[0], tau))
    arch_sum, arch_n = torch.zeros((), dtype=torch.float64), 0
    trace: list[dict[str, Any]] = []

    def weight_rows_epoch(epoch: int):
        return iter_ctr_batches(ids, labels, weight_rows[epoch_order(len(weight_rows), seed, epoch)], batch_size, dist, cpu)

    def model_step(batch):  # the loss of the model step: w fixed, training batch
        nonlocal tau, detach
        x, y = batch
        tau = max(PAPER_TAU_MIN, 1.0 - rate * step)
        detach = True
        return F.binary_cross_entropy_with_logits(model(x), y), len(y)

    def controller_step(_info) -> bool:  # after each model step: model fixed, architecture batch
        nonlocal detach, step, arch_sum, arch_n
        detach = False
        xa, ya = next(arch_iter)
        arch_loss = F.binary_cross_entropy_with_logits(model(xa), ya)
        arch_opt.zero_grad(set_to_none=True)
        arch_loss.backward()
        arch_opt.step()
        arch_sum, arch_n, step = arch_sum + arch_loss.detach() * len(ya), arch_n + len(ya), step + 1
        return False

    def record_epoch(stats, _state) -> bool:
        nonlocal arch_sum, arch_n
        trace.append({"epoch": stats.epoch, "steps": step, "tau": tau, "train_loss": stats.train_loss,
                      "arch_loss": float(arch_sum) / max(arch_n, 1),
                      "keep_probability": [round(float(p), 4) for p in controllers.keep_probability()]})
        arch_sum, arch_n = torch.zeros((), dtype=torch.float64), 0
        return False

    with gated_fields(model, weights):
        fit(model, model_opts, batches=weight_rows_epoch, loss=model_step, epochs=epochs, seed=seed,
            on_step=controller_step, on_epoch=record_epoch)
    model.zero_grad(set_to_none=True)
    trace.append({"arch_rows": int(n_arch), "weight_rows": int(len(weight_rows)), "tau_decay_per_step": rate,
                  "arch_split": f"held-out {arch_fraction:.0%} of train (seeded), val untouched"})
    return controllers.keep_probability(), trace


@register_searcher
class AutoFieldSearcher(RetrainingSearcher):
    """Learned keep/drop per field, top fields that fit the budget, retrain (module docstring).

    Parameters
    ----------
    search_epochs : epochs of the bi-level controller search over the weight part of train.
    arch_lr : SGD learning rate of the controllers ``α`` (step 4).
    arch_fraction : share of the train split held out for the architecture (controller) steps.
    num_fields : keep at most this many fields (``None``: as many as the budget allows).
    epochs, lr, batch_size, seed, patience : model weights (search) and retraining.
    first_order : the first-order table: ``auto`` | ``keep`` | ``fp16`` | ``drop`` (``search.fixed_parts``).
    signal_level : level of the ranking's signal check (``subset.ranking_signal``; 0 = off): the
        kept fields must matter more on validation than the dropped ones, else ``WeakSignalError``.
    """

    name = "autofield"

    def __init__(self, *, search_epochs: int = 2, arch_lr: float = 1.0, arch_fraction: float = 0.1,
                 num_fields: int | None = None, epochs: int = 5, lr: float = 1e-3, batch_size: int = 1024,
                 seed: int = 0, patience: int = 2, first_order: str = "auto",
                 signal_level: float = SIGNAL_LEVEL) -> None:
        self.search_epochs = search_epochs
        self.arch_lr = arch_lr
        self.signal_level = signal_level
        self.arch_fraction = arch_fraction
        self.num_fields = num_fields
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.seed = seed
        self.patience = patience
        self.first_order = first_order

    def _check(self, ctx: SearchContext) -> None:
        from ondevice.errors import BadInputError

        if self.search_epochs < 1:
            raise BadInputError(f"autofield: search_epochs must be >= 1, got {self.search_epochs}")
        if not 0.0 < self.arch_fraction < 1.0:
            raise BadInputError(f"autofield: arch_fraction must be in (0, 1), got {self.arch_fraction}")
        if self.num_fields is not None and not 1 <= self.num_fields <= ctx.model.num_fields:
            raise BadInputError(f"autofield: num_fields must be in 1..{ctx.model.num_fields}, got {self.num_fields}")

    def _search(self, ctx: SearchContext) -> SearchResult:
        self._check(ctx)

        def score(model):
            return train_field_controllers(model, ctx.data, epochs=self.search_epochs, batch_size=self.batch_size,
                                           lr=self.lr, arch_lr=self.arch_lr, arch_fraction=self.arch_fraction,
                                           seed=self.seed)

        return search_ranked_fields(self, ctx, score, score_name="keep_probability", config_type="AutoFieldConfig",
                                    max_fields=self.num_fields)
