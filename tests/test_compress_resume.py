"""``compress --resume``: a run killed at any point continues to the uninterrupted run's outputs (issue 15 point 5).

The kills are deterministic: ``ONDEVICE_CRASH_AT=TAG:N`` makes the N-th ``crash_point(TAG)``
of the process SIGKILL it (``ondevice.outputs.crash_point``). Compared with the straight run:
every file byte for byte (``model.onnx``, ``reference_model.pt``, ``schema.json``, ``runner.py``,
the completion marker) except the JSON files, which are compared with their timing fields
removed (:data:`TIMING`: seconds, latencies, expected/started times, the auto probe's timings,
the manifest's ``created_unix``/``verified_unix``/``export_seconds``), and ``summary.md``, which
renders ``summary.json`` with its timing columns.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import ondevice.pipeline.resume as resume_mod
from ondevice.cli import _register_commands, cli
from ondevice.errors import BadInputError, OutputExistsError
from ondevice.outputs import MARKER, is_finished
from ondevice.pipeline.compress import compress

_register_commands()
REPO = Path(__file__).resolve().parents[1]
OPTIONS = {"uniform": {"batch_size": 256}, "sseds": {"batch_size": 256},
           "auto": {"methods": ["int8", "sseds", "uniform", "sseds+int8"]}}
SETTINGS = dict(budgets=["17KB", "12KB"], methods=["auto", "uniform"], epochs=1, searcher_params=OPTIONS,
                profile=False, plot=False, quiet=True, max_loss="off")
TIMING = {"seconds", "timings", "wall_s", "p50_ms", "p99_ms", "expected_s", "started_s", "time_left_s", "probe",
          "p50_ms_batch1", "p99_ms_batch1", "created_unix", "verified_unix", "export_seconds"}
SCRIPT = """
import json, sys
import torch
torch.set_num_threads(1)
from ondevice.pipeline.compress import compress
kwargs = json.loads(sys.argv[3])
compress(sys.argv[1], out_dir=sys.argv[2], resume=sys.argv[4] == "resume", **kwargs)
"""


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.search.conftest import pretrained_run

    return pretrained_run(tmp_path_factory.mktemp("resume_run"))


def _drop_timing(obj):
    if isinstance(obj, dict):
        return {k: _drop_timing(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [_drop_timing(v) for v in obj]
    return obj


def assert_same_outputs(a: Path, b: Path) -> None:
    files = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
    assert files == sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file())
    assert sum(f.endswith("model.onnx") for f in files) == 4
    for name in files:
        x, y = (a / name).read_bytes(), (b / name).read_bytes()
        if name.endswith(".json"):
            assert _drop_timing(json.loads(x)) == _drop_timing(json.loads(y)), name
        elif name != "summary.md":
            assert x == y, name


def _subprocess(run: Path, out: Path, resume: bool, crash_at: str | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("ONDEVICE_CRASH_AT", None)
    if crash_at:
        env["ONDEVICE_CRASH_AT"] = crash_at
    return subprocess.run([sys.executable, "-c", SCRIPT, str(run), str(out), json.dumps({**SETTINGS, "quiet": False}),
                           "resume" if resume else "new"], env=env, capture_output=True, text=True, timeout=300)


def test_resume_after_sigkill_at_six_points_equals_the_straight_run(trained_run: Path, tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    compress(trained_run, out_dir=straight, **{**SETTINGS, "quiet": False})  # auto's params record its progress flag
    out = tmp_path / "out"
    # each kill lands in the work the previous runs left: mid-auto after two candidates, at the
    # start of a candidate, after an export (a half-done folder), after a budget's records,
    # mid-auto at the second budget, after the summary (before the rename)
    kills = ["auto.candidate.done:2", "auto.candidate.start:1", "compress.entry.exported:1",
             "compress.entry.done:2", "auto.candidate.done:3", "compress.summary:1"]
    # what each run finds finished (auto candidates and budget × method entries it does not redo)
    kept = [0, 2, 2, 4, 2, 2 + 3, 4]
    for i, tag in enumerate([*kills, None]):
        res = _subprocess(trained_run, out, resume=i > 0, crash_at=tag)
        assert res.stderr.count("kept from the interrupted run") == kept[i], res.stderr[-3000:]
        if tag is None:
            break
        assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
        assert f"crash point {tag}: SIGKILL" in res.stderr
        assert not out.exists() and (tmp_path / "out.partial" / "_resume" / "run.json").is_file()
    assert res.returncode == 0, res.stderr[-2000:]
    assert not (tmp_path / "out.partial").exists() and is_finished(out, "compress")
    assert not (out / "_resume").exists()
    assert_same_outputs(straight, out)
    assert json.loads((out / "summary.json").read_text())["methods"]["auto"]["max_loss"] is None  # --max-loss off reached auto
    for name in ("17KB-auto", "12KB-auto", "17KB-uniform", "12KB-uniform"):
        assert (out / name / "model.onnx").read_bytes() == (straight / name / "model.onnx").read_bytes()


def _interrupt_at(monkeypatch: pytest.MonkeyPatch, tag: str) -> None:
    """``crash_point(tag)`` raises KeyboardInterrupt (Ctrl-C) in this process, once."""
    real = resume_mod.crash_point

    def crash(name: str) -> None:
        if name == tag:
            monkeypatch.setattr(resume_mod, "crash_point", real)
            raise KeyboardInterrupt
    monkeypatch.setattr(resume_mod, "crash_point", crash)


def test_resume_refuses_other_options_or_data_and_a_fresh_run_keeps_the_partial(
        trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out, partial = tmp_path / "out", tmp_path / "out.partial"
    settings = {**SETTINGS, "budgets": ["17KB"], "methods": ["uniform", "int8"]}
    _interrupt_at(monkeypatch, "compress.entry.done")
    with pytest.raises(KeyboardInterrupt):
        compress(trained_run, out_dir=out, **settings)
    assert (partial / "_resume" / "17KB-uniform.json").is_file() and not out.exists()
    before = sorted(p.name for p in partial.rglob("*"))

    for change, needle in (({"seed": 1}, "--seed = 0, this run has 1"), ({"epochs": 2}, "--epochs = 1"),
                           ({"methods": ["uniform"]}, "--method"), ({"budgets": ["16KB"]}, "targets"),
                           ({"max_loss": "5%"}, "--max-loss")):
        with pytest.raises(BadInputError, match="^--resume: .*" + needle.replace("(", r"\(")):
            compress(trained_run, out_dir=out, resume=True, **{**settings, **change})
    data = Path(json.loads((trained_run / "train.json").read_text())["data_dir"])
    other = tmp_path / "other_data"
    shutil.copytree(data, other)
    labels = np.load(other / "val" / "labels.npy")
    np.save(other / "val" / "labels.npy", 1 - labels)  # same schema and rows, other content
    with pytest.raises(BadInputError, match="the data's content hash"):
        compress(trained_run, out_dir=out, resume=True, data_dir=other, **settings)
    with pytest.raises(OutputExistsError, match="pass --resume to continue it or --force"):
        compress(trained_run, out_dir=out, **settings)
    with pytest.raises(BadInputError, match="nothing to resume"):
        compress(trained_run, out_dir=tmp_path / "elsewhere", resume=True, **settings)
    assert sorted(p.name for p in partial.rglob("*")) == before  # no refusal touched the interrupted run

    summary = compress(trained_run, out_dir=out, resume=True, **settings)
    assert [r["method"] for r in summary["runs"]] == ["uniform", "int8"] and not partial.exists()
    straight = compress(trained_run, out_dir=tmp_path / "straight", **settings)
    assert [r["val"] for r in summary["runs"]] == [r["val"] for r in straight["runs"]]
    assert_same_runs = [(out / r["folder"] / "model.onnx").read_bytes() for r in summary["runs"]]
    assert assert_same_runs == [(tmp_path / "straight" / r["folder"] / "model.onnx").read_bytes() for r in straight["runs"]]
    with pytest.raises(BadInputError, match="nothing to resume: .*finished run"):
        compress(trained_run, out_dir=out, resume=True, **settings)


def test_a_foreign_partial_folder_is_never_reused_or_removed(trained_run: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "out.partial"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    for kwargs in ({}, {"force": True}, {"resume": True}):
        with pytest.raises(BadInputError, match="not an interrupted `ondevice compress` run"):
            compress(trained_run, out_dir=tmp_path / "out", **{**SETTINGS, "budgets": ["17KB"],
                                                                "methods": ["int8"], **kwargs})
    assert (foreign / "notes.txt").read_text() == "mine"


def test_cli_resume_takes_the_options_of_the_interrupted_run(trained_run: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    args = ["compress", str(trained_run), "--out", str(out), "--budget", "17KB", "--method", "int8", "--method",
            "uniform", "--epochs", "1", "--method-option", "uniform.batch_size=256", "--profile-runs", "1"]
    _interrupt_at(monkeypatch, "compress.entry.done")
    res = CliRunner().invoke(cli, args)
    assert isinstance(res.exception, KeyboardInterrupt) or res.exit_code != 0
    assert (tmp_path / "out.partial" / "_resume" / "17KB-int8.json").is_file()
    res = CliRunner().invoke(cli, ["compress", str(trained_run), "--out", str(out), "--resume", "--seed", "4"])
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert res.exit_code == 2 and len(errors) == 1 and "--seed = 0, this run has 4" in errors[0], res.output
    res = CliRunner().invoke(cli, ["compress", str(trained_run), "--out", str(out), "--resume"])  # no other option
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert [r["method"] for r in summary["runs"]] == ["int8", "uniform"]
    assert summary["methods"]["uniform"]["epochs"] == 1 and summary["methods"]["uniform"]["batch_size"] == 256
    assert (out / MARKER).is_file() and not (tmp_path / "out.partial").exists()
