"""Synthetic generators: real formats, planted truth, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ondevice.data import EncodedDataset
from ondevice.data.generate import generate_ctr, generate_topk, synthetic_ctr_dataset
from ondevice.data.preparation import prepare
from ondevice.errors import BadInputError


def test_ctr_criteo_is_deterministic_and_readable(tmp_path: Path) -> None:
    a = generate_ctr(tmp_path / "a.tsv", 20_000, seed=5, chunk_rows=6000)
    generate_ctr(tmp_path / "b.tsv", 20_000, seed=5, chunk_rows=6000)
    generate_ctr(tmp_path / "c.tsv", 20_000, seed=6, chunk_rows=6000)
    assert (tmp_path / "a.tsv").read_bytes() == (tmp_path / "b.tsv").read_bytes()
    assert (tmp_path / "a.tsv").read_bytes() != (tmp_path / "c.tsv").read_bytes()
    lines = (tmp_path / "a.tsv").read_text().splitlines()
    assert len(lines) == 20_000 and all(len(line.split("\t")) == 40 for line in lines[:200])
    truth = json.loads((tmp_path / "a.tsv.truth.json").read_text())
    assert truth == json.loads(json.dumps(a))
    assert {"seed", "important_fields", "interactions", "intercept", "vocab", "zipf_alpha"} <= set(truth)
    assert 0.2 <= truth["positive_rate"] <= 0.3
    assert len(truth["important_fields"]) == 4 and len(truth["interactions"]) == 2
    info = prepare(tmp_path / "a.tsv", tmp_path / "out", format="criteo")
    assert info["total_rows"] == 20_000 and 0.2 <= info["positive_rate"]["train"] <= 0.3


def test_ctr_frequencies_follow_a_power_law(tmp_path: Path) -> None:
    generate_ctr(tmp_path / "z.tsv", 30_000, vocab=1000, seed=1)
    prepare(tmp_path / "z.tsv", tmp_path / "out", format="criteo")
    ids = EncodedDataset(tmp_path / "out").split("train").ids[:, 13 + 5]  # C6
    counts = np.bincount(ids)[1:]
    ranks = np.arange(1, 51)
    slope = np.polyfit(np.log(ranks), np.log(counts[:50]), 1)[0]
    assert -1.4 < slope < -0.8  # Zipf exponent 1.1


def test_planted_important_field_carries_signal(tmp_path: Path) -> None:
    truth = generate_ctr(tmp_path / "s.tsv", 40_000, vocab=50, seed=2)
    prepare(tmp_path / "s.tsv", tmp_path / "out", format="criteo", test_fraction=0.0, val_fraction=0.0)
    ds = EncodedDataset(tmp_path / "out")
    ids, y = ds.split("train").ids, ds.split("train").labels
    names = ds.schema.field_names

    def spread(field: str) -> float:  # std of the per-value positive rate (frequent values)
        col = ids[:, names.index(field)]
        rates = [y[col == v].mean() for v in np.unique(col) if (col == v).sum() > 300]
        return float(np.std(rates))

    important = truth["important_fields"][0]["field"]
    used = {f["field"] for f in truth["important_fields"]} | {f for p in truth["interactions"] for f in p["fields"]}
    unused = next(f"C{i}" for i in range(1, 27) if f"C{i}" not in used)
    assert spread(important) > 3 * spread(unused)


def test_libfm_generation(tmp_path: Path) -> None:
    generate_ctr(tmp_path / "f.libfm.gz", 5000, format="libfm", fields=6, vocab=[5, 10, 20, 40, 80, 160], seed=0)
    info = prepare(tmp_path / "f.libfm.gz", tmp_path / "out", format="libfm")
    assert info["fields"] == [f"f{i}" for i in range(1, 7)]
    assert info["vocab_size"]["f1"] <= 6


def test_topk_generation(tmp_path: Path) -> None:
    t1 = generate_topk(tmp_path / "a", users=200, items=300, seed=3)
    generate_topk(tmp_path / "b", users=200, items=300, seed=3)
    assert (tmp_path / "a" / "train.txt").read_bytes() == (tmp_path / "b" / "train.txt").read_bytes()
    assert json.loads((tmp_path / "a" / "truth.json").read_text())["seed"] == 3
    info = prepare([tmp_path / "a" / "train.txt", tmp_path / "a" / "test.txt"], tmp_path / "out",
                   format="implicit", split="given")
    assert info["rows"]["test"] == t1["test_interactions"]
    assert info["rows"]["train"] + info["rows"]["val"] == t1["train_interactions"]
    train = EncodedDataset(tmp_path / "out").split("train").ids
    pop = np.bincount(train[:, 1])
    assert pop.max() > 5 * np.median(pop[pop > 0])  # popularity skew


def test_synthetic_dataset_and_bad_arguments(tmp_path: Path) -> None:
    info = synthetic_ctr_dataset(tmp_path / "ds", 5000, seed=0, vocab=100)
    assert (tmp_path / "ds" / "truth.json").is_file() and info["total_rows"] == 5000
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    with pytest.raises(BadInputError, match="unknown synthetic CTR format"):
        generate_ctr(tmp_path / "x", 10, format="avro")
    with pytest.raises(BadInputError, match="exactly 26 categorical"):
        generate_ctr(tmp_path / "x", 10, fields=3)
    with pytest.raises(BadInputError, match="vocab has 2 sizes"):
        generate_ctr(tmp_path / "x", 10, vocab=[3, 4])
    assert not (tmp_path / "x").exists()


def test_latent_fm_term_is_planted_and_off_by_default(tmp_path: Path) -> None:
    """``latent_dim`` adds Σ_{f<g} <v_f, v_g> among fields outside the other planted ones; 0 changes nothing."""
    from ondevice.data.generate import _PlantedCTR

    names, sizes = [f"C{i}" for i in range(12)], [40] * 12
    kw = dict(seed=3, alpha=1.1, base_rate=0.25, n_important=2, n_pairs=1, numeric=False)
    plain = _PlantedCTR(names, sizes, **kw)
    latent = _PlantedCTR(names, sizes, **kw, latent_dim=8, latent_fields=5)
    assert plain.latent == [] and len(latent.latent) == 5
    assert not set(latent.latent) & (set(latent.important) | {f for p in latent.pairs for f in p})
    ranks = latent.sample_ranks(np.random.default_rng(0), 20_000)
    vs = np.stack([latent.vectors[f][ranks[:, f]] for f in latent.latent], axis=1)
    brute = sum((vs[:, i] * vs[:, j]).sum(1) for i in range(5) for j in range(i + 1, 5))
    term = latent.logit(ranks, None) - plain.logit(ranks, None) - (latent.intercept - plain.intercept)
    np.testing.assert_allclose(term, brute, atol=1e-9)
    assert 1.0 < float(np.std(brute)) < 2.2  # scaled to std ≈ 1.5
    truth = generate_ctr(tmp_path / "l.tsv", 2000, seed=3, latent_dim=4, latent_fields=3)
    assert truth["latent_interactions"]["dim"] == 4 and len(truth["latent_interactions"]["fields"]) == 3
    assert "latent_interactions" not in generate_ctr(tmp_path / "p.tsv", 2000, seed=3)
