import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ondevice.errors import CheckpointError, OutputExistsError
from ondevice.train import TrainConfig, load_checkpoint, train
from ondevice.train import trainer as trainer_mod

SMALL = dict(mlp_dims=[16, 16], embed_dim=8, batch_size=240, epochs=2)


def _state(run: Path) -> dict:
    return torch.load(run / "model.pt", weights_only=True)["state_dict"]


def _assert_same(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0)


@pytest.mark.parametrize("model", ["fm", "deepfm", "widedeep", "deepfwfm", "dcn"])
def test_ctr_models_learn_the_planted_signal(ctr_data, tmp_path, model):
    result = train(ctr_data, tmp_path / "run", TrainConfig(model=model, **{**SMALL, "epochs": 3}), quiet=True)
    assert result.val["auc"] > 0.68 and result.test["auc"] > 0.68
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt.metrics["test"]["auc"] == result.test["auc"]
    assert ckpt.metrics["selected_on"] == "val auc"
    assert (tmp_path / "run" / "train.json").is_file() and (tmp_path / "run" / "schema.json").is_file()


def test_progress_ends_with_a_readable_test_line(ctr_data, tmp_path, capsys):
    result = train(ctr_data, tmp_path / "run", TrainConfig(model="fm", **{**SMALL, "epochs": 1}), quiet=False)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    t = result.test
    assert last == (f"best epoch 1: val auc {result.val['auc']:.4f}; "
                    f"test auc {t['auc']:.4f}, logloss {t['logloss']:.4f} ({t['rows']:,} rows)")


def test_bprmf_beats_popularity_free_random(topk_data, tmp_path):
    cfg = TrainConfig(model="bprmf", embed_dim=16, batch_size=256, lr=0.01, epochs=15, patience=15, l2=1e-4)
    result = train(topk_data, tmp_path / "run", cfg, quiet=True)
    # random ranking of 200 items with 4 test items: expected recall@20 ~ 0.1
    assert result.test["recall@20"] > 0.3
    assert 0 < result.test["ndcg@20"] <= 1


def test_sampled_protocol(topk_data, tmp_path):
    cfg = TrainConfig(model="bprmf", embed_dim=8, batch_size=256, lr=0.01, epochs=3, eval_protocol="sampled", eval_negatives=20, k=5)
    result = train(topk_data, tmp_path / "run", cfg, quiet=True)
    assert "hr@5" in result.test and result.test["protocol"] == "1+20 sampled"
    assert trainer_mod._metrics_text("test", result.test) == (
        f"test hr@5 {result.test['hr@5']:.4f}, ndcg@5 {result.test['ndcg@5']:.4f} "
        f"({result.test['users']:,} users, 1+20 sampled)")
    assert trainer_mod._metrics_text("test", {}) == "no test split"


def test_same_seed_same_weights(ctr_data, tmp_path):
    train(ctr_data, tmp_path / "a", TrainConfig(model="deepfm", dropout=0.2, **SMALL), quiet=True)
    train(ctr_data, tmp_path / "b", TrainConfig(model="deepfm", dropout=0.2, **SMALL), quiet=True)
    _assert_same(_state(tmp_path / "a"), _state(tmp_path / "b"))


def test_resume_after_finished_run_equals_straight_run(ctr_data, tmp_path):
    cfg = dict(model="deepfm", dropout=0.2, **{**SMALL, "epochs": 3, "patience": 5})
    train(ctr_data, tmp_path / "straight", TrainConfig(**cfg), quiet=True)
    train(ctr_data, tmp_path / "resumed", TrainConfig(**{**cfg, "epochs": 1}), quiet=True)
    train(ctr_data, tmp_path / "resumed", TrainConfig(**cfg), resume=True, quiet=True)
    _assert_same(_state(tmp_path / "straight"), _state(tmp_path / "resumed"))


def test_resume_after_interruption(ctr_data, tmp_path, monkeypatch):
    cfg = dict(model="deepfm", **{**SMALL, "epochs": 3, "patience": 5})
    train(ctr_data, tmp_path / "straight", TrainConfig(**cfg), quiet=True)

    real_batches = trainer_mod.Trainer._batches

    def interrupted(self, ctx, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return real_batches(self, ctx, epoch)

    monkeypatch.setattr(trainer_mod.Trainer, "_batches", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(ctr_data, tmp_path / "run", TrainConfig(**cfg), quiet=True)
    assert not (tmp_path / "run").exists(), "an interrupted run must not look finished"
    assert (tmp_path / "run.partial" / "last.pt").is_file()
    monkeypatch.setattr(trainer_mod.Trainer, "_batches", real_batches)
    train(ctr_data, tmp_path / "run", TrainConfig(**cfg), resume=True, quiet=True)
    assert not (tmp_path / "run.partial").exists()
    _assert_same(_state(tmp_path / "straight"), _state(tmp_path / "run"))


def test_existing_run_needs_force(ctr_data, tmp_path):
    train(ctr_data, tmp_path / "run", TrainConfig(model="fm", **{**SMALL, "epochs": 1}), quiet=True)
    with pytest.raises(OutputExistsError):
        train(ctr_data, tmp_path / "run", TrainConfig(model="fm", **{**SMALL, "epochs": 1}), quiet=True)
    train(ctr_data, tmp_path / "run", TrainConfig(model="fm", **{**SMALL, "epochs": 1}), quiet=True, force=True)


def test_failed_start_leaves_no_folder(ctr_data, tmp_path):
    with pytest.raises(Exception, match="does not fit the dataset's task"):
        train(ctr_data, tmp_path / "run", TrainConfig(model="bprmf"), quiet=True)
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


def test_corrupted_checkpoint_is_a_clean_error(ctr_data, tmp_path):
    train(ctr_data, tmp_path / "run", TrainConfig(model="fm", **{**SMALL, "epochs": 1}), quiet=True)
    path = tmp_path / "run" / "model.pt"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)


def test_hostile_checkpoint_is_not_executed(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps({"format": "ondevice-checkpoint", "x": Evil()}))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.slow
def test_torchrun_two_processes_match_single_process(ctr_data, tmp_path):
    # 4800 training rows / 240 = 20 full global batches: DDP (2 x 120 rows) and one process
    # (240 rows, same dense Adam) take the same steps on the same rows. BatchNorm statistics
    # (per rank) and dropout masks (per-rank RNG) would differ, so both are off here.
    common = ["--mlp", "16,16", "--embed-dim", "8", "--batch-size", "240", "--epochs", "2", "--quiet",
              "--no-batch-norm", "--dropout", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    ddp = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29533", "-m", "ondevice", "train", str(ctr_data),
                          "--out", str(tmp_path / "ddp"), *common], capture_output=True, text=True, env=env, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = subprocess.run([sys.executable, "-m", "ondevice", "train", str(ctr_data), "--out", str(tmp_path / "single"),
                             "--dense-embeddings", *common], capture_output=True, text=True, env=env, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    _assert_same(_state(tmp_path / "ddp"), _state(tmp_path / "single"), atol=1e-4)
