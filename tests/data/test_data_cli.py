"""The ``prepare`` and ``generate`` commands (click CliRunner): exit 0 on success, 2 on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ondevice.cli import _register_commands, cli
from tests.data.conftest import write_criteo


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    _register_commands()
    return CliRunner()


def test_generate_then_prepare(runner: CliRunner, tmp_path: Path) -> None:
    raw = tmp_path / "syn.tsv.gz"
    res = runner.invoke(cli, ["generate", "--out", str(raw), "--rows", "3000", "--vocab", "50", "--seed", "1"])
    assert res.exit_code == 0, res.output
    assert "positive rate" in res.output and (tmp_path / "syn.tsv.gz.truth.json").is_file()
    out = tmp_path / "data"
    res = runner.invoke(cli, ["prepare", str(raw), "--format", "criteo", "--out", str(out), "--min-count", "2",
                              "--hash", "C1=16", "--quiet"])
    assert res.exit_code == 0, res.output
    info = json.loads((out / "prepare.json").read_text())
    assert info["options"]["hash_buckets"] == {"C1": 16} and info["options"]["min_count"] == 2
    assert "prepared 3,000 rows" in res.output


def test_generate_topk_and_prepare_given(runner: CliRunner, tmp_path: Path) -> None:
    res = runner.invoke(cli, ["generate", "--task", "topk", "--out", str(tmp_path / "tk"), "--users", "50", "--items", "80"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["prepare", str(tmp_path / "tk" / "train.txt"), str(tmp_path / "tk" / "test.txt"),
                              "--format", "implicit", "--split", "given", "--out", str(tmp_path / "d")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "d" / "prepare.json").read_text())["task"] == "topk"


def test_prepare_options_and_spec(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("label,a\n" + "".join(f"{i % 2},v{i % 4}\n" for i in range(40)))
    (tmp_path / "s.json").write_text('{"label": "label", "categorical": ["a"]}')
    res = runner.invoke(cli, ["prepare", str(tmp_path / "d.csv"), "--format", "csv", "--spec", str(tmp_path / "s.json"),
                              "--out", str(tmp_path / "o"), "--seed", "3", "--val-fraction", "0.2", "--chunk-rows", "5"])
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "o" / "prepare.json").read_text())
    assert info["split"]["seed"] == 3 and info["split"]["val_fraction"] == 0.2


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda t, g: [str(t / "missing.tsv"), "--format", "criteo"], "input file not found"),
        (lambda t, g: [str(g), "--format", "nope"], "unknown format 'nope'"),
        (lambda t, g: [str(g), "--format", "criteo", "--hash", "C1"], "expected KEY=VALUE"),
        (lambda t, g: [str(g), "--format", "criteo", "--option", "colour=red"], "has no option 'colour'"),
        (lambda t, g: [str(g), "--format", "criteo", "--min-count", "0"], "Invalid value for '--min-count'"),
    ],
)
def test_prepare_bad_input_exits_2(runner: CliRunner, tmp_path: Path, make_args, message: str) -> None:
    good = write_criteo(tmp_path / "g.tsv", 20)
    out = tmp_path / "out"
    res = runner.invoke(cli, ["prepare", *make_args(tmp_path, good), "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert "Traceback" not in res.output
    assert not out.exists()


def test_prepare_wrong_field_count_and_existing_output(runner: CliRunner, tmp_path: Path) -> None:
    bad = tmp_path / "bad.tsv"
    bad.write_text("0\t1\n")
    res = runner.invoke(cli, ["prepare", str(bad), "--format", "criteo", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and f"error: {bad} line 1: 2 fields, expected 40" in res.output
    assert len(res.output.strip().splitlines()) == 1
    good = write_criteo(tmp_path / "g.tsv", 20)
    (tmp_path / "exists").mkdir()
    res = runner.invoke(cli, ["prepare", str(good), "--format", "criteo", "--out", str(tmp_path / "exists")])
    assert res.exit_code == 2 and "pass --force" in res.output
    res = runner.invoke(cli, ["prepare", str(good), "--format", "criteo", "--out", str(tmp_path / "exists"), "--force"])
    assert res.exit_code == 0, res.output


def test_generate_bad_input_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    res = runner.invoke(cli, ["generate", "--out", str(tmp_path / "x.tsv"), "--fields", "3"])
    assert res.exit_code == 2 and "exactly 26 categorical" in res.output
    res = runner.invoke(cli, ["generate", "--out", str(tmp_path / "x.tsv"), "--rows", "0"])
    assert res.exit_code == 2


@pytest.mark.parametrize(("how", "message"), [
    ("val-empty", "the val split is empty (0 rows); re-run `ondevice prepare` with --val-fraction > 0"),
    ("val-one-class", "every val label is 0 (600 rows): AUC is undefined"),
    ("train-one-class", "every train label is 1 (4,800 rows)"),
])
def test_train_names_an_unusable_split_instead_of_checkpoint_not_found(runner: CliRunner, tmp_path: Path, how: str,
                                                                       message: str) -> None:
    import numpy as np

    from tests.conftest import make_ctr

    data = make_ctr(tmp_path / "d")
    split, _ = how.split("-", 1)
    labels = np.load(data / split / "labels.npy")
    if how == "val-empty":
        np.save(data / "val" / "ids.npy", np.zeros((0, 5), dtype=np.int32))
        np.save(data / "val" / "labels.npy", np.zeros(0, dtype=np.float32))
    else:
        np.save(data / split / "labels.npy", np.full_like(labels, 0.0 if split == "val" else 1.0))
    res = runner.invoke(cli, ["train", str(data), "--model", "fm", "--epochs", "1", "--quiet", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2, res.output
    assert message in res.output and "checkpoint not found" not in res.output
    assert not (tmp_path / "r").exists()


def test_prepare_prints_warning_lines(runner: CliRunner, tmp_path: Path) -> None:
    raw = write_criteo(tmp_path / "c.tsv", 200)
    res = runner.invoke(cli, ["prepare", str(raw), "--format", "criteo", "--out", str(tmp_path / "o"), "--quiet",
                              "--val-fraction", "0", "--min-count", "30"])
    assert res.exit_code == 0, res.output
    warnings = [line for line in res.output.splitlines() if line.startswith("warning: ")]
    assert "warning: the val split is empty: `ondevice train` refuses it" in res.output
    assert any(line.startswith("warning: field 'C") and "--min-count 30 maps" in line for line in warnings), warnings
