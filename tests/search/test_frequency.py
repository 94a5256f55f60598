"""``frequency``: ranking, the OOV row, the per-id vocabulary cost, and raw artefacts that drop keys."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ondevice.data import EncodedDataset
from ondevice.data.generate import generate_ctr
from ondevice.data.preparation import prepare
from ondevice.embedding import DenseEmbedding, QuantizedEmbedding, RowPrunedEmbedding
from ondevice.export.raw import raw_encoder_bytes, raw_plan
from ondevice.pipeline.compress import compress
from ondevice.pipeline.measure import vocabulary_cost
from ondevice.search import make_searcher
from ondevice.search.byte_accountant import VOCABULARY_PART, ByteAccountant
from ondevice.search.embedding.frequency import id_costs, oov_warm_start, rank_ids, train_counts
from ondevice.search.embedding.quantize import quantize_layer
from ondevice.search.fixed_parts import first_order_layer
from ondevice.train import TrainConfig, load_checkpoint, train
from ondevice.vocabulary import dropped_ids, key_bytes, tables, vocabulary_bytes
from tests.conftest import CALIBRATED, SHARED_DATA
from tests.export.test_raw_inputs import _criteo_rows

FAST = {"epochs": 1, "batch_size": 256}


@pytest.fixture(scope="module")
def criteo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DeepFM on generated Criteo-format data (vocabulary fields, so raw artefacts carry keys)."""
    root = tmp_path_factory.mktemp("freq")
    generate_ctr(root / "c.tsv", 3000, vocab=300, seed=3)
    prepare(root / "c.tsv", root / "data", format="criteo")
    cfg = TrainConfig(model="deepfm", embed_dim=8, mlp_dims=[16], epochs=2, batch_size=256, lr=5e-3, patience=1,
                      **CALIBRATED)
    train(root / "data", root / "run", cfg, quiet=True)
    return root / "run"


def test_rank_ids_orders_by_occurrences_per_byte() -> None:
    vocab = [4, 3]
    counts = np.array([9, 5, 0, 5, 7, 2, 4])  # field 0 ids 0..3, field 1 ids 0..2
    costs = np.array([1.0, 10, 10, 5, 10, 1, 2])
    # OOV rows (0, 4) never ranked; id 2 of field 0 never seen; 5/1 > 4/2 > 5/5 > 5/10
    assert rank_ids(counts, costs, vocab).tolist() == [5, 6, 3, 1]
    assert rank_ids(counts, costs, vocab, min_count=4).tolist() == [6, 3, 1]
    ties = rank_ids(np.array([0, 3, 3, 0, 3]), np.ones(5), [3, 2])
    assert ties.tolist() == [1, 2, 4]  # equal density: field, then id


def test_id_costs_add_rows_and_keys() -> None:
    keys = (np.array([0.0, 3.0]), np.array([0.0, 7.5, 1.0]))
    assert id_costs([2, 3], 4, "float32", 4, keys).tolist() == [20, 23, 20, 27.5, 21]
    assert id_costs([2, 3], 4, "int8", 0, None).tolist() == [6.0] * 5  # D + 2 (fp16 scale)


def test_train_counts_read_the_train_split_only(ctr_data: Path) -> None:
    ds = EncodedDataset(ctr_data)
    vocab = list(ds.schema.vocab_sizes)
    counts = train_counts(ds, vocab)
    ids = np.asarray(ds.split("train").ids)
    assert counts.sum() == ids.size and counts[vocab[0] + 7] == int((ids[:, 1] == 7).sum())


def test_oov_row_is_the_occurrence_weighted_mean_of_what_it_stands_for() -> None:
    w = torch.arange(12, dtype=torch.float32).reshape(6, 2)  # field 0: rows 0-3, field 1: rows 4-5
    keep = torch.tensor([True, True, False, False, True, True])
    counts = np.array([1, 50, 2, 1, 0, 9])
    oov = oov_warm_start(w, keep, counts, [4, 2])
    want0 = (1 * w[0] + 2 * w[2] + 1 * w[3]) / 4  # old OOV row and the dropped rows, by train occurrences
    torch.testing.assert_close(oov[0], want0)
    torch.testing.assert_close(oov[1], w[4])  # nothing dropped, OOV never seen: the old row


def test_quantizing_row_pruned_tables_keeps_the_remap() -> None:
    torch.manual_seed(0)
    dense = DenseEmbedding([5, 4], 3)
    keep = torch.tensor([1, 0, 1, 0, 0, 1, 1, 0, 0], dtype=torch.bool)
    pruned = RowPrunedEmbedding.from_dense(dense, keep)
    for new in (quantize_layer(pruned, "int8"), first_order_layer(pruned, "fp16")):
        assert isinstance(new, RowPrunedEmbedding) and new.dtype_name != "float32"
        assert torch.equal(new.remap, pruned.remap)
        torch.testing.assert_close(new.dense_weight(), pruned.dense_weight(), atol=2e-2, rtol=0)
    assert isinstance(first_order_layer(dense, "fp16"), QuantizedEmbedding)


def test_key_bytes_add_up_to_the_tables(criteo_run: Path) -> None:
    """Per-id key bytes vs the serialized tables (ondevice.vocabulary.vocabulary_bytes).

    Every key kept: the tables are the per-id sum plus what no id owns, each attribute's name
    and framing (at most 32 B each, 19 attributes) and per tree target its root node and OOV
    leaf. Keys dropped at random (``full − Σ dropped``): the string lookup is never
    under-counted and over-counted by at most 2 B per kept key (dropping keys only shrinks the
    varints of level 1's ``u`` and level 2's ``u + c·S``) + 1 B per attribute (length
    prefixes); the tree is off by at most half a node per edge between a kept and a dropped id
    (the edge stays, the estimate removed half of it) + 1 B per attribute.
    """
    schema = load_checkpoint(criteo_run).schema
    plan = raw_plan(schema)
    per_id = key_bytes(schema, plan)
    t = tables(schema, plan)
    assert all(a[0] == 0 for a in per_id) and len(t.trees) == 13 and len(t.in_lookup) == 26
    full = vocabulary_bytes(schema, plan)
    node = max(float(a.max()) for j, a in enumerate(per_id) if j in t.trees)  # an id beside OOV: one node + its leaf
    assert 0 <= full - sum(a.sum() for a in per_id) <= 19 * 32 + len(t.trees) * node
    rng = np.random.default_rng(0)
    for frac in (0.2, 0.6):
        draw = {j: {int(i) for i in np.flatnonzero(rng.random(f.vocab_size) < frac) if i} for j, f in enumerate(schema.fields)}
        for kind in (t.in_lookup, t.trees):
            dropped = {j: d for j, d in draw.items() if j in kind}
            est = full - sum(per_id[j][sorted(d)].sum() for j, d in dropped.items())
            off = est - vocabulary_bytes(schema, plan, dropped)
            if kind is t.in_lookup:
                kept = sum(schema.fields[j].vocab_size - 1 - len(d) for j, d in dropped.items())
                assert 0 <= off <= 2 * kept + 6, (frac, off, kept)
            else:
                mixed = sum(1 for j, d in dropped.items() for a, b in zip(t.trees[j][2][:-1], t.trees[j][2][1:], strict=True)
                            if a and b and ((a in d) != (b in d)))
                assert abs(off) <= node / 2 * mixed + 13, (frac, off, mixed)


def test_accountant_counts_the_vocabulary_only_when_given(criteo_run: Path) -> None:
    ckpt = load_checkpoint(criteo_run)
    schema, model = ckpt.schema, ckpt.model
    cost = vocabulary_cost(schema)
    plain, raw = ByteAccountant(), ByteAccountant(vocabulary=cost)
    assert raw.vocabulary_bytes(model) == raw_encoder_bytes(schema)  # every key kept: the old reserve
    assert plain.vocabulary_bytes(model) == 0 and VOCABULARY_PART not in plain.fixed_parts(model)
    assert raw.file_bytes_estimate(model) == plain.file_bytes_estimate(model) + raw_encoder_bytes(schema)
    assert raw.fixed_bytes(model) == plain.fixed_bytes(model) + cost.fixed_bytes
    keep = torch.rand(sum(schema.vocab_sizes), generator=torch.Generator().manual_seed(1)) < 0.3
    model.embedding = RowPrunedEmbedding.from_dense(model.embedding, keep)
    model.linear = RowPrunedEmbedding.from_dense(model.linear, keep)
    dropped = dropped_ids([model.embedding, model.linear], list(schema.vocab_sizes))
    assert raw.dropped(model) == dropped and dropped
    assert raw.vocabulary_bytes(model) == cost.exact(dropped) < raw_encoder_bytes(schema)
    assert cost.estimate({}) == raw_encoder_bytes(schema)  # fixed + every id's keys


def _level1_texts(path: Path) -> set[str]:
    import onnx

    node = next(n for n in onnx.load(str(path)).graph.node if n.op_type == "LabelEncoder"
                and any(a.name == "keys_strings" for a in n.attribute))
    return {k.decode("utf-8") for a in node.attribute if a.name == "keys_strings" for k in a.strings}


def _other_columns_texts(schema, j: int, dropped: dict[int, set[int]]) -> set[str]:
    """Texts another string field keeps (they stay in the shared level-1 table)."""
    return {v for k, f in enumerate(schema.fields) if k != j and f.transform is None
            for i, v in enumerate(f.values or [], start=1) if i not in dropped.get(k, set())}


def _only_oov_rows_dropped(model) -> dict[int, set[int]]:
    return dropped_ids([model.embedding, model.linear], list(model.embedding.vocab_sizes))


def test_search_keeps_frequent_ids_and_dropped_ids_predict_like_oov(criteo_run: Path) -> None:
    ckpt = load_checkpoint(criteo_run)
    data = EncodedDataset(criteo_run.parent / "data")
    acc = ByteAccountant(vocabulary=vocabulary_cost(ckpt.schema))
    full_bytes = acc.planned_file_bytes(ckpt.model)
    budget = int(full_bytes * 0.5)
    result = make_searcher("frequency", **FAST).search(ckpt, data, budget, accountant=acc)
    model = result.model
    assert isinstance(model.embedding, RowPrunedEmbedding) and isinstance(model.linear, RowPrunedEmbedding)
    assert torch.equal(model.embedding.remap, model.linear.remap)  # the same ids: one stored remap
    assert acc.file_bytes_estimate(model) <= budget
    dropped = _only_oov_rows_dropped(model)
    counts = train_counts(data, list(ckpt.schema.vocab_sizes))
    starts = np.cumsum([0, *ckpt.schema.vocab_sizes[:-1]])
    kept_counts = [counts[s + i] for j, s in enumerate(starts) for i in range(1, ckpt.schema.vocab_sizes[j])
                   if i not in dropped.get(j, set())]
    dropped_counts = [counts[starts[j] + i] for j, d in dropped.items() for i in d]
    assert dropped_counts and np.median(kept_counts) > np.median(dropped_counts)
    # a dropped id reads the OOV row in both tables: exactly the prediction of id 0
    ids = torch.as_tensor(np.array(data.split("val").ids[:64]), dtype=torch.int64)
    j, drop = next((j, sorted(d)) for j, d in dropped.items() if d)
    a, b = ids.clone(), ids.clone()
    a[:, j] = drop[0]
    b[:, j] = 0
    with torch.no_grad():
        assert torch.equal(model(a), model(b))
    trace = result.trace[0]
    assert trace["kept_ids"] == sum(model.embedding.kept_rows) - len(ckpt.schema.fields)
    assert 0 < trace["kept_train_occurrences"] < 1


def test_raw_artefact_below_the_vocabulary_drops_keys(criteo_run: Path, tmp_path: Path) -> None:
    """compress --method frequency on a budget the full vocabulary takes over half of: a raw
    artefact within the budget whose vocabulary part is what ondevice.vocabulary counts for the
    dropped ids, below the full vocabulary; frequency+int8 too; the default (uniform) gets ids."""
    schema = load_checkpoint(criteo_run).schema
    reserve = raw_encoder_bytes(schema)
    budget = int(reserve * 1.6)
    s = compress(criteo_run, budgets=[budget], methods=["frequency", "frequency+int8", "uniform"], out_dir=tmp_path / "o",
                 epochs=1, searcher_params={"frequency": {"batch_size": 256}, "uniform": {"batch_size": 256}},
                 quiet=True, profile=False, evaluate_test=False)
    runs = {r["method"]: r for r in s["runs"]}
    assert not s["failures"]
    for method in ("frequency", "frequency+int8"):
        folder = tmp_path / "o" / runs[method]["folder"]
        manifest = json.loads((folder / "manifest.json").read_text())
        parts = manifest["storage"]["by_part"]
        assert manifest["input_encoding"] == "raw" and parts["total"] <= budget and manifest["verify"]["passed"]
        dropped = _only_oov_rows_dropped(load_checkpoint(folder / "reference_model.pt").model)
        assert dropped
        assert parts["vocabulary"] == vocabulary_bytes(schema, manifest["raw_inputs"], dropped) < vocabulary_bytes(
            schema, manifest["raw_inputs"])
        assert not runs[method].get("warnings")
        search = json.loads((folder / "search.json").read_text())
        assert parts["total"] <= search["fit_attempts"][-1]["file_bytes"] <= budget  # id model + encoder: a bound
        texts = _level1_texts(folder / "model.onnx")  # the strings in the file itself
        j = next(j for j, f in enumerate(schema.fields) if f.transform is None and dropped.get(j))
        values = list(schema.fields[j].values or [])
        kept = set(range(1, schema.fields[j].vocab_size)) - dropped[j]
        gone = {values[i - 1] for i in dropped[j]} - _other_columns_texts(schema, j, dropped)
        assert gone and not gone & texts
        assert {values[i - 1] for i in kept} <= texts
    assert isinstance(load_checkpoint(tmp_path / "o" / runs["frequency+int8"]["folder"] / "reference_model.pt")
                      .model.embedding, RowPrunedEmbedding)
    uniform = json.loads((tmp_path / "o" / runs["uniform"]["folder"] / "manifest.json").read_text())
    assert uniform["input_encoding"] == "ids" and any("--method frequency" in w for w in runs["uniform"]["warnings"])


def test_raw_parity_dropped_ids_read_oov(criteo_run: Path, tmp_path: Path) -> None:
    """The raw graph of a frequency artefact equals prepare + its id graph on the encoded rows."""
    import onnxruntime as ort

    from ondevice.export import export_artefact
    from ondevice.export._runner import runner_module
    from ondevice.export.raw import encode_reference

    schema = load_checkpoint(criteo_run).schema
    s = compress(criteo_run, budgets=[int(raw_encoder_bytes(schema) * 1.6)], methods=["frequency"],
                 out_dir=tmp_path / "o", epochs=1, searcher_params={"frequency": {"batch_size": 256}}, quiet=True,
                 profile=False, evaluate_test=False)
    folder = tmp_path / "o" / s["runs"][0]["folder"]
    ids_art = export_artefact(folder / "reference_model.pt", tmp_path / "ids", inputs="ids", check_mobile=False)
    assert ids_art["input_encoding"] == "ids"
    manifest = json.loads((folder / "manifest.json").read_text())
    lines = (criteo_run.parent / "c.tsv").read_text().splitlines()[:300]
    feeds = runner_module().records_to_feeds(manifest, _criteo_rows(lines))
    got = ort.InferenceSession(str(folder / "model.onnx")).run(None, feeds)[0]
    ids = encode_reference(schema, manifest["raw_inputs"], feeds)
    want = ort.InferenceSession(str(tmp_path / "ids" / "model.onnx")).run(None, {"ids": ids})[0]
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    dropped = _only_oov_rows_dropped(load_checkpoint(folder / "reference_model.pt").model)
    assert any(int(ids[r, j]) in d for j, d in dropped.items() for r in range(len(ids)))  # dropped ids were fed
    # the raw file stores the kept rows without the remap (4 B per original id): its tables emit the
    # re-indexed ids themselves; the id artefact keeps it (the app sends prepare's ids)
    import onnx

    from ondevice.evaluate import evaluate_artefact
    from ondevice.train.evaluate import evaluate_ctr

    def int32_vectors(path: Path) -> list[list[int]]:
        return [list(t.dims) for t in onnx.load(str(path)).graph.initializer if t.data_type == onnx.TensorProto.INT32]

    total = sum(schema.vocab_sizes)
    assert [total] in int32_vectors(tmp_path / "ids" / "model.onnx") and [total] not in int32_vectors(folder / "model.onnx")
    assert manifest["raw_inputs"]["id_model_reindexed"]
    # evaluate re-indexes the encoded test split for the raw artefact's id model: PyTorch's metric
    data = EncodedDataset(criteo_run.parent / "data")
    test = data.split("test")
    want_auc = evaluate_ctr(load_checkpoint(folder / "reference_model.pt").model.eval(), np.asarray(test.ids),
                            np.asarray(test.labels))["auc"]
    assert evaluate_artefact(folder, data)["auc"] == pytest.approx(want_auc, abs=1e-6)


def test_cli_frequency_keeps_raw_inputs(criteo_run: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from ondevice.cli import _register_commands, cli

    _register_commands()
    budget = int(raw_encoder_bytes(load_checkpoint(criteo_run).schema) * 1.6)
    res = CliRunner().invoke(cli, ["compress", str(criteo_run), "--method", "frequency", "--budget", str(budget),
                                   "--epochs", "1", "--out", str(tmp_path / "o"), "--profile-runs", "1"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "o" / str(budget) / "manifest.json").read_text())
    assert manifest["input_encoding"] == "raw" and manifest["files"]["model.onnx"]["bytes"] <= budget
    assert "warning" not in res.output


@pytest.mark.skipif(not (SHARED_DATA / "criteo" / "criteo_dac_train_head10k.tsv.gz").is_file(),
                    reason="needs the shared Criteo head10k file (../shared/data/criteo), absent here")
def test_criteo_head10k_raw_at_500kb(tmp_path: Path) -> None:
    """Criteo's first 10,000 rows: 787,638 B of vocabulary, so 500KB was an id artefact; frequency
    gives a raw one within 500,000 B whose vocabulary is a fraction of it, parity checked."""
    prepare(SHARED_DATA / "criteo" / "criteo_dac_train_head10k.tsv.gz", tmp_path / "d", format="criteo")
    cfg = TrainConfig(model="deepfm", epochs=1, batch_size=1024)
    train(tmp_path / "d", tmp_path / "run", cfg, quiet=True)
    schema = load_checkpoint(tmp_path / "run").schema
    s = compress(tmp_path / "run", budgets=["500KB"], methods=["frequency"], out_dir=tmp_path / "o", epochs=1,
                 quiet=True, profile=False, evaluate_test=False, inputs="raw")
    manifest = json.loads((tmp_path / "o" / s["runs"][0]["folder"] / "manifest.json").read_text())
    parts = manifest["storage"]["by_part"]
    assert manifest["input_encoding"] == "raw" and parts["total"] <= 500_000 and manifest["verify"]["passed"]
    assert parts["vocabulary"] < vocabulary_bytes(schema, manifest["raw_inputs"]) / 4


def test_auto_tries_frequency_raw_where_the_vocabulary_takes_over_half(criteo_run: Path, tmp_path: Path) -> None:
    """Default inputs at a budget the vocabulary takes over half of: auto's other candidates take ids,
    ``frequency`` runs raw (keys per kept id); the artefact takes the inputs of the candidate chosen."""
    from ondevice.pipeline.auto import AutoSearcher

    assert "raw_vocabulary" not in AutoSearcher(raw_vocabulary=object()).get_params()
    schema = load_checkpoint(criteo_run).schema
    budget = int(raw_encoder_bytes(schema) * 1.6)
    s = compress(criteo_run, budgets=[budget], methods=["auto"], out_dir=tmp_path / "o", epochs=1,
                 searcher_params={"auto": {"methods": ["int8", "frequency"]}, "frequency": {"batch_size": 256}},
                 quiet=True, profile=False, evaluate_test=False, max_loss=None)
    run = s["runs"][0]
    cands = {c["method"]: c for c in run["candidates"]}
    assert cands["frequency"]["inputs"] == "raw" and "inputs" not in cands["int8"]
    chosen = next(c for c in run["candidates"] if c["chosen"])
    manifest = json.loads((tmp_path / "o" / run["folder"] / "manifest.json").read_text())
    assert manifest["input_encoding"] == chosen.get("inputs", "ids")
    assert manifest["files"]["model.onnx"]["bytes"] <= budget and manifest["verify"]["passed"]
    assert bool(run.get("warnings")) == (chosen["method"] != "frequency")  # the ids warning only for an id artefact
    # the budget covers what the app ships: a raw candidate that fits within the floor is preferred
    assert (chosen["method"] == "frequency") == (cands["frequency"]["outcome"] == "fits")
    if chosen["method"] != "frequency":  # it says how the raw candidate did instead of suggesting it
        assert "auto's raw frequency candidate: " in run["warnings"][0]
        assert "--method frequency" not in run["warnings"][0]
    else:
        assert cands["int8"]["outcome"] in ("does not fit", "fits the file, not the app payload (+ schema.json); "
                                                            "a raw candidate fits both")
    only = compress(criteo_run, budgets=[budget], methods=["auto"], out_dir=tmp_path / "f", epochs=1,
                    searcher_params={"auto": {"methods": ["frequency"]}, "frequency": {"batch_size": 256}},
                    quiet=True, profile=False, evaluate_test=False, max_loss=None)
    folder = tmp_path / "f" / only["runs"][0]["folder"]
    assert json.loads((folder / "manifest.json").read_text())["input_encoding"] == "raw"
    assert not only["runs"][0].get("warnings")


def test_too_small_budget_names_the_encoder_and_the_smallest_raw_model(criteo_run: Path) -> None:
    from ondevice.errors import BudgetTooSmallError

    ckpt = load_checkpoint(criteo_run)
    cost = vocabulary_cost(ckpt.schema)
    with pytest.raises(BudgetTooSmallError, match="vocabulary and encoder") as err:
        make_searcher("frequency", **FAST).search(ckpt, criteo_run.parent / "data", 2_000,
                                                  accountant=ByteAccountant(vocabulary=cost), mlp="auto")
    # only OOV rows kept: the encoder without keys (exact; the fixed part of the per-id model + a
    # placeholder key per empty table and the attributes' framing)
    assert cost.fixed_bytes <= err.value.parts[VOCABULARY_PART] <= cost.fixed_bytes + 19 * 32
    assert err.value.minimum_bytes == sum(err.value.parts.values()) > 2_000


def test_ort_profile_reserves_the_encoder_as_ort_stores_it(criteo_run: Path, tmp_path: Path) -> None:
    """onnxruntime's .ort stores the lookup tables 2-3x larger than ONNX: a profile that ships
    model.ort gets raw artefacts sized by the encoder's .ort bytes (they failed the final check)."""
    from ondevice.pipeline.measure import ort_encoder_bytes

    schema = load_checkpoint(criteo_run).schema
    onnx_reserve, ort_reserve = raw_encoder_bytes(schema), ort_encoder_bytes(schema)
    assert ort_reserve > 1.5 * onnx_reserve
    budget = int(ort_reserve * 1.6)
    profile = tmp_path / "phone.toml"
    profile.write_text(f'name = "phone"\ndescription = "test"\nmemory_budget = "{budget}"\narch = "arm64"\n'
                       'threads = 1\nbatch_size = 1\np99_latency_ms = 1000.0\nruntime_format = "ort"\n')
    s = compress(criteo_run, device_profiles=[profile], methods=["frequency", "uniform"], out_dir=tmp_path / "o",
                 epochs=1, searcher_params={"frequency": {"batch_size": 256}, "uniform": {"batch_size": 256}},
                 quiet=True, profile=False, evaluate_test=False, inputs="raw")
    assert not s["failures"], s["failures"]
    for run in s["runs"]:
        manifest = json.loads((tmp_path / "o" / run["folder"] / "manifest.json").read_text())
        assert manifest["input_encoding"] == "raw" and manifest["budget"]["fits"]
        assert manifest["files"]["model.ort"]["bytes"] <= budget and run["file_bytes"] <= budget
