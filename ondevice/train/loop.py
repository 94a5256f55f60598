"""The one training loop: epochs, steps, early stopping, restore-best, deadline, hooks.

``fit`` drives every training run of the project: ``Trainer`` (``ondevice train``) and the
searchers' search phases and retraining (``ondevice.search.retrain.fit_ctr`` / ``fit_topk``).
A caller brings what differs (the batches of an epoch, the loss of a batch, the optimisers,
the validation metrics); the loop owns what is the same for everyone:

* epoch ``e`` starts with ``torch.manual_seed(seed + e)`` and ``model.train()``; callers draw
  the epoch's shuffle from ``numpy.random.default_rng([seed, e])`` (``batches.epoch_order``),
  so a run resumed at epoch ``e`` continues exactly as an uninterrupted one;
* one step: ``zero_grad`` on every optimiser, ``backward``, optionally clip the norm of the
  dense gradients, ``step``. The running loss stays a float64 tensor on the device (no host
  sync per step); an epoch's ``train_loss`` is its row-weighted mean;
* ``on_step(info)`` runs after every step and stops training by returning ``True`` (PEP's
  byte-target snapshot, the trainer's progress bar returns nothing). The innermost
  ``deadline`` (``compress --time-limit``) stops it too, at the first step after the limit;
* after each epoch ``evaluate()`` gives the validation metrics. The epoch improves when
  ``metric`` is strictly higher than the best so far; ``patience`` epochs in a row without
  improvement stop training (checked before each epoch, so a resumed state that already ran
  out of patience trains no more). With ``restore_best`` an in-memory copy of the best
  epoch's weights is loaded back at the end (the Trainer keeps its best on disk instead,
  in ``model.pt``, because a resumed run's best epoch may predate the process);
* ``on_epoch(stats, state)`` runs after each epoch (and its evaluation) and stops training by
  returning ``True`` (``tune``'s pruning); the Trainer writes its checkpoints there.

A stopped epoch (by ``on_step``, the deadline or ``on_epoch``) is still evaluated and counts
for the best epoch, so a run stopped at a time limit returns a valid model.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from ondevice.train.progress import tick

__all__ = ["EpochStats", "LoopResult", "LoopState", "StepInfo", "deadline", "fit", "past_deadline"]

_DEADLINES: list[float] = []  # time.monotonic() values, innermost last


@contextmanager
def deadline(at: float | None) -> Iterator[None]:
    """Training loops inside stop at the first step after ``time.monotonic() > at`` (``None``: no limit)."""
    if at is None:
        yield
        return
    _DEADLINES.append(float(at))
    try:
        yield
    finally:
        _DEADLINES.pop()


def past_deadline() -> bool:
    """Whether the innermost ``deadline`` has passed."""
    return bool(_DEADLINES) and time.monotonic() > min(_DEADLINES)


@dataclass
class StepInfo:
    """What ``on_step`` sees after an optimiser step."""

    epoch: int
    step: int  # steps in this epoch, 1-based
    steps: int  # optimiser steps since the start of this fit
    samples: int  # rows trained on in this epoch
    loss_sum: torch.Tensor  # Σ loss · rows over this epoch (float64, on the device)
    epoch_started: float  # time.perf_counter() when the epoch's training began


@dataclass
class EpochStats:
    """One epoch: its mean training loss, rows, steps, training seconds and validation metrics."""

    epoch: int
    train_loss: float
    samples: int
    steps: int  # optimiser steps since the start of this fit, at the end of the epoch
    seconds: float  # training only; evaluation excluded
    val: dict[str, Any] = field(default_factory=dict)  # empty when not evaluated
    improved: bool = False


@dataclass
class LoopState:
    """What early stopping tracks; the Trainer checkpoints it and resumes from it."""

    epoch: int = 0  # the last finished epoch
    best_metric: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs in a row without improvement
    steps: int = 0


@dataclass
class LoopResult:
    state: LoopState
    epochs: list[EpochStats]  # the epochs this call trained
    val: dict[str, Any]  # the restored best epoch's metrics with restore_best, else the last evaluation's
    seconds: float  # wall time of the call
    stopped_early: bool = False  # by on_step, the deadline or on_epoch (not by patience)
    stopped_at_deadline: bool = False


def fit(
    model: torch.nn.Module,
    optimizers: list[torch.optim.Optimizer],
    *,
    batches: Callable[[int], Iterable[Any]],
    loss: Callable[[Any], tuple[torch.Tensor, int]],
    epochs: int,
    seed: int,
    evaluate: Callable[[], dict[str, Any]] | None = None,
    metric: str = "",
    patience: int | None = None,
    restore_best: bool = False,
    state: LoopState | None = None,
    grad_clip: float | None = None,
    max_steps_per_epoch: int | None = None,
    on_step: Callable[[StepInfo], bool | None] | None = None,
    on_epoch: Callable[[EpochStats, LoopState], bool | None] | None = None,
    device: str | torch.device = "cpu",
    score_start: bool = False,
) -> LoopResult:
    """Train ``model`` in place for epochs ``state.epoch + 1 .. epochs`` (module docstring).

    ``batches(epoch)`` yields the epoch's batches; ``loss(batch)`` returns the batch's mean
    loss and its rows. ``evaluate`` (optional) returns validation metrics holding ``metric``;
    ``patience=None`` never stops early. When no epoch is trained (``epochs=0``, a passed
    deadline, a resumed state already done) ``evaluate`` is called once for ``val``.
    ``score_start`` (with ``evaluate`` and ``restore_best``, on a fresh state): the starting
    weights are scored as epoch 0 and compete for best; a warm-started retrain whose first
    epochs overfit then keeps its start instead of a worse epoch. An epoch cut short by a passed
    ``deadline`` is not scored when weights were scored before it: the best of those is kept.
    """
    state = state if state is not None else LoopState()
    started = time.perf_counter()
    trained: list[EpochStats] = []
    best_weights: dict[str, Any] | None = None
    val: dict[str, Any] = {}
    best_val: dict[str, Any] = {}
    stopped, at_deadline = False, past_deadline()
    if score_start and evaluate is not None and restore_best and state.epoch == 0 and not at_deadline:
        val = evaluate()
        _record_validation(state, 0, val[metric])
        best_weights, best_val = copy.deepcopy(model.state_dict()), val
    for epoch in range(state.epoch + 1, 0 if at_deadline else epochs + 1):
        if patience is not None and state.bad_epochs >= patience:
            break
        stats, stopped, at_deadline = _train_epoch(model, optimizers, epoch, epochs, batches, loss, seed, state,
                                                   grad_clip, max_steps_per_epoch, on_step, device)
        if evaluate is not None and not (at_deadline and best_weights is not None):
            # past a time limit with weights already scored: those are kept, no further evaluation
            val = stats.val = evaluate()
            stats.improved = _record_validation(state, epoch, val[metric])
            if stats.improved and restore_best:
                best_weights, best_val = copy.deepcopy(model.state_dict()), val
        state.epoch = epoch
        trained.append(stats)
        if on_epoch is not None and on_epoch(stats, state):
            stopped = True
        if stopped:
            break
    if best_weights is not None:
        model.load_state_dict(best_weights)
        val = best_val  # evaluation is deterministic: the restored weights score exactly this
    if evaluate is not None and not trained and not val:
        val = evaluate()  # nothing to train: evaluate only
    model.eval()
    return LoopResult(state=state, epochs=trained, val=val, seconds=time.perf_counter() - started,
                      stopped_early=stopped, stopped_at_deadline=at_deadline)


def _train_epoch(model, optimizers, epoch, epochs, batches, loss, seed, state, grad_clip, max_steps, on_step,
                 device) -> tuple[EpochStats, bool, bool]:
    """One epoch of steps; returns its stats and whether ``on_step`` / the deadline stopped it."""
    torch.manual_seed(seed + epoch)
    model.train()
    t0 = time.perf_counter()
    loss_sum, samples = torch.zeros((), dtype=torch.float64, device=device), 0
    stopped = at_deadline = False
    for step, batch in enumerate(batches(epoch), start=1):
        value, rows = loss(batch)
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        value.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(
                [p for p in model.parameters() if p.grad is not None and not p.grad.is_sparse], grad_clip)
        for opt in optimizers:
            opt.step()
        state.steps += 1
        loss_sum += value.detach() * rows
        samples += rows
        tick(epoch, epochs, state.steps)  # an open TTY progress bar (one list check when none is)
        if on_step is not None and on_step(StepInfo(epoch, step, state.steps, samples, loss_sum, t0)):
            stopped = True
        elif past_deadline():
            stopped = at_deadline = True
        if stopped or (max_steps is not None and step >= max_steps):
            break
    stats = EpochStats(epoch=epoch, train_loss=float(loss_sum) / max(samples, 1), samples=samples,
                       steps=state.steps, seconds=time.perf_counter() - t0)
    return stats, stopped, at_deadline


def _record_validation(state: LoopState, epoch: int, value: float) -> bool:
    """Update the best epoch and the patience count; whether ``epoch`` improved on the best."""
    if value > state.best_metric:
        state.best_metric, state.best_epoch, state.bad_epochs = value, epoch, 0
        return True
    state.bad_epochs += 1
    return False
