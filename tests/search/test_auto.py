"""``--method auto``: the best validation metric among the candidates that fit, every candidate reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ondevice.cli import _register_commands, cli
from ondevice.data import EncodedDataset
from ondevice.errors import BadInputError, BudgetTooSmallError
from ondevice.pipeline.auto import candidate_methods
from ondevice.pipeline.compress import compress
from ondevice.pipeline.measure import measure_file_bytes
from ondevice.search import make_searcher
from ondevice.train import load_checkpoint

FAST = {m: {"batch_size": 256} for m in ("uniform", "sseds", "mde", "hash")}


def _data(run: Path) -> EncodedDataset:
    return EncodedDataset(json.loads((run / "train.json").read_text())["data_dir"])


@pytest.fixture(scope="module")
def auto_result(trained_run: Path):
    searcher = make_searcher("auto", methods=["int8", "fp16", "uniform", "hash"], epochs=1, candidate_params=FAST)
    return searcher.search(load_checkpoint(trained_run), _data(trained_run), 17_000)


def test_auto_keeps_the_best_fitting_candidate_by_val_metric(auto_result) -> None:
    cands = auto_result.candidates
    assert [c["method"] for c in cands] == ["int8", "fp16", "uniform", "hash"]
    fitting = [c for c in cands if c["outcome"] == "fits"]
    assert fitting, cands
    for c in fitting:  # file bytes are measured on the exported file, not estimated
        assert c["file_bytes"] <= 17_000
    best = max(fitting, key=lambda c: c["val_metric"])
    assert [c["method"] for c in cands if c.get("chosen")] == [best["method"]]
    assert auto_result.val_metric == pytest.approx(best["val_metric"])
    assert auto_result.config["_type"] == "AutoConfig" and auto_result.config["_data"]["chosen"] == best["method"]
    assert measure_file_bytes(auto_result.model)[0] == best["file_bytes"]
    # Never worse than any single method it tried, on the metric it selects with.
    assert all(auto_result.val_metric >= c["val_metric"] for c in fitting)


def test_auto_records_what_does_not_fit(auto_result) -> None:
    # fp16 halves a ~36 KB model: it cannot fit 17 KB and says its minimum.
    fp16 = next(c for c in auto_result.candidates if c["method"] == "fp16")
    assert fp16["outcome"] == "does not fit" and fp16["minimum_bytes"] > 17_000


def test_auto_time_limit_stops_the_running_candidate_and_skips_the_rest(trained_run: Path) -> None:
    searcher = make_searcher("auto", methods=["uniform", "sseds", "int8"], epochs=3, time_limit_s=1e-3,
                             candidate_params=FAST)
    result = searcher.search(load_checkpoint(trained_run), _data(trained_run), 17_000)
    cands = {c["method"]: c for c in result.candidates}
    # Cheapest first by the probe's estimate: int8 (no retraining) before the retraining methods.
    assert [c["method"] for c in result.candidates] == ["int8", "uniform", "sseds"]
    assert cands["int8"]["expected_s"] < cands["uniform"]["expected_s"]
    assert cands["int8"]["outcome"] == "does not fit"  # no model yet: the next one still starts...
    assert cands["uniform"]["stopped_at_limit"] and cands["uniform"]["outcome"] == "fits"  # ...and is stopped
    assert cands["sseds"]["outcome"] == "skipped: time limit"
    assert result.config["_data"]["chosen"] == "uniform"
    retrain = next(t["retrain"] for t in result.trace if "retrain" in t)
    assert retrain == []  # stopped before its first epoch: the warm-started weights are the candidate


def test_auto_budget_below_every_candidate_names_the_smallest(trained_run: Path) -> None:
    searcher = make_searcher("auto", methods=["int8", "uniform"], epochs=1, candidate_params=FAST)
    with pytest.raises(BudgetTooSmallError, match="no method auto tried fits") as err:
        searcher.search(load_checkpoint(trained_run), _data(trained_run), 3_000)
    assert err.value.minimum_bytes > 3_000


def test_candidate_lists_follow_the_task() -> None:
    ctr, topk = candidate_methods("ctr"), candidate_methods("topk")
    assert ctr[:2] == ["int8", "fp16"] and "sseds" in ctr and "rule" not in ctr
    assert "rule" in topk and "sseds" not in topk
    with pytest.raises(BadInputError, match="own candidates"):
        candidate_methods("ctr", ["auto"])
    with pytest.raises(BadInputError, match="unknown candidate"):
        candidate_methods("ctr", ["magic"])
    assert candidate_methods("topk", ["sseds", "int8"]) == ["int8"]  # methods of the other task are left out


def test_compress_auto_reports_candidates_and_marks_the_choice(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = compress(trained_run, budgets=["17KB"], out_dir=out, epochs=1, profile_runs=2, quiet=True,
                       searcher_params={"auto": {"methods": ["int8", "uniform"], "candidate_params": FAST}})
    (run,) = summary["runs"]
    assert run["method"] == "auto" and len(run["candidates"]) == 2
    assert sum(bool(c.get("chosen")) for c in run["candidates"]) == 1
    md = (out / "summary.md").read_text()
    assert "## auto at 17KB: candidates" in md and "**yes**" in md
    manifest = json.loads((out / run["folder"] / "manifest.json").read_text())
    assert manifest["verify"]["passed"] and run["file_bytes"] <= 17_000
    assert json.loads((out / run["folder"] / "search.json").read_text())["candidates"]


def test_cli_default_method_is_auto_and_time_limit_is_checked(trained_run: Path, tmp_path: Path) -> None:
    _register_commands()
    bad = CliRunner().invoke(cli, ["compress", str(trained_run), "--budget", "17KB", "--out", str(tmp_path / "o"),
                                   "--time-limit", "soon"])
    assert bad.exit_code == 2 and "cannot read the duration 'soon'" in bad.output
    assert not (tmp_path / "o").exists()


def test_fleet_with_auto_writes_one_verified_artefact_per_device(trained_run: Path, tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    for name, budget in (("small", "17KB"), ("big", "30KB")):
        (profiles / f"{name}.toml").write_text(
            f'name = "{name}"\ndescription = "test device"\nmemory_budget = "{budget}"\narch = "x86_64"\n'
            'threads = 1\nbatch_size = 4\np99_latency_ms = 1000.0\nruntime_format = "onnx"\n')
    out = tmp_path / "fleet"
    summary = compress(trained_run, fleet=profiles, out_dir=out, epochs=1, profile_runs=2, quiet=True,
                       searcher_params={"auto": {"methods": ["int8", "uniform"], "candidate_params": FAST}})
    report = json.loads((out / "fleet.json").read_text())
    assert sorted(r["device"] for r in report["rows"]) == ["big", "small"] and report["passed"]
    for run in summary["runs"]:
        assert run["method"] == "auto" and run["file_bytes"] <= run["budget_bytes"]
        assert sum(bool(c.get("chosen")) for c in run["candidates"]) == 1
        fitting = [c for c in run["candidates"] if c["outcome"] == "fits"]
        best = max(fitting, key=lambda c: c["val_metric"])
        assert best.get("chosen") and run["val_metric"] == pytest.approx(best["val_metric"])


def test_time_limit_without_auto_is_refused(trained_run: Path, tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="--time-limit applies to --method auto"):
        compress(trained_run, budgets=["17KB"], methods=["int8"], out_dir=tmp_path / "o", time_limit_s=60, quiet=True)
    assert not (tmp_path / "o").exists()
