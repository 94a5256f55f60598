"""The torch-free device runner, host profiling and the merged report."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ondevice.export import build_report, profile_artefact

LATENCY_KEYS = {"session_create_ms", "first_inference_ms", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms",
                "mean_ms", "throughput_rows_per_s", "rss_before_session_bytes", "rss_after_session_bytes",
                "peak_rss_after_session_bytes", "rss_after_runs_bytes", "peak_rss_after_runs_bytes"}


def _torchless_env(tmp_path: Path) -> dict[str, str]:
    """PYTHONPATH shims: ``import torch`` and ``import ondevice`` both raise ImportError."""
    shim = tmp_path / "shim"
    (shim / "ondevice").mkdir(parents=True)
    (shim / "torch.py").write_text("raise ImportError('torch is not installed on this device')\n")
    (shim / "ondevice" / "__init__.py").write_text("raise ImportError('ondevice is not installed on this device')\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(shim)
    return env


def test_runner_without_torch_then_report(exported, tmp_path: Path, cli_runner) -> None:
    art = tmp_path / "art"
    shutil.copytree(exported("deepfm"), art)
    env = _torchless_env(tmp_path)
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "ImportError" in probe.stderr
    out = tmp_path / "device.json"
    proc = subprocess.run([sys.executable, str(art / "runner.py"), str(art), "--json", str(out), "--batch", "1",
                           "--batch", "16", "--threads", "1", "--runs", "5", "--warmup", "1"],
                          env=env, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["golden"]["passed"] and result["ok"] and len(result["golden"]["cases"]) == 3
    assert [(e["batch"], e["threads"]) for e in result["latency"]] == [(1, 1), (16, 1)]
    assert set(result["latency"][0]) >= LATENCY_KEYS
    rep = cli_runner("report", art, "--device-result", out)
    assert rep.exit_code == 0, rep.output
    report = json.loads((art / "report.json").read_text())
    assert len(report["devices"]) == 1 and (art / "report.md").is_file()
    assert "golden PASS" in (art / "report.md").read_text()
    # a second report keeps the saved device result
    assert len(build_report(art)["devices"]) == 1


def test_runner_detects_tampering(exported, tmp_path: Path) -> None:
    art = tmp_path / "art"
    shutil.copytree(exported("fm"), art)
    model = art / "model.onnx"
    model.write_bytes(model.read_bytes()[:-10])
    proc = subprocess.run([sys.executable, str(art / "runner.py"), str(art), "--runs", "1"],
                          env=_torchless_env(tmp_path), capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "truncated" in proc.stderr


def test_runner_golden_mismatch_exits_3(exported, tmp_path: Path) -> None:
    art = tmp_path / "art"
    shutil.copytree(exported("fm"), art)
    m = json.loads((art / "manifest.json").read_text())
    m["golden"][0]["outputs"]["probability"]["data"][0] += 0.01
    (art / "manifest.json").write_text(json.dumps(m))
    proc = subprocess.run([sys.executable, str(art / "runner.py"), str(art), "--runs", "2", "--warmup", "0",
                           "--batch", "1", "--threads", "1"], env=_torchless_env(tmp_path), capture_output=True, text=True)
    assert proc.returncode == 3 and "golden outputs differ" in proc.stderr


def test_report_rejects_result_of_other_artefact(exported, tmp_path: Path, cli_runner) -> None:
    fake = tmp_path / "dev.json"
    fake.write_text(json.dumps({"format": "ondevice-device-result", "artefact": {"model_file": "model.onnx", "sha256": "0" * 64}}))
    r = cli_runner("report", exported("fm"), "--device-result", fake)
    assert r.exit_code == 2 and "another artefact" in r.output


def test_profile_keys_and_files(exported, tmp_path: Path, cli_runner) -> None:
    art = tmp_path / "art"
    shutil.copytree(exported("bprmf"), art)
    r = profile_artefact(art, batches=(1, 4), threads=(1,), runs=5, warmup=1)
    assert [(row["batch"], row["threads"]) for row in r["results"]] == [(1, 1), (4, 1)]
    row = r["results"][0]
    assert set(row["onnxruntime"]) >= LATENCY_KEYS
    assert {"p50_ms", "p99_ms", "throughput_rows_per_s"} <= set(row["pytorch"])
    assert set(row["ratio"]) == {"p50_torch_over_ort", "p99_torch_over_ort", "throughput_ort_over_torch"}
    assert r["target"] is None
    for name in ("profile.json", "profile.md"):
        assert (art / name).is_file()
    added = row["onnxruntime"]["memory"]["load_added_bytes"]  # the Markdown shows what the session adds, not the RSS
    assert f"| {added / 1e6:.1f} |" in (art / "profile.md").read_text()
    assert "session adds MB" in (art / "profile.md").read_text()
    pytest.importorskip("matplotlib")
    assert (art / "profile.png").stat().st_size > 1000
    cli = cli_runner("profile", art, "--batch", "2", "--threads", "1", "--runs", "3", "--warmup", "0", "--no-torch", "--json")
    assert cli.exit_code == 0, cli.output
    assert json.loads(cli.output)["results"][0]["pytorch"] is None


def test_profile_target_check(tmp_path: Path) -> None:
    """A profile target is measured at its (batch, threads) and checked only on its architecture."""
    from ondevice.budget import DeviceProfile
    from ondevice.errors import LatencyTargetError
    from ondevice.export import export_artefact
    from ondevice.export._runner import runner_module
    from tests.export.conftest import make_run

    arch = runner_module().normalise_arch(__import__("platform").machine())
    prof = DeviceProfile(name="tiny", description="t", memory_budget=10**7, arch=arch, threads=1, batch_size=3,
                         p99_latency_ms=1e-6, runtime_format="onnx")
    export_artefact(make_run(tmp_path / "run", "fm"), tmp_path / "art", profile=prof)
    with pytest.raises(LatencyTargetError, match="over the tiny target"):
        profile_artefact(tmp_path / "art", batches=(1,), threads=(1,), runs=3, warmup=0, torch_baseline=False, plot=False)
    saved = json.loads((tmp_path / "art" / "profile.json").read_text())
    assert saved["target"]["checked"] and saved["target"]["passed"] is False
    assert {(r["batch"], r["threads"]) for r in saved["results"]} == {(1, 1), (3, 1)}
