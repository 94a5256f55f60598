"""Hostile inputs, every command (issue 15 point 9): each case must end with the documented exit
code, exactly one ``error:`` line, no traceback, and nothing at ``--out`` (nor a temp folder or
lock file beside it). In-process (CliRunner), on tiny inputs built once per session.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ondevice.cli import _register_commands, cli
from tests.conftest import make_ctr
from tests.data.conftest import criteo_line, write_criteo
from tests.export.conftest import make_run

_register_commands()


@pytest.fixture(scope="session")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Good inputs every case starts from (never modified: cases copy what they break)."""
    from ondevice.export import export_artefact

    root = tmp_path_factory.mktemp("hostile")
    raw = write_criteo(root / "raw.tsv", 60)
    data = make_ctr(root / "data", rows=400)
    run = make_run(root / "run", "fm")
    export_artefact(run, root / "art")
    return {"root": root, "raw": raw, "data": data, "run": run, "art": root / "art"}


def _criteo(tmp: Path, *lines: str | bytes, name: str = "bad.tsv") -> Path:
    body = b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines)
    (tmp / name).write_bytes(body)
    return tmp / name


GOOD = criteo_line(1, list(range(13)), [f"{j:08x}" for j in range(26)])


def _good_rows(n: int = 20) -> list[str]:
    return [criteo_line(i % 2, list(range(i, i + 13)), [f"{(i * j) % 7:08x}" for j in range(26)]) for i in range(n)]


def _csv(tmp: Path, spec: object, text: str = "click,a,b\n1,x,y\n0,z,w\n1,x,w\n") -> list[str]:
    (tmp / "d.csv").write_text(text)
    (tmp / "spec.json").write_text(spec if isinstance(spec, str) else json.dumps(spec))
    return [str(tmp / "d.csv"), "--format", "csv", "--spec", str(tmp / "spec.json")]


GOOD_SPEC = {"label": "click", "categorical": ["a", "b"]}


def _gz(tmp: Path, how: str) -> Path:
    full = gzip.compress(("\n".join(_good_rows(200)) + "\n").encode())
    data = {"truncated": full[: len(full) // 2], "corrupt": full[:20] + b"\x00" * 50 + full[70:],
            "not-gzip": b"plain text, not gzip\n"}[how]
    (tmp / "x.tsv.gz").write_bytes(data)
    return tmp / "x.tsv.gz"


# ---------------------------------------------------------------------- prepare
def P(*extra: str) -> Callable[[Path, dict], list[str]]:
    return lambda tmp, e: ["prepare", str(e["raw"]), "--format", "criteo", *extra]


def PF(make: Callable[[Path], Path | list[str]], *extra: str, fmt: str = "criteo") -> Callable[[Path, dict], list[str]]:
    def build(tmp: Path, e: dict) -> list[str]:
        made = make(tmp)
        inputs = made if isinstance(made, list) else [str(made), "--format", fmt]
        return ["prepare", *inputs, *extra]
    return build


PREPARE = {
    "empty-file": PF(lambda t: _criteo(t)),
    "blank-line": PF(lambda t: _criteo(t, "")),
    "binary-garbage": PF(lambda t: _criteo(t, bytes(range(256)) * 3)),
    "too-few-fields": PF(lambda t: _criteo(t, "1\t2\t3")),
    "too-many-fields": PF(lambda t: _criteo(t, GOOD + "\tx")),
    "label-text": PF(lambda t: _criteo(t, "abc" + GOOD[1:])),
    "int-field-text": PF(lambda t: _criteo(t, GOOD.replace("\t0\t", "\tzz\t", 1))),
    **{f"int-field-{k}": PF(lambda t, v=v: _criteo(t, *_good_rows(), GOOD.replace("\t0\t", f"\t{v}\t", 1)))
       for k, v in (("inf", "inf"), ("1e999", "1e999"), ("minus-inf", "-inf"), ("beyond-int64", "-9.3e18"))},
    "min-count-every-field-oov": P("--min-count", "100000"),
    "labels-one-class": PF(lambda t: _criteo(t, *(("0" + r[1:]) for r in _good_rows(40)))),
    "gz-truncated": PF(lambda t: _gz(t, "truncated")),
    "gz-corrupt": PF(lambda t: _gz(t, "corrupt")),
    "gz-not-gzip": PF(lambda t: _gz(t, "not-gzip")),
    "gz-over-long-line": PF(lambda t: (t / "l.tsv.gz").write_bytes(gzip.compress(b"1\t" + b"9" * (1 << 20) + b"\n"))
                            and t / "l.tsv.gz", "--option", "block_bytes=65536"),
    "csv-unclosed-quote": PF(lambda t: _csv(t, GOOD_SPEC, 'click,a,b\n1,"x\n' + "0,z,w\n" * 20_000),
                             "--option", "block_bytes=65536"),
    "input-is-folder": PF(lambda t: t),
    "input-missing": PF(lambda t: t / "missing.tsv"),
    "hash-not-int": P("--hash", "C1=abc"),
    "hash-no-value": P("--hash", "C1"),
    "hash-no-name": P("--hash", "=3"),
    "hash-negative": P("--hash", "C1=-1"),
    "hash-zero": P("--hash", "C1=0"),
    "hash-huge": P("--hash", "C1=1e99"),
    "hash-float": P("--hash", "C1=2.5"),
    "hash-list": P("--hash", "C1=[1,2]"),
    "hash-unknown-field": P("--hash", "nope=10"),
    "option-no-value": P("--option", "x"),
    "option-unknown": P("--option", "unknown=1"),
    "option-block-negative": P("--option", "block_bytes=-5"),
    "option-block-text": P("--option", "block_bytes=x"),
    "option-block-object": P("--option", 'block_bytes={"a":1}'),
    "val-fraction-big": P("--val-fraction", "1.5"),
    "val-fraction-nan": P("--val-fraction", "nan"),
    "test-fraction-negative": P("--test-fraction", "-0.1"),
    "fractions-sum": P("--val-fraction", "0.6", "--test-fraction", "0.5"),
    "given-one-file": P("--split", "given"),
    "leave-last-out-ctr": P("--split", "leave-last-out"),
    "drop-duplicates-ctr": P("--drop-duplicates"),
    "leave-last-out-hashed-user": PF(lambda t: _criteo(t, "0 1 2", "1 3 4"), "--split", "leave-last-out", "--hash",
                                     "user=5", fmt="implicit"),
    "format-unknown": lambda t, e: ["prepare", str(e["raw"]), "--format", "nope"],
    "min-count-zero": P("--min-count", "0"),
    "chunk-rows-zero": P("--chunk-rows", "0"),
    "seed-text": P("--seed", "x"),
    "implicit-beyond-int64": PF(lambda t: _criteo(t, "0 1 2", "1 99999999999999999999999"), fmt="implicit"),
    "implicit-negative-id": PF(lambda t: _criteo(t, "0 1 2", "-5 3"), fmt="implicit"),
    "implicit-text": PF(lambda t: _criteo(t, "0 1 2", "a b"), fmt="implicit"),
    "movielens-bad-line": PF(lambda t: _criteo(t, "1::2", name="ratings.dat"), fmt="movielens"),
    "csv-duplicate-header": PF(lambda t: _csv(t, GOOD_SPEC, "click,a,a\n1,x,y\n0,z,w\n")),
    "csv-spec-not-json": PF(lambda t: _csv(t, "{not json")),
    "csv-spec-list": PF(lambda t: _csv(t, [1, 2])),
    "csv-spec-unknown-key": PF(lambda t: _csv(t, {**GOOD_SPEC, "colour": 1})),
    "csv-spec-no-label": PF(lambda t: _csv(t, {"categorical": ["a"]})),
    "csv-spec-label-int": PF(lambda t: _csv(t, {"label": 3, "categorical": ["a"]})),
    "csv-spec-categorical-str": PF(lambda t: _csv(t, {"label": "click", "categorical": "a"})),
    "csv-spec-categorical-ints": PF(lambda t: _csv(t, {"label": "click", "categorical": [1, 2]})),
    "csv-spec-delimiter-long": PF(lambda t: _csv(t, {**GOOD_SPEC, "delimiter": "ab"})),
    "csv-spec-header-str": PF(lambda t: _csv(t, {**GOOD_SPEC, "header": "yes"})),
    "csv-spec-columns-int": PF(lambda t: _csv(t, {**GOOD_SPEC, "header": False, "columns": 5})),
    "csv-spec-threshold-str": PF(lambda t: _csv(t, {**GOOD_SPEC, "label_threshold": "x"})),
    "csv-spec-numeric-rule": PF(lambda t: _csv(t, {"label": "click", "categorical": ["a"], "numeric": {"b": "sqrt"}})),
    "csv-spec-numeric-list": PF(lambda t: _csv(t, {"label": "click", "categorical": ["a"], "numeric": ["b"]})),
    "csv-spec-edges-str": PF(lambda t: _csv(t, {"label": "click", "categorical": ["a"], "numeric": {"b": {"edges": "x"}}})),
    "csv-spec-hash-str": PF(lambda t: _csv(t, {**GOOD_SPEC, "hash_buckets": {"a": "x"}})),
    "csv-spec-hash-list": PF(lambda t: _csv(t, {**GOOD_SPEC, "hash_buckets": [1]})),
    "csv-spec-block-negative": PF(lambda t: _csv(t, {**GOOD_SPEC, "block_bytes": -1})),
    "csv-spec-missing-column": PF(lambda t: _csv(t, {"label": "click", "categorical": ["nope"]})),
    "csv-numeric-text": PF(lambda t: _csv(t, {"label": "click", "categorical": ["a"], "numeric": {"b": "int"}})),
    "csv-spec-missing": lambda t, e: ["prepare", str(e["raw"]), "--format", "csv", "--spec", str(t / "nope.json")],
    "csv-no-spec": lambda t, e: ["prepare", str(e["raw"]), "--format", "csv"],
    "csv-spec-bad-toml": PF(lambda t: (_csv(t, GOOD_SPEC), (t / "spec.toml").write_text("a = = 1"),
                                       [str(t / "d.csv"), "--format", "csv", "--spec", str(t / "spec.toml")])[-1]),
}

# ---------------------------------------------------------------------- train
def T(*extra: str) -> Callable[[Path, dict], list[str]]:
    return lambda tmp, e: ["train", str(e["data"]), "--model", "fm", "--epochs", "1", "--quiet", *extra]


def _broken_data(how: str) -> Callable[[Path, dict], list[str]]:
    def build(tmp: Path, e: dict) -> list[str]:
        d = tmp / "d"
        shutil.copytree(e["data"], d)
        if how == "no-schema":
            (d / "schema.json").unlink()
        elif how == "schema-garbage":
            (d / "schema.json").write_bytes(b"\xff\x00garbage")
        elif how == "schema-fields-str":
            (d / "schema.json").write_text(json.dumps({"version": 1, "task": "ctr", "fields": "x"}))
        elif how == "schema-version-str":
            s = json.loads((d / "schema.json").read_text())
            (d / "schema.json").write_text(json.dumps({**s, "version": "x"}))
        elif how == "schema-vocab-str":
            s = json.loads((d / "schema.json").read_text())
            s["fields"][0]["vocab_size"] = "many"
            (d / "schema.json").write_text(json.dumps(s))
        elif how == "schema-vocab-huge":
            s = json.loads((d / "schema.json").read_text())
            s["fields"][0]["vocab_size"] = 10**15
            (d / "schema.json").write_text(json.dumps(s))
        elif how == "ids-garbage":
            (d / "train" / "ids.npy").write_bytes(b"garbage")
        elif how == "ids-truncated":
            p = d / "train" / "ids.npy"
            p.write_bytes(p.read_bytes()[:200])
        elif how == "labels-missing":
            (d / "train" / "labels.npy").unlink()
        elif how == "ids-out-of-vocab":
            ids = np.load(d / "train" / "ids.npy")
            ids[0, 0] = 10**6
            np.save(d / "train" / "ids.npy", ids)
        elif how == "val-empty":
            np.save(d / "val" / "ids.npy", np.zeros((0, np.load(d / "val" / "ids.npy").shape[1]), dtype=np.int32))
            np.save(d / "val" / "labels.npy", np.zeros(0, dtype=np.float32))
        elif how in ("train-one-class", "val-one-class"):
            split = how.split("-")[0]
            np.save(d / split / "labels.npy", np.zeros_like(np.load(d / split / "labels.npy")))
        elif how == "prepare-json-garbage":
            (d / "prepare.json").write_text("[")
        return ["train", str(d), "--model", "fm", "--epochs", "1", "--quiet"]
    return build


def _broken_resume(how: str) -> Callable[[Path, dict], list[str]]:
    def build(tmp: Path, e: dict) -> list[str]:
        part = tmp / "out.partial"
        part.mkdir()
        if how == "garbage":
            (part / "last.pt").write_bytes(b"garbage")
        else:
            payload: object = {"list": [1]} if how == "not-checkpoint" else {
                "format": "ondevice-checkpoint", "version": 1, "model": {"name": "fm"}, "state_dict": {},
                "schema": {"x": 1}, "train_config": "x" if how == "config-str" else {"model": "fm"},
                "metrics": {}, "extra": {"trainer_state": "x"}}
            torch.save(payload, part / "last.pt")
        return ["train", str(e["data"]), "--quiet", "--resume"]
    return build


TRAIN = {
    **{f"lr-{v}": T("--lr", v) for v in ("nan", "inf", "-1", "0")},
    **{f"dropout-{v}": T("--dropout", v) for v in ("2", "-0.5", "nan", "1")},
    **{f"weight-decay-{v}": T("--weight-decay", v) for v in ("-1", "nan")},
    **{f"l2-{v}": T("--l2", v) for v in ("-1", "nan", "inf")},
    **{f"epochs-{v}": T("--epochs", v) for v in ("0", "-1", "x")},
    **{f"batch-size-{v}": T("--batch-size", v) for v in ("0", "-4")},
    **{f"embed-dim-{v}": T("--embed-dim", v) for v in ("0", "-3")},
    "patience-0": T("--patience", "0"),
    **{f"mlp-{v}": T("--mlp", v) for v in ("400x-1", "400x0", "a", "0", "-5", "400x", "x3", "4,,x")},
    "k-0": T("--k", "0"),
    "threads-0": T("--threads", "0"),
    "device-tpu": T("--device", "tpu"),
    "model-unknown": lambda t, e: ["train", str(e["data"]), "--model", "nope", "--quiet"],
    "model-wrong-task": lambda t, e: ["train", str(e["data"]), "--model", "bprmf", "--quiet"],
    "max-steps-0": T("--max-steps", "0"),
    "eval-protocol": T("--eval-protocol", "x"),
    "data-missing": lambda t, e: ["train", str(t / "nope"), "--quiet"],
    "data-is-file": lambda t, e: ["train", str(e["raw"]), "--quiet"],
    **{f"data-{h}": _broken_data(h) for h in ("no-schema", "schema-garbage", "schema-fields-str", "schema-version-str",
                                               "schema-vocab-str", "schema-vocab-huge", "ids-garbage", "ids-truncated",
                                               "labels-missing", "prepare-json-garbage", "val-empty",
                                               "train-one-class", "val-one-class")},
    "resume-nothing": lambda t, e: ["train", str(e["data"]), "--quiet", "--resume"],
    **{f"resume-{h}": _broken_resume(h) for h in ("garbage", "not-checkpoint", "config-str", "wrong-types")},
}

# ---------------------------------------------------------------------- export / compress / search
def _broken_run(how: str, cmd: tuple[str, ...] = ("export",), *extra: str) -> Callable[[Path, dict], list[str]]:
    def build(tmp: Path, e: dict) -> list[str]:
        r = tmp / "r"
        shutil.copytree(e["run"], r)
        p = r / "model.pt"
        payload = torch.load(p, weights_only=True)
        if how == "garbage":
            p.write_bytes(b"\x00garbage")
        elif how == "truncated":
            p.write_bytes(p.read_bytes()[:300])
        elif how == "missing":
            p.unlink()
        elif how == "list":
            torch.save([1, 2], p)
        else:
            if how == "schema-str":
                payload["schema"] = "x"
            elif how == "model-str":
                payload["model"] = "x"
            elif how == "model-unknown":
                payload["model"] = {**payload["model"], "model": "nope"}
            elif how == "state-shape":
                k = next(iter(payload["state_dict"]))
                payload["state_dict"][k] = torch.zeros(3, 3, 3)
            elif how == "state-str":
                payload["state_dict"] = "x"
            elif how == "version-str":
                payload["version"] = "x"
            elif how == "train-config-str":
                payload["train_config"] = "x"
            elif how == "metrics-list":
                payload["metrics"] = [1]
            torch.save(payload, p)
        return [*cmd, str(r), *extra]
    return build


def X(*extra: str) -> Callable[[Path, dict], list[str]]:
    return lambda tmp, e: ["export", str(e["run"]), *extra]


def C(*extra: str) -> Callable[[Path, dict], list[str]]:
    return lambda tmp, e: ["compress", str(e["run"]), "--data", str(e["data"]), *extra]


RUNS = ("garbage", "truncated", "missing", "list", "schema-str", "model-str", "model-unknown", "state-shape",
        "state-str", "version-str", "train-config-str", "metrics-list")
EXPORT = {
    **{f"run-{h}": _broken_run(h) for h in RUNS},
    "run-not-found": lambda t, e: ["export", str(t / "nope")],
    **{f"budget-{v}": X("--budget", v) for v in ("abc", "0", "-1", "1e999MB", "nan", "10XB")},
    "profile-unknown": X("--device-profile", "nope"),
    "profile-garbage": lambda t, e: ((t / "p.toml").write_text("= = ="), ["export", str(e["run"]), "--device-profile",
                                                                             str(t / "p.toml")])[1],
    "profile-wrong-types": lambda t, e: ((t / "p.toml").write_text('name = 3\nmemory_budget = "x"\n'),
                                         ["export", str(e["run"]), "--device-profile", str(t / "p.toml")])[1],
    "format-x": X("--format", "x"),
    "top-k-0": X("--top-k", "0"),
}
COMPRESS = {
    **{f"run-{h}": _broken_run(h, ("compress",), "--budget", "1MB") for h in ("garbage", "schema-str", "model-str",
                                                                               "state-shape", "train-config-str")},
    **{f"budget-{v}": C("--budget", v) for v in ("abc", "0", "-5KB")},
    "no-budget": C(),
    "method-unknown": C("--budget", "1MB", "--method", "magic"),
    "method-repeated": C("--budget", "1MB", "--method", "int8", "--method", "int8"),
    "time-limit-text": C("--budget", "1MB", "--time-limit", "soon"),
    "time-limit-not-auto": C("--budget", "1MB", "--method", "int8", "--time-limit", "1m"),
    "profile-runs-0": C("--budget", "1MB", "--profile-runs", "0"),
    "mlp-x": C("--budget", "1MB", "--mlp", "x"),
    "data-missing": lambda t, e: ["compress", str(e["run"]), "--budget", "1MB", "--data", str(t / "nope")],
    "no-train-json": lambda t, e: ["compress", str(e["run"]), "--budget", "1MB"],
    "fleet-missing": C("--fleet", "/nonexistent/fleet"),
}
SEARCH = {
    "features-keep-0": lambda t, e: ["search", "features", str(e["run"]), "--data", str(e["data"]), "--keep", "0"],
    "features-both": lambda t, e: ["search", "features", str(e["run"]), "--data", str(e["data"]), "--keep", "2",
                                   "--budget", "1MB"],
    "features-neither": lambda t, e: ["search", "features", str(e["run"]), "--data", str(e["data"])],
    "features-run-garbage": _broken_run("garbage", ("search", "features"), "--keep", "2"),
    "interactions-run-garbage": _broken_run("garbage", ("search", "interactions")),
    "interactions-c-text": lambda t, e: ["search", "interactions", str(e["run"]), "--data", str(e["data"]), "--c", "big"],
    "architecture-budget": lambda t, e: ["search", "architecture", str(e["data"]), "--budget", "abc"],
    "architecture-data-missing": lambda t, e: ["search", "architecture", str(t / "nope"), "--budget", "1MB"],
    "architecture-latency": lambda t, e: ["search", "architecture", str(e["data"]), "--budget", "1MB", "--latency-p99",
                                          "fast"],
    "optinter-run-garbage": _broken_run("garbage", ("search", "optinter"), "--budget", "1MB"),
}
GENERATE = {
    "rows-0": lambda t, e: ["generate", "--rows", "0"],
    "fields-3": lambda t, e: ["generate", "--fields", "3"],
    "vocab-1": lambda t, e: ["generate", "--vocab", "1"],
    "latent-dim-negative": lambda t, e: ["generate", "--latent-dim", "-1"],
    "mean-items-negative": lambda t, e: ["generate", "--task", "topk", "--mean-items", "-3"],
    "mean-items-nan": lambda t, e: ["generate", "--task", "topk", "--mean-items", "nan"],
}

# ---------------------------------------------------------------------- verify / profile / report
def _broken_art(how: str, cmd: str = "verify", *extra: str) -> Callable[[Path, dict], list[str]]:
    def build(tmp: Path, e: dict) -> list[str]:
        a = tmp / "a"
        shutil.copytree(e["art"], a)
        mp = a / "manifest.json"
        m = json.loads(mp.read_text())
        edits: dict[str, Callable[[], object]] = {
            "manifest-missing": lambda: mp.unlink(),
            "manifest-garbage": lambda: mp.write_bytes(b"\xff\xfe{"),
            "manifest-list": lambda: mp.write_text("[]"),
            "bytes-str": lambda: m["files"]["model.onnx"].update(bytes="x"),
            "sha-short": lambda: m["files"]["model.onnx"].update(sha256="abc"),
            "sha-int": lambda: m["files"]["model.onnx"].update(sha256=5),
            "files-list": lambda: m.update(files=[]),
            "files-dotdot": lambda: m["files"].update({"../../etc/passwd": {"bytes": 1, "sha256": "0" * 64}}),
            "files-absolute": lambda: m["files"].update({"/etc/passwd": {"bytes": 1, "sha256": "0" * 64}}),
            "files-nul": lambda: m["files"].update({"a\u0000b": {"bytes": 1, "sha256": "0" * 64}}),
            "golden-shape-huge": lambda: m["golden"][0]["inputs"][m["inputs"][0]["name"]].update(shape=[10**9]),
            "golden-shape-mismatch": lambda: m["golden"][0]["inputs"][m["inputs"][0]["name"]].update(shape=[3, 3]),
            "golden-dtype": lambda: m["golden"][0]["inputs"][m["inputs"][0]["name"]].update(dtype="object"),
            "golden-data-str": lambda: m["golden"][0]["inputs"][m["inputs"][0]["name"]].update(data="x"),
            "golden-str": lambda: m.update(golden="x"),
            "golden-wrong-output": lambda: m["golden"][0].update(outputs={"nope": m["golden"][0]["outputs"][
                m["outputs"][0]["name"]]}),
            "atol-str": lambda: m["tolerance"].update(atol="x"),
            "atol-negative": lambda: m["tolerance"].update(atol=-1),
            "task-x": lambda: m.update(task="x"),
            "inputs-empty": lambda: m.update(inputs=[]),
            "outputs-str": lambda: m.update(outputs="x"),
            "schema-str": lambda: m.update(schema="x"),
            "version-str": lambda: m.update(version="x"),
            "format-other": lambda: m.update(format="other"),
            "vocab-str": lambda: m.update(vocab_sizes="x"),
            "device-profile-str": lambda: m.update(device_profile="x"),
            "onnx-truncated": lambda: (a / "model.onnx").write_bytes((a / "model.onnx").read_bytes()[:100]),
            "onnx-garbage-hashed": lambda: ((a / "model.onnx").write_bytes(b"garbage"), m["files"]["model.onnx"].update(
                bytes=7, sha256=__import__("hashlib").sha256(b"garbage").hexdigest())),
            "onnx-missing": lambda: (a / "model.onnx").unlink(),
            "schema-json-missing": lambda: (a / "schema.json").unlink(),
            "schema-json-garbage": lambda: (a / "schema.json").write_text("{"),
            "reference-missing": lambda: (a / "reference_model.pt").unlink(),
            "reference-garbage": lambda: (a / "reference_model.pt").write_bytes(b"x"),
            "marker-missing": lambda: (a / ".ondevice-output.json").unlink(),
        }
        edits[how]()
        if mp.exists() and how not in ("manifest-garbage", "manifest-list"):
            mp.write_text(json.dumps(m))
        return [cmd, str(a), *extra]
    return build


ARTS = ("manifest-missing", "manifest-garbage", "manifest-list", "bytes-str", "sha-short", "sha-int", "files-list",
        "files-dotdot", "files-absolute", "files-nul", "golden-shape-huge", "golden-shape-mismatch", "golden-dtype",
        "golden-data-str", "golden-str", "golden-wrong-output", "atol-str", "atol-negative", "task-x", "inputs-empty",
        "outputs-str", "schema-str", "version-str", "format-other", "vocab-str", "device-profile-str",
        "onnx-truncated", "onnx-garbage-hashed", "onnx-missing", "schema-json-missing", "schema-json-garbage",
        "reference-missing", "reference-garbage", "marker-missing")
PROFILE_ARTS = ("manifest-garbage", "bytes-str", "files-dotdot", "golden-shape-huge", "onnx-garbage-hashed",
                "device-profile-str")
REPORT_ARTS = ("manifest-garbage", "files-list", "golden-str", "onnx-truncated")


def _device_result(content: object) -> Callable[[Path, dict], list[str]]:
    def build(tmp: Path, e: dict) -> list[str]:
        a = tmp / "a"
        shutil.copytree(e["art"], a)
        (tmp / "d.json").write_text(content if isinstance(content, str) else json.dumps(content))
        return ["report", str(a), "--device-result", str(tmp / "d.json")]
    return build


ARTEFACT = {
    **{f"verify-{h}": _broken_art(h) for h in ARTS},
    **{f"profile-{h}": _broken_art(h, "profile", "--runs", "1", "--warmup", "0", "--no-torch") for h in PROFILE_ARTS},
    **{f"report-{h}": _broken_art(h, "report") for h in REPORT_ARTS},
    "verify-missing": lambda t, e: ["verify", str(t / "nope")],
    "verify-file": lambda t, e: ["verify", str(e["raw"])],
    "profile-model-file-dotdot": lambda t, e: ["profile", str(e["art"]), "--model-file", "../run/model.pt", "--no-torch"],
    "profile-model-file-unknown": lambda t, e: ["profile", str(e["art"]), "--model-file", "nope.onnx", "--no-torch"],
    "profile-batch-0": lambda t, e: ["profile", str(e["art"]), "--batch", "0"],
    "profile-runs-0": lambda t, e: ["profile", str(e["art"]), "--runs", "0"],
    "verify-cpu-without-arch": lambda t, e: ["verify", str(e["art"]), "--cpu", "max"],
    "device-result-garbage": _device_result("{"),
    "device-result-list": _device_result([1]),
    "device-result-other-format": _device_result({"format": "x"}),
    "device-result-artefact-str": _device_result({"format": "ondevice-device-result", "artefact": "x", "device": {}}),
    "device-result-device-str": _device_result({"format": "ondevice-device-result", "device": "x", "artefact": {}}),
    "device-result-other-sha": _device_result({"format": "ondevice-device-result", "device": {},
                                               "artefact": {"model_file": "model.onnx", "sha256": "0" * 64}}),
    "device-result-latency-str": lambda t, e: _device_result({
        "format": "ondevice-device-result", "device": {"machine": "x"}, "latency": "x",
        "golden": {"passed": True}, "created_unix": "x",
        "artefact": {"model_file": "model.onnx",
                     "sha256": json.loads((e["art"] / "manifest.json").read_text())["files"]["model.onnx"]["sha256"]}})(t, e),
}

# ---------------------------------------------------------------------- --out that is an input, . and ..
OUT_CASES = {
    "prepare-out-is-input-dir": (lambda t, e: ["prepare", str(e["raw"]), "--format", "criteo", "--force"], "root"),
    "prepare-out-is-input-file": (lambda t, e: ["prepare", str(e["raw"]), "--format", "criteo", "--force"], "raw"),
    "train-out-is-data": (T("--force"), "data"),
    "train-out-in-data": (T(), "data/run"),
    "export-out-is-run": (X("--force"), "run"),
    "export-out-in-run": (X(), "run/art"),
    "compress-out-is-run": (C("--budget", "1MB", "--force"), "run"),
    "compress-out-is-data": (C("--budget", "1MB", "--force"), "data"),
    "features-out-is-run": (SEARCH["features-keep-0"], "run"),
    "architecture-out-is-data": (lambda t, e: ["search", "architecture", str(e["data"]), "--budget", "1MB", "--force"],
                                 "data"),
}
DOTS = {f"{cmd}-out-{dot}": (build, dot) for dot in (".", "..") for cmd, build in (
    ("prepare", P("--force")), ("train", T("--force")), ("export", X("--force")), ("compress", C("--budget", "1MB", "--force")),
    ("quickstart", lambda t, e: ["quickstart", "--rows", "100", "--force"]))}

CASES = {**{f"prepare-{k}": v for k, v in PREPARE.items()}, **{f"train-{k}": v for k, v in TRAIN.items()},
         **{f"export-{k}": v for k, v in EXPORT.items()}, **{f"compress-{k}": v for k, v in COMPRESS.items()},
         **{f"search-{k}": v for k, v in SEARCH.items()}, **{f"generate-{k}": v for k, v in GENERATE.items()}}
NO_OUT = {**{f"artefact-{k}": v for k, v in ARTEFACT.items()}}


def _check(res, out: Path | None) -> None:
    text = res.output
    errors = [line for line in text.splitlines() if re.match(r"^(error|Error):", line)]
    crashed = res.exception is not None and not isinstance(res.exception, SystemExit)
    assert not crashed, f"crashed with {type(res.exception).__name__}: {res.exception}"
    assert "Traceback" not in text, text
    assert res.exit_code == 2, f"exit {res.exit_code}: {text}"
    assert len(errors) == 1, text
    if out is not None:
        assert not out.exists(), f"{out} was left behind"
        leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")] \
            if out.parent.is_dir() else []
        assert not leftovers, leftovers


def _invoke(args: list[str], cwd: Path | None = None):
    old = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return CliRunner().invoke(cli, args)
    finally:
        os.chdir(old)


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_input_is_one_clean_error(name: str, env: dict, tmp_path: Path) -> None:
    args = CASES[name](tmp_path, env)
    out = tmp_path / "out" / ("x.tsv" if name.startswith("generate-") else "result")
    _check(_invoke([*args, "--out", str(out)]), out)


@pytest.mark.parametrize("name", sorted(NO_OUT))
def test_hostile_artefact_is_one_clean_error(name: str, env: dict, tmp_path: Path) -> None:
    _check(_invoke(NO_OUT[name](tmp_path, env)), None)


@pytest.mark.parametrize("name", sorted(OUT_CASES) + sorted(DOTS))
def test_out_over_an_input_is_refused_and_nothing_is_touched(name: str, env: dict, tmp_path: Path) -> None:
    build, where = (OUT_CASES | DOTS)[name]
    before = {str(p): p.stat().st_mtime_ns for p in env["root"].rglob("*")}
    if where in (".", ".."):
        cwd = tmp_path / "cwd"
        cwd.mkdir()
        (cwd / "keep.txt").write_text("keep")
        _check(_invoke([*build(tmp_path, env), "--out", where], cwd=cwd), None)
        assert (cwd / "keep.txt").read_text() == "keep"
    else:
        _check(_invoke([*build(tmp_path, env), "--out", str(env[where] if where in env else env["root"] / where)]), None)
    after = {str(p): p.stat().st_mtime_ns for p in env["root"].rglob("*")}
    assert after == before


def test_the_suite_is_big_enough() -> None:
    assert len(CASES) + len(NO_OUT) + len(OUT_CASES) + len(DOTS) >= 150


def test_non_utf8_bytes_in_a_hashed_field_are_hashed_not_a_crash(tmp_path: Path) -> None:
    raw = _criteo(tmp_path, *_good_rows(), GOOD.encode().replace(b"00000000", b"\xff\xfe\xfd\xfc", 1))
    res = _invoke(["prepare", str(raw), "--format", "criteo", "--hash", "C1=50", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0 and res.exception is None, res.output
