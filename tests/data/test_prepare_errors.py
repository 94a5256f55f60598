"""Bad input: one-line errors naming file and line, exit code 2, and no output left behind."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import pytest

from ondevice.data.preparation import prepare
from ondevice.errors import BadInputError, DataFormatError, OutputExistsError
from tests.data.conftest import criteo_line, write_criteo


def _no_output(tmp_path: Path, out: Path) -> None:
    assert not out.exists()
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


def _bad(tmp_path: Path, lines: list[str], *, gz: bool = False) -> Path:
    path = tmp_path / ("bad.tsv.gz" if gz else "bad.tsv")
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


GOOD = criteo_line(0, [1] * 13, ["ab"] * 26)


@pytest.mark.parametrize("gz", [False, True])
def test_wrong_field_count_names_file_and_line(tmp_path: Path, gz: bool) -> None:
    path = _bad(tmp_path, [GOOD] * 5 + [GOOD.rsplit("\t", 1)[0]] + [GOOD] * 3, gz=gz)
    out = tmp_path / "out"
    with pytest.raises(DataFormatError, match=r"bad\.tsv(\.gz)? line 6: 39 fields, expected 40") as err:
        prepare(path, out, format="criteo")
    assert "\n" not in str(err.value)
    _no_output(tmp_path, out)


def test_wrong_field_count_deep_in_a_file_with_tiny_blocks(tmp_path: Path) -> None:
    lines = [GOOD] * 700
    lines[612] = GOOD + "\textra"
    path = _bad(tmp_path, lines)
    with pytest.raises(DataFormatError, match=r"line 613: 41 fields, expected 40"):
        prepare(path, tmp_path / "out", format="criteo", chunk_rows=50, format_options={"block_bytes": 3000})
    _no_output(tmp_path, tmp_path / "out")


def test_non_numeric_label_names_line(tmp_path: Path) -> None:
    path = _bad(tmp_path, [GOOD] * 3 + ["x" + GOOD[1:]])
    with pytest.raises(DataFormatError, match=r"bad\.tsv line 4: label 'x' is not a number"):
        prepare(path, tmp_path / "out", format="criteo")
    _no_output(tmp_path, tmp_path / "out")


def test_non_numeric_integer_column_names_line(tmp_path: Path) -> None:
    path = _bad(tmp_path, [GOOD, GOOD.replace("0\t1\t", "0\tone\t", 1)])
    with pytest.raises(DataFormatError, match=r"line 2: I1 'one' is not a number"):
        prepare(path, tmp_path / "out", format="criteo")


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.tsv").write_text("")
    with pytest.raises(DataFormatError, match=r"empty\.tsv is empty"):
        prepare(tmp_path / "empty.tsv", tmp_path / "out", format="criteo")
    _no_output(tmp_path, tmp_path / "out")
    (tmp_path / "blank.tsv.gz").write_bytes(gzip.compress(b"\n\n"))
    with pytest.raises(DataFormatError, match="is empty"):
        prepare(tmp_path / "blank.tsv.gz", tmp_path / "out", format="criteo")


def test_missing_file_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match=r"input file not found: .*nope\.tsv"):
        prepare(tmp_path / "nope.tsv", tmp_path / "out", format="criteo")
    good = write_criteo(tmp_path / "g.tsv", 20)
    with pytest.raises(BadInputError, match=r"unknown format 'parquet'; expected one of avazu, criteo"):
        prepare(good, tmp_path / "out", format="parquet")
    _no_output(tmp_path, tmp_path / "out")


def test_existing_output_needs_force(tmp_path: Path) -> None:
    good = write_criteo(tmp_path / "g.tsv", 20)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="already exists; pass --force"):
        prepare(good, tmp_path / "out", format="criteo")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_unwritable_output(tmp_path: Path) -> None:
    good = write_criteo(tmp_path / "g.tsv", 20)
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(BadInputError, match="cannot create output folder"):
        prepare(good, tmp_path / "file" / "sub" / "out", format="criteo")


def test_failure_in_the_middle_keeps_previous_output(tmp_path: Path) -> None:
    good = write_criteo(tmp_path / "g.tsv", 50)
    prepare(good, tmp_path / "out", format="criteo")
    before = (tmp_path / "out" / "prepare.json").read_bytes()
    bad = _bad(tmp_path, [GOOD] * 10 + ["1\t2"])
    with pytest.raises(DataFormatError):
        prepare(bad, tmp_path / "out", format="criteo", force=True)
    assert (tmp_path / "out" / "prepare.json").read_bytes() == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"split": "time"}, "unknown split 'time'"),
        ({"min_count": 0}, "min_count must be >= 1"),
        ({"val_fraction": 0.6, "test_fraction": 0.5}, "must be < 1"),
        ({"hash_buckets": {"nope": 3}}, "unknown field 'nope'"),
        ({"hash_buckets": {"C1": 0}}, "number of buckets"),
        ({"split": "given"}, "takes 2 files"),
        ({"format_options": {"colour": 1}}, "format 'criteo' has no option 'colour'"),
    ],
)
def test_bad_options(tmp_path: Path, kwargs: dict, message: str) -> None:
    good = write_criteo(tmp_path / "g.tsv", 20)
    with pytest.raises(BadInputError, match=message):
        prepare(good, tmp_path / "out", format="criteo", **kwargs)
    _no_output(tmp_path, tmp_path / "out")


def test_format_specific_errors(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("id,hour,C1\n1,14102100,5\n")
    with pytest.raises(DataFormatError, match=r"a\.csv line 1: no 'click' column"):
        prepare(tmp_path / "a.csv", tmp_path / "out", format="avazu")
    (tmp_path / "b.csv").write_text("id,click,hour\n1,0,14102100\n2,1,1410x100\n")
    with pytest.raises(DataFormatError, match=r"b\.csv line 3: hour '1410x100' is not YYMMDDHH"):
        prepare(tmp_path / "b.csv", tmp_path / "out", format="avazu")
    (tmp_path / "c.libfm").write_text("1 1:1 2:1\n-1 1:1 3:1\n1 2:1\n")
    with pytest.raises(DataFormatError, match=r"c\.libfm line 3: 2 fields, expected 3"):
        prepare(tmp_path / "c.libfm", tmp_path / "out", format="libfm")
    (tmp_path / "d.txt").write_text("0 1 2\n1 3 x4\n")
    with pytest.raises(DataFormatError, match=r"d\.txt line 2: 'x4' is not an integer id"):
        prepare(tmp_path / "d.txt", tmp_path / "out", format="implicit")
    (tmp_path / "ml").mkdir()
    (tmp_path / "ml" / "ratings.dat").write_text("1::10::5::1\n")
    with pytest.raises(BadInputError, match="movielens needs users.dat"):
        prepare(tmp_path / "ml" / "ratings.dat", tmp_path / "out", format="movielens")
    (tmp_path / "ml" / "users.dat").write_text("1::F::1::10::48067\n")
    (tmp_path / "ml" / "movies.dat").write_text("10::X (1990)::Drama\n")
    (tmp_path / "ml" / "ratings.dat").write_text("1::10::5::1\n1::10::5\n")
    with pytest.raises(DataFormatError, match=r"ratings\.dat line 2: 3 fields, expected 4"):
        prepare(tmp_path / "ml" / "ratings.dat", tmp_path / "out", format="movielens")
    with pytest.raises(BadInputError, match="users.dat, movies.dat are read from beside the ratings file"):
        prepare([tmp_path / "ml" / "ratings.dat", tmp_path / "ml" / "users.dat", tmp_path / "ml" / "movies.dat"],
                tmp_path / "out", format="movielens")
    with pytest.raises(BadInputError, match="needs a spec file"):
        prepare(tmp_path / "a.csv", tmp_path / "out", format="csv")
    (tmp_path / "s.json").write_text('{"label": "click", "categorical": ["C1"], "colour": 1}')
    with pytest.raises(BadInputError, match="unknown key 'colour'"):
        prepare(tmp_path / "a.csv", tmp_path / "out", format="csv", format_options={"spec": str(tmp_path / "s.json")})
    _no_output(tmp_path, tmp_path / "out")


def test_comma_separated_criteo_gets_a_delimiter_hint(tmp_path: Path) -> None:
    # DeepCTR's criteo_sample.txt layout: a header and commas instead of tabs
    header = ",".join(["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)])
    src = tmp_path / "sample.txt"
    row = criteo_line(1, list(range(13)), ["68fd1e64"] * 26).replace("\t", ",")
    src.write_text(header + "\n" + row + "\n")
    with pytest.raises(DataFormatError, match="line 1: 1 fields, expected 40; it looks ','-separated"):
        prepare(src, tmp_path / "out", format="criteo")
    _no_output(tmp_path, tmp_path / "out")


# ---------------------------------------------------------------------- quietly wrong inputs (issue 15 point 10)
@pytest.mark.parametrize(("value", "message"), [
    ("inf", "I2 is inf"), ("1e999", "I2 is inf"), ("-inf", "I2 is -inf"),
    ("-9.3e18", "I2 -9.3e\\+18 has no integer token"),
])
def test_integer_field_without_a_token_is_refused_with_its_line(tmp_path: Path, value: str, message: str) -> None:
    # they all used to become one token (the int64 cast of inf), merging unrelated damaged values
    bad = criteo_line(1, [1, value] + [1] * 11, ["ab"] * 26)
    path = _bad(tmp_path, [GOOD] * 4 + [bad] + [GOOD] * 3)
    with pytest.raises(DataFormatError, match=rf"bad\.tsv line 5: {message}"):
        prepare(path, tmp_path / "out", format="criteo")
    _no_output(tmp_path, tmp_path / "out")


def test_huge_finite_counts_keep_distinct_tokens_and_null_spellings_are_missing(tmp_path: Path) -> None:
    lines = [criteo_line(i % 2, [1, v] + [1] * 11, ["ab"] * 26)
             for i, v in enumerate(["1e300", "-1e18", "-2e18", "NA", "nan", "", "5"])]
    prepare(_bad(tmp_path, lines), tmp_path / "out", format="criteo", val_fraction=0.0, test_fraction=0.0)
    from ondevice.schema import Schema

    values = Schema.load(tmp_path / "out" / "schema.json").fields[1].values
    assert sorted(values) == sorted(["", "-1000000000000000000", "-2000000000000000000", str(int(math.log(1e300) ** 2)), "2"])


def test_csv_numeric_rule_out_of_int64_is_refused(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("click,a,n\n1,x,3\n0,y,1e20\n")
    (tmp_path / "s.json").write_text('{"label": "click", "categorical": ["a"], "numeric": {"n": "int"}}')
    with pytest.raises(DataFormatError, match=r"d\.csv line 3: n 1e\+20 has no integer token"):
        prepare(tmp_path / "d.csv", tmp_path / "out", format="csv", format_options={"spec": str(tmp_path / "s.json")})


def _varied(tmp_path: Path, rows: int = 200) -> Path:
    """C1 takes 50 values (4 rows each), C2 one value, the rest 2 values: --min-count 10 empties C1 only."""
    lines = [criteo_line(r % 2, [r % 2] * 13, [f"v{r % 50}", "same"] + [f"w{r % 2}"] * 24) for r in range(rows)]
    return _bad(tmp_path, lines)


def test_min_count_that_empties_a_field_warns_naming_it(tmp_path: Path) -> None:
    info = prepare(_varied(tmp_path), tmp_path / "out", format="criteo", min_count=10)
    lines = [w for w in info["warnings"] if "--min-count 10" in w]
    assert len(lines) == 1 and lines[0].startswith("field 'C1': --min-count 10 maps 100.0% of its training rows")
    assert "keeps 0 of 50 distinct values" in lines[0]
    assert info["oov_rate"]["train"]["C1"] == 1.0
    quiet = prepare(_varied(tmp_path), tmp_path / "out2", format="criteo", min_count=2)
    assert quiet["warnings"] == []


def test_min_count_that_empties_every_field_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match=r"--min-count 500 maps every value of every field to the OOV id .*"
                                            r"the most frequent occurs \d+ times.*use --min-count \d+ or less"):
        prepare(_varied(tmp_path), tmp_path / "out", format="criteo", min_count=500)
    _no_output(tmp_path, tmp_path / "out")


def test_single_class_training_labels_are_refused(tmp_path: Path) -> None:
    path = _bad(tmp_path, [criteo_line(0, [r] * 13, ["ab"] * 26) for r in range(50)])
    with pytest.raises(BadInputError, match=r"every training label of .*bad\.tsv is 0 \(\d+ rows\)"):
        prepare(path, tmp_path / "out", format="criteo")
    _no_output(tmp_path, tmp_path / "out")


def test_empty_or_single_class_val_and_test_splits_warn(tmp_path: Path) -> None:
    good = write_criteo(tmp_path / "g.tsv", 200)
    info = prepare(good, tmp_path / "out", format="criteo", val_fraction=0.0, test_fraction=0.0)
    assert [w.split(":")[0] for w in info["warnings"]] == ["the val split is empty", "the test split is empty"]
    assert "train` refuses it" in info["warnings"][0]
    train = tmp_path / "train.tsv"
    train.write_text(good.read_text())
    test = _bad(tmp_path, [criteo_line(1, [1] * 13, ["ab"] * 26)] * 5)
    info = prepare([train, test], tmp_path / "out2", format="criteo", split="given")
    assert info["warnings"] == ["every test label is 1 (5 rows): AUC is undefined on test"]
