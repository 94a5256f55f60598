"""``compress`` end to end and the ``ondevice compress`` CLI on the planted CTR data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ondevice.cli import _register_commands, cli
from ondevice.errors import BudgetTooSmallError
from ondevice.pipeline.compress import compress

BUDGET = "17KB"
METHODS = ["uniform", "hash", "int8", "pep", "pep+fp16", "sseds", "mde", "sseds+int8"]
FAST = {m: {"batch_size": 256} for m in METHODS if m != "int8"}  # int8 does not retrain: no batch size
FAST["pep"] = FAST["pep+fp16"] = {"batch_size": 256, "threshold_init": -1.0, "search_epochs": 3}


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.search.conftest import pretrained_run  # the same tiny DeepFM as tests/search

    return pretrained_run(tmp_path_factory.mktemp("compress_run"))


@pytest.fixture(scope="session")
def compressed(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("compress") / "out"
    summary = compress(trained_run, budgets=[BUDGET], methods=METHODS, out_dir=out, epochs=2,
                       searcher_params=FAST, profile_runs=3, quiet=True)
    return out, summary


@pytest.mark.parametrize("method", METHODS)
def test_every_method_fits_verifies_and_beats_random(compressed, method: str) -> None:
    out, summary = compressed
    run = next(r for r in summary["runs"] if r["method"] == method)
    folder = out / run["folder"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert (folder / "model.onnx").stat().st_size == run["file_bytes"] <= 17_000
    assert manifest["budget"]["fits"] is True and manifest["verify"]["passed"] is True
    assert run["val_metric"] > 0.55
    search = json.loads((folder / "search.json").read_text())
    assert search["params"]["method"] == method and search["config"]["_type"]
    assert (folder / "profile.json").is_file()


def test_summary_files(compressed) -> None:
    out, summary = compressed
    assert {p.name for p in out.iterdir()} >= {"summary.json", "summary.md", "summary.png"}
    s = json.loads((out / "summary.json").read_text())
    assert s["full_model"]["file_bytes"] > 17_000 and s["full_model"]["val"]["auc"] > 0.6
    assert len(s["runs"]) == len(METHODS) and not s["failures"]
    assert "sseds+int8" in (out / "summary.md").read_text()
    for run in s["runs"]:  # every row says which inputs its artefact takes
        encoding = json.loads((out / run["folder"] / "manifest.json").read_text())["input_encoding"]
        assert run["inputs"]["encoding"] == encoding
        assert run["inputs"]["text"].startswith("inputs unchanged: " + ("raw values" if encoding == "raw" else "ids ["))
    assert "| raw values, all fields |" in (out / "summary.md").read_text() or "| ids, all fields |" in (out / "summary.md").read_text()
    assert not list(out.parent.glob(".out.*"))  # no temp folder left behind


def test_too_small_budget_raises_with_minimum(trained_run: Path, tmp_path: Path) -> None:
    with pytest.raises(BudgetTooSmallError, match="smallest model sseds can build"):
        compress(trained_run, budgets=["4KB"], methods=["sseds"], out_dir=tmp_path / "o", quiet=True)


def _cli(*args: object):
    _register_commands()
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_cli_exit_codes(trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ok = _cli("compress", trained_run, "--budget", "17KB", "--method", "int8", "--out", tmp_path / "a",
              "--profile-runs", "2")
    assert ok.exit_code == 0, ok.output
    assert "summary:" in ok.output and (tmp_path / "a" / "17KB").is_dir()
    again = _cli("compress", trained_run, "--budget", "17KB", "--method", "int8", "--out", tmp_path / "a")
    assert again.exit_code == 2 and "--force" in again.output
    small = _cli("compress", trained_run, "--budget", "3KB", "--method", "int8", "--out", tmp_path / "b")
    assert small.exit_code == 2 and "smallest model int8 can build" in small.output
    bad = _cli("compress", trained_run, "--budget", "17KB", "--method", "magic", "--out", tmp_path / "c")
    assert bad.exit_code == 2 and "unknown --method" in bad.output
    # A byte accountant that underestimates (negative margin, no retries) -> over budget -> exit 3.
    import ondevice.pipeline.fitting as fitting

    monkeypatch.setattr(fitting, "FORMAT_MARGIN_BYTES", -30_000)
    monkeypatch.setattr(fitting, "MAX_FIT_RETRIES", 0)
    over = _cli("compress", trained_run, "--budget", "17KB", "--method", "uniform", "--epochs", "1",
                "--out", tmp_path / "d")
    assert over.exit_code == 3, over.output
    assert "over the budget" in over.output


def test_method_option_reaches_the_searcher(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = _cli("compress", trained_run, "--budget", "1MB", "--method", "pep+fp16", "--out", out,
               "--method-option", "pep.target_sparsity=0.9", "--method-option", "pep.batch_size=256",
               "--method-option", "pep.search_epochs=6", "--epochs", "1", "--profile-runs", "2")
    assert res.exit_code == 0, res.output
    run = json.loads((out / "summary.json").read_text())["runs"][0]
    cfg = run["config"]["_data"]
    assert cfg["reached_by"] == "threshold"  # the pep.* options apply to pep+fp16 too
    assert cfg["mask_nnz"] <= 0.1 * cfg["mask_shape"][0] * cfg["mask_shape"][1]


@pytest.mark.parametrize(("option", "message"), [
    ("pep.treshold_init=-4", "pep has no setting 'treshold_init'; its settings:"),
    ("nope.lr=1", "unknown method 'nope'"),
    ("threshold_lr=1", "expected METHOD.KEY=VALUE"),
])
def test_method_option_typos_are_one_line_errors(trained_run: Path, tmp_path: Path, option: str, message: str) -> None:
    res = _cli("compress", trained_run, "--budget", "1MB", "--method", "pep", "--out", tmp_path / "out",
               "--method-option", option)
    assert res.exit_code == 2 and message in res.output, res.output
    assert "Traceback" not in res.output and not (tmp_path / "out").exists()


def test_methods_lists_every_setting() -> None:
    res = _cli("methods", "pep", "deeplight")
    assert res.exit_code == 0
    assert "pep.target_sparsity = None" in res.output and "pep.threshold_lr = 'auto'" in res.output
    assert "deeplight.dnn_sparsity = 0.9" in res.output


def test_raw_artefact_budget_counts_its_vocabulary(trained_run: Path, tmp_path: Path) -> None:
    """compress's default raw artefact fits the budget with its vocabulary inside (the search gets
    the budget minus the encoder's bytes); a budget the vocabulary leaves too little of names it."""
    from ondevice.export.raw import raw_encoder_bytes
    from ondevice.train import load_checkpoint

    reserve = raw_encoder_bytes(load_checkpoint(trained_run).schema)
    s = compress(trained_run, budgets=["17KB"], methods=["int8"], out_dir=tmp_path / "a", quiet=True, profile=False,
                 evaluate_test=False)
    manifest = json.loads((tmp_path / "a" / s["runs"][0]["folder"] / "manifest.json").read_text())
    parts = manifest["storage"]["by_part"]
    assert manifest["input_encoding"] == "raw" and parts["vocabulary"] < reserve
    assert parts["total"] == manifest["files"]["model.onnx"]["bytes"] <= 17_000
    assert manifest["app_payload"]["bytes"] == parts["total"]  # the model file is all the app ships
    with pytest.raises(BudgetTooSmallError, match="vocabulary and encoder") as err:
        compress(trained_run, budgets=[reserve + 500], methods=["int8"], out_dir=tmp_path / "b", quiet=True,
                 profile=False, evaluate_test=False, inputs="raw")
    assert err.value.parts["vocabulary and encoder"] == reserve and err.value.minimum_bytes > reserve + 500
    with pytest.raises(BudgetTooSmallError, match=r"vocabulary and encoder alone .*--inputs ids"):
        compress(trained_run, budgets=[reserve - 1], methods=["int8"], out_dir=tmp_path / "c", quiet=True,
                 profile=False, evaluate_test=False, inputs="raw")


def test_default_inputs_fall_back_to_ids_when_the_vocabulary_takes_most_of_the_budget(
        trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --inputs, a budget the raw encoder would take more than RAW_VOCABULARY_SHARE of gets
    an id artefact and a warning naming the vocabulary's bytes (instead of failing a budget ids fit).
    The fixture's vocabulary is small, so the share is lowered to make 17 kB such a budget."""
    import importlib

    from ondevice.export.raw import raw_encoder_bytes
    from ondevice.train import load_checkpoint

    monkeypatch.setattr(importlib.import_module("ondevice.pipeline.compress"), "RAW_VOCABULARY_SHARE", 0.05)
    reserve = raw_encoder_bytes(load_checkpoint(trained_run).schema)
    budget = 17_000
    assert reserve > 0.05 * budget
    s = compress(trained_run, budgets=[budget], methods=["int8"], out_dir=tmp_path / "a", quiet=True,
                 profile=False, evaluate_test=False)
    run = s["runs"][0]
    manifest = json.loads((tmp_path / "a" / run["folder"] / "manifest.json").read_text())
    assert manifest["input_encoding"] == "ids" and manifest["files"]["model.onnx"]["bytes"] <= budget
    assert any(f"{reserve:,} B of vocabulary" in w and "--inputs raw" in w for w in run["warnings"])


def test_default_inputs_fall_back_to_ids_when_raw_misses_the_runtime_memory_budget(trained_run: Path, tmp_path: Path,
                                                                                  monkeypatch) -> None:
    """The vocabulary's hash maps cost session memory: with the default inputs, a raw artefact over its
    profile's memory_budget_runtime is exported again with ids, verified, and the row says why."""
    import importlib

    compress_mod = importlib.import_module("ondevice.pipeline.compress")  # the package re-exports the function
    profile = tmp_path / "phone.toml"
    profile.write_text('name = "phone"\ndescription = "test"\nmemory_budget = "40KB"\narch = "x86_64"\nthreads = 1\n'
                       'batch_size = 1\np99_latency_ms = 1000.0\nmemory_budget_runtime = "3MB"\nruntime_format = "onnx"\n')
    real = compress_mod._profile

    def measured(job, folder):  # what a device with a large raw vocabulary measures: raw over, ids within
        prof = real(job, folder)
        raw = json.loads((folder / "manifest.json").read_text())["input_encoding"] == "raw"
        prof["memory_target"] = {"budget_bytes": 3_000_000, "runtime_bytes": 5_000_000 if raw else 2_000_000,
                                 "passed": not raw, "checked": True, "batch": 1, "threads": 1, "profile": "phone"}
        return prof

    monkeypatch.setattr(compress_mod, "_profile", measured)
    out = tmp_path / "o"
    summary = compress(trained_run, device_profiles=[profile], methods=["uniform"], out_dir=out, epochs=1,
                       searcher_params={"uniform": FAST["uniform"]}, profile_runs=2, quiet=True)
    (run,) = summary["runs"]
    manifest = json.loads((out / run["folder"] / "manifest.json").read_text())
    assert manifest["input_encoding"] == "ids" and manifest["verify"]["passed"] and run["inputs"]["encoding"] == "ids"
    assert any("5,000,000 B" in w and "takes encoded ids (2,000,000 B)" in w for w in run["warnings"])
    # --inputs raw insists: the miss stops the target instead
    with pytest.raises(Exception, match="memory_budget_runtime"):
        compress(trained_run, device_profiles=[profile], methods=["uniform"], out_dir=tmp_path / "o2", epochs=1,
                 searcher_params={"uniform": FAST["uniform"]}, profile_runs=2, quiet=True, inputs="raw")
