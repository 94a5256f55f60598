"""AdaFS: adaptive (per-sample) field weights, used here to rank fields for a byte budget.

Lin et al., "AdaFS: Adaptive Feature Selection in Deep Recommender System", KDD 2022 (survey §4;
methods.md §6). The authors' code was not located: details follow the survey and third-party notes.

1. Controller: a sample's field embeddings are batch-normalised (survey Eq. (17),
   ``ê = (e − Mean_B)/sqrt(Var_B + ε)``, no affine), flattened ``[B, F·D]`` and fed to an MLP
   (``hidden`` units, ReLU) with one output per field; ``softmax`` over fields gives ``a_f^m``.
2. Soft selection: ``F · a_f^m`` multiplies sample ``m``'s field-``f`` embedding and first-order
   weight.
3. Controller and model train jointly on the training split (one level), from the checkpoint.
4. Fields ranked by their mean controller weight over a held-out ``holdout_fraction`` of train;
   the largest top-k that fits the budget is kept and the model retrained over it (as AutoField,
   steps 5-6, signal check included). The controller is not deployed.

Deviations from the paper:

* The factor ``F`` in step 2 (the paper multiplies by ``a`` alone and trains from scratch):
  uniform weights are then the identity, so the search starts exactly at the pretrained model.
* One-level training: the controller has no architecture/weight split to keep apart.
* No per-sample "hard" top-k at inference: any sample may pick any field, so every table would
  stay on the device and nothing would be saved. AdaFS here is a second, static field ranking
  (per-sample importance averaged, no Gumbel noise or temperature), not a format of its own.

Measured: ``benchmarks/results/feature_selection.md`` (planted-field ranks, signal check, Frappe
and Criteo at ½ and ¼ of the bytes).
"""

from __future__ import annotations

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

__all__ = ["AdaFSSearcher", "FieldController", "train_field_controller"]


class FieldController(nn.Module):
    """BN (survey Eq. (17)) → MLP → softmax over fields: per-sample weights ``[B, F]`` (steps 1-2)."""

    def __init__(self, num_fields: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.num_fields = num_fields
        self.norm = nn.BatchNorm1d(num_fields * dim, affine=False)
        self.mlp = nn.Sequential(nn.Linear(num_fields * dim, hidden), nn.ReLU(), nn.Linear(hidden, num_fields))
        nn.init.zeros_(self.mlp[2].weight)  # uniform weights at the start: the pretrained model exactly
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        """``[B, F, D] -> [B, F]``, ``F · softmax`` (mean 1 per sample)."""
        return self.num_fields * torch.softmax(self.mlp(self.norm(emb.flatten(1))), dim=1)


def train_field_controller(model, data, *, epochs: int, batch_size: int, lr: float, controller_lr: float,
                           hidden: int, holdout_fraction: float, seed: int) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Joint training (step 3); returns the mean weight per field on the held-out rows ``[F]`` and a trace."""
    split = data.split("train")
    ids, labels = in_memory_ctr(split)
    n = len(split)
    perm = np.random.default_rng([seed, 17]).permutation(n)
    n_hold = min(max(int(round(n * holdout_fraction)), 1), n - 1)
    hold_rows, train_rows = np.sort(perm[:n_hold]), np.sort(perm[n_hold:])
    controller = FieldController(model.num_fields, model.embed_dim, hidden)
    opts = [*default_optimizers(model, lr), torch.optim.Adam(controller.parameters(), lr=controller_lr)]
    cpu, dist = torch.device("cpu"), DistInfo()

    def batches(epoch: int):
        controller.train()  # the loop puts the model in training mode
        order = train_rows[epoch_order(len(train_rows), seed, epoch)]
        for x, y in iter_ctr_batches(ids, labels, order, batch_size, dist, cpu):
            if len(y) >= 2:  # batch statistics (Eq. 17) need two rows; a 1-row tail batch is skipped
                yield x, y

    def bce(batch):
        x, y = batch
        return F.binary_cross_entropy_with_logits(model(x), y), len(y)

    with gated_fields(model, lambda x: controller(model.embedding(x))):
        run = fit(model, opts, batches=batches, loss=bce, epochs=epochs, seed=seed)
    trace: list[dict[str, Any]] = [{"epoch": e.epoch, "train_loss": e.train_loss} for e in run.epochs]
    model.zero_grad(set_to_none=True)
    model.eval(), controller.eval()
    weight_sum = torch.zeros(model.num_fields, dtype=torch.float64)
    with torch.no_grad():
        for x, _ in iter_ctr_batches(ids, labels, hold_rows, 4096, dist, cpu):
            weight_sum += controller(model.embedding(x)).sum(0).double()
    mean = (weight_sum / len(hold_rows)).float()
    trace.append({"holdout_rows": int(n_hold), "mean_weight": [round(float(w), 4) for w in mean]})
    return mean, trace


@register_searcher
class AdaFSSearcher(RetrainingSearcher):
    """Per-sample controller, fields ranked by mean weight, top fields that fit, retrain (module docstring).

    Parameters
    ----------
    search_epochs : epochs of joint controller + model training.
    controller_lr : Adam learning rate of the controller.
    hidden : controller MLP width.
    holdout_fraction : share of train whose mean controller weights rank the fields.
    num_fields : keep at most this many fields (``None``: as many as the budget allows).
    epochs, lr, batch_size, seed, patience : model weights and retraining.
    first_order : the first-order table: ``auto`` | ``keep`` | ``fp16`` | ``drop`` (``search.fixed_parts``).
    signal_level : level of the ranking's signal check (``subset.ranking_signal``; 0 = off): the
        kept fields must matter more on validation than the dropped ones, else ``WeakSignalError``.
    """

    name = "adafs"

    def __init__(self, *, search_epochs: int = 2, controller_lr: float = 1e-3, hidden: int = 64,
                 holdout_fraction: float = 0.1, num_fields: int | None = None, epochs: int = 5, lr: float = 1e-3,
                 batch_size: int = 1024, seed: int = 0, patience: int = 2, first_order: str = "auto",
                 signal_level: float = SIGNAL_LEVEL) -> None:
        self.search_epochs = search_epochs
        self.controller_lr = controller_lr
        self.signal_level = signal_level
        self.hidden = hidden
        self.holdout_fraction = holdout_fraction
        self.num_fields = num_fields
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.seed = seed
        self.patience = patience
        self.first_order = first_order

    def _search(self, ctx: SearchContext) -> SearchResult:
        from ondevice.errors import BadInputError

        if self.search_epochs < 1 or not 0.0 < self.holdout_fraction < 1.0:
            raise BadInputError("adafs: search_epochs must be >= 1 and holdout_fraction in (0, 1)")
        if self.num_fields is not None and not 1 <= self.num_fields <= ctx.model.num_fields:
            raise BadInputError(f"adafs: num_fields must be in 1..{ctx.model.num_fields}, got {self.num_fields}")

        def score(model):
            return train_field_controller(model, ctx.data, epochs=self.search_epochs, batch_size=self.batch_size,
                                          lr=self.lr, controller_lr=self.controller_lr, hidden=self.hidden,
                                          holdout_fraction=self.holdout_fraction, seed=self.seed)

        return search_ranked_fields(self, ctx, score, score_name="mean_weight", config_type="AdaFSConfig",
                                    max_fields=self.num_fields)
