"""End-to-end CLI: the quickstart, and the documented exit codes for bad input."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ondevice.cli import _register_commands, cli

_register_commands()


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.mark.slow
def test_quickstart_end_to_end(tmp_path):
    out = tmp_path / "qs"
    result = run("quickstart", "--out", str(out), "--rows", "20000", "--epochs", "1", "--quiet")
    assert result.exit_code == 0, result.output
    assert "validation AUC" in result.output
    manifest = json.loads((out / "compressed" / "4MB" / "manifest.json").read_text())
    assert manifest["budget"]["fits"] is True and manifest["budget"]["bytes"] == 4_000_000
    # a raw-feature artefact: the vocabulary is inside the file and the budget; the payload and memory are printed
    assert manifest["input_encoding"] == "raw" and manifest["storage"]["by_part"]["vocabulary"] > 0
    assert manifest["app_payload"]["files"].keys() == {"model.onnx"} and manifest["app_payload"]["bytes"] <= 4_000_000
    assert "the app ships model.onnx" in result.output and "of resident memory" in result.output
    summary = json.loads((out / "compressed" / "summary.json").read_text())
    assert summary["runs"][0]["method"] == "sseds" and not summary["failures"]
    # a second run refuses to clobber the folder
    again = run("quickstart", "--out", str(out), "--rows", "20000")
    assert again.exit_code == 2 and "already exists" in again.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "{tmp}/missing", "--out", "{tmp}/run"], "dataset folder not found"),
        (["train", "{ctr}", "--out", "{tmp}/run", "--model", "nope"], "unknown model"),
        (["train", "{ctr}", "--out", "{tmp}/run", "--model", "bprmf"], "does not fit the dataset's task"),
        (["train", "{ctr}", "--out", "{tmp}/run", "--mlp", "4,x"], "comma-separated integers"),
        (["train", "{ctr}", "--out", "{tmp}/run", "--resume"], "nothing to resume"),
        (["export", "{tmp}/norun", "--out", "{tmp}/art"], "does not exist"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, ctr_data, args, message):
    args = [a.format(tmp=tmp_path, ctr=ctr_data) for a in args]
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


def test_unwritable_output_folder(tmp_path, ctr_data):
    # /proc refuses new folders even for root (CI runs as root, where chmod does not bind)
    result = run("train", str(ctr_data), "--out", "/proc/ondevice-run", "--quiet")
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and "Traceback" not in result.output


def test_output_under_a_file_is_a_clean_error(tmp_path, ctr_data):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run("train", str(ctr_data), "--out", str(blocker / "run"), "--quiet")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
