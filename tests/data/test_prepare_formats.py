"""Every raw format on small inline files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from ondevice.data import EncodedDataset
from ondevice.data.formats import FORMATS
from ondevice.data.preparation import prepare
from ondevice.schema import Schema


def _field(root: Path, name: str):
    schema = Schema.load(root / "schema.json")
    return schema.fields[schema.field_names.index(name)]


def test_registry_lists_every_format() -> None:
    assert set(FORMATS) == {"criteo", "avazu", "libfm", "movielens", "implicit", "csv"}


def test_avazu_drops_id_and_splits_hour(tmp_path: Path) -> None:
    header = "id,click,hour,C1,banner_pos,site_id,device_type"
    rows = [f"{1000 + i},{i % 2},141021{i % 24:02d},1005,{i % 2},site{i % 3},1" for i in range(60)]
    path = tmp_path / "avazu.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    info = prepare(path, tmp_path / "out", format="avazu")
    assert info["fields"] == ["hour", "weekday", "C1", "banner_pos", "site_id", "device_type"]
    assert info["total_rows"] == 60 and abs(info["positive_rate"]["train"] - 0.5) < 0.2
    weekday = _field(tmp_path / "out", "weekday")
    assert weekday.values == ["1"]  # 2014-10-21 was a Tuesday (Monday = 0)
    assert _field(tmp_path / "out", "hour").vocab_size == 25


@pytest.mark.parametrize("neg", ["-1", "0"])
def test_libfm_fixed_fields(tmp_path: Path, neg: str) -> None:
    lines = [f"{'1' if i % 3 == 0 else neg} {i % 4}:1 {10 + i % 5}:1 {20 + i % 2}:1.0" for i in range(90)]
    train, test = tmp_path / "tr.libfm", tmp_path / "te.libfm.gz"
    train.write_text("\n".join(lines[:60]) + "\n")
    with gzip.open(test, "wt") as fh:
        fh.write("\n".join(lines[60:]) + "\n")
    info = prepare([train, test], tmp_path / "out", format="libfm", split="given", format_options={"names": "a,b,c"})
    assert info["fields"] == ["a", "b", "c"]
    assert info["rows"]["test"] == 30 and info["rows"]["train"] + info["rows"]["val"] == 60
    assert info["positive_rate"]["test"] == pytest.approx(10 / 30)
    assert sorted(_field(tmp_path / "out", "c").values) == ["20", "21"]  # ":1" and ":1.0" stripped


def test_libfm_real_valued_feature_keeps_value(tmp_path: Path) -> None:
    (tmp_path / "x.libfm").write_text("1 3:0.5 7:1\n0 3:0.5 8:1\n1 4:1 7:1\n")
    prepare(tmp_path / "x.libfm", tmp_path / "out", format="libfm", val_fraction=0.0, test_fraction=0.0)
    assert sorted(_field(tmp_path / "out", "f1").values) == ["3:0.5", "4"]


def _movielens(folder: Path, ratings: list[str], *, gz: bool = True) -> Path:
    folder.mkdir()
    (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    (folder / "movies.dat").write_bytes("10::Caf\xe9 (1995)::Comedy|Drama\n20::Heat (1995)::Action\n".encode("latin-1"))
    path = folder / ("ratings.dat.gz" if gz else "ratings.dat")
    data = ("\n".join(ratings) + "\n").encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def test_movielens_join_and_label(tmp_path: Path) -> None:
    ratings = [f"{1 + i % 3}::{10 if i % 2 else 20}::{1 + i % 5}::97830076{i}" for i in range(50)]
    path = _movielens(tmp_path / "ml", ratings)
    info = prepare(path, tmp_path / "out", format="movielens", val_fraction=0.0, test_fraction=0.0)
    assert info["fields"] == ["user", "item", "gender", "age", "occupation", "zip", "genre", "year"]
    assert info["positive_rate"]["train"] == pytest.approx(20 / 50)  # ratings 4 and 5
    root = tmp_path / "out"
    assert sorted(_field(root, "gender").values) == ["", "F", "M"]  # user 3 is not in users.dat
    assert sorted(_field(root, "genre").values) == ["Action", "Comedy"]
    assert _field(root, "year").values == ["1995"]
    assert _field(root, "user").role == "user" and _field(root, "item").role == "item"
    dropped = prepare(path, tmp_path / "out2", format="movielens", val_fraction=0.0, test_fraction=0.0,
                      format_options={"drop_ratings": 3})
    assert dropped["total_rows"] == 40 and dropped["positive_rate"]["train"] == pytest.approx(0.5)


def test_implicit_lightgcn_and_sasrec(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    train_lines, test_lines = [], []
    for u in range(40):
        items = rng.choice(60, size=int(rng.integers(1, 12)), replace=False)
        train_lines.append(" ".join(map(str, [u, *items])))
        test_lines.append(f"{u} {int(rng.integers(0, 60))}")
    (tmp_path / "train.txt").write_text("\n".join(train_lines) + "\n")
    (tmp_path / "test.txt").write_text("\n".join(test_lines) + "\n")
    info = prepare([tmp_path / "train.txt", tmp_path / "test.txt"], tmp_path / "out", format="implicit",
                   split="given", val_fraction=0.3, seed=1)
    ds = EncodedDataset(tmp_path / "out")
    assert ds.task == "topk" and info["positive_rate"] is None and ds.split("train").labels is None
    assert [f.encoding for f in ds.schema.fields] == ["identity", "identity"]
    n_train = sum(len(line.split()) - 1 for line in train_lines)
    assert info["rows"]["train"] + info["rows"]["val"] == n_train and info["rows"]["test"] == 40
    assert info["rows"]["val"] > 0
    tr, va = ds.split("train").ids, ds.split("val").ids
    assert set(np.unique(tr[:, 0])) == set(range(1, 41))  # every user keeps >= 1 train interaction
    pairs = {tuple(p) for p in np.concatenate([tr, va]).tolist()}
    expected = {(int(t[0]) + 1, int(i) + 1) for line in train_lines for t in [line.split()] for i in t[1:]}
    assert pairs == expected  # val is carved from train interactions only; ids = raw + 1
    # the SASRec "user item" layout gives the same rows
    (tmp_path / "pairs.txt").write_text("".join(f"{line.split()[0]} {i}\n" for line in train_lines for i in line.split()[1:]))
    (tmp_path / "pairs.txt").write_bytes(gzip.compress((tmp_path / "pairs.txt").read_bytes()))
    prepare([tmp_path / "pairs.txt", tmp_path / "test.txt"], tmp_path / "out2", format="implicit", split="given",
            val_fraction=0.3, seed=1)
    for s in ("train", "val", "test"):
        a, b = np.load(tmp_path / "out" / s / "ids.npy"), np.load(tmp_path / "out2" / s / "ids.npy")
        assert {tuple(r) for r in a.tolist()} == {tuple(r) for r in b.tolist()}


SPEC_TOML = """
delimiter = "\\t"
label = "y"
label_threshold = 0.5
categorical = ["city", "device"]
[numeric]
price = "log2"
age = { edges = [18, 30, 50] }
[hash_buckets]
device = 4
"""


@pytest.mark.parametrize("kind", ["toml", "json"])
def test_generic_csv_with_spec(tmp_path: Path, kind: str) -> None:
    rows = ["y\tcity\tdevice\tprice\tage\tignored"]
    rows += [f"{i % 2}\tc{i % 3}\td{i % 5}\t{i * 3}\t{'' if i % 10 == 0 else 10 + i}\tz" for i in range(60)]
    (tmp_path / "d.tsv").write_text("\n".join(rows) + "\n")
    if kind == "toml":
        (tmp_path / "spec.toml").write_text(SPEC_TOML)
        spec = tmp_path / "spec.toml"
    else:
        spec = tmp_path / "spec.json"
        spec.write_text(json.dumps({"delimiter": "\t", "label": "y", "label_threshold": 0.5,
                                    "categorical": ["city", "device"],
                                    "numeric": {"price": "log2", "age": {"edges": [18, 30, 50]}},
                                    "hash_buckets": {"device": 4}}))
    info = prepare(tmp_path / "d.tsv", tmp_path / "out", format="csv", format_options={"spec": str(spec)},
                   val_fraction=0.0, test_fraction=0.0)
    assert info["fields"] == ["city", "device", "price", "age"]
    assert info["encoding"]["device"] == "hash" and info["vocab_size"]["device"] == 5
    assert info["positive_rate"]["train"] == pytest.approx(0.5)
    assert sorted(_field(tmp_path / "out", "age").values, key=lambda v: (v == "", v)) == ["0", "1", "2", "3", ""]
    assert _field(tmp_path / "out", "price").transform == "criteo_log2"


def test_generic_csv_topk(tmp_path: Path) -> None:
    (tmp_path / "i.csv").write_text("uid,iid,ts\n" + "".join(f"u{i % 7},m{i % 11},{i}\n" for i in range(100)))
    (tmp_path / "s.json").write_text(json.dumps({"user": "uid", "item": "iid"}))
    info = prepare(tmp_path / "i.csv", tmp_path / "out", format="csv", format_options={"spec": str(tmp_path / "s.json")})
    assert info["task"] == "topk" and info["fields"] == ["uid", "iid"]
    ds = EncodedDataset(tmp_path / "out")
    assert ds.schema.field_index("user") == 0 and ds.schema.field_index("item") == 1


def test_implicit_refuses_a_label_column(tmp_path: Path) -> None:
    from ondevice.errors import DataFormatError

    rng = np.random.default_rng(0)
    rows = [f"{u} {int(rng.integers(0, 50))} {int(rng.integers(0, 2))}" for u in range(30) for _ in range(3)]
    (tmp_path / "labelled.txt").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataFormatError, match="the third column is a label, not an item"):
        prepare([tmp_path / "labelled.txt"], tmp_path / "out", format="implicit", seed=0)
    assert not (tmp_path / "out").exists()
    # Three items per line are fine when the third is not always 0/1 (a real interaction list).
    rows = [f"{u} {int(rng.integers(0, 50))} {int(rng.integers(2, 50))}" for u in range(30)]
    (tmp_path / "lists.txt").write_text("\n".join(rows) + "\n")
    info = prepare([tmp_path / "lists.txt"], tmp_path / "ok", format="implicit", seed=0)
    assert sum(info["rows"].values()) == 60
