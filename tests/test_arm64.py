"""ARM64 parity (issue 7): pure parts always; emulated parts where ``ondevice arm64 setup`` was run.

The emulated tests find the environment through ``$ONDEVICE_ARM64_CACHE`` (``.ci/run`` sets it)
or ``~/.cache/ondevice/arm64`` and are skipped, with the reason, where it is absent.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ondevice.arm64 import parity as parity_mod
from ondevice.arm64 import setup as setup_mod
from ondevice.budget import DeviceProfile, load_profile
from ondevice.cli import _register_commands, cli
from ondevice.errors import BadInputError
from ondevice.export._runner import RUNNER_PATH, runner_module
from ondevice.pipeline.fleet import fleet_arm64_parity, fleet_report, render_fleet_markdown
from tests.export.conftest import make_run

ENV, WHY = setup_mod.find_env()
needs_emulation = pytest.mark.skipif(ENV is None, reason=f"arm64 emulation not set up: {WHY}")


# ---------------------------------------------------------------------------- artefacts
@pytest.fixture(scope="module")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny DeepFM exported twice: fp32 storage and int8 tables (both with 1e-5 / 5e-5 bounds)."""
    from ondevice.embedding.quantized import QuantizedEmbedding
    from ondevice.export import export_artefact
    from ondevice.train.checkpoint import load_checkpoint, save_checkpoint

    root = tmp_path_factory.mktemp("arm64")
    run = make_run(root / "run", "deepfm")
    export_artefact(run, root / "fp32", inputs="ids")
    ckpt = load_checkpoint(run)
    model = ckpt.model
    model.embedding = QuantizedEmbedding.from_dense(model.embedding, dtype="int8")
    model.linear = QuantizedEmbedding.from_dense(model.linear, dtype="int8")
    (root / "run8").mkdir()
    save_checkpoint(root / "run8" / "model.pt", model, ckpt.schema, metrics={"val": {"auc": 0.5}})
    ckpt.schema.save(root / "run8" / "schema.json")
    export_artefact(root / "run8", root / "int8", inputs="ids")
    return {"fp32": root / "fp32", "int8": root / "int8"}


def _cli(*args: object, env: dict[str, str] | None = None):
    _register_commands()
    return CliRunner().invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)


# ---------------------------------------------------------------------------- setup (pure)
def test_apt_sources_parsing_and_private_line() -> None:
    deb822 = ("Types: deb\n# comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
              "Components: main contrib\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
              "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n\n"
              "Enabled: no\nTypes: deb\nURIs: http://off.example/debian\nSuites: bookworm\nComponents: main\n")
    entries = setup_mod.parse_apt_sources(deb822, deb822=True)
    assert len(entries) == 2  # the disabled stanza is skipped
    assert setup_mod.pick_archive(entries, "bookworm") == ("http://mirror.example/debian",
                                                           "/usr/share/keyrings/debian-archive-keyring.gpg")
    one_line = ("# deb http://commented.example/debian bookworm main\n"
                "deb-src http://src.example/debian bookworm main\n"
                "deb [arch=amd64 signed-by=/k.gpg] http://one.example/debian/ bookworm main non-free\n")
    entries = setup_mod.parse_apt_sources(one_line, deb822=False)
    assert setup_mod.pick_archive(entries, "bookworm") == ("http://one.example/debian", "/k.gpg")
    assert setup_mod.pick_archive(entries, "trixie") is None
    assert (setup_mod.private_sources_line("http://one.example/debian", "trixie", "arm64", "/k.gpg")
            == "deb [arch=arm64 signed-by=/k.gpg] http://one.example/debian trixie main\n")


def test_host_archive_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(setup_mod.ENV_MIRROR, "http://override.example/debian/")
    uri, signed_by, _codename = setup_mod.host_archive()
    assert uri == "http://override.example/debian" and signed_by is None


def test_stamp_idempotence_logic(tmp_path: Path) -> None:
    wanted = {"python": "3.11", "onnxruntime": "1.32.0", "numpy": "2.4.6"}
    stamp = {"format": setup_mod.STAMP_FORMAT, "qemu": "10.0.13", **wanted}
    assert setup_mod.stamp_is_current(stamp, wanted)
    assert not setup_mod.stamp_is_current({**stamp, "qemu": "7.2.22"}, wanted)  # bookworm's qemu: refused
    assert not setup_mod.stamp_is_current({**stamp, "onnxruntime": "1.31.0"}, wanted)
    assert not setup_mod.stamp_is_current({**stamp, "format": 0}, wanted)
    assert not setup_mod.stamp_is_current(None, wanted)
    assert setup_mod._version_tuple("1:10.0.13+ds-0+deb13u1") == (10, 0, 13)
    # find_env: nothing, then a stamp whose files are missing; both say which command fixes it
    env, why = setup_mod.find_env(tmp_path / "none")
    assert env is None and "ondevice arm64 setup" in why
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "stamp.json").write_text(json.dumps(stamp))
    env, why = setup_mod.find_env(tmp_path / "half")
    assert env is None and "incomplete" in why and "--force" in why


def test_cli_errors_without_emulation(tmp_path: Path, artefacts: dict[str, Path]) -> None:
    env = {setup_mod.ENV_CACHE: str(tmp_path / "empty")}
    r = _cli("verify", artefacts["fp32"], "--arch", "arm64", "--cpu", "cortex-a53", env=env)
    assert r.exit_code == 2 and "run `ondevice arm64 setup" in r.output and r.output.count("\n") == 1
    r = _cli("arm64", "status", env=env)
    assert r.exit_code == 2 and "ondevice arm64 setup" in r.output
    r = _cli("verify", artefacts["fp32"], "--cpu", "max")
    assert r.exit_code == 2 and "--cpu needs --arch arm64" in r.output
    with pytest.raises(BadInputError, match="unknown emulated core 'cortex-a99'"):
        parity_mod.check_cores(["cortex-a99"])
    assert parity_mod.check_cores(None) == ["cortex-a53", "neoverse-n1", "neoverse-n2", "max"]
    assert parity_mod.core_has_sme("max") and not parity_mod.core_has_sme("max,sme=off")


# ---------------------------------------------------------------------------- parity (pure)
def test_tolerance_choice(artefacts: dict[str, Path]) -> None:
    fp32 = json.loads((artefacts["fp32"] / "manifest.json").read_text())
    int8 = json.loads((artefacts["int8"] / "manifest.json").read_text())
    assert parity_mod.parity_tolerance(fp32) == (1e-5, "fp32")
    assert parity_mod.parity_tolerance(int8) == (5e-5, "quantized")  # the manifest's documented bound


def test_compare_core_float64_max_and_verdict() -> None:
    manifest = {"task": "ctr", "outputs": [{"name": "probability"}]}
    expected = {"a": {"probability": np.array([0.5, 0.25], np.float32)},
                "b": {"probability": np.array([0.75], np.float32)}}
    one_ulp = {"a": {"probability": np.array([np.nextafter(np.float32(0.5), np.float32(1)), 0.25], np.float32)},
               "b": {"probability": np.array([0.75], np.float32)}}
    r = parity_mod.compare_core(manifest, one_ulp, expected, 1e-5)
    assert r["passed"] and r["max_abs_diff"]["probability"] == pytest.approx(5.96e-8, rel=1e-2)
    assert r["worst_case"]["probability"] == "a"
    off = {**one_ulp, "b": {"probability": np.array([0.7501], np.float32)}}
    r = parity_mod.compare_core(manifest, off, expected, 1e-5)
    assert not r["passed"] and r["worst_case"]["probability"] == "b"


def test_parity_inputs_cover_golden_fresh_and_oov(artefacts: dict[str, Path]) -> None:
    manifest = json.loads((artefacts["fp32"] / "manifest.json").read_text())
    cases = parity_mod.parity_inputs(manifest, seed=3)
    assert {f"golden_{c['name']}" for c in manifest["golden"]} <= set(cases)
    assert {cases[f"fresh_b{b}"].shape[0] for b in (1, 7, 256)} == {1, 7, 256}
    vocab = np.asarray(manifest["vocab_sizes"])
    oov = cases["fresh_all_oov_b7"]
    assert np.all((oov < 0) | (oov >= vocab)) and (oov < 0).any()


def test_runner_parity_mode_on_host(artefacts: dict[str, Path], tmp_path: Path) -> None:
    """The runner's one-process parity mode (what runs under qemu), here on x86: same outputs as the host session."""
    art = artefacts["int8"]
    runner = runner_module()
    manifest = runner.load_manifest(art)
    cases = parity_mod.parity_inputs(manifest, seed=0)
    np.savez(tmp_path / "in.npz", **cases)
    proc = subprocess.run([sys.executable, str(RUNNER_PATH), str(art), "--parity-inputs", str(tmp_path / "in.npz"),
                           "--parity-out", str(tmp_path / "out.npz"), "--parity-alt-config", "mlas.disable_kleidiai=1"],
                          capture_output=True, text=True, check=True)
    info = json.loads(proc.stdout)
    assert info["cases"] == len(cases) and info["alt_config"] == {"mlas.disable_kleidiai": "1"}
    assert "hostname" not in info["device"]
    session = runner.make_session(art / "model.onnx", 1)
    with np.load(tmp_path / "out.npz") as out:
        for case, x in cases.items():
            ref = session.run(["probability"], {"ids": x})[0]
            np.testing.assert_allclose(out[f"{case}::probability"], ref, rtol=0, atol=1e-7)
            np.testing.assert_allclose(out[f"alt::{case}::probability"], ref, rtol=0, atol=1e-7)


# ---------------------------------------------------------------------------- profiles and fleet (pure)
def test_profiles_name_their_emulated_core() -> None:
    assert {n: load_profile(n).emulated_cpu for n in ("android-low", "android-mid", "rpi4", "desktop")} == {
        "android-low": "cortex-a53", "android-mid": "cortex-a76", "rpi4": "cortex-a72", "desktop": None}
    base = {"name": "x", "description": "d", "memory_budget": "1MB", "threads": 1, "batch_size": 1,
            "p99_latency_ms": 1.0, "runtime_format": "onnx"}
    with pytest.raises(BadInputError, match="only on arm64 profiles"):
        DeviceProfile.from_dict({**base, "arch": "x86_64", "emulated_cpu": "cortex-a53"})
    with pytest.raises(BadInputError, match="emulated_cpu"):
        DeviceProfile.from_dict({**base, "arch": "arm64", "emulated_cpu": "Cortex A53!"})
    assert DeviceProfile.from_dict({**base, "arch": "arm64", "emulated_cpu": "max,sme=off"}).emulated_cpu == "max,sme=off"


def _summary(parity: dict | None) -> dict:
    run = {"device_profile": "phone", "method": "int8", "file_bytes": 100, "fits": True, "verified": True,
           "metric": "auc", "val_metric": 0.7, "latency": {"verdict": "not measured on target arch"}, "folder": "phone",
           "arm64_parity": parity}
    return {"run_dir": "r", "full_model": {"file_bytes": 1000, "val": {"auc": 0.71}, "metric": "auc"},
            "runs": [run], "failures": []}


def test_fleet_rows_say_arm64_parity(artefacts: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    phone = DeviceProfile(name="phone", description="t", memory_budget=10**6, arch="arm64", threads=1, batch_size=1,
                          p99_latency_ms=10.0, runtime_format="onnx", emulated_cpu="cortex-a53")
    monkeypatch.setenv(setup_mod.ENV_CACHE, str(tmp_path / "no-emulation"))
    unchecked = fleet_arm64_parity(artefacts["fp32"], phone, 0, True, "phone")
    assert unchecked["checked"] is False and unchecked["passed"] is None
    report = fleet_report(_summary(unchecked), [phone], "profiles")
    assert report["passed"] and report["arm64_parity_not_checked"] == ["phone"]  # said, not failed
    md = render_fleet_markdown(report)
    assert "not checked (run `ondevice arm64 setup`)" in md and "**not checked** for phone" in md
    failed = {"checked": True, "cpu": "cortex-a53", "passed": False, "max_abs_diff": 3e-4, "atol": 1e-5, "reason": "x"}
    report = fleet_report(_summary(failed), [phone], "profiles")
    assert not report["passed"] and report["rows"][0]["status"] == "fail"
    assert "**fail** 3.0e-04 (cortex-a53)" in render_fleet_markdown(report)


# ---------------------------------------------------------------------------- emulated
@needs_emulation
def test_verify_arm64_fp32_cli(artefacts: dict[str, Path]) -> None:
    art = artefacts["fp32"]
    r = _cli("verify", art, "--arch", "arm64", "--cpu", "cortex-a53", "--cpu", "max", "--seed", "1")
    assert r.exit_code == 0, r.output
    assert "arm64 parity" in r.output and "not device latency" in r.output
    result = json.loads((art / "verify_arm64.json").read_text())
    assert result["passed"] and result["atol"] == 1e-5 and result["storage"] == "fp32"
    by_core = {c["cpu"]: c for c in result["cores"]}
    assert set(by_core) == {"cortex-a53", "max"}
    assert by_core["cortex-a53"]["machine"] == "aarch64" and "asimddp" not in by_core["cortex-a53"]["cpu_features"]
    assert "sme" in by_core["max"]["cpu_features"] and "kleidiai_off" in by_core["max"]
    for c in result["cores"]:
        assert 0.0 <= c["max_abs_diff"]["probability"] <= 1e-5
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["verify_arm64"]["passed"] is True and set(manifest["verify_arm64"]["cores"]) == {"cortex-a53", "max"}


@needs_emulation
def test_arm64_parity_int8_and_fleet_row(artefacts: dict[str, Path]) -> None:
    art = artefacts["int8"]
    r = parity_mod.arm64_parity(art, cores=["max"], seed=2, write=False)  # cortex-a53: the fleet row below
    assert r["passed"] and r["atol"] == 5e-5 and r["storage"] == "quantized"
    sme = next(c for c in r["cores"] if c["cpu"] == "max")
    assert sme["kleidiai_off"]["passed"] and "mlas.disable_kleidiai=1" in sme["kleidiai_note"]
    assert r["kleidiai_eligible_ops"] == []  # int8 tables are dequantized before the fp32 MLP
    phone = DeviceProfile(name="phone", description="t", memory_budget=10**6, arch="arm64", threads=1, batch_size=1,
                          p99_latency_ms=10.0, runtime_format="onnx", emulated_cpu="cortex-a53")
    row = fleet_arm64_parity(art, phone, 0, True, "phone")
    assert row["checked"] and row["passed"] and row["cpu"] == "cortex-a53" and row["max_abs_diff"] <= 5e-5


@needs_emulation
def test_setup_is_idempotent_on_a_current_environment() -> None:
    assert ENV is not None
    lines: list[str] = []
    stamp = setup_mod.setup_arm64(ENV.cache, log=lines.append)  # no download, no rebuild
    assert lines and lines[0].startswith("up to date") and stamp == ENV.stamp
    assert setup_mod._version_tuple(ENV.stamp["qemu"]) >= (10, 0) and ENV.stamp["smoke"].startswith("aarch64")
