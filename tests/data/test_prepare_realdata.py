"""The loaders on the real datasets in ../shared/data (skipped with a reason when absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ondevice.data import EncodedDataset
from ondevice.data.formats.libfm import FRAPPE_NAMES
from ondevice.data.preparation import prepare
from tests.data.conftest import shared_or_skip

pytestmark = pytest.mark.realdata


def test_criteo_head_10k(tmp_path: Path) -> None:
    path = shared_or_skip("criteo", "criteo_dac_train_head10k.tsv.gz")
    info = prepare(path, tmp_path / "out", format="criteo")
    assert info["total_rows"] == 10_000
    positives = sum(info["positive_rate"][s] * info["rows"][s] for s in info["rows"])
    assert round(positives) == 2182  # README: 21.82 %
    assert len(info["fields"]) == 39
    # C9 has 3 distinct values, C22 has 8182 missing: both fully inside the training vocabulary
    assert info["vocab_size"]["C9"] == 4 and info["oov_rate"]["train"]["C22"] == 0.0


def test_frappe_libfm_given_split(tmp_path: Path) -> None:
    val = shared_or_skip("frappe", "nfm-libfm", "frappe.validation.libfm.gz")
    test = shared_or_skip("frappe", "nfm-libfm", "frappe.test.libfm.gz")
    info = prepare([val, test], tmp_path / "out", format="libfm", split="given", format_options={"names": FRAPPE_NAMES})
    assert len(info["fields"]) == 10 and info["fields"][0] == "user"
    assert info["rows"]["test"] == 28_860 and info["rows"]["train"] + info["rows"]["val"] == 57_722
    assert info["positive_rate"]["test"] == pytest.approx(9536 / 28_860)
    plain = prepare([val, test], tmp_path / "plain", format="libfm")
    assert len(plain["fields"]) == 10  # --format libfm alone gives the 10 Frappe fields


def test_movielens_ratings_head(tmp_path: Path) -> None:
    path = shared_or_skip("movielens-1m", "ratings_head10k.dat.gz")
    info = prepare(path, tmp_path / "out", format="movielens")
    assert info["total_rows"] == 10_000
    positives = sum(info["positive_rate"][s] * info["rows"][s] for s in info["rows"])
    assert round(positives) == 3419 + 2380
    assert info["vocab_size"]["user"] <= 71 and info["vocab_size"]["gender"] == 3
    pep = prepare(path, tmp_path / "pep", format="movielens", format_options={"drop_ratings": [3]})
    assert pep["total_rows"] == 10_000 - 2782


@pytest.mark.slow
def test_ml1m_lcfn_implicit_split(tmp_path: Path) -> None:
    train = shared_or_skip("movielens-1m", "lcfn-implicit-split", "train.txt.gz")
    test = shared_or_skip("movielens-1m", "lcfn-implicit-split", "test.txt.gz")
    info = prepare([train, test], tmp_path / "out", format="implicit", split="given")
    assert info["rows"]["train"] + info["rows"]["val"] == 796_244 and info["rows"]["test"] == 99_455
    assert info["vocab_size"] == {"user": 6023, "item": 3044}  # 6,022 users, 3,043 items (+ OOV row)
    ds = EncodedDataset(tmp_path / "out")
    users_train = np.unique(ds.split("train").ids[:, 0])
    assert users_train.size == np.unique(np.concatenate([ds.split("train").ids[:, 0], ds.split("val").ids[:, 0]])).size
    assert abs(info["rows"]["val"] / 796_244 - 0.1) < 0.01


def test_sasrec_video_leave_last_out_matches_sasrec_partition(tmp_path: Path) -> None:
    import gzip

    path = shared_or_skip("amazon-yelp", "sasrec", "Video.txt.gz")
    info = prepare(path, tmp_path / "out", format="implicit", split="leave-last-out")
    seqs: dict[int, list[int]] = {}
    with gzip.open(path, "rt") as fh:
        for line in fh:
            u, i = line.split()
            seqs.setdefault(int(u), []).append(int(i))
    # kang205/SASRec util.py data_partition: users with < 3 interactions keep all in train
    for split, pos in (("test", -1), ("val", -2)):
        want = sorted((u, s[pos]) for u, s in seqs.items() if len(s) >= 3)
        got = sorted(map(tuple, (np.load(tmp_path / "out" / split / "ids.npy") - 1).tolist()))
        assert got == want, split
    assert info["leave_last_out"]["users"] == len(seqs) == 31_013  # SASRec paper, Table 2
    assert info["rows"]["train"] == 287_107 - 2 * info["leave_last_out"]["held_out_users"]
    assert info["duplicates"] == {"rows": 0, "dropped": False}
