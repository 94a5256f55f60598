"""Nothing lost, nobody in: --out never touches an input, --force removes only our own output,
one writer per --out, leftovers of killed runs are cleaned, resume is the same run (issue 15)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ondevice.cli import _register_commands, cli
from ondevice.errors import BadInputError, OutputExistsError
from ondevice.outputs import (
    MARKER,
    OutputLock,
    check_out_vs_inputs,
    is_finished,
    marker_of,
    output_dir,
)
from ondevice.train import TrainConfig, train
from tests.conftest import make_ctr
from tests.data.conftest import write_criteo
from tests.export.conftest import make_run

_register_commands()
SMALL = dict(model="fm", embed_dim=4, batch_size=256, lr=5e-3, patience=10)


def run(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_error(res, code: int = 2, needle: str = "") -> str:
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert res.exit_code == code, res.output
    assert len(errors) == 1 and "Traceback" not in res.output, res.output
    assert needle in errors[0], errors[0]
    return errors[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------- 1. data loss
def test_prepare_force_never_deletes_the_raw_file(tmp_path: Path) -> None:
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    raw = write_criteo(raw_dir / "raw.tsv", 50)
    before = snapshot(raw_dir)
    for out in (raw_dir, raw, raw_dir / "sub" / "..", tmp_path, raw / "inside"):
        one_error(run("prepare", raw, "--format", "criteo", "--out", out, "--force"), needle="--out")
    assert snapshot(raw_dir) == before


def test_symlinked_out_resolving_to_an_input_is_refused(tmp_path: Path) -> None:
    data = make_ctr(tmp_path / "data", rows=300)
    before = snapshot(data)
    (tmp_path / "link").symlink_to(data)
    one_error(run("train", data, "--out", tmp_path / "link", "--force", "--model", "fm", "--quiet"), needle="is the input")
    one_error(run("train", tmp_path / "link", "--out", data / "run", "--quiet"), needle="inside the input")
    one_error(run("train", data, "--out", data, "--force", "--quiet"), needle="is the input")
    assert snapshot(data) == before


@pytest.mark.parametrize("cmd", ["export", "compress", "search-features", "search-interactions"])
def test_run_consumers_refuse_their_input_as_out(tmp_path: Path, cmd: str) -> None:
    runf = make_run(tmp_path / "run", "fm")
    before = snapshot(runf)
    extra = {"export": ["export"], "compress": ["compress", "--budget", "1MB"],
             "search-features": ["search", "features", "--keep", "2"],
             "search-interactions": ["search", "interactions"]}[cmd]
    for out in (runf, tmp_path, runf / "art"):
        one_error(run(*extra[:2] if cmd.startswith("search") else extra[:1], runf,
                      *(extra[2:] if cmd.startswith("search") else extra[1:]), "--out", out, "--force"), needle="--out")
    assert snapshot(runf) == before


def test_force_replaces_only_an_output_of_the_same_command(tmp_path: Path) -> None:
    raw = write_criteo(tmp_path / "r.tsv", 50)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("only copy")
    one_error(run("prepare", raw, "--format", "criteo", "--out", precious, "--force"), needle="not an ondevice output")
    assert (precious / "thesis.tex").read_text() == "only copy"
    data = tmp_path / "data"
    assert run("prepare", raw, "--format", "criteo", "--out", data).exit_code == 0
    assert marker_of(data)["kind"] == "prepare" and is_finished(data, "prepare")
    assert run("prepare", raw, "--format", "criteo", "--out", data, "--force").exit_code == 0  # same kind: fine
    runf = make_run(tmp_path / "run", "fm")
    one_error(run("export", runf, "--out", data, "--force"), needle="a `prepare` output")
    assert (data / "schema.json").is_file()
    (tmp_path / "file").write_text("x")
    one_error(run("export", runf, "--out", tmp_path / "file", "--force"), needle="a file")


def test_out_dot_with_force_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "in").mkdir()
    raw = write_criteo(tmp_path / "in" / "r.tsv", 50)
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("keep")
    monkeypatch.chdir(work)
    for out in (".", ".."):
        one_error(run("prepare", raw, "--format", "criteo", "--out", out, "--force"))
    assert (work / "keep.txt").read_text() == "keep" and raw.is_file()


def test_train_force_refuses_a_foreign_folder_and_an_interrupted_partial(tmp_path: Path) -> None:
    data = make_ctr(tmp_path / "data", rows=300)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes").write_text("x")
    with pytest.raises(BadInputError, match="not an ondevice output"):
        train(data, tmp_path / "run", TrainConfig(**{**SMALL, "epochs": 1}), force=True, quiet=True)
    assert (tmp_path / "run" / "notes").is_file()
    (tmp_path / "r2.partial").mkdir()
    torch.save({}, tmp_path / "r2.partial" / "last.pt")
    with pytest.raises(OutputExistsError, match="--resume"):
        train(data, tmp_path / "r2", TrainConfig(**{**SMALL, "epochs": 1}), quiet=True)


# ---------------------------------------------------------------------- 2. locks
def test_second_run_into_a_locked_out_is_refused_with_the_pid(tmp_path: Path) -> None:
    raw = write_criteo(tmp_path / "r.tsv", 50)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from ondevice.outputs import OutputLock; lock = OutputLock(sys.argv[1]).acquire(); "
        "print('locked', flush=True); time.sleep(60)"), str(tmp_path / "out")],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    try:
        assert holder.stdout.readline().strip() == "locked"
        one_error(run("prepare", raw, "--format", "criteo", "--out", tmp_path / "out"), needle=f"in use by PID {holder.pid}")
        data = make_ctr(tmp_path / "data", rows=300)
        one_error(run("train", data, "--out", tmp_path / "out", "--model", "fm", "--quiet"), needle=f"PID {holder.pid}")
        assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the holder died: the lock is free again (flock dies with its process)
    assert run("prepare", raw, "--format", "criteo", "--out", tmp_path / "out").exit_code == 0
    assert not (tmp_path / ".out.lock").exists()


def test_lock_is_exclusive_in_one_process_too(tmp_path: Path) -> None:
    with OutputLock(tmp_path / "o"), pytest.raises(BadInputError, match=f"in use by PID {os.getpid()}"):
        OutputLock(tmp_path / "o").acquire()
    with OutputLock(tmp_path / "o"):  # released: free again
        pass


def test_an_out_that_appears_during_the_run_is_not_replaced(tmp_path: Path) -> None:
    out = tmp_path / "o"
    with pytest.raises(OutputExistsError, match="appeared while this run was writing"), \
            output_dir(out, kind="prepare") as tmp:
        (tmp / "a").write_text("new")
        out.mkdir()
        (out / "theirs").write_text("theirs")
    assert (out / "theirs").read_text() == "theirs" and not (out / "a").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["o"]  # temp folder and lock file gone


def test_leftover_temp_folders_are_removed_by_the_next_run(tmp_path: Path) -> None:
    raw = write_criteo(tmp_path / "r.tsv", 50)
    left = tmp_path / ".data.ondevice-abcd1234.tmp"
    left.mkdir()
    (left / "schema.json").write_text("{}")
    other = tmp_path / ".data2.ondevice-abcd1234.tmp"  # another output's: not ours to remove
    other.mkdir()
    assert run("prepare", raw, "--format", "criteo", "--out", tmp_path / "data").exit_code == 0
    assert not left.exists() and other.exists()
    assert is_finished(tmp_path / "data") and not is_finished(left)


def test_check_out_vs_inputs_ignores_siblings(tmp_path: Path) -> None:
    check_out_vs_inputs(tmp_path / "run2", [tmp_path / "run", tmp_path / "run.partial"])  # no error
    with pytest.raises(BadInputError, match="contains"):
        check_out_vs_inputs(tmp_path, [tmp_path / "a" / "b"])


# ---------------------------------------------------------------------- 3/4. resume
def _model_bytes(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "model.pt", weights_only=True)["state_dict"]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_other_data_and_other_options(tmp_path: Path) -> None:
    data = make_ctr(tmp_path / "data", rows=600)
    train(data, tmp_path / "run", TrainConfig(**{**SMALL, "epochs": 1}), quiet=True)
    same_shape = make_ctr(tmp_path / "other", rows=600, seed=5)  # same schema and rows, other content
    one_error(run("train", same_shape, "--out", tmp_path / "run", "--resume", "--epochs", "2", "--quiet"),
              needle="content of")
    fewer = make_ctr(tmp_path / "fewer", rows=500)
    one_error(run("train", fewer, "--out", tmp_path / "run", "--resume", "--quiet"), needle="train rows")
    wider = make_ctr(tmp_path / "wider", rows=600, vocab=(50, 30, 20, 80, 11))
    one_error(run("train", wider, "--out", tmp_path / "run", "--resume", "--quiet"), needle="schema")
    one_error(run("train", data, "--out", tmp_path / "run", "--resume", "--lr", "0.1", "--quiet"), needle="lr=0.005")
    one_error(run("train", data, "--out", tmp_path / "run", "--resume", "--model", "deepfm", "--quiet"),
              needle="model='fm'")


def test_resume_takes_options_not_given_from_the_checkpoint(tmp_path: Path) -> None:
    data = make_ctr(tmp_path / "data", rows=600)
    args = ["--model", "fm", "--embed-dim", "4", "--batch-size", "256", "--lr", "0.005", "--patience", "10", "--quiet"]
    assert run("train", data, "--out", tmp_path / "straight", "--epochs", "4", *args).exit_code == 0
    assert run("train", data, "--out", tmp_path / "run", "--epochs", "4", *args).exit_code == 0
    (tmp_path / "run").rename(tmp_path / "run.partial")  # as if killed after its last epoch was saved
    (tmp_path / "run.partial" / "train.json").unlink()
    res = run("train", data, "--out", tmp_path / "run", "--resume", "--quiet")  # no --epochs, no --model ...
    assert res.exit_code == 0, res.output
    import json

    info = json.loads((tmp_path / "run" / "train.json").read_text())
    assert info["config"]["epochs"] == 4 and len(info["history"]) == 4  # not the option's default of 10
    _same(_model_bytes(tmp_path / "straight"), _model_bytes(tmp_path / "run"))


@pytest.mark.parametrize("kill_at", ["epoch1", "epoch2", "epoch3", "mid-epoch2", "model-save2"])
def test_resume_after_a_crash_at_any_point_equals_the_straight_run(tmp_path: Path, kill_at: str, monkeypatch) -> None:
    import ondevice.train.trainer as trainer_mod

    data = make_ctr(tmp_path / "data", rows=1500)
    cfg = TrainConfig(**{**SMALL, "model": "deepfm", "mlp_dims": [8], "epochs": 4})
    train(data, tmp_path / "straight", cfg, quiet=True)
    real_save, real_batches = trainer_mod.save_checkpoint, trainer_mod.Trainer._batches
    saves: list[str] = []

    def crashing_save(path, *args, **kwargs):
        real_save(path, *args, **kwargs)
        saves.append(Path(path).name)
        epoch = kwargs["metrics"].get("epoch")
        if kill_at.startswith("epoch") and Path(path).name == "last.pt" and epoch == int(kill_at[-1]):
            raise KeyboardInterrupt
        if kill_at == "model-save2" and saves.count("model.pt") == 2:
            raise KeyboardInterrupt  # between the second best model.pt and that epoch's last.pt

    def crashing_batches(self, ctx, epoch):
        for i, batch in enumerate(real_batches(self, ctx, epoch)):
            if kill_at == "mid-epoch2" and epoch == 2 and i == 2:
                raise KeyboardInterrupt  # after two steps of epoch 2
            yield batch

    monkeypatch.setattr(trainer_mod, "save_checkpoint", crashing_save)
    monkeypatch.setattr(trainer_mod.Trainer, "_batches", crashing_batches)
    with pytest.raises(KeyboardInterrupt):
        train(data, tmp_path / "run", cfg, quiet=True)
    monkeypatch.setattr(trainer_mod, "save_checkpoint", real_save)
    monkeypatch.setattr(trainer_mod.Trainer, "_batches", real_batches)
    assert not (tmp_path / "run").exists()
    train(data, tmp_path / "run", cfg, resume=True, quiet=True)
    assert (tmp_path / "run" / "model.pt").read_bytes() == (tmp_path / "straight" / "model.pt").read_bytes()
    assert is_finished(tmp_path / "run", "train") and not (tmp_path / "run.partial").exists()


def test_resume_after_sigkill_equals_the_straight_run(tmp_path: Path) -> None:
    data = make_ctr(tmp_path / "data", rows=4000)
    args = ["--model", "fm", "--embed-dim", "4", "--batch-size", "64", "--lr", "0.005", "--patience", "10",
            "--epochs", "6", "--quiet", "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ondevice", "train", str(data), "--out", str(tmp_path / "run"), *args],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    last = tmp_path / "run.partial" / "last.pt"
    while not last.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if (tmp_path / "run").exists():
        pytest.skip("the run finished before it could be killed")
    res = run("train", data, "--out", tmp_path / "run", "--resume", "--quiet")
    assert res.exit_code == 0, res.output
    assert run("train", data, "--out", tmp_path / "straight", *args).exit_code == 0
    assert (tmp_path / "run" / "model.pt").read_bytes() == (tmp_path / "straight" / "model.pt").read_bytes()
    assert (tmp_path / "run" / MARKER).is_file()
