"""What ``compress``/``auto`` promise a user who ships without checking (issue 13).

Quality floor, test metrics read once through onnxruntime, inputs as a contract, a time
limit that is a limit, latency in the choice.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from ondevice.cli import _register_commands, cli
from ondevice.data import EncodedDataset
from ondevice.errors import BadInputError, LatencyTargetError, QualityFloorError
from ondevice.evaluate import evaluate_artefact
from ondevice.pipeline.auto import AutoSearcher
from ondevice.pipeline.compress import compress
from ondevice.pipeline.options import parse_max_loss
from ondevice.search import make_searcher
from ondevice.train import evaluate_ctr, load_checkpoint

FAST = {m: {"batch_size": 256} for m in ("uniform", "sseds", "mde", "hash", "uniform+int8")}
FAST["autofield"] = {"batch_size": 256, "search_epochs": 1}


def _data(run: Path) -> EncodedDataset:
    return EncodedDataset(json.loads((run / "train.json").read_text())["data_dir"])


def _cli(*args: object):
    _register_commands()
    return CliRunner().invoke(cli, [str(a) for a in args])


# ---------------------------------------------------------------------- 1. quality floor
def test_auto_never_chooses_a_candidate_below_the_floor(trained_run: Path) -> None:
    # hash at 12 KB loses ~11 % of the full model's val AUC on this data; uniform ~1-2 %.
    searcher = make_searcher("auto", methods=["hash", "uniform"], epochs=1, candidate_params=FAST)
    result = searcher.search(load_checkpoint(trained_run), _data(trained_run), 12_000, mlp="auto")
    cands = {c["method"]: c for c in result.candidates}
    assert cands["hash"]["loss"] > 0.02 and cands["hash"]["outcome"].startswith("below quality floor")
    assert not cands["hash"]["chosen"] and cands["uniform"]["chosen"] and cands["uniform"]["loss"] <= 0.02


def test_no_candidate_within_the_floor_is_exit_3_naming_the_best_and_where_it_was_met(trained_run: Path,
                                                                                       tmp_path: Path) -> None:
    out = tmp_path / "o"
    with pytest.raises(QualityFloorError) as err:
        compress(trained_run, budgets=["12KB", "40KB"], out_dir=out, epochs=1, profile_runs=2, quiet=True,
                 searcher_params={"auto": {"methods": ["hash"], "candidate_params": FAST}})
    msg = str(err.value)
    assert "\n" not in msg and err.value.exit_code == 3
    assert "the best, hash, reaches" in msg and "% loss" in msg
    assert "the floor was met at 40KB (40,000 B, auto)" in msg
    summary = json.loads((out / "summary.json").read_text())
    assert [r["target"] for r in summary["runs"]] == ["40KB"]  # no artefact for the broken budget
    assert summary["failures"][0]["error"] == "QualityFloorError"


def test_named_method_with_max_loss_is_held_to_it_on_the_cli(trained_run: Path, tmp_path: Path) -> None:
    r = _cli("compress", trained_run, "--budget", "12KB", "--method", "hash", "--epochs", "1", "--max-loss", "2%",
             "--profile-runs", "2", "--out", tmp_path / "h")
    assert r.exit_code == 3, r.output
    assert "hash at 12KB loses" in r.output and "beyond --max-loss 2.0%" in r.output
    assert "no budget of this run met it" in r.output


def test_max_loss_parsing() -> None:
    assert parse_max_loss("2%") == pytest.approx(0.02) and parse_max_loss("0.05") == 0.05
    assert parse_max_loss("off") is None
    for bad in ("-1%", "150%", "lots"):
        with pytest.raises(BadInputError, match="--max-loss"):
            parse_max_loss(bad)


# ---------------------------------------------------------------------- 2. test metrics, read once
@pytest.fixture(scope="module")
def shipped(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("ship") / "out"
    summary = compress(trained_run, budgets=["12KB"], out_dir=out, epochs=1, profile_runs=2, quiet=True,
                       allow_input_change=True,
                       searcher_params={"auto": {"methods": ["int8", "uniform", "autofield"], "candidate_params": FAST}})
    return out, summary


def test_compress_reports_the_shipped_files_test_metric_in_its_own_column(shipped, trained_run: Path) -> None:
    out, summary = shipped
    (run,) = summary["runs"]
    assert run["test"]["runtime"] == "onnxruntime" and run["test"]["split"] == "test"
    # The shipped file's test AUC is the PyTorch reference model's on the same rows (fp32 parity).
    ref = load_checkpoint(out / run["folder"] / "reference_model.pt")
    data = _data(trained_run)
    cols = data.schema.field_positions(ref.schema.field_names)
    test = data.split("test")
    torch_auc = evaluate_ctr(ref.model, test.ids[:, cols], test.labels)["auc"]
    assert run["test_metric"] == pytest.approx(torch_auc, abs=1e-6)
    assert summary["full_model"]["test"]["auc"] > 0.6
    md = (out / "summary.md").read_text()
    assert "| test AUC |" in md and f"{run['test_metric']:.4f}" in md


def test_evaluate_cli_on_any_artefact(shipped, trained_run: Path, tmp_path: Path) -> None:
    out, summary = shipped
    folder = out / summary["runs"][0]["folder"]
    r = _cli("evaluate", folder, "--data", _data(trained_run).root, "--json", tmp_path / "m.json")
    assert r.exit_code == 0, r.output
    assert f"AUC {summary['runs'][0]['test_metric']:.4f}" in r.output
    assert json.loads((tmp_path / "m.json").read_text())["auc"] == pytest.approx(summary["runs"][0]["test_metric"])
    val = evaluate_artefact(folder, _data(trained_run), split="val")
    assert val["auc"] == pytest.approx(summary["runs"][0]["val_metric"], abs=1e-5)  # the number auto chose on


def test_evaluate_topk_artefact_excludes_seen_items(tmp_path: Path) -> None:
    from ondevice.export import export_artefact
    from ondevice.search.retrain import topk_pairs
    from ondevice.train import evaluate_topk
    from tests.topk_runs import pretrained_topk_run

    run = pretrained_topk_run(tmp_path / "t", epochs=2)
    export_artefact(run, tmp_path / "art")
    data = _data(run)
    got = evaluate_artefact(tmp_path / "art", data)
    want = evaluate_topk(load_checkpoint(run).model, topk_pairs(data, "test"),
                         [topk_pairs(data, "train"), topk_pairs(data, "val")], k=20)
    assert got["recall@20"] == pytest.approx(want["recall@20"]) and got["ndcg@20"] == pytest.approx(want["ndcg@20"])
    assert got["excluded_splits"] == ["train", "val"]


# ---------------------------------------------------------------------- 3. inputs are a contract
def test_auto_skips_input_changing_methods_unless_allowed(trained_run: Path) -> None:
    searcher = make_searcher("auto", methods=["uniform", "autofield"], epochs=1, candidate_params=FAST)
    result = searcher.search(load_checkpoint(trained_run), _data(trained_run), 12_000, mlp="auto")
    auto_field = next(c for c in result.candidates if c["method"] == "autofield")
    assert auto_field["outcome"].startswith("skipped: changes the inputs") and "seconds" not in auto_field
    assert result.schema is None


def test_changed_inputs_are_stated_in_summary_manifest_and_cli(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    summary = compress(trained_run, budgets=["12KB"], methods=["autofield"], out_dir=out, epochs=1, profile_runs=2,
                       quiet=True, searcher_params={"autofield": FAST["autofield"]})
    (run,) = summary["runs"]
    manifest = json.loads((out / run["folder"] / "manifest.json").read_text())
    contract = manifest["input_contract"]
    if not contract["changed"]:
        pytest.skip("AutoField kept every field on this data")
    kept, parent = contract["fields"], contract["parent_fields"]
    assert len(kept) < len(parent) == 5 and manifest["inputs"][0]["shape"] == ["batch", len(kept)]
    takes = "raw values of" if manifest["input_encoding"] == "raw" else f"ids [batch, {len(kept)}] ="
    assert contract["text"].startswith(f"INPUTS CHANGED: the artefact takes {takes} {len(kept)} of the full model's")
    assert all(name in contract["text"] for name in parent)  # kept and dropped are both named
    md = (out / "summary.md").read_text()
    assert "## Input changes" in md and contract["text"] in md


# ---------------------------------------------------------------------- 5. the time limit is a limit
def test_time_limit_stops_a_long_candidate_within_ten_percent(trained_run: Path) -> None:
    limit = 4.0
    slow = {"uniform": {"batch_size": 64, "epochs": 500, "patience": 1000}}
    # The only candidate is expected to take far longer than the limit: it starts (no answer yet) and is stopped.
    searcher = make_searcher("auto", methods=["uniform"], time_limit_s=limit, candidate_params=slow)
    t0 = time.perf_counter()
    result = searcher.search(load_checkpoint(trained_run), _data(trained_run), 12_000, mlp="auto")
    wall = time.perf_counter() - t0
    assert wall <= 1.1 * limit, wall
    cands = {c["method"]: c for c in result.candidates}
    assert cands["uniform"].get("stopped_at_limit") and cands["uniform"]["outcome"] == "fits"
    assert cands["uniform"]["val_metric"] > 0.6  # its best evaluated epoch is a valid candidate


def test_progress_is_one_line_per_candidate_start_and_finish(trained_run: Path, capsys) -> None:
    searcher = make_searcher("auto", methods=["int8", "uniform"], epochs=1, candidate_params=FAST, progress=True)
    searcher.search(load_checkpoint(trained_run), _data(trained_run), 12_000, mlp="auto")
    lines = capsys.readouterr().err.strip().splitlines()
    assert [ln.split(":")[0].strip() for ln in lines] == ["auto int8"] * 2 + ["auto uniform"] * 2
    assert "start at" in lines[0] and "expected" in lines[0]
    assert " B, p99 " in lines[3] and "val auc" in lines[3] and "s (" in lines[3]


# ---------------------------------------------------------------------- 6. latency in the choice
def test_latency_target_rejects_slow_candidates_before_the_choice(trained_run: Path) -> None:
    searcher = make_searcher("auto", methods=["int8", "uniform"], epochs=1, candidate_params=FAST,
                             latency_p99_ms=1e-6, latency_batch=4)
    with pytest.raises(LatencyTargetError, match="meets the p99 target of 1e-06 ms"):
        searcher.search(load_checkpoint(trained_run), _data(trained_run), 12_000, mlp="auto")


def test_fleet_profile_target_is_judged_by_auto(trained_run: Path, tmp_path: Path) -> None:
    import platform

    from ondevice.export._runner import runner_module

    arch = runner_module().normalise_arch(platform.machine())
    profiles = tmp_path / "p"
    profiles.mkdir()
    (profiles / "dev.toml").write_text(f'name = "dev"\ndescription = "t"\nmemory_budget = "12KB"\narch = "{arch}"\n'
                                       'threads = 1\nbatch_size = 8\np99_latency_ms = 1000.0\nruntime_format = "onnx"\n')
    summary = compress(trained_run, fleet=profiles, out_dir=tmp_path / "o", epochs=1, profile_runs=2, quiet=True,
                       searcher_params={"auto": {"methods": ["int8", "uniform"], "candidate_params": FAST}})
    fitted = [c for c in summary["runs"][0]["candidates"] if c.get("p99_ms") is not None]
    assert fitted and all(c["latency_batch"] == 8 and c["latency_threads"] == 1 for c in fitted)
    assert (tmp_path / "o" / "summary.md").read_text().count("(b=8, t=1)") == len(fitted)


def test_near_tie_goes_to_the_clearly_faster_candidate() -> None:
    auto = AutoSearcher(tie_tolerance=0.001)

    class _R:
        config: dict = {}
        trace: list = []
        timings: dict = {}
        candidates = None

    def cand(method: str, val: float, p50: float) -> dict:
        return {"method": method, "outcome": "fits", "val_metric": val, "p50_ms": p50, "_result": _R()}

    class _Ctx:
        budget_bytes = 1

    probe = {"full_val": {"auc": 0.8}}
    cs = [cand("slow", 0.8000, 30.0), cand("fast", 0.7995, 1.0), cand("worse", 0.79, 0.5)]
    auto._choose(_Ctx(), cs, probe, time.perf_counter())  # type: ignore[arg-type]
    assert [c["method"] for c in cs if c["chosen"]] == ["fast"] and "near-tie" in cs[1]["chosen_by"]
    cs = [cand("a", 0.8000, 1.0), cand("b", 0.7999, 0.9)]  # 10 % faster is timing noise: the best metric stays
    auto._choose(_Ctx(), cs, probe, time.perf_counter())  # type: ignore[arg-type]
    assert [c["method"] for c in cs if c["chosen"]] == ["a"]


def test_candidate_p99_ignores_one_stalled_round(monkeypatch) -> None:
    """One scheduler stall in one round of timings must not become the candidate's p99."""
    from ondevice.export._runner import runner_module
    from ondevice.models import build_model
    from ondevice.pipeline import measure as compress_mod

    runner = runner_module()
    calls = {"n": 0}

    def fake_time_calls(fn, runs, warmup):  # 20 µs calls; the second round stalls twice for 10 ms
        calls["n"] += 1
        samples = [20_000] * runs
        if calls["n"] == 2:  # 2 of all 150 calls (> 1 %): a pooled p99 would be 10 ms
            samples[-2:] = [10_000_000, 10_000_000]
        return samples

    monkeypatch.setattr(runner, "time_calls", fake_time_calls)
    monkeypatch.setattr("ondevice.export._runner.runner_module", lambda: runner)
    lat = compress_mod.candidate_latency(build_model("deepfm", [20, 30], embed_dim=4, mlp_dims=[8]).eval(), runs=50)
    assert calls["n"] == compress_mod.ROUNDS and lat["runs"] == 50 * compress_mod.ROUNDS
    assert lat["p99_ms"] < 0.1 and lat["p50_ms"] == 0.02
