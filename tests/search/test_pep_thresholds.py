"""PEP reaches its targets through the thresholds (issue 12), and says so when it does not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ondevice.data import EncodedDataset
from ondevice.errors import BadInputError
from ondevice.search import make_searcher
from ondevice.train import load_checkpoint

KW = {"batch_size": 256, "epochs": 1}


def _data(run: Path) -> EncodedDataset:
    return EncodedDataset(json.loads((run / "train.json").read_text())["data_dir"])


@pytest.mark.parametrize("sparsity", [0.8, 0.95])
def test_default_pep_reaches_sparsity_by_thresholds(trained_run: Path, sparsity: float) -> None:
    ckpt = load_checkpoint(trained_run)
    result = make_searcher("pep", target_sparsity=sparsity, search_epochs=6, **KW).search(ckpt, _data(trained_run), 10**9)
    cfg = result.config["_data"]
    total = ckpt.model.embedding.weight.numel()
    assert cfg["reached_by"] == "threshold" and not result.warnings
    assert cfg["mask_nnz"] <= (1 - sparsity) * total
    decay = [e["threshold_decay"] for e in result.trace if "threshold_decay" in e]
    assert decay == sorted(decay)  # the pressure only rises


def test_paper_pressure_keeps_the_decay_and_warns_on_fallback(trained_run: Path) -> None:
    ckpt = load_checkpoint(trained_run)
    # the paper's dynamics (s moves ~lr per step, fixed decay) cannot reach 95 % in one epoch
    result = make_searcher("pep", target_sparsity=0.95, search_epochs=1, pressure="paper", threshold_lr=1e-3,
                           **KW).search(ckpt, _data(trained_run), 10**9)
    cfg = result.config["_data"]
    assert cfg["reached_by"] == "magnitude"
    assert {e["threshold_decay"] for e in result.trace if "threshold_decay" in e} == {1e-5}
    assert result.warnings and "magnitude" in result.warnings[0]
    assert cfg["mask_nnz"] <= 0.05 * ckpt.model.embedding.weight.numel()


def test_auto_threshold_lr_scales_with_the_search_budget(trained_run: Path) -> None:
    ckpt = load_checkpoint(trained_run)
    lrs = []
    for epochs in (2, 8):
        r = make_searcher("pep", target_sparsity=0.9, search_epochs=epochs, **KW).search(ckpt, _data(trained_run), 10**9)
        lrs.append(r.trace[0]["threshold_lr"])
    assert lrs[0] > lrs[1] >= 1e-3  # fewer steps: faster thresholds; never slower than the paper's lr


@pytest.mark.parametrize("bad", [{"target_sparsity": 1.0}, {"pressure": "strong"}, {"threshold_lr": -1.0},
                                 {"rewind": "later"}])
def test_bad_pep_settings_are_one_line_errors(trained_run: Path, bad: dict) -> None:
    with pytest.raises(BadInputError):
        make_searcher("pep", search_epochs=1, **KW, **bad).search(load_checkpoint(trained_run), _data(trained_run), 10**9)
