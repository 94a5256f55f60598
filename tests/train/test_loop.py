"""The shared training loop (ondevice.train.loop): early stopping, restore-best, hooks, deadline, resume."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from ondevice.train.loop import LoopState, deadline, fit

torch.set_num_threads(1)


def _problem(seed: int = 0):
    """A linear regression a small net learns in a few epochs: (model, optimiser, batches, loss)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 4, generator=gen)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def batches(epoch: int):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        for i in range(0, len(x), 32):
            rows = order[i:i + 32]
            yield x[rows], y[rows]

    def loss(batch):
        xb, yb = batch
        return F.mse_loss(model(xb).squeeze(1), yb), len(yb)

    return model, opt, batches, loss


def test_scripted_metric_stops_after_patience_and_restores_the_best_weights():
    model, opt, batches, loss = _problem()
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.9])
    weights_at: dict[int, torch.Tensor] = {}

    def evaluate():
        return {"auc": next(scores)}

    def remember(stats, state):
        weights_at[stats.epoch] = model.weight.detach().clone()

    out = fit(model, [opt], batches=batches, loss=loss, epochs=5, seed=0, evaluate=evaluate, metric="auc",
              patience=2, restore_best=True, on_epoch=remember)
    assert [e.epoch for e in out.epochs] == [1, 2, 3, 4]  # epochs 3 and 4 without improvement: stop
    assert [e.improved for e in out.epochs] == [True, True, False, False]
    assert out.state.best_epoch == 2 and out.state.best_metric == 0.7 and out.val == {"auc": 0.7}
    assert torch.equal(model.weight, weights_at[2]) and not torch.equal(weights_at[2], weights_at[4])
    assert out.epochs[-1].train_loss < out.epochs[0].train_loss  # it does learn
    assert not out.stopped_early and not model.training


def test_on_step_stops_mid_epoch_and_the_epoch_still_counts():
    model, opt, batches, loss = _problem()
    seen = []

    def on_step(info):
        seen.append((info.epoch, info.step, info.steps, info.samples))
        return info.steps == 11

    out = fit(model, [opt], batches=batches, loss=loss, epochs=5, seed=0, evaluate=lambda: {"m": 1.0},
              metric="m", on_step=on_step)
    assert seen[7] == (1, 8, 8, 256) and seen[-1] == (2, 3, 11, 96)  # 8 batches of 32 per epoch
    assert out.stopped_early and out.state.steps == 11 and [e.epoch for e in out.epochs] == [1, 2]
    assert out.epochs[-1].samples == 96 and out.epochs[-1].val == {"m": 1.0}


def test_same_seed_same_weights_and_resume_continues_exactly():
    straight, opt, batches, loss = _problem()
    fit(straight, [opt], batches=batches, loss=loss, epochs=3, seed=4)
    resumed, opt2, batches2, loss2 = _problem()
    first = fit(resumed, [opt2], batches=batches2, loss=loss2, epochs=1, seed=4)
    fit(resumed, [opt2], batches=batches2, loss=loss2, epochs=3, seed=4, state=first.state)
    assert torch.equal(straight.weight, resumed.weight) and torch.equal(straight.bias, resumed.bias)


def test_nothing_to_train_only_evaluates():
    model, opt, batches, loss = _problem()
    before = model.weight.detach().clone()
    calls = []
    out = fit(model, [opt], batches=batches, loss=loss, epochs=0, seed=0,
              evaluate=lambda: calls.append(1) or {"m": 0.25}, metric="m")
    assert out.epochs == [] and out.val == {"m": 0.25} and calls == [1]
    assert torch.equal(model.weight, before)
    done = LoopState(epoch=3, bad_epochs=2)  # a resumed run that already ran out of patience
    out = fit(model, [opt], batches=batches, loss=loss, epochs=5, seed=0, patience=2, state=done)
    assert out.epochs == [] and torch.equal(model.weight, before)


def test_a_passed_deadline_stops_at_the_next_step():
    model, opt, batches, loss = _problem()
    with deadline(time.monotonic() - 1):  # already passed: nothing trains
        out = fit(model, [opt], batches=batches, loss=loss, epochs=3, seed=0, evaluate=lambda: {"m": 0.0}, metric="m")
    assert out.stopped_at_deadline and out.epochs == [] and out.val == {"m": 0.0}
    limit = [time.monotonic() + 3600]

    def batches_under_limit(epoch):
        """Each batch is trained inside ``deadline(limit)``; the limit passes at epoch 2's fourth step."""
        for i, batch in enumerate(batches(epoch)):
            if epoch == 2 and i == 3:
                limit[0] = time.monotonic() - 1
            with deadline(limit[0]):
                yield batch  # the loop steps, then checks the deadline, before asking for the next batch

    out = fit(model, [opt], batches=batches_under_limit, loss=loss, epochs=5, seed=0, evaluate=lambda: {"m": 0.0},
              metric="m")
    assert out.stopped_at_deadline and out.stopped_early
    assert [e.epoch for e in out.epochs] == [1, 2] and out.state.steps == 8 + 4


def test_score_start_keeps_a_warm_start_that_training_only_makes_worse():
    """With ``score_start`` the starting weights compete as epoch 0: when every trained epoch
    scores below them (a warm start the first epochs overfit), they are restored."""
    model, opt, batches, loss = _problem()
    start = model.weight.detach().clone()
    scores = iter([0.9, 0.8, 0.85, 0.7])

    out = fit(model, [opt], batches=batches, loss=loss, epochs=5, seed=0, evaluate=lambda: {"auc": next(scores)},
              metric="auc", patience=2, restore_best=True, score_start=True)
    assert [e.epoch for e in out.epochs] == [1, 2]  # two epochs without beating the start: stop
    assert out.state.best_epoch == 0 and out.val == {"auc": 0.9}
    assert torch.equal(model.weight, start)

    model, opt, batches, loss = _problem()  # without it, the start is never scored
    scores = iter([0.8, 0.85, 0.7, 0.6])
    out = fit(model, [opt], batches=batches, loss=loss, epochs=5, seed=0, evaluate=lambda: {"auc": next(scores)},
              metric="auc", patience=2, restore_best=True)
    assert out.state.best_epoch == 2 and out.val == {"auc": 0.85}


def test_a_lone_last_row_joins_the_batch_before_it(tmp_path) -> None:
    """``n % batch_size == 1`` must not leave a one-row batch: BatchNorm cannot train on it
    (AutoField crashed on MovieLens-1M's 10k-row CTR head: 7,169 weight rows, batch 1024)."""
    import numpy as np

    from ondevice.train import TrainConfig, train
    from ondevice.train.batches import ctr_batch_count, iter_ctr_batches
    from ondevice.train.distributed import DistInfo
    from tests.conftest import make_ctr

    ids, labels = np.arange(21).reshape(21, 1), np.zeros(21, dtype=np.float32)
    sizes = [len(y) for _, y in iter_ctr_batches(ids, labels, np.arange(21), 10, DistInfo(), torch.device("cpu"))]
    assert sizes == [10, 11] and ctr_batch_count(21, 10) == 2
    assert [ctr_batch_count(n, 10) for n in (1, 10, 11, 12, 20)] == [1, 1, 1, 2, 2]
    assert [len(y) for _, y in iter_ctr_batches(ids, labels, np.arange(12), 10, DistInfo(), torch.device("cpu"))] == [10, 2]
    # end to end: a DeepFM with BatchNorm trains on 4,800 rows in batches of 4,799
    data = make_ctr(tmp_path / "ctr")
    result = train(data, tmp_path / "run", TrainConfig(model="deepfm", epochs=1, batch_size=4799, batch_norm=True),
                   quiet=True)
    assert result.val["auc"] > 0.5
