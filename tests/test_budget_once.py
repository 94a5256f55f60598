"""The budget's walk (issue 14): parsed once where the user's text comes in, an int from there on,
checked once after the final export; searchers measure exact bytes through the byte accountant."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import ondevice.budget as budget_mod
import ondevice.export as export_pkg
from ondevice.cli import _register_commands, cli
from ondevice.pipeline.compress import compress
from ondevice.pipeline.measure import measure_file_bytes, onnx_file_bytes
from ondevice.search import ByteAccountant
from ondevice.train.checkpoint import load_checkpoint

_register_commands()
# the module (``ondevice.pipeline.compress`` as an attribute is the function the package re-exports)
compress_mod = importlib.import_module("ondevice.pipeline.compress")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.search.conftest import pretrained_run  # the same tiny DeepFM as tests/search

    return pretrained_run(tmp_path_factory.mktemp("budget_run"))


def test_compress_parses_each_budget_once_and_exports_with_its_bytes(
        trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[object] = []
    real_parse, real_export = budget_mod.parse_budget, export_pkg.export_artefact

    def counting_parse(text):
        parsed.append(text)
        return real_parse(text)

    exported: list[tuple[object, object]] = []

    def spying_export(*args, **kwargs):
        exported.append((kwargs["budget_bytes"], kwargs["budget_source"]))
        return real_export(*args, **kwargs)

    monkeypatch.setattr(compress_mod, "parse_budget", counting_parse)
    monkeypatch.setattr(budget_mod, "parse_budget", counting_parse)
    monkeypatch.setattr(export_pkg, "export_artefact", spying_export)
    out = tmp_path / "out"
    compress(trained_run, budgets=["17KB"], methods=["int8"], out_dir=out, profile=False, plot=False, quiet=True,
             evaluate_test=False)
    assert parsed == ["17KB"]  # once, in compress's targets; never again down the line
    assert exported == [(17_000, "--budget 17KB")]  # an int (and how the user wrote it, for the messages)
    budget = json.loads((out / "17KB" / "manifest.json").read_text())["budget"]
    assert budget["bytes"] == 17_000 and budget["source"] == "--budget 17KB" and budget["fits"] is True


def test_export_cli_keeps_its_budget_syntax_and_messages(trained_run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(cli, ["export", str(trained_run), "--out", str(tmp_path / "a"), "--budget", "1MB"])
    assert ok.exit_code == 0, ok.output
    assert "budget 1,000,000 B (--budget 1MB): fits" in ok.output
    bad = runner.invoke(cli, ["export", str(trained_run), "--out", str(tmp_path / "b"), "--budget", "2XB"])
    assert bad.exit_code == 2 and "budget '2XB' is not a size" in bad.output
    full = measure_file_bytes(load_checkpoint(trained_run).model)[0]
    over = runner.invoke(cli, ["export", str(trained_run), "--out", str(tmp_path / "c"), "--budget", str(full - 1)])
    assert over.exit_code == 3 and "over the budget of" in over.output and f"(--budget {full - 1})" in over.output


def test_the_accountant_measures_exact_bytes_when_the_pipeline_supplies_it(trained_run: Path) -> None:
    model = load_checkpoint(trained_run).model
    exact = measure_file_bytes(model)[0]
    plain = ByteAccountant()
    measuring = ByteAccountant(measure=onnx_file_bytes)
    assert plain.file_bytes(model) == plain.file_bytes_estimate(model) != exact  # no exporter below the pipeline
    assert measuring.file_bytes(model) == exact
    assert measuring == plain  # the callable is not part of the accounting settings
