"""AutoField — field selection with learned keep/drop controllers (Wang et al., "AutoField:
Automating Feature Selection in Deep Recommender Systems", WWW'22; survey §4, methods.md §6).
The authors' code was not located; the details below follow the survey and third-party notes.

Method
------
1. Controllers. Per field ``f`` a pair of logits ``[α_f^drop, α_f^keep]``, both initialised
   to 0.5 (keep probability ``p_f = softmax(α_f)_keep = 0.5``).
2. Relaxed selection (Gumbel-softmax, survey §4)::

       w_f = exp((α_f^keep + g_1)/τ) / (exp((α_f^keep + g_1)/τ) + exp((α_f^drop + g_0)/τ)),
       g ~ Gumbel(0, 1)

   ``w_f`` multiplies field ``f``'s embedding and its first-order weight. Noise is drawn per
   sample (``[B, F]``): the same expected gradient as one draw per batch, lower variance.
3. Temperature: ``τ_t = max(τ_min, 1 − r·t)`` with the notes' ``r = 5e-5``, ``τ_min = 0.01``.
   That schedule needs ~20k steps to anneal; on a shorter search ``r`` is raised to
   ``(1 − τ_min) / total_steps`` so ``τ`` reaches ``τ_min`` at the last step
   (rule: ``r = max(5e-5, (1 − τ_min)/T)``).
4. Bi-level optimisation (DARTS first-order, alternating): model weights step on a training
   batch, then the controllers step on an *architecture* batch. Choice: the architecture
   batches come from a held-out ``arch_fraction`` (10 %) of the **train** split, never from
   val, so the validation metric reported after retraining is not one selection was fit on.
   The search starts from the pretrained checkpoint's weights. Choice: the controllers step
   with plain SGD, not DARTS's Adam. From a pretrained model every field's keep gradient
   points the same way (the model was trained with all fields at weight 1), and Adam's
   per-parameter normalisation then moves every ``α_f`` at the same speed, erasing the
   ranking; SGD keeps the gradient's magnitude, which is what separates informative fields
   (measured on planted data: Adam ranked a noise field second, SGD put the planted fields first).
5. Selection by budget (our product's rule, the paper keeps a fixed top-k): fields ranked by
   ``p_f``; the largest top-k whose sub-model's exact deployable bytes (``ByteAccountant``,
   graph overhead + margin included) fit the budget is kept (``subset.fit_ranked_fields``;
   ``num_fields`` caps k). If the top-ranked field alone does not fit, the budget is too
   small (``BudgetTooSmallError``): a lower-ranked field is never kept in its place.
6. Retrain: the model of the same class over the kept fields only (their pretrained table
   rows and MLP columns inherited, ``subset.select_model_fields``), trained on the data view
   over the kept fields (``EncodedDataset.select_fields``); the best val epoch is kept.
   A dropped field removes its whole table from the artefact and its input from the schema.
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
from ondevice.train.trainer import DistInfo, epoch_order, in_memory_ctr, iter_ctr_batches

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
    trace: list[dict[str, Any]] = []
    model.train()
    with gated_fields(model, weights):
        for epoch in range(1, epochs + 1):
            torch.manual_seed(seed + epoch)
            w_loss = a_loss = torch.zeros((), dtype=torch.float64)
            a_rows = 0
            order = weight_rows[epoch_order(len(weight_rows), seed, epoch)]
            for x, y in iter_ctr_batches(ids, labels, order, batch_size, dist, cpu):
                tau = max(PAPER_TAU_MIN, 1.0 - rate * step)
                detach = True  # model step: w fixed, training batch
                loss = F.binary_cross_entropy_with_logits(model(x), y)
                for o in model_opts:
                    o.zero_grad(set_to_none=True)
                loss.backward()
                for o in model_opts:
                    o.step()
                w_loss = w_loss + loss.detach() * len(y)
                detach = False  # controller step: model fixed, architecture batch
                xa, ya = next(arch_iter)
                arch_loss = F.binary_cross_entropy_with_logits(model(xa), ya)
                arch_opt.zero_grad(set_to_none=True)
                arch_loss.backward()
                arch_opt.step()
                a_loss = a_loss + arch_loss.detach() * len(ya)
                a_rows += len(ya)
                step += 1
            trace.append({"epoch": epoch, "steps": step, "tau": tau, "train_loss": float(w_loss) / len(weight_rows),
                          "arch_loss": float(a_loss) / max(a_rows, 1),
                          "keep_probability": [round(float(p), 4) for p in controllers.keep_probability()]})
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
