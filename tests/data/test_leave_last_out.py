"""``prepare --split leave-last-out`` and duplicate (user, item) pairs (issue 13 point 7)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import ondevice.data.preparation as preparation
from ondevice.data.preparation import prepare
from ondevice.errors import BadInputError


def _sequences(seed: int = 0, users: int = 60, items: int = 40) -> list[tuple[int, int]]:
    """Interleaved per-user sequences in time order, 1..8 interactions each, some re-consumed items."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(400):
        u = int(rng.integers(0, users))
        rows.append((u, int(rng.integers(0, items))))
    return rows


def _write(path: Path, rows: list[tuple[int, int]]) -> Path:
    path.write_text("".join(f"{u} {i}\n" for u, i in rows))
    return path


def _reference(rows: list[tuple[int, int]], *, dedupe: bool) -> dict[str, list[tuple[int, int]]]:
    """SASRec's data_partition (kang205/SASRec util.py) over rows in file order."""
    seen: set[tuple[int, int]] = set()
    kept = []
    for r in rows:
        if dedupe and r in seen:
            continue
        seen.add(r)
        kept.append(r)
    per_user: dict[int, list[int]] = {}
    for k, (u, _) in enumerate(kept):
        per_user.setdefault(u, []).append(k)
    dest = ["train"] * len(kept)
    for ks in per_user.values():
        if len(ks) >= 3:
            dest[ks[-1]], dest[ks[-2]] = "test", "val"
    return {s: [r for r, d in zip(kept, dest, strict=True) if d == s] for s in ("train", "val", "test")}


def _pairs(out: Path, split: str) -> list[tuple[int, int]]:
    ids = np.load(out / split / "ids.npy")
    return [(int(u) - 1, int(i) - 1) for u, i in ids]  # identity encoding: id = raw + 1


@pytest.mark.parametrize("dedupe", [False, True])
@pytest.mark.parametrize("chunk_rows", [7, 1 << 18])
def test_leave_last_out_matches_sasrec_partition(tmp_path: Path, dedupe: bool, chunk_rows: int,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preparation, "DUP_BUCKET_ROWS", 50)  # several on-disk buckets
    rows = _sequences()
    info = prepare(_write(tmp_path / "seq.txt", rows), tmp_path / "out", format="implicit", split="leave-last-out",
                   chunk_rows=chunk_rows, drop_duplicates=dedupe)
    want = _reference(rows, dedupe=dedupe)
    for split in ("train", "val", "test"):
        assert sorted(_pairs(tmp_path / "out", split)) == sorted(want[split]), split
        assert info["rows"][split] == len(want[split])
    n_dup = len(rows) - len(set(rows))
    assert n_dup > 0 and info["duplicates"] == {"rows": n_dup, "dropped": dedupe}
    users = {u for u, _ in rows}
    llo = info["leave_last_out"]
    assert llo["users"] == len(users) and llo["held_out_users"] == len(want["test"]) == len(want["val"])
    assert llo["held_out_users"] + llo["train_only_users"] == len(users) and llo["train_only_users"] > 0
    assert info["split"]["mode"] == "leave-last-out" and info["split"]["val_fraction"] is None
    assert any("repeat an earlier (user, item) pair" in w for w in info["warnings"]) != dedupe


def test_leave_last_out_with_a_vocab_user_field_counts_train_rows_only(tmp_path: Path) -> None:
    # csv top-K spec: user/item are vocabulary fields; min_count must count training rows only
    (tmp_path / "s.json").write_text('{"user": "u", "item": "i"}')
    lines = ["u,i"] + [f"a,{k}" for k in ("x", "y", "z", "z")] + ["b,x", "b,y", "b,w", "c,q"]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    info = prepare(tmp_path / "d.csv", tmp_path / "out", format="csv", split="leave-last-out", min_count=1,
                   format_options={"spec": str(tmp_path / "s.json")})
    schema = json.loads((tmp_path / "out" / "schema.json").read_text())
    items = next(f for f in schema["fields"] if f["name"] == "i")["values"]
    assert sorted(items) == ["q", "x", "y"]  # 'z' (a's last two) and 'w' (b's last) are only in val/test
    assert info["rows"] == {"train": 4, "val": 2, "test": 2}
    assert info["duplicates"]["rows"] == 1


def test_leave_last_out_and_drop_duplicates_are_refused_where_they_do_not_apply(tmp_path: Path) -> None:
    from tests.data.conftest import write_criteo

    raw = write_criteo(tmp_path / "c.tsv", 30)
    with pytest.raises(BadInputError, match="leave-last-out needs top-K data"):
        prepare(raw, tmp_path / "out", format="criteo", split="leave-last-out")
    with pytest.raises(BadInputError, match="--drop-duplicates applies to top-K"):
        prepare(raw, tmp_path / "out", format="criteo", drop_duplicates=True)
    seq = _write(tmp_path / "s.txt", _sequences())
    with pytest.raises(BadInputError, match="the user field 'user' is hashed"):
        prepare(seq, tmp_path / "out", format="implicit", split="leave-last-out", hash_buckets={"user": 10})
    assert not (tmp_path / "out").exists()


def test_duplicates_are_counted_for_random_splits_and_dropping_keeps_every_user_in_train(tmp_path: Path) -> None:
    rows = _sequences(seed=3)
    seq = _write(tmp_path / "s.txt", rows)
    kept = prepare(seq, tmp_path / "a", format="implicit")
    assert kept["duplicates"]["rows"] == len(rows) - len(set(rows)) and kept["total_rows"] == len(rows)
    dropped = prepare(seq, tmp_path / "b", format="implicit", drop_duplicates=True)
    assert dropped["total_rows"] == len(set(rows))
    got = [p for s in ("train", "val", "test") for p in _pairs(tmp_path / "b", s)]
    assert sorted(got) == sorted(set(rows))  # each pair exactly once
    assert {u for u, _ in _pairs(tmp_path / "b", "train")} == {u for u, _ in rows}


def test_cli_leave_last_out_prints_the_partition_and_duplicates(tmp_path: Path) -> None:
    from ondevice.cli import _register_commands, cli

    _register_commands()
    seq = _write(tmp_path / "s.txt", _sequences())
    res = CliRunner().invoke(cli, ["prepare", str(seq), "--format", "implicit", "--split", "leave-last-out",
                                   "--drop-duplicates", "--out", str(tmp_path / "o"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "leave-last-out: " in res.output and "users give their last interaction to test" in res.output
    assert "duplicate (user, item) rows: " in res.output and "(dropped)" in res.output
