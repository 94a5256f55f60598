"""Raw-feature artefacts (``export --inputs raw``): raw rows through the raw artefact give the
same outputs as ``prepare`` + the id artefact, for every CTR prepare format, on the shared
datasets (skipped when absent) and on small files with unseen values, empty strings, NaN,
negative, huge and infinite numbers and invalid dates."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from ondevice.data import prepare
from ondevice.data.dataset import EncodedDataset
from ondevice.export import export_artefact
from ondevice.export._runner import runner_module
from ondevice.export.raw import encode_reference
from ondevice.models import build_model
from ondevice.schema import Schema, stable_hash
from ondevice.train.checkpoint import save_checkpoint
from ondevice.vocabulary import vocabulary_bytes

SHARED = Path("/work/shared/data")
# odd integers prepare accepts (criteo_log2 takes 1e300 and 9.3e18 to floor(ln(x)^2): 477214, 1881)
ODD_INTS = ["", "-1", "-5", "0", "1", "2", "3", "123456789012", "2.5", "9.2e18", "-9.2e18", "1e300", "9.3e18"]
# Integer values prepare refuses (not finite, or no int64 token: the file is damaged). An app can
# still send them to a raw artefact: the graph gives the OOV id (checked below).
REFUSED_INTS = ["inf", "-inf", "-1e300", "1e999", "-9.3e18"]


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _check(tmp: Path, data: Path, records: list[dict], *, fields_checked: bool = True) -> dict:
    """Export an id and a raw artefact of a random DeepFM on ``data``; compare on ``records``
    (row r of the prepared train split is records[r])."""
    ds = EncodedDataset(data)
    schema = ds.schema
    torch.manual_seed(0)
    model = build_model("deepfm", schema.vocab_sizes, embed_dim=4, mlp_dims=[8])
    with torch.no_grad():  # large first-order weights: every wrong id shows in the output
        model.linear.weight.normal_(std=0.5)
    (tmp / "run").mkdir()
    save_checkpoint(tmp / "run" / "model.pt", model, schema, metrics={})
    ids_art = export_artefact(tmp / "run" / "model.pt", tmp / "ids", inputs="ids", check_mobile=False)
    raw_art = export_artefact(tmp / "run" / "model.pt", tmp / "raw", inputs="raw", check_mobile=False)
    runner = runner_module()
    feeds = runner.records_to_feeds(raw_art, records)
    prepared = np.asarray(ds.split("train").ids, dtype=np.int64)
    assert prepared.shape[0] == len(records)
    if fields_checked:  # the reference encoder is prepare, id for id
        np.testing.assert_array_equal(encode_reference(schema, raw_art["raw_inputs"], feeds), prepared)
    got = _session(tmp / "raw" / "model.onnx").run(None, feeds)[0]
    want = _session(tmp / "ids" / "model.onnx").run(None, {"ids": prepared})[0]
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    assert raw_art["storage"]["by_part"]["vocabulary"] > 0 and ids_art["storage"]["by_part"]["vocabulary"] == 0
    # the byte model's count (ondevice.vocabulary, no exporter) is the file's, byte for byte
    assert vocabulary_bytes(schema, raw_art["raw_inputs"]) == raw_art["storage"]["by_part"]["vocabulary"]
    assert raw_art["app_payload"]["files"].keys() == {"model.onnx"} | ({"hash_reference.js"} if raw_art["raw_inputs"]["hashing"] else set())
    return raw_art


def _prepare(inputs, out: Path, fmt: str, **kw) -> Path:
    prepare(inputs, out, format=fmt, val_fraction=0.0, test_fraction=0.0, min_count=2, **kw)
    return out


def _criteo_rows(lines: list[str]) -> list[dict]:
    names = ["label", *[f"I{i}" for i in range(1, 14)], *[f"C{i}" for i in range(1, 27)]]
    return [dict(zip(names, line.rstrip("\n").split("\t"), strict=True)) for line in lines]


def _odd_criteo_lines(rng: np.random.Generator, n: int) -> list[str]:
    lines = []
    for k in range(n):
        ints = [ODD_INTS[(k + i) % len(ODD_INTS)] for i in range(13)]
        cats = ["" if (k + i) % 5 == 0 else f"{(k * 7 + i) % 11:08x}" if k % 3 else f"unseen{k}_{i}" for i in range(26)]
        lines.append("\t".join([str(k % 2), *ints, *cats]) + "\n")
    return lines


def test_criteo_synthetic_edge_values(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    lines = _odd_criteo_lines(rng, 120)
    (tmp_path / "c.tsv").write_text("".join(lines))
    data = _prepare(tmp_path / "c.tsv", tmp_path / "data", "criteo")
    art = _check(tmp_path, data, _criteo_rows(lines))
    refused = [{**_criteo_rows(lines[:1])[0], **{f"I{i}": REFUSED_INTS[(k + i) % len(REFUSED_INTS)] for i in range(1, 14)}}
               for k in range(len(REFUSED_INTS))]
    got = _session(tmp_path / "raw" / "model.onnx").run(None, runner_module().records_to_feeds(art, refused))[0]
    assert got.shape == (len(refused),) and np.isfinite(got).all()


@pytest.mark.skipif(not (SHARED / "criteo/criteo_dac_train_head10k.tsv.gz").is_file(), reason="shared Criteo data absent")
def test_criteo_shared_head(tmp_path: Path) -> None:
    with gzip.open(SHARED / "criteo/criteo_dac_train_head10k.tsv.gz", "rt") as fh:
        lines = [next(fh) for _ in range(3000)]
    lines += _odd_criteo_lines(np.random.default_rng(1), 40)
    (tmp_path / "c.tsv").write_text("".join(lines))
    data = _prepare(tmp_path / "c.tsv", tmp_path / "data", "criteo")
    _check(tmp_path, data, _criteo_rows(lines))


def test_avazu_hour_and_weekday(tmp_path: Path) -> None:
    rows = ["id,click,hour,C1,site_id"]
    hours = ["14102100", "14102123", "14103005", "14022800", "00022923", "69010100", "99123123", "16022900"]
    for k in range(80):
        rows.append(f"{k},{k % 2},{hours[k % len(hours)]},{1000 + k % 3},{'' if k % 7 == 0 else f's{k % 5}'}")
    (tmp_path / "a.csv").write_text("\n".join(rows) + "\n")
    data = _prepare(tmp_path / "a.csv", tmp_path / "data", "avazu")
    records = [dict(zip(rows[0].split(","), r.split(","), strict=True)) for r in rows[1:]]
    art = _check(tmp_path, data, records)
    # invalid dates (prepare refuses the file) and NaN hours are OOV inside the graph, never a crash
    odd = [{"hour": h, "C1": "1000", "site_id": "s1"} for h in ("14023000", "14102124", None, "-3", "1e12", "14102100.5")]
    feeds = runner_module().records_to_feeds(art, odd)
    ids = encode_reference(EncodedDataset(data).schema, art["raw_inputs"], feeds)
    assert (ids[:, :2] == 0).all()
    got = _session(tmp_path / "raw" / "model.onnx").run(None, feeds)[0]
    want = _session(tmp_path / "ids" / "model.onnx").run(None, {"ids": ids})[0]
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


def test_csv_numeric_rules_and_hashing(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    lines = ["click,site,price,count,age,device"]
    for k in range(150):
        price = ["", "-3", "0", "7", "1e15", "55.5"][k % 6] if k % 4 == 0 else str(int(rng.integers(0, 500)))
        count = ["", "-2.5", "3.99", "9e18"][k % 4] if k % 5 == 0 else str(int(rng.integers(0, 9)))
        age = ["", "17.9", "18", "99", "-1"][k % 5] if k % 3 == 0 else str(int(rng.integers(10, 70)))
        site = "" if k % 9 == 0 else f"site{int(rng.integers(0, 12))}"
        lines.append(f"{k % 2},{site},{price},{count},{age},dev{int(rng.integers(0, 40))}")
    (tmp_path / "x.csv").write_text("\n".join(lines) + "\n")
    spec = {"label": "click", "categorical": ["site", "device"],
            "numeric": {"price": "log2", "count": "int", "age": {"edges": [18, 25, 35, 50]}}, "hash_buckets": {"device": 13}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    data = _prepare(tmp_path / "x.csv", tmp_path / "data", "csv", format_options={"spec": str(tmp_path / "spec.json")})
    records = [dict(zip(lines[0].split(","), r.split(","), strict=True)) for r in lines[1:]]
    art = _check(tmp_path, data, records)
    assert art["raw_inputs"]["hashing"]["fields"] == {"device": 13}
    assert (tmp_path / "raw" / "hash_reference.js").is_file() and (tmp_path / "raw" / "hash_reference.py").is_file()


@pytest.mark.skipif(not (SHARED / "criteo/criteo_sample.txt").is_file(), reason="shared Criteo sample absent")
def test_csv_shared_criteo_sample(tmp_path: Path) -> None:
    spec = {"label": "label", "categorical": [f"C{i}" for i in range(1, 27)],
            "numeric": {f"I{i}": "log2" for i in range(1, 14)}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    src = SHARED / "criteo/criteo_sample.txt"
    data = _prepare(src, tmp_path / "data", "csv", format_options={"spec": str(tmp_path / "spec.json")})
    import csv

    with open(src, newline="") as fh:
        records = list(csv.DictReader(fh))
    _check(tmp_path, data, records)


def _libfm_records(lines: list[str], names: list[str]) -> list[dict]:
    return [dict(zip(names, line.split()[1:], strict=True)) for line in lines]


def test_libfm_tokens(tmp_path: Path) -> None:
    lines = [f"{k % 2} {k % 7}:1 {10 + k % 5}:1 {20 + k % 3}:0.5" for k in range(60)] + ["1 99:1 10:1.0 20:0.5", "0 3:1 77:1 21:2"]
    (tmp_path / "t.libfm").write_text("\n".join(lines) + "\n")
    data = _prepare(tmp_path / "t.libfm", tmp_path / "data", "libfm")
    art = _check(tmp_path, data, _libfm_records(lines, ["f1", "f2", "f3"]))
    assert art["raw_inputs"]["libfm_aliases"] == [":1", ":1.0"]


@pytest.mark.skipif(not (SHARED / "frappe/nfm-libfm").is_dir(), reason="shared Frappe data absent")
def test_libfm_shared_frappe(tmp_path: Path) -> None:
    src = sorted((SHARED / "frappe/nfm-libfm").glob("*test*"))[0]
    opener = gzip.open if src.suffix == ".gz" else open
    with opener(src, "rt") as fh:
        lines = [next(fh).strip() for _ in range(3000)]
    (tmp_path / "f.libfm").write_text("\n".join(lines) + "\n")
    data = _prepare(tmp_path / "f.libfm", tmp_path / "data", "libfm")
    _check(tmp_path, data, _libfm_records(lines, [f"f{i}" for i in range(1, 11)]))


def _movielens_records(folder: Path, ratings: list[str]) -> list[dict]:
    def table(name: str) -> dict[str, list[str]]:
        p = folder / name
        text = p.read_text(encoding="latin-1")  # the side tables are plain .dat files
        return {ln.split("::")[0]: ln.split("::")[1:] for ln in text.splitlines() if ln.strip()}

    users, movies = table("users.dat"), table("movies.dat")
    out = []
    for line in ratings:
        u, m = line.split("::")[:2]
        gender, age, occ, zipc = users.get(u, ["", "", "", ""])
        title, genres = movies.get(m, ["", ""])
        year = re.search(r"\((\d{4})\)\s*$", title)
        out.append({"user": u, "item": m, "gender": gender, "age": age, "occupation": occ, "zip": zipc,
                    "genre": genres.split("|")[0], "year": year.group(1) if year else ""})
    return out


@pytest.mark.skipif(not (SHARED / "movielens-1m/ratings_head10k.dat.gz").is_file(), reason="shared MovieLens data absent")
def test_movielens_shared(tmp_path: Path) -> None:
    folder = SHARED / "movielens-1m"
    with gzip.open(folder / "ratings_head10k.dat.gz", "rt") as fh:
        lines = [next(fh).strip() for _ in range(3000)]
    lines += ["999999::1::5::0", "1::999999::4::0"]  # a user and a movie not in the side tables
    (tmp_path / "ratings.dat").write_text("\n".join(lines) + "\n")
    for side in ("users.dat", "movies.dat"):
        (tmp_path / side).symlink_to(folder / side)
    data = _prepare(tmp_path / "ratings.dat", tmp_path / "data", "movielens")
    _check(tmp_path, data, _movielens_records(tmp_path, lines))


def test_runner_records_cli_and_golden(tmp_path: Path) -> None:
    lines = _odd_criteo_lines(np.random.default_rng(3), 40)
    (tmp_path / "c.tsv").write_text("".join(lines))
    data = _prepare(tmp_path / "c.tsv", tmp_path / "data", "criteo")
    _check(tmp_path, data, _criteo_rows(lines))
    recs = _criteo_rows(lines[:5])
    recs[0] = {"I1": 3.0, "C1": None}  # numbers as numbers, missing keys and null
    (tmp_path / "r.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    proc = subprocess.run([sys.executable, str(tmp_path / "raw" / "runner.py"), str(tmp_path / "raw"), "--records",
                           str(tmp_path / "r.jsonl")], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    # record 1 lacks most columns: stderr names them (a misspelt column would show here), stdout stays JSON
    assert proc.stderr.startswith("note: read as missing: ") and "C1 (" not in proc.stderr and "C2 (absent in 1 of 5)" in proc.stderr
    printed = [json.loads(ln)["probability"] for ln in proc.stdout.splitlines()]
    runner = runner_module()
    manifest = json.loads((tmp_path / "raw" / "manifest.json").read_text())
    want = _session(tmp_path / "raw" / "model.onnx").run(None, runner.records_to_feeds(manifest, recs))[0]
    np.testing.assert_allclose(printed, want, atol=1e-7)
    # the golden cases (stored as strict JSON: NaN/Infinity as strings) pass in the runner
    assert "NaN" in (tmp_path / "raw" / "manifest.json").read_text()
    assert runner.check_golden(runner.make_session(tmp_path / "raw" / "model.onnx", 1), manifest)["passed"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"I1": 1}\nnot json\n')
    proc = subprocess.run([sys.executable, str(tmp_path / "raw" / "runner.py"), str(tmp_path / "raw"), "--records", str(bad)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "line 2" in proc.stderr


def test_hash_reference_js_matches_python(tmp_path: Path) -> None:
    import shutil

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    from ondevice.export.raw import HASH_REFERENCE_DIR

    values = ["", "a", "68fd1e64", "ünïcode✓", "x" * 128, "y" * 300, 3.0, 17, None]
    script = (f"const h=require({json.dumps(str(HASH_REFERENCE_DIR / 'hash_reference.js'))});"
              f"console.log(JSON.stringify({json.dumps(values)}.map(v=>h.hashId(v, 1000003))))")
    got = json.loads(subprocess.run([node, "-e", script], capture_output=True, text=True, check=True).stdout)
    runner = runner_module()
    assert got == [runner.hash_id(v, 1000003) for v in values]
    assert got[:3] == [stable_hash(v, 1000003) for v in values[:3]]


def test_topk_raw_is_refused(tmp_path: Path) -> None:
    from ondevice.errors import BadInputError
    from tests.export.conftest import make_run

    run = make_run(tmp_path / "run", "bprmf")
    with pytest.raises(BadInputError, match="CTR"):
        export_artefact(run, tmp_path / "art", inputs="raw")
    assert isinstance(Schema.load(run / "schema.json"), Schema)


def test_an_unknown_inputs_mode_is_refused_in_one_line(tmp_path: Path) -> None:
    from ondevice.errors import BadInputError
    from tests.export.conftest import make_run

    run = make_run(tmp_path / "run", "fm")
    with pytest.raises(BadInputError, match="^--inputs 'bytes' must be one of ids, raw$"):
        export_artefact(run, tmp_path / "art", inputs="bytes")
    assert not (tmp_path / "art").exists()


def test_cli_export_raw_verify_profile(tmp_path: Path, cli_runner) -> None:
    from tests.export.conftest import make_run

    run = make_run(tmp_path / "run", "deepfm")
    res = cli_runner("export", run, "--out", tmp_path / "art", "--inputs", "raw")
    assert res.exit_code == 0, res.output
    assert "bytes by part" in res.output and "the app ships" in res.output
    res = cli_runner("verify", tmp_path / "art", "--seed", "3")
    assert res.exit_code == 0, res.output
    from ondevice.export import profile_artefact

    prof = profile_artefact(tmp_path / "art", batches=[1], threads=[1], runs=20, warmup=2, plot=False, write=False)
    assert prof["results"][0]["pytorch"]["p50_ms"] > 0


def _encoder_ids(schema: Schema, plan: dict, feeds: dict) -> np.ndarray:
    """The ids the raw graph computes (its encoder alone, as an ONNX model)."""
    import onnx
    from onnx import TensorProto
    from onnx import helper as oh

    from ondevice.export.raw import ML_DOMAIN, ML_OPSET, encoder_graph

    nodes, inits, inputs = encoder_graph(schema, plan, "ids")
    graph = oh.make_graph(nodes, "encoder", inputs, [oh.make_tensor_value_info("ids", TensorProto.INT64, ["batch", schema.num_fields])], inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid(ML_DOMAIN, ML_OPSET)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def test_refused_numbers_are_oov_and_missing_is_missing(tmp_path: Path) -> None:
    """Every number prepare refuses (not finite, no int64 token) is the OOV id in the graph;
    NaN / "" / absent are the field's missing id; accepted odd numbers are prepare's ids."""
    from ondevice.errors import DataFormatError

    lines = _odd_criteo_lines(np.random.default_rng(4), 60)
    (tmp_path / "c.tsv").write_text("".join(lines))
    data = _prepare(tmp_path / "c.tsv", tmp_path / "data", "criteo")
    for k, value in enumerate(REFUSED_INTS):  # prepare refuses each of them
        bad = lines[0].split("\t")
        bad[1] = value
        (tmp_path / f"bad{k}.tsv").write_text(lines[1] + "\t".join(bad))
        with pytest.raises(DataFormatError):
            _prepare(tmp_path / f"bad{k}.tsv", tmp_path / f"bad{k}", "criteo")
    schema = EncodedDataset(data).schema
    art = _check(tmp_path, data, _criteo_rows(lines))
    plan = art["raw_inputs"]
    base = _criteo_rows(lines[:1])[0]
    refused = [{**base, **{f"I{i}": value for i in range(1, 14)}} for value in REFUSED_INTS]
    missing = [{**base, **{f"I{i}": value for i in range(1, 14)}} for value in ("", None, "nan", "NaN")]
    missing.append({k: v for k, v in base.items() if not k.startswith("I")})
    runner = runner_module()
    ids = _encoder_ids(schema, plan, runner.records_to_feeds(art, refused + missing))
    np.testing.assert_array_equal(ids, encode_reference(schema, plan, runner.records_to_feeds(art, refused + missing)))
    numeric = [j for j, f in enumerate(schema.fields) if f.name.startswith("I")]
    assert (ids[: len(refused)][:, numeric] == 0).all()
    missing_ids = [{v: i + 1 for i, v in enumerate(schema.fields[j].values or [])}.get("", 0) for j in numeric]
    assert any(missing_ids) and (ids[len(refused):][:, numeric] == np.asarray(missing_ids)).all()
    # the categorical part of every row is untouched by the odd numbers
    assert (ids[:, len(numeric):] == ids[0, len(numeric):]).all()


def _vocab_id(schema: Schema, field: str, token: str) -> int:
    f = next(f for f in schema.fields if f.name == field)
    return (f.values or []).index(token) + 1


def test_csv_refused_numbers_are_oov(tmp_path: Path) -> None:
    """int (floor), log2 and edges columns: ±inf (and, for int/log2, numbers without an int64
    token) -> OOV, as prepare refuses them; a huge negative number is edges bucket 0."""
    lines = ["click,price,count,age"] + [f"{k % 2},{k % 9},{k % 4},{10 + 7 * (k % 9)}" for k in range(60)]
    lines.append("1,,,")
    (tmp_path / "x.csv").write_text("\n".join(lines) + "\n")
    spec = {"label": "click", "categorical": [], "numeric": {"price": "log2", "count": "int",
                                                             "age": {"edges": [18, 25, 35, 50]}}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    data = _prepare(tmp_path / "x.csv", tmp_path / "data", "csv", format_options={"spec": str(tmp_path / "spec.json")})
    records = [dict(zip(lines[0].split(","), r.split(","), strict=True)) for r in lines[1:]]
    art = _check(tmp_path, data, records)
    schema = EncodedDataset(data).schema
    odd = [{"price": v, "count": v, "age": v} for v in ("inf", "-inf", "1e999", "-1e300", "-9.3e18")]
    feeds = runner_module().records_to_feeds(art, odd)
    ids = _encoder_ids(schema, art["raw_inputs"], feeds)
    age = [f.name for f in schema.fields].index("age")
    assert (np.delete(ids, age, axis=1) == 0).all()
    assert (ids[:3, age] == 0).all() and (ids[3:, age] == _vocab_id(schema, "age", "0")).all()  # finite: bucket 0
    np.testing.assert_array_equal(encode_reference(schema, art["raw_inputs"], feeds), ids)


def test_bucket_edges_match_prepare_at_every_float64_boundary(tmp_path: Path) -> None:
    """The TreeEnsemble's edges (prepare's rule and the vocabulary folded together) give
    prepare's id at each edge, one double below and above it, around 2, at huge integers
    (2^53 and beyond, where floor moves by more than 1) and at ±max, for log2 and int columns."""
    import onnx

    from ondevice.vocabulary import buckets, tables

    big = [2**53 - 1, 2**53, 2**53 + 2, 2**60, -(2**55)]
    lines = ["click,price,count"] + [f"{k % 2},{k % 9 + (k % 5) * 3.5},{k % 7 - 3}" for k in range(80)]
    lines += [f"{k % 2},{2.0 + k * 0.4},{v}" for k, v in enumerate(big * 2)]
    (tmp_path / "x.csv").write_text("\n".join(lines) + "\n")
    spec = {"label": "click", "categorical": [], "numeric": {"price": "log2", "count": "int"}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    data = _prepare(tmp_path / "x.csv", tmp_path / "data", "csv", format_options={"spec": str(tmp_path / "spec.json")})
    records = [dict(zip(lines[0].split(","), r.split(","), strict=True)) for r in lines[1:]]
    art = _check(tmp_path, data, records)
    schema = EncodedDataset(data).schema
    plan = art["raw_inputs"]
    t = tables(schema, plan)
    assert sorted(t.trees) == [0, 1] and not t.strings  # both columns bucketed by the tree
    values = [2.0, float(np.nextafter(2.0, 3.0)), float(np.nextafter(2.0, 0.0)), float(np.e), 1.7976931348623157e308,
              -1.7976931348623157e308, 0.0, -0.0, *map(float, big)]
    for _, edges, _, _ in t.trees.values():
        for e in edges:
            values += [e, float(np.nextafter(e, np.inf)), float(np.nextafter(e, -np.inf))]
    x = np.asarray(values, dtype=np.float64)
    feeds = {"numeric": np.stack([x, x], axis=1)}
    ids = _encoder_ids(schema, plan, feeds)
    np.testing.assert_array_equal(ids, encode_reference(schema, plan, feeds))
    assert (ids != 0).sum() > len(values)  # most of them are kept values, not OOV
    # the graph looks numbers up with one TreeEnsemble (no Log/Floor chain, no float keys)
    ops = [n.op_type for n in onnx.load(tmp_path / "raw" / "model.onnx").graph.node]
    assert ops.count("TreeEnsemble") == 1 and "Log" not in ops and "Floor" not in ops
    # every dropped id merges its interval with its OOV neighbours: fewer edges, never more
    f = schema.fields[1]
    keys = [int(v) for v in f.values if v != ""]
    full, fewer = buckets("floor", [(k, i + 1) for i, k in enumerate(keys)]), buckets("floor", [(keys[0], 1)])
    assert len(fewer[0]) == 2 and len(full[0]) > len(fewer[0])


def test_oov_guards_dropped_only_without_hashed_ids(tmp_path: Path) -> None:
    """The id model's map_oov guard (GreaterOrEqual/Less/And/Where on ids) is gone from a raw
    graph whose ids all come from lookups, kept when a hashed id comes from the app."""
    import onnx

    lines = _odd_criteo_lines(np.random.default_rng(5), 40)
    (tmp_path / "c.tsv").write_text("".join(lines))
    data = _prepare(tmp_path / "c.tsv", tmp_path / "data", "criteo")
    _check(tmp_path, data, _criteo_rows(lines))
    ops = [n.op_type for n in onnx.load(str(tmp_path / "raw" / "model.onnx")).graph.node]
    ids_ops = [n.op_type for n in onnx.load(str(tmp_path / "ids" / "model.onnx")).graph.node]
    assert "GreaterOrEqual" in ids_ops and "GreaterOrEqual" not in ops and len(ops) <= len(ids_ops) + 2
    rows = ["click,site,dev"] + [f"{k % 2},s{k % 5},d{k % 11}" for k in range(40)]
    (tmp_path / "h.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "spec.json").write_text(json.dumps({"label": "click", "categorical": ["site", "dev"], "hash_buckets": {"dev": 7}}))
    hdata = _prepare(tmp_path / "h.csv", tmp_path / "hdata", "csv", format_options={"spec": str(tmp_path / "spec.json")})
    (tmp_path / "h").mkdir()
    art = _check(tmp_path / "h", hdata, [dict(zip(["click", "site", "dev"], r.split(","), strict=True)) for r in rows[1:]])
    assert art["raw_inputs"]["hashing"]
    assert "GreaterOrEqual" in [n.op_type for n in onnx.load(str(tmp_path / "h" / "raw" / "model.onnx")).graph.node]


def test_row_pruning_drops_keys(tmp_path: Path) -> None:
    """Rows pruned to OOV in every table: their keys leave the vocabulary (fewer bytes, counted
    exactly by ondevice.vocabulary), and outputs still equal prepare + the id artefact."""
    from ondevice.embedding.row_pruned import RowPrunedEmbedding
    from ondevice.vocabulary import dropped_ids

    lines = _odd_criteo_lines(np.random.default_rng(6), 120)
    (tmp_path / "c.tsv").write_text("".join(lines))
    data = _prepare(tmp_path / "c.tsv", tmp_path / "data", "criteo")
    ds = EncodedDataset(data)
    schema = ds.schema
    torch.manual_seed(0)
    model = build_model("deepfm", schema.vocab_sizes, embed_dim=4, mlp_dims=[8])
    keep = torch.rand(sum(schema.vocab_sizes)) < 0.5
    model.embedding = RowPrunedEmbedding.from_dense(model.embedding, keep)
    model.linear = RowPrunedEmbedding.from_dense(model.linear, keep)
    with torch.no_grad():
        model.linear.table.weight.normal_(std=0.5)
    dropped = dropped_ids([model.embedding, model.linear], list(schema.vocab_sizes))
    assert sum(len(s) for s in dropped.values()) > 0
    (tmp_path / "run").mkdir()
    save_checkpoint(tmp_path / "run" / "model.pt", model, schema, metrics={})
    export_artefact(tmp_path / "run" / "model.pt", tmp_path / "ids", inputs="ids", check_mobile=False)
    raw = export_artefact(tmp_path / "run" / "model.pt", tmp_path / "raw", inputs="raw", check_mobile=False)
    vocab = raw["storage"]["by_part"]["vocabulary"]
    assert vocab == vocabulary_bytes(schema, raw["raw_inputs"], dropped) < vocabulary_bytes(schema, raw["raw_inputs"])
    feeds = runner_module().records_to_feeds(raw, _criteo_rows(lines))
    got = _session(tmp_path / "raw" / "model.onnx").run(None, feeds)[0]
    want = _session(tmp_path / "ids" / "model.onnx").run(None, {"ids": np.asarray(ds.split("train").ids, dtype=np.int64)})[0]
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    # one table that did not prune the row keeps every key
    assert dropped_ids([model.embedding, build_model("deepfm", schema.vocab_sizes, embed_dim=4).linear],
                       list(schema.vocab_sizes)) == {}


def test_default_inputs_raw_for_ctr_ids_for_topk(tmp_path: Path, cli_runner) -> None:
    """New artefacts take raw values by default (CTR); top-K ones take the user's vector; --inputs ids still works."""
    from tests.export.conftest import make_run

    run = make_run(tmp_path / "run", "fm")
    assert cli_runner("export", run, "--out", tmp_path / "raw").exit_code == 0
    assert json.loads((tmp_path / "raw" / "manifest.json").read_text())["input_encoding"] == "raw"
    assert cli_runner("export", run, "--out", tmp_path / "ids", "--inputs", "ids").exit_code == 0
    assert json.loads((tmp_path / "ids" / "manifest.json").read_text())["input_encoding"] == "ids"
    top = export_artefact(make_run(tmp_path / "trun", "bprmf"), tmp_path / "top", check_mobile=False)
    assert top["input_encoding"] == "ids" and top["inputs"][0]["name"] == "user_vector"
