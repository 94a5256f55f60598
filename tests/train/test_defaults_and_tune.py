"""Training defaults (issue 12), the popularity baseline, and ``ondevice tune``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ondevice.cli import _register_commands, cli
from ondevice.errors import BadInputError
from ondevice.models import build_model
from ondevice.train import TrainConfig, evaluate_topk, train
from ondevice.train.evaluate import popularity_model
from ondevice.train.optim import DENSE_TABLE_ENTRIES, lazy_tables
from ondevice.train.tune import search_space

_register_commands()


def test_ctr_defaults_are_the_strong_setting() -> None:
    c = TrainConfig(model="deepfm")
    assert (c.batch_norm, c.dropout, c.weight_decay, c.lr, c.patience, c.sparse_embeddings) == (True, 0.2, 1e-5, 1e-3, 5, "auto")
    assert c.epochs >= 30  # trained to convergence: early stopping ends the run, not the cap


def test_model_defaults_fill_only_what_is_not_given() -> None:
    b = TrainConfig(model="bprmf")
    assert (b.embed_dim, b.l2, b.batch_size, b.batch_norm, b.dropout, b.weight_decay) == (64, 1e-2, 2048, False, 0.0, 0.0)
    assert (b.lr, b.epochs, TrainConfig(model="fm").lr, TrainConfig(model="deepfm").epochs) == (3e-3, 100, 1e-2, 50)
    assert TrainConfig(model="bprmf", lr=5e-3, embed_dim=8).lr == 5e-3
    assert TrainConfig(model="deepfm", dropout=0.0, batch_norm=False).dropout == 0.0


@pytest.mark.parametrize("bad", [{"lr": float("nan")}, {"lr": -1.0}, {"dropout": 1.5}, {"weight_decay": -1e-5},
                                 {"patience": 0}, {"sparse_embeddings": "sometimes"}])
def test_bad_knobs_are_one_line_errors(bad: dict) -> None:
    with pytest.raises(BadInputError):
        TrainConfig(**bad).validate()


def test_auto_tables_dense_when_small_lazy_when_large() -> None:
    small = build_model("deepfm", [100, 50], embed_dim=8, mlp_dims=[8])
    assert lazy_tables("auto", small) is False
    large = build_model("fm", [DENSE_TABLE_ENTRIES // 4 + 10], embed_dim=4)
    assert lazy_tables("auto", large) is True
    assert lazy_tables(True, small) is True and lazy_tables(False, large) is False


def test_cli_train_without_flags_uses_the_defaults(ctr_data: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["train", str(ctr_data), "--out", str(tmp_path / "run"), "--mlp", "16",
                                   "--epochs", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    config = json.loads((tmp_path / "run" / "train.json").read_text())["config"]
    assert config["batch_norm"] is True and config["dropout"] == 0.2 and config["weight_decay"] == 1e-5
    assert config["patience"] == 5 and config["embed_dim"] == 16


def test_popularity_model_ranks_by_training_count() -> None:
    pairs = np.array([[1, 3], [2, 3], [3, 3], [1, 2], [2, 2], [1, 4]])
    pop = popularity_model(pairs, n_users=5, n_items=6)
    scores = pop.all_item_vectors()[:, 0]
    assert scores[3] > scores[2] > scores[4] > scores[1]  # counts 3, 2, 1, then unseen ids in id order
    # user 4 saw nothing: its top-3 is items 3, 2, 4
    res = evaluate_topk(pop, np.array([[4, 3], [4, 2], [4, 4]]), [pairs], k=3)
    assert res["recall@3"] == pytest.approx(1.0)


def test_topk_run_reports_the_popularity_baseline_and_warns_when_not_beaten(topk_data: Path, tmp_path: Path) -> None:
    weak = TrainConfig(model="bprmf", embed_dim=4, lr=1e-5, epochs=1, batch_size=256)
    result = train(topk_data, tmp_path / "weak", weak, quiet=True)
    pop = result.baselines["popularity"]
    assert set(pop) == {"val", "test"} and 0 < pop["val"]["recall@20"] <= 1
    assert result.warnings and "popularity" in result.warnings[0]
    saved = json.loads((tmp_path / "weak" / "train.json").read_text())
    assert saved["baselines"]["popularity"]["val"]["recall@20"] == pop["val"]["recall@20"]
    res = CliRunner().invoke(cli, ["train", str(topk_data), "--model", "bprmf", "--out", str(tmp_path / "cli"),
                                   "--lr", "1e-5", "--epochs", "1", "--embed-dim", "4", "--quiet"])
    assert res.exit_code == 0 and "warning: bprmf val recall@20" in res.output
    strong = train(topk_data, tmp_path / "strong", TrainConfig(model="bprmf", embed_dim=16, batch_size=256, epochs=15,
                                                                lr=1e-2), quiet=True)
    assert not strong.warnings, strong.warnings
    assert strong.val["recall@20"] >= 1.5 * strong.baselines["popularity"]["val"]["recall@20"]


def test_tune_space_per_model_and_fixed_knobs() -> None:
    assert "dropout" not in search_space("fm") and "dropout" in search_space("deepfm")
    assert "l2" in search_space("bprmf") and "weight_decay" not in search_space("bprmf")
    assert "embed_dim" not in search_space("deepfm", {"embed_dim": 16})
    with pytest.raises(BadInputError):
        search_space("transformer")


def test_tune_runs_trials_writes_a_run_folder_and_resumes(ctr_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "best"
    args = ["tune", str(ctr_data), "--out", str(out), "--fix", "epochs=1", "--fix", "mlp_dims=[16]",
            "--fix", "max_steps_per_epoch=4", "--time-limit", "10m"]
    res = CliRunner().invoke(cli, [*args, "--trials", "3"])
    assert res.exit_code == 0, res.output
    lines = [line for line in res.output.splitlines() if line.startswith("trial ")]
    assert len(lines) == 3 and "val auc" in lines[0]
    summary = json.loads((out / "tune.json").read_text())
    assert [t["trial"] for t in summary["trials"]] == [0, 1, 2]
    # trial 0 is the model's default config
    defaults = TrainConfig(model="deepfm")
    assert summary["trials"][0]["params"]["lr"] == defaults.lr and summary["trials"][0]["params"]["dropout"] == 0.2
    best = summary["best_trial"]
    assert summary["trials"][best]["val_auc"] == max(t["val_auc"] for t in summary["trials"] if t["state"] == "complete")
    assert (out / "model.pt").is_file() and (out / "train.json").is_file() and (out / "tune.md").is_file()
    assert json.loads((out / "train.json").read_text())["val"]["auc"] == pytest.approx(summary["trials"][best]["val_auc"])
    # a second call without --resume or --force refuses; --resume continues to 4 trials in total
    again = CliRunner().invoke(cli, [*args, "--trials", "4"])
    assert again.exit_code == 2 and "already exists" in again.output
    resumed = CliRunner().invoke(cli, [*args, "--trials", "4", "--resume", "--force"])
    assert resumed.exit_code == 0, resumed.output
    assert [t["trial"] for t in json.loads((out / "tune.json").read_text())["trials"]] == [0, 1, 2, 3]


@pytest.mark.parametrize(("fix", "message"), [("learning_rate=1", "unknown --fix key"), ("model=fm", "the model is --model")])
def test_tune_rejects_bad_fixed_knobs(ctr_data: Path, tmp_path: Path, fix: str, message: str) -> None:
    res = CliRunner().invoke(cli, ["tune", str(ctr_data), "--out", str(tmp_path / "t"), "--fix", fix])
    assert res.exit_code == 2 and message in res.output
    assert not (tmp_path / "t").exists()


def test_tune_may_fix_the_seed(ctr_data: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["tune", str(ctr_data), "--out", str(tmp_path / "t"), "--trials", "1", "--fix", "seed=3",
                                   "--fix", "epochs=1", "--fix", "mlp_dims=[8]", "--fix", "max_steps_per_epoch=2"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "t" / "train.json").read_text())["config"]["seed"] == 3


def test_on_epoch_hook_stops_training(ctr_data: Path, tmp_path: Path) -> None:
    seen: list[int] = []

    def stop_after_two(epoch: int, value: float) -> bool:
        seen.append(epoch)
        return epoch >= 2

    result = train(ctr_data, tmp_path / "run", TrainConfig(mlp_dims=[8], epochs=6, batch_size=512), quiet=True,
                   on_epoch=stop_after_two)
    assert seen == [1, 2] and len(result.history) == 2 and torch.isfinite(torch.tensor(result.test["auc"]))
