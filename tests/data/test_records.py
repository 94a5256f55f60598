"""Records, not lines (issue 15 point 11): quoted newlines in CSV at any size and block size,
and a line longer than the block size refused early, with its line number and bounded memory."""

from __future__ import annotations

import csv
import gzip
import io
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from ondevice.data.formats.base import DelimitedSource, record_ends
from ondevice.data.preparation import prepare
from ondevice.errors import DataFormatError


def _avazu(path: Path, rows: int, *, literal_quotes: bool = False) -> Path:
    """Avazu-style CSV whose 'note' column holds quoted newlines, delimiters and "" escapes."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["id", "click", "hour", "site", "note"])
    for i in range(rows):
        note = f'line one\nline two, "quoted" {i % 50}\r\nthree' if i % 3 == 0 else f"plain{i % 30}"
        site = f's{i % 13}"in' if literal_quotes and i % 5 == 0 else f"s{i % 13}"  # a literal quote mid-field
        w.writerow([i, i % 2, f"141021{i % 24:02d}", site, note])
    path.write_text(out.getvalue())
    return path


def _expected(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))[1:]


@pytest.mark.parametrize("literal_quotes", [False, True])
def test_record_ends_match_the_csv_module(tmp_path: Path, literal_quotes: bool) -> None:
    raw = _avazu(tmp_path / "a.csv", 300, literal_quotes=literal_quotes).read_bytes()
    body = raw[raw.index(b"\n") + 1:]
    ends = record_ends(body, ",", True)
    records = [r for r in body.split(b"\n")]  # physical lines
    assert len(ends) == 300 < len(records) - 1
    parsed = [next(csv.reader(io.StringIO(body[s:e].decode(), newline=""))) for s, e in
              zip([0, *(ends[:-1] + 1)], ends, strict=True)]
    assert parsed == _expected(tmp_path / "a.csv")


@pytest.mark.parametrize(("rows", "block_bytes", "literal_quotes"),
                         [(36_000, 65536, False), (36_000, 65536, True), (120_000, None, False)])
def test_quoted_newlines_prepare_at_any_size_and_block(tmp_path: Path, rows: int, block_bytes: int | None,
                                                       literal_quotes: bool) -> None:
    # 1.3-4.4 MB: more than pyarrow's 1 MiB internal block ("parser got out of sync") and, at 64 KiB
    # blocks, many block ends that fall inside a quoted field
    path = _avazu(tmp_path / "big.csv", rows, literal_quotes=literal_quotes)
    assert path.stat().st_size > 1 << 20
    opts = {"block_bytes": block_bytes} if block_bytes else {}
    info = prepare(path, tmp_path / "out", format="avazu", format_options=opts, val_fraction=0.0, test_fraction=0.0)
    assert info["total_rows"] == rows
    from ondevice.schema import Schema

    schema = Schema.load(tmp_path / "out" / "schema.json")
    note = schema.fields[schema.field_names.index("note")]
    want = {r[4] for r in _expected(path)}
    assert set(note.values) == want and len(want) == 70
    ids = np.load(tmp_path / "out" / "train" / "ids.npy")
    notes = [note.values[i - 1] for i in ids[:, schema.field_names.index("note")]]
    assert notes == [r[4] for r in _expected(path)]  # row order and values intact


def test_error_after_quoted_newlines_names_the_physical_line(tmp_path: Path) -> None:
    text = _avazu(tmp_path / "a.csv", 40).read_text()
    lines = text.split("\n")
    bad_line = next(k for k in range(30, len(lines)) if lines[k].startswith("31,"))  # record 31 (0-based) starts here
    lines[bad_line] = lines[bad_line].replace("141021", "1410x1", 1)
    (tmp_path / "a.csv").write_text("\n".join(lines))
    with pytest.raises(DataFormatError, match=rf"a\.csv line {bad_line + 1}: hour '1410x107' is not YYMMDDHH"):
        prepare(tmp_path / "a.csv", tmp_path / "out", format="avazu")
    lines[bad_line] = lines[bad_line] + ",extra"
    (tmp_path / "a.csv").write_text("\n".join(lines))
    with pytest.raises(DataFormatError, match=rf"a\.csv line {bad_line + 1}: 6 fields, expected 5"):
        prepare(tmp_path / "a.csv", tmp_path / "out", format="avazu")


def _long_line_gz(path: Path, line_no: int, mib: int) -> Path:
    """A Criteo .gz whose line ``line_no`` is ``mib`` MiB long (written in pieces: small in memory)."""
    good = "1\t" + "\t".join(["1"] * 13 + ["ab"] * 26) + "\n"
    with gzip.open(path, "wb", compresslevel=1) as fh:
        fh.write((good * (line_no - 1)).encode())
        fh.write(b"0\t1")
        piece = b"9" * (1 << 20)
        for _ in range(mib):
            fh.write(piece)
        fh.write(("\t" + "\t".join(["1"] * 12 + ["ab"] * 26) + "\n" + good * 5).encode())
    return path


def test_over_long_line_is_refused_early_with_bounded_memory(tmp_path: Path) -> None:
    path = _long_line_gz(tmp_path / "long.tsv.gz", 1000, 48)
    tracemalloc.start()
    try:
        with pytest.raises(DataFormatError, match=r"long\.tsv\.gz line 1000: the line is longer than 65,536 bytes"):
            prepare(path, tmp_path / "out", format="criteo", format_options={"block_bytes": 65536})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MiB for a 48 MiB line at 64 KiB blocks"
    assert not (tmp_path / "out").exists()


def test_over_long_header_and_unclosed_quote_are_refused(tmp_path: Path) -> None:
    (tmp_path / "h.csv").write_bytes(b"id,click," + b"x" * (1 << 17) + b"\n1,0,2\n")
    with pytest.raises(DataFormatError, match=r"h\.csv line 1: the line is longer than"):
        prepare(tmp_path / "h.csv", tmp_path / "out", format="avazu", format_options={"block_bytes": 65536})
    rows = "".join(f"{i},{i % 2},14102100,s{i}\n" for i in range(5000))
    head = rows[: rows.index("\n", 5000) + 1]
    (tmp_path / "q.csv").write_text("id,click,hour,site\n" + head + '7,1,14102100,"never closed\n' + rows)
    src = DelimitedSource(tmp_path / "q.csv", names=None, delimiter=",", header=True, quoting=True, block_bytes=65536)
    with pytest.raises(DataFormatError, match=rf"q\.csv line {head.count(chr(10)) + 2}: the line is longer than 65,536 bytes \(or a quoted field"):
        list(src.blocks(1000))


def test_over_long_implicit_line_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "train.txt"
    path.write_text("0 1 2\n1 2 3\n2 " + " ".join(["7"] * 40_000) + "\n3 4\n")
    with pytest.raises(DataFormatError, match=r"train\.txt line 3: the line is longer than 65,536 bytes"):
        prepare(path, tmp_path / "out", format="implicit", format_options={"block_bytes": 65536})
