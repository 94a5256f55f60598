"""Artefact confinement (issue 15 points 6-8, 12): every file an artefact names stays inside it,
no external data, read-only artefacts verify, unfinished folders do not."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from ondevice.cli import _register_commands, cli
from ondevice.export._runner import runner_module
from ondevice.outputs import MARKER

_register_commands()


@pytest.fixture
def art(exported, tmp_path: Path) -> Path:
    dst = tmp_path / "art"
    shutil.copytree(exported("fm"), dst)
    return dst


def _cli(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _one_error(res, needle: str = "", code: int = 2) -> str:
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert res.exit_code == code and len(errors) == 1 and "Traceback" not in res.output, res.output
    assert needle in errors[0], errors[0]
    return errors[0]


def _runner(capsys, *args: object) -> tuple[int, str]:
    code = runner_module().main([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def _edit_manifest(art: Path, fn) -> None:
    m = json.loads((art / "manifest.json").read_text())
    fn(m)
    (art / "manifest.json").write_text(json.dumps(m))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_manifest_paths_outside_the_artefact_are_refused(art: Path, tmp_path: Path, capsys, how: str) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"s" * 1234)
    name = {"dotdot": "../secret.bin", "absolute": str(secret), "symlink": "link.bin"}[how]
    if how == "symlink":
        (art / "link.bin").symlink_to(secret)
    # a matching size and sha: the old code accepted the file and exited 0
    _edit_manifest(art, lambda m: m["files"].update({name: {"bytes": 1234, "sha256": _sha(secret)}}))
    err = _one_error(_cli("verify", art, "--seed", "0"), "artefact folder")
    assert "1,234" not in err and _sha(secret)[:12] not in err  # nothing about the outside file leaks
    code, err = _runner(capsys, art, "--runs", "1", "--warmup", "0", "--batch", "1", "--threads", "1")
    assert code == 2 and "artefact folder" in err and "1,234" not in err


def test_profile_model_file_outside_is_refused(art: Path, tmp_path: Path) -> None:
    shutil.copy(art / "model.onnx", tmp_path / "outside.onnx")
    _one_error(_cli("profile", art, "--model-file", "../outside.onnx", "--runs", "1", "--warmup", "0", "--no-torch"),
               "not in this artefact")
    _edit_manifest(art, lambda m: m["files"].update({"../outside.onnx": m["files"]["model.onnx"]}))
    _one_error(_cli("profile", art, "--model-file", "../outside.onnx", "--runs", "1", "--warmup", "0", "--no-torch"))


def test_external_data_is_refused(art: Path, capsys) -> None:
    model = onnx.load(str(art / "model.onnx"))
    onnx.save_model(model, str(art / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    _edit_manifest(art, lambda m: m["files"].update(
        {"model.onnx": {"bytes": (art / "model.onnx").stat().st_size, "sha256": _sha(art / "model.onnx")}}))
    _one_error(_cli("verify", art, "--seed", "0"), "external data")
    code, err = _runner(capsys, art, "--runs", "1", "--warmup", "0", "--batch", "1", "--threads", "1")
    assert code == 2 and "external data" in err


def test_uses_external_data_reads_the_protobuf(exported) -> None:
    runner = runner_module()
    data = (exported("deepfm") / "model.onnx").read_bytes()
    assert runner.uses_external_data(data) is False
    with pytest.raises(runner.RunnerError, match="well-formed"):
        runner.uses_external_data(data[: len(data) // 2])


def test_read_only_artefact_verifies_without_writing(art: Path, monkeypatch) -> None:
    import os

    before = {p.name: p.read_bytes() for p in art.iterdir()}
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if mode & os.W_OK else real_access(p, mode, **kw))
    res = _cli("verify", art, "--seed", "0")
    assert res.exit_code == 0 and "not recorded" in res.output, res.output
    assert {p.name: p.read_bytes() for p in art.iterdir()} == before


def test_unfinished_artefacts_are_not_verified(art: Path, tmp_path: Path) -> None:
    tmp_like = tmp_path / ".art2.ondevice-abcd1234.tmp"  # what a killed export leaves
    shutil.copytree(art, tmp_like)
    _one_error(_cli("verify", tmp_like, "--seed", "0"), "not a finished artefact")
    (art / MARKER).unlink()
    _one_error(_cli("verify", art, "--seed", "0"), "not a finished artefact")


def test_runner_json_into_a_missing_folder_fails_before_the_run(art: Path, tmp_path: Path, capsys) -> None:
    code, err = _runner(capsys, art, "--json", tmp_path / "nope" / "d.json")
    assert code == 2 and "does not exist" in err


@pytest.mark.parametrize("bad", [
    {"files": {"model.onnx": {"bytes": "x", "sha256": "0" * 64}}},
    {"files": {"model.onnx": {"bytes": 1, "sha256": "zz"}}},
    {"files": []},
    {"tolerance": {"atol": "loose"}},
    {"golden": [{"name": "g", "inputs": {"ids": {"dtype": "int64", "shape": [1000000000], "data": [1]}},
                 "outputs": {}}]},
    {"golden": "nope"},
    {"inputs": []},
    {"task": "regression"},
])
def test_malformed_manifests_are_one_line_errors(art: Path, capsys, bad: dict) -> None:
    _edit_manifest(art, lambda m: m.update(bad))
    _one_error(_cli("verify", art, "--seed", "0"))
    code, err = _runner(capsys, art, "--runs", "1", "--warmup", "0", "--batch", "1", "--threads", "1")
    assert code == 2 and err.count("error:") == 1


def test_parity_inputs_garbage_is_a_one_line_error(art: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "in.npz").write_bytes(b"not a zip")
    code, err = _runner(capsys, art, "--parity-inputs", tmp_path / "in.npz", "--parity-out", tmp_path / "o.npz")
    assert code == 2 and "readable" in err
    np.savez(tmp_path / "in2.npz", a=np.zeros((2, 3), dtype=np.int64))  # wrong number of fields
    code, err = _runner(capsys, art, "--parity-inputs", tmp_path / "in2.npz", "--parity-out", tmp_path / "o.npz")
    assert code == 2 and "parity case" in err


def test_the_two_runner_copies_are_identical() -> None:
    root = Path(__file__).resolve().parents[2]
    assert (root / "export" / "runner.py").read_bytes() == \
        (root / "ondevice" / "_resources" / "device_runner" / "runner.py").read_bytes()
