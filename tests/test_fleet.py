"""Top-K ``compress`` (rule, int8, uniform) and ``compress --fleet``: one verified artefact per profile."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ondevice.cli import _register_commands, cli
from ondevice.errors import BadInputError, RuntimeMemoryError
from ondevice.pipeline.compress import compress
from tests.topk_runs import pretrained_topk_run

RULE_FAST = {"n_blocks": 4, "n_groups": 4, "epochs": 2, "lr": 5e-3, "batch_size": 512, "n_samples": 80,
             "eval_users": None, "cycles": 200}


def _profile(folder: Path, name: str, budget: str, arch: str, runtime_format: str = "onnx") -> None:
    (folder / f"{name}.toml").write_text(
        f'name = "{name}"\ndescription = "test device"\nmemory_budget = "{budget}"\narch = "{arch}"\n'
        f'threads = 1\nbatch_size = 4\np99_latency_ms = 1000.0\nruntime_format = "{runtime_format}"\n')


@pytest.fixture(scope="module")
def topk_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pretrained_topk_run(tmp_path_factory.mktemp("fleet_run"))


@pytest.fixture(scope="module")
def fleet_out(topk_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("fleet")
    profiles = root / "profiles"
    profiles.mkdir()
    _profile(profiles, "phone", "45KB", "arm64")
    _profile(profiles, "laptop", "60KB", "x86_64")
    out = root / "out"
    summary = compress(topk_run, fleet=profiles, methods=["rule"], out_dir=out, searcher_params={"rule": RULE_FAST},
                       profile_runs=3, quiet=True)
    return out, summary


def test_fleet_has_one_verified_artefact_per_profile(fleet_out, topk_run: Path) -> None:
    out, summary = fleet_out
    report = json.loads((out / "fleet.json").read_text())
    assert sorted(r["device"] for r in report["rows"]) == ["laptop", "phone"]
    for row in report["rows"]:
        manifest = json.loads((out / row["folder"] / "manifest.json").read_text())
        assert manifest["verify"]["passed"] is True and manifest["budget"]["fits"] is True
        assert manifest["device_profile"]["name"] == row["device"]
        assert (out / row["folder"] / "model.onnx").stat().st_size == row["file_bytes"] <= row["budget_bytes"]
        assert row["metric"] == "recall@20" and row["val_metric"] > 0.05
        assert row["latency"]["p99_ms"] is not None and row["status"] == "pass"
    phone = next(r for r in report["rows"] if r["device"] == "phone")
    assert phone["latency"]["verdict"] == "not measured on target arch"  # the test host is not arm64
    md = (out / "fleet.md").read_text()
    assert "not measured on target arch" in md and "**PASS**" in md
    # trained once, cached beside the run for the fleet and later calls, never inside --out (issue 17)
    assert list((topk_run / "_cache" / "rule").glob("supernet-*.pt")) and not (out / "_cache").exists()


def test_topk_baselines_verify(topk_run: Path, tmp_path: Path) -> None:
    s = compress(topk_run, budgets=["40KB"], methods=["int8", "uniform", "rule+int8"], out_dir=tmp_path / "o",
                 searcher_params={"uniform": {"epochs": 2, "batch_size": 512}, "rule+int8": RULE_FAST},
                 profile_runs=2, quiet=True, plot=False)
    assert not s["failures"] and s["full_model"]["metric"] == "recall@20"
    for r in s["runs"]:
        manifest = json.loads((tmp_path / "o" / r["folder"] / "manifest.json").read_text())
        assert manifest["verify"]["passed"] is True and r["file_bytes"] <= 40_000
        assert manifest["task"] == "topk" and r["val_metric"] > 0.02
    uniform = next(r for r in s["runs"] if r["method"] == "uniform")
    assert uniform["config"]["_data"]["dim"] < 16
    assert "recall@20" in (tmp_path / "o" / "summary.md").read_text()


def test_fleet_cli_and_errors(topk_run: Path, tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="no \\*.toml"):
        compress(topk_run, fleet=tmp_path, methods=["int8"], out_dir=tmp_path / "x", quiet=True)
    profiles = tmp_path / "p"
    profiles.mkdir()
    _profile(profiles, "box", "70KB", "x86_64")
    _register_commands()
    res = CliRunner().invoke(cli, ["compress", str(topk_run), "--fleet", str(profiles), "--method", "int8",
                                   "--out", str(tmp_path / "c"), "--profile-runs", "2"])
    assert res.exit_code == 0, res.output
    assert "fleet:" in res.output and "recall@20" in res.output
    assert json.loads((tmp_path / "c" / "fleet.json").read_text())["passed"] is True


def test_a_failed_profile_without_an_artefact_says_why_in_fleet_md(tmp_path: Path) -> None:
    from ondevice.budget import load_profile
    from ondevice.pipeline.fleet import fleet_report, render_fleet_markdown

    _profile(tmp_path, "watch", "1KB", "arm64")
    failure = {"target": "watch", "method": "int8", "budget_bytes": 1000, "error": "BudgetTooSmallError",
               "message": "1,000 B is below the smallest model (9,000 B); raise the budget"}
    summary = {"runs": [], "failures": [failure], "run_dir": "run",
               "full_model": {"file_bytes": 50_000, "metric": "auc", "val": {"auc": 0.75}}}
    report = fleet_report(summary, [load_profile(tmp_path / "watch.toml")], tmp_path)
    md = render_fleet_markdown(report)
    assert not report["passed"] and "| **FAIL** [1] | — |" in md
    assert ("- [1] watch / int8: BudgetTooSmallError: 1,000 B is below the smallest model (9,000 B); raise the "
            "budget\n") in md


def test_an_ort_profile_is_fitted_by_its_ort_file(topk_run: Path, tmp_path: Path, capsys) -> None:
    """An ``ort`` profile ships ``model.ort``, tens of KB larger than ``model.onnx`` for RULE's
    per-call item table (Amazon Toys at android-low's 2 MB: 2,034,232 B vs 1,991,348 B, exit 3).
    The fit loop measures the ``.ort`` file, so the search shrinks until that fits (here the
    first attempt may already fit: the per-call table scores RULE's subsets as stored)."""
    from ondevice.pipeline.measure import onnx_file_bytes, ort_file_bytes
    from ondevice.train import load_checkpoint

    profiles = tmp_path / "p"
    profiles.mkdir()
    _profile(profiles, "phone", "58KB", "arm64", runtime_format="ort")
    with (profiles / "phone.toml").open("a") as fh:  # a runtime-memory target no session meets
        fh.write('memory_budget_runtime = "1KB"\n')
    with pytest.raises(RuntimeMemoryError):  # the bytes fit; the memory miss is said where it happens
        compress(topk_run, fleet=profiles, methods=["rule"], out_dir=tmp_path / "o", searcher_params={"rule": RULE_FAST},
                 profile_runs=2, quiet=False, plot=False)
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert [f["error"] for f in s["failures"]] == ["RuntimeMemoryError"]
    err = capsys.readouterr().err
    assert "[phone] failed: a session adds" in err and "memory_budget_runtime of 1,000 B" in err
    # fleet.md says why the row failed, not only FAIL (the reason was in summary.md and the log)
    row = json.loads((tmp_path / "o" / "fleet.json").read_text())["rows"][0]
    assert row["status"] == "fail" and row["reason"] == f"RuntimeMemoryError: {s['failures'][0]['message']}"
    md = (tmp_path / "o" / "fleet.md").read_text()
    assert "| **FAIL** [1] |" in md and f"- [1] phone / rule: {row['reason']}\n" in md
    folder = tmp_path / "o" / s["runs"][0]["folder"]
    ort_bytes = (folder / "model.ort").stat().st_size
    assert ort_bytes <= 58_000  # the .ort file (not model.onnx alone) is what fits
    assert s["runs"][0]["file_bytes"] == ort_bytes and f"[phone] {ort_bytes:,} B" in err  # the shipped file's bytes
    assert (folder / "model.onnx").stat().st_size < ort_bytes
    search = json.loads((folder / "search.json").read_text())
    assert search["fit_attempts"][-1]["file_bytes"] == ort_bytes  # each attempt measured the .ort file
    model = load_checkpoint(folder / "reference_model.pt").model
    assert ort_file_bytes(model) == ort_bytes > onnx_file_bytes(model)


def test_a_row_below_the_quality_floor_fails_in_fleet_md(tmp_path: Path) -> None:
    """compress records a --max-loss miss as a failure (exit 3): the fleet row must not say PASS."""
    from ondevice.budget import load_profile
    from ondevice.pipeline.fleet import fleet_report, render_fleet_markdown

    _profile(tmp_path, "watch", "100KB", "arm64")
    run = {"device_profile": "watch", "method": "uniform", "fits": True, "verified": True, "file_bytes": 90_000,
           "metric": "auc", "val_metric": 0.70, "latency": {"verdict": "pass"}, "folder": "watch", "below_floor": True}
    failure = {"target": "watch", "method": "uniform", "budget_bytes": 100_000, "error": "QualityFloorError",
               "message": "uniform at watch loses 6.7% of the full model's val AUC (0.7000 vs 0.7500), beyond --max-loss 2.0%"}
    summary = {"runs": [run], "failures": [failure], "run_dir": "run",
               "full_model": {"file_bytes": 500_000, "metric": "auc", "val": {"auc": 0.75}}}
    report = fleet_report(summary, [load_profile(tmp_path / "watch.toml")], tmp_path)
    (row,) = report["rows"]
    assert row["status"] == "fail" and row["reason"].startswith("QualityFloorError: uniform at watch loses 6.7%")
    assert not report["passed"] and "| **FAIL** [1] | `watch` |" in render_fleet_markdown(report)
