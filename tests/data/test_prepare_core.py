"""prepare(): vocabularies, OOV, hashing, splits, streaming invariance (Criteo format)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from ondevice.data import EncodedDataset
from ondevice.data.formats.base import criteo_log2
from ondevice.data.preparation import prepare, split_uniform
from ondevice.schema import Schema, stable_hash
from tests.data.conftest import criteo_line

PREPARE_KEYS = {
    "ondevice_version", "format", "task", "inputs", "split", "options", "rows", "total_rows", "fields", "encoding",
    "vocab_size", "distinct_train_values", "oov_rate", "positive_rate", "schema_fingerprint", "elapsed_s",
    "rows_per_s", "peak_rss_mb", "warnings", "duplicates", "leave_last_out",
}


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_prepare_json(criteo_file: Path, tmp_path: Path) -> None:
    info = prepare(criteo_file, tmp_path / "out", format="criteo")
    assert set(info) == PREPARE_KEYS
    assert info["total_rows"] == 300 == sum(info["rows"].values())
    assert json.loads((tmp_path / "out" / "prepare.json").read_text()) == info
    ds = EncodedDataset(tmp_path / "out")
    assert ds.schema.field_names == [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
    for name in ("train", "val", "test"):
        split = ds.split(name)
        assert split.ids.dtype == np.int32 and split.labels.dtype == np.float32
        assert len(split) == info["rows"][name]
        assert (split.ids >= 0).all() and (split.ids < np.array(ds.schema.vocab_sizes)).all()
        assert set(np.unique(split.labels)) <= {0.0, 1.0}
    assert info["oov_rate"]["train"]["C1"] == 0.0  # min_count=1: every train value has an id
    assert 0.2 < info["positive_rate"]["train"] < 0.5
    assert info["peak_rss_mb"] > 0 and info["rows_per_s"] > 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_criteo_log2_rule() -> None:
    import pyarrow as pa

    x = pa.array([None, -1.0, 0.0, 1.0, 2.0, 3.0, 10.0, 1382.0])
    out = criteo_log2(x).to_pylist()
    assert out[:5] == [None, -1, 0, 1, 2]
    assert out[5:] == [int(math.log(3) ** 2), int(math.log(10) ** 2), int(math.log(1382) ** 2)]


def _write(path: Path, rows: list[tuple[int, str]]) -> Path:
    """Criteo rows where only C1 varies (label, C1 value); other columns constant."""
    path.write_text("".join(criteo_line(lab, [1] * 13, [c1] + ["aa"] * 25) + "\n" for lab, c1 in rows))
    return path


def test_vocabulary_counted_on_train_only_and_ordered_by_frequency(tmp_path: Path) -> None:
    train = _write(tmp_path / "train.tsv", [(0, "a")] * 5 + [(1, "b")] * 3 + [(0, "c")] * 1)
    test = _write(tmp_path / "test.tsv", [(1, "z")] * 4 + [(0, "a")])
    info = prepare([train, test], tmp_path / "out", format="criteo", split="given", val_fraction=0.0)
    schema = Schema.load(tmp_path / "out" / "schema.json")
    c1 = schema.fields[schema.field_names.index("C1")]
    assert c1.values == ["a", "b", "c"]  # by frequency; "z" (test only) is not in the vocabulary
    ids = np.load(tmp_path / "out" / "test" / "ids.npy")[:, 13]
    assert ids.tolist() == [0, 0, 0, 0, 1]
    assert info["oov_rate"]["test"]["C1"] == pytest.approx(0.8)
    assert info["rows"] == {"train": 9, "val": 0, "test": 5}


def test_min_count_maps_rare_values_to_oov(tmp_path: Path) -> None:
    train = _write(tmp_path / "t.tsv", [(0, "a")] * 5 + [(1, "b")] * 2 + [(0, "c")])
    test = _write(tmp_path / "s.tsv", [(0, "a"), (0, "b"), (0, "c")])
    prepare([train, test], tmp_path / "out", format="criteo", split="given", val_fraction=0.0, min_count=2)
    schema = Schema.load(tmp_path / "out" / "schema.json")
    c1 = schema.fields[schema.field_names.index("C1")]
    assert c1.values == ["a", "b"] and c1.vocab_size == 3
    assert np.load(tmp_path / "out" / "train" / "ids.npy")[:, 13].tolist() == [1] * 5 + [2, 2, 0]
    assert np.load(tmp_path / "out" / "test" / "ids.npy")[:, 13].tolist() == [1, 2, 0]


def test_hashing_is_stable(criteo_file: Path, tmp_path: Path) -> None:
    prepare(criteo_file, tmp_path / "a", format="criteo", hash_buckets={"C3": 7, "I2": 5})
    prepare(criteo_file, tmp_path / "b", format="criteo", hash_buckets={"C3": 7, "I2": 5}, chunk_rows=13)
    assert _files(tmp_path / "a")["train/ids.npy"] == _files(tmp_path / "b")["train/ids.npy"]
    schema = Schema.load(tmp_path / "a" / "schema.json")
    c3 = schema.fields[schema.field_names.index("C3")]
    assert (c3.encoding, c3.vocab_size, c3.hash_buckets, c3.values) == ("hash", 8, 7, None)
    # the id is stable_hash of the raw value: recompute it from the file for the first rows
    raw = [line.split("\t") for line in criteo_file.read_text().splitlines()]
    u = split_uniform(0, np.arange(len(raw), dtype=np.uint64))
    train_rows = [r for r, x in zip(raw, u, strict=True) if x >= 0.2]
    ids = np.load(tmp_path / "a" / "train" / "ids.npy")
    col = schema.field_names.index("C3")
    assert ids[:20, col].tolist() == [stable_hash(r[16], 7) for r in train_rows[:20]]
    assert set(np.unique(ids[:, col])) <= set(range(1, 8))


def test_split_is_deterministic_and_disjoint(tmp_path: Path) -> None:
    # a CSV whose "row" column is unique per row, hashed into 2^30 buckets (no collisions for these names)
    n = 2000
    (tmp_path / "d.csv").write_text("row,label\n" + "".join(f"r{i},{i % 2}\n" for i in range(n)))
    (tmp_path / "spec.json").write_text(json.dumps({"label": "label", "categorical": ["row"], "hash_buckets": {"row": 2**30}}))
    opts = {"spec": str(tmp_path / "spec.json")}
    a = prepare(tmp_path / "d.csv", tmp_path / "a", format="csv", format_options=opts, seed=3)
    prepare(tmp_path / "d.csv", tmp_path / "b", format="csv", format_options=opts, seed=3, chunk_rows=17)
    c = prepare(tmp_path / "d.csv", tmp_path / "c", format="csv", format_options=opts, seed=4)
    sets = {s: set(np.load(tmp_path / "a" / s / "ids.npy")[:, 0].tolist()) for s in ("train", "val", "test")}
    assert sum(len(v) for v in sets.values()) == n
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
    assert _files(tmp_path / "a") .keys() == _files(tmp_path / "b").keys()
    for key in ("train/ids.npy", "val/ids.npy", "test/ids.npy", "test/labels.npy", "schema.json"):
        assert _files(tmp_path / "a")[key] == _files(tmp_path / "b")[key]
    assert _files(tmp_path / "a")["test/ids.npy"] != _files(tmp_path / "c")["test/ids.npy"]  # seed matters
    for s, frac in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
        assert abs(a["rows"][s] / n - frac) < 0.03
    assert c["total_rows"] == n


@pytest.mark.parametrize("gz", [False, True])
def test_tiny_chunks_give_identical_output(tmp_path: Path, gz: bool) -> None:
    from tests.data.conftest import write_criteo

    src = write_criteo(tmp_path / ("c.tsv.gz" if gz else "c.tsv"), 500, gz=gz)
    prepare(src, tmp_path / "big", format="criteo", min_count=2)
    prepare(src, tmp_path / "small", format="criteo", min_count=2, chunk_rows=7, format_options={"block_bytes": 1000})
    big, small = _files(tmp_path / "big"), _files(tmp_path / "small")
    for key in big:
        if key != "prepare.json":
            assert big[key] == small[key], key
    pa_, pb = (json.loads(d["prepare.json"]) for d in (big, small))
    assert pa_["oov_rate"] == pb["oov_rate"] and pa_["vocab_size"] == pb["vocab_size"]


def test_progress_and_force(criteo_file: Path, tmp_path: Path) -> None:
    seen: list[tuple[str, int]] = []
    prepare(criteo_file, tmp_path / "o", format="criteo", chunk_rows=100, progress=lambda s, n: seen.append((s, n)))
    assert ("read", 300) in seen and seen[-1][0] == "write"
    prepare(criteo_file, tmp_path / "o", format="criteo", force=True, min_count=3)
    assert json.loads((tmp_path / "o" / "prepare.json").read_text())["options"]["min_count"] == 3
