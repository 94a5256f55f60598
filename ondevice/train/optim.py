"""Optimisers: Adam on dense parameters, lazy (row-sparse) Adam on embedding tables.

``make_optimizers`` is the one optimiser split of the project: the trainer and the searchers'
retraining (``ondevice.search.retrain``) both build their optimisers here. Dense parameters
get Adam (torch's fused kernel where available); embedding tables with row-sparse gradients
get ``LazyAdam``, ``torch.optim.SparseAdam``'s maths and state with a faster step (a step
touches only the rows in the batch, as in TF's LazyAdam; Kingma & Ba, ICLR'15, Algorithm 1).
``lazy_tables`` resolves ``TrainConfig.sparse_embeddings`` ("auto": lazy above
``DENSE_TABLE_ENTRIES`` table entries).
"""

from __future__ import annotations

import math

import torch

from ondevice.models import RecModel

__all__ = ["DENSE_TABLE_ENTRIES", "LazyAdam", "dense_adam", "lazy_tables", "make_optimizers"]

# Table entries (rows x dim, all tables) up to which ``sparse_embeddings="auto"`` trains the
# tables with dense gradients + Adam (coupled L2 on every row, the original PEP code's setting);
# above it lazy Adam keeps a step O(batch rows) instead of O(table).
DENSE_TABLE_ENTRIES = 1 << 22


def dense_adam(params: list[torch.nn.Parameter], *, lr: float, weight_decay: float) -> torch.optim.Adam:
    """Adam for the dense parameters, with the fused kernel where torch has one.

    ``fused=True`` runs the whole update of each tensor in one vectorised kernel (CPU since
    torch 2.4, CUDA) instead of ~6 elementwise passes; the maths is Adam's. It falls back to
    the default implementation for parameters the fused kernel does not take.
    """
    if all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params):
        try:
            return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
        except (RuntimeError, ValueError):
            pass
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


class LazyAdam(torch.optim.SparseAdam):
    """``torch.optim.SparseAdam`` with a faster step; same maths, same state layout.

    Every step touches only the rows in the batch: the gradient is coalesced (one sort of
    the batch's row ids), those rows of the moments are gathered, updated and scattered
    back, and the parameter rows get ``-lr_t * m / (sqrt(v) + eps)``. torch's reference
    implementation does the same arithmetic through sparse-tensor ``sparse_mask``/``add_``
    calls that cost several times more per step on CPU. The state dict is SparseAdam's
    (``step``, ``exp_avg``, ``exp_avg_sq`` per parameter), so checkpoints stay compatible.
    """

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            eps, lr = group["eps"], float(group["lr"])
            maximize = group.get("maximize", False)
            rowwise: list[tuple[torch.Tensor, torch.Tensor]] = []
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if not grad.is_sparse:
                    raise RuntimeError("SparseAdam does not support dense gradients, please consider Adam instead")
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                if grad.sparse_dim() == 1 and p.dim() == 2 and grad.dense_dim() == 1:
                    rowwise.append((p, grad))
                else:
                    torch.optim._functional.sparse_adam(
                        [p], [grad], [state["exp_avg"]], [state["exp_avg_sq"]], [state["step"]],
                        eps=eps, beta1=beta1, beta2=beta2, lr=lr, maximize=maximize)
            for p, (rows, g) in zip([p for p, _ in rowwise], _coalesce_rowwise([g for _, g in rowwise]), strict=True):
                if g.numel() == 0:
                    continue
                if maximize:
                    g = -g
                state = self.state[p]
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                # old <- old + (1 - b) * (new - old), exactly as SparseAdam writes it
                m = exp_avg.index_select(0, rows)
                m.add_(g.sub(m).mul_(1 - beta1))
                v = exp_avg_sq.index_select(0, rows)
                v.add_(g.pow(2).sub_(v).mul_(1 - beta2))
                exp_avg.index_copy_(0, rows, m)
                exp_avg_sq.index_copy_(0, rows, v)
                step = state["step"]
                step_size = lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)
                # rows are unique after coalesce: gather-add-scatter (index_add_ would take
                # the slower duplicate-safe scatter_add path on CPU)
                update = m.div_(v.sqrt_().add_(eps)).mul_(-step_size)
                p.index_copy_(0, rows, p.index_select(0, rows).add_(update))
        return loss


def _coalesce_rowwise(grads: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(unique rows, summed gradient rows) of each row-sparse gradient.

    Gradients with the same row ids (a model's interaction table and its dim-1 linear
    table are looked up with the same ids) are coalesced together, side by side: one sort
    instead of one per table, with the same sums.
    """
    out: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(grads)
    groups: list[list[int]] = []
    for i, g in enumerate(grads):
        idx = g._indices()
        for members in groups:
            ref = grads[members[0]]
            if ref.shape[0] == g.shape[0] and ref._indices().shape == idx.shape and torch.equal(ref._indices(), idx):
                members.append(i)
                break
        else:
            groups.append([i])
    for members in groups:
        if len(members) == 1:
            c = grads[members[0]].coalesce()
            out[members[0]] = (c._indices()[0], c._values())
            continue
        ref = grads[members[0]]
        widths = [grads[i].shape[1] for i in members]
        values = torch.cat([grads[i]._values() for i in members], dim=1)
        c = torch.sparse_coo_tensor(ref._indices(), values, (ref.shape[0], sum(widths)), check_invariants=False).coalesce()
        rows, parts = c._indices()[0], c._values().split(widths, dim=1)
        for i, part in zip(members, parts, strict=True):
            out[i] = (rows, part)
    return out  # type: ignore[return-value]


def make_optimizers(model: RecModel, *, lr: float, weight_decay: float = 0.0,
                    embedding_lr: float | None = None) -> list[torch.optim.Optimizer]:
    """Adam (fused where possible) on dense parameters + ``LazyAdam`` on row-sparse tables.

    The one optimiser split of the project: the trainer and the searchers' retraining loops
    (``ondevice.search.retrain``) both build their optimisers here. Frozen parameters
    (``requires_grad=False``, e.g. int8/fp16 tables) are left out.
    """
    sparse_ids = {id(p) for p in model.sparse_parameters()}
    dense = [p for p in model.parameters() if p.requires_grad and id(p) not in sparse_ids]
    sparse = [p for p in model.sparse_parameters() if p.requires_grad]
    opts: list[torch.optim.Optimizer] = []
    if dense:
        opts.append(dense_adam(dense, lr=lr, weight_decay=weight_decay))
    if sparse:
        opts.append(LazyAdam(sparse, lr=embedding_lr or lr))
    return opts


def lazy_tables(setting: bool | str, model: RecModel) -> bool:
    """Whether the tables train with lazy (row-sparse) Adam: ``sparse_embeddings`` resolved."""
    if setting == "auto":
        entries = sum(layer.weight.numel() for layer in model.embedding_layers().values() if hasattr(layer, "weight"))
        return entries > DENSE_TABLE_ENTRIES
    return bool(setting)

