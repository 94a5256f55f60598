"""Feature selection (AutoField): schema/dataset views, planted ranking, budget, export, compress, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from ondevice.cli import _register_commands, cli
from ondevice.data import EncodedDataset
from ondevice.data.generate import generate_ctr
from ondevice.data.preparation import prepare
from ondevice.embedding import QuantizedEmbedding
from ondevice.errors import BadInputError, BudgetTooSmallError
from ondevice.export import export_artefact, verify_artefact
from ondevice.models import DeepFM, DeepFwFM
from ondevice.pipeline.compress import compress
from ondevice.pipeline.measure import measure_file_bytes
from ondevice.schema import Schema
from ondevice.search import ByteAccountant, make_searcher
from ondevice.search.features import fit_ranked_fields, select_model_fields
from ondevice.train import Checkpoint, TrainConfig, evaluate_ctr, load_checkpoint, train
from ondevice.train.batches import in_memory_ctr
from tests.conftest import CALIBRATED

FAST = {"batch_size": 256, "search_epochs": 1, "epochs": 1}


def _data(run: Path) -> EncodedDataset:
    return EncodedDataset(json.loads((run / "train.json").read_text())["data_dir"])


# ------------------------------------------------------------------ views
def test_schema_select_fields(ctr_data: Path) -> None:
    schema = Schema.load(ctr_data / "schema.json")
    sub = schema.select_fields([3, 0])
    assert sub.field_names == ["f3", "f0"] and sub.vocab_sizes == [80, 50]
    assert [f.encoding for f in sub.fields] == ["identity", "identity"]
    assert sub.fingerprint() != schema.fingerprint()
    assert sub.extra["field_selection"] == {"parent_fingerprint": schema.fingerprint(),
                                            "parent_fields": schema.field_names, "kept": ["f3", "f0"]}
    assert Schema.from_dict(sub.to_dict()).fingerprint() == sub.fingerprint()  # round-trips through schema.json
    assert schema.field_positions(["f3", "f0"]) == [3, 0]
    for bad, match in (([], "at least one"), ([5], "out of range"), ([1, 1], "twice")):
        with pytest.raises(BadInputError, match=match):
            schema.select_fields(bad)
    with pytest.raises(BadInputError, match="'nope' is not in the schema"):
        schema.field_positions(["nope"])


def test_dataset_view_reads_the_kept_columns(ctr_data: Path, topk_data: Path) -> None:
    data = EncodedDataset(ctr_data)
    view = data.select_fields([2, 0])
    base, ids = data.split("train"), view.split("train").ids
    assert view.schema.fingerprint() == data.schema.select_fields([2, 0]).fingerprint()
    assert ids.shape == (len(base), 2) and len(ids) == len(base) and ids.nbytes == len(base) * 2 * 4
    np.testing.assert_array_equal(ids[7], base.ids[7][[2, 0]])
    rows = np.array([1, 5, 9])
    np.testing.assert_array_equal(ids[rows], np.asarray(base.ids)[rows][:, [2, 0]])
    np.testing.assert_array_equal(ids[2:4, 1], np.asarray(base.ids)[2:4, 0])
    np.testing.assert_array_equal(np.asarray(ids), np.asarray(base.ids)[:, [2, 0]])
    x, y = in_memory_ctr(view.split("train"))  # what the retraining loop reads
    assert tuple(x.shape) == (len(base), 2) and x.dtype == torch.int64 and torch.equal(y, torch.from_numpy(np.array(base.labels)))
    nested = view.select_fields([1])  # a view of a view reads the base columns
    np.testing.assert_array_equal(np.asarray(nested.split("val").ids)[:, 0], np.asarray(data.split("val").ids)[:, 0])
    assert nested.schema.field_names == ["f0"] and nested.root == data.root
    with pytest.raises(BadInputError, match="CTR data"):
        EncodedDataset(topk_data).select_fields([0])


@pytest.mark.parametrize("cls", [DeepFM, DeepFwFM])
def test_sub_model_inherits_the_kept_weights(cls) -> None:
    """Sub-model on the kept columns == the full model with the dropped fields' rows zeroed."""
    torch.manual_seed(0)
    vocab, keep = [7, 5, 9, 4], [0, 2]
    full = cls.from_vocab(vocab, embed_dim=4, mlp_dims=[8])
    with torch.no_grad():
        full.linear.weight.normal_()
    sub = select_model_fields(full, keep)
    assert type(sub) is cls and sub.num_fields == 2 and list(sub.embedding.vocab_sizes) == [7, 9]
    zeroed = select_model_fields(full, [0, 1, 2, 3])
    with torch.no_grad():
        for layer in (zeroed.embedding, zeroed.linear):
            for f, (start, n) in enumerate(zip([0, 7, 12, 21], vocab, strict=True)):
                if f not in keep:
                    layer.weight[start:start + n] = 0
    ids = torch.stack([torch.randint(0, v, (32,)) for v in vocab], dim=1)
    full.eval(), sub.eval(), zeroed.eval()
    torch.testing.assert_close(sub(ids[:, keep]), zeroed(ids))


# ------------------------------------------------------------------ planted data
@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("planted")
    truth = generate_ctr(root / "raw.libfm", 8000, format="libfm", fields=10, vocab=20, n_important=3, n_pairs=1,
                         seed=3)
    prepare(root / "raw.libfm", root / "data", format="libfm", seed=0)
    cfg = TrainConfig(model="deepfm", embed_dim=8, mlp_dims=[16], epochs=3, batch_size=256, lr=5e-3, **CALIBRATED)
    train(root / "data", root / "run", cfg, quiet=True)
    return root, truth


@pytest.mark.parametrize("method", ["autofield", "adafs"])
def test_planted_fields_rank_first(planted: tuple[Path, dict], method: str) -> None:
    root, truth = planted
    result = make_searcher(method, batch_size=256, search_epochs=2, epochs=1).search(root / "run", root / "data", 10**9)
    ranking = result.trace[0]["ranking"]
    important = [f["field"] for f in sorted(truth["important_fields"], key=lambda f: -f["effect_std"])]
    informative = set(important) | {f for p in truth["interactions"] for f in p["fields"]}
    top = ranking[:len(informative)]
    assert len(set(top) & informative) / len(informative) >= 0.8, (ranking, informative)
    assert set(important) <= set(top), (ranking, important)
    if method == "autofield":
        assert ranking[0] == important[0]  # the strongest planted effect first
        assert set(important) <= set(ranking[:len(important)]), (ranking, important)
    assert len(result.schema.field_names) == 10  # no byte limit: every field fits


# ------------------------------------------------------------------ signal check (issue 17)
def test_ranking_signal_separates_kept_from_dropped() -> None:
    from ondevice.search.features.subset import ranking_signal

    importance = [0.30, 0.01, 0.20, 0.0, -0.01, 0.02]
    good = ranking_signal(importance, [0.9, 0.1, 0.8, 0.2, 0.1, 0.3], keep=[0, 2])
    assert good["passed"] and good["p_value"] == pytest.approx(1 / 15) and good["spearman_score_vs_heldout"] > 0.8
    bad = ranking_signal(importance, [0.51, 0.52, 0.51, 0.52, 0.51, 0.51], keep=[1, 3])  # "all ≈ 0.51"
    assert not bad["passed"] and bad["p_value"] > 0.5
    # nothing dropped: the ranking decided nothing
    assert ranking_signal(importance, [0.5] * 6, keep=list(range(6)))["passed"]
    # 2 fields, keep 1: only the best split passes (level 0.1 is out of reach with 2 splits)
    assert ranking_signal([0.2, 0.0], [1, 0], keep=[0])["passed"]
    assert not ranking_signal([0.2, 0.0], [0, 1], keep=[1])["passed"]


def test_planted_selection_passes_the_signal_check(planted: tuple[Path, dict]) -> None:
    root, truth = planted
    result = make_searcher("autofield", batch_size=256, search_epochs=2, epochs=1, num_fields=4).search(
        root / "run", root / "data", 10**9)
    check = result.trace[0]["signal_check"]
    assert check["passed"] and check["p_value"] <= 0.1 and check["kept"] == 4 and check["fields"] == 10
    important = {f["field"] for f in truth["important_fields"]}
    heldout = check["heldout_importance"]
    noise = set(heldout) - important - {f for p in truth["interactions"] for f in p["fields"]}
    assert min(heldout[f] for f in important) > max(heldout[f] for f in noise)  # the held-out side is sound


def test_weak_ranking_is_refused_in_one_line(trained_run: Path) -> None:
    """A 1-epoch AutoField on the tiny run ranks noise fields among its top 3: not deployed."""
    from ondevice.errors import WeakSignalError

    with pytest.raises(WeakSignalError, match="no field-selection signal, not deployed") as err:
        make_searcher("autofield", num_fields=3, **FAST).search(trained_run, _data(trained_run), 10**7)
    assert "\n" not in str(err.value) and err.value.exit_code == 2 and err.value.statistic > err.value.threshold


# ------------------------------------------------------------------ budget, export, compress, CLI
def test_budget_keeps_the_largest_selection_that_fits_and_exports(trained_run: Path, tmp_path: Path) -> None:
    ckpt, data = load_checkpoint(trained_run), _data(trained_run)
    full_file, full_params = measure_file_bytes(ckpt.model)
    acc = ByteAccountant(graph_overhead_bytes=full_file - full_params, first_order="keep")
    by_k = [acc.planned_file_bytes(select_model_fields(ckpt.model, list(range(k)))) for k in (1, 2, 3, 4)]
    budget = (by_k[1] + by_k[2]) // 2  # room for about two of the five fields
    result = make_searcher("autofield", first_order="keep", **FAST).search(ckpt, data, budget, accountant=acc)
    kept = result.config["_data"]["keep"]
    names = result.schema.field_names
    assert names == [data.schema.field_names[f] for f in kept] and result.bytes_estimate <= budget
    ranking = [data.schema.field_names.index(n) for n in result.trace[0]["ranking"]]
    k = len(kept)
    assert sorted(ranking[:k]) == kept  # the top-k by keep probability ...
    assert acc.planned_file_bytes(select_model_fields(ckpt.model, sorted(ranking[:k + 1]))) > budget  # ... largest k
    assert result.val["rows"] == len(data.split("val")) and 0.5 < result.val["auc"] <= 1.0

    out_ckpt = Checkpoint(model=result.model, schema=result.schema, train_config=ckpt.train_config)
    manifest = export_artefact(out_ckpt, tmp_path / "art", budget_bytes=budget)
    verify_artefact(tmp_path / "art", seed=0)
    assert [f["name"] for f in json.loads((tmp_path / "art" / "schema.json").read_text())["fields"]] == names
    assert [f["name"] for f in manifest["schema"]["fields"]] == names
    graph = onnx.load(str(tmp_path / "art" / "model.onnx")).graph
    assert graph.input[0].type.tensor_type.shape.dim[1].dim_value == len(kept)
    file_bytes = manifest["files"]["model.onnx"]["bytes"]
    dropped_tables = sum(ckpt.schema.vocab_sizes[f] for f in range(5) if f not in kept) * (16 + 1) * 4
    assert file_bytes <= budget and full_file - file_bytes >= dropped_tables


def test_a_top_field_that_does_not_fit_is_not_replaced_by_a_smaller_one(trained_run: Path) -> None:
    model, acc = load_checkpoint(trained_run).model, ByteAccountant(first_order="keep")
    small, big = (acc.planned_file_bytes(select_model_fields(model, [f])) for f in (4, 3))  # vocab 10 and 80
    budget = (small + big) // 2
    assert fit_ranked_fields(model, [3, 4, 0, 1, 2], acc, budget)[0] == []  # prefix: nothing fits
    keep, trace = fit_ranked_fields(model, [4, 3, 0, 1, 2], acc, budget)
    assert keep == [4] and [t["fits"] for t in trace] == [True, False]


def test_too_small_budget_names_the_minimum(trained_run: Path) -> None:
    with pytest.raises(BudgetTooSmallError, match="below the smallest model autofield") as err:
        make_searcher("autofield", **FAST).search(trained_run, _data(trained_run), 1_000)
    assert err.value.minimum_bytes > 1_000


def test_fp16_first_order_and_same_seed_same_result(trained_run: Path) -> None:
    ckpt, data = load_checkpoint(trained_run), _data(trained_run)
    # the 1-epoch ranking of this tiny run has no signal (see test_weak_ranking_is_refused): checked off here
    runs = [make_searcher("autofield", first_order="fp16", num_fields=3, signal_level=0, **FAST).search(ckpt, data, 10**7)
            for _ in range(2)]
    a, b = runs
    assert isinstance(a.model.linear, QuantizedEmbedding) and a.model.linear.num_fields == 3
    assert a.config["_data"]["first_order"] == "fp16" and a.val["rows"] == len(data.split("val"))
    assert a.config == b.config and a.val == b.val


def test_compress_method_autofield(trained_run: Path, tmp_path: Path) -> None:
    s = compress(trained_run, budgets=["12KB"], methods=["autofield"], out_dir=tmp_path / "c", epochs=1,
                 searcher_params={"autofield": {"batch_size": 256, "search_epochs": 1}}, profile=False, plot=False,
                 quiet=True)
    run = s["runs"][0]
    kept = run["config"]["_data"]["fields_kept"]
    assert run["fits"] and run["file_bytes"] <= 12_000 and 0 < len(kept) < 5
    schema = json.loads((tmp_path / "c" / run["folder"] / "schema.json").read_text())
    assert [f["name"] for f in schema["fields"]] == kept


def test_cli_writes_a_run_that_compress_takes(trained_run: Path, tmp_path: Path) -> None:
    _register_commands()
    runner = CliRunner()
    args = ["search", "features", str(trained_run), "--out", str(tmp_path / "sel"), "--keep", "2",
            "--epochs", "1", "--search-epochs", "1", "--method", "adafs"]
    weak = runner.invoke(cli, args)  # AdaFS ranks the noise field f3 over f0 here: refused in one line
    assert weak.exit_code == 2 and "no field-selection signal" in weak.output and not (tmp_path / "sel").exists()
    assert len(weak.output.strip().splitlines()) == 1, weak.output
    res = runner.invoke(cli, [*args, "--signal-level", "0"])
    assert res.exit_code == 0, res.output
    assert "adafs: kept 2 of 5 fields" in res.output
    info = json.loads((tmp_path / "sel" / "train.json").read_text())
    assert f"val AUC {info['val_before']['auc']:.4f} -> {info['val']['auc']:.4f}; " in res.output  # against the full model
    assert info["signal_check"] is None and "signal check off (--signal-level 0)" in res.output
    ckpt = load_checkpoint(tmp_path / "sel")
    assert ckpt.schema.field_names == info["fields_kept"] and len(info["fields_kept"]) == 2
    assert ckpt.model.num_fields == 2 and Path(info["data_dir"]) == Path(_data(trained_run).root).resolve()
    assert json.loads((tmp_path / "sel" / "search.json").read_text())["trace"][0]["fields_kept"] == info["fields_kept"]
    # the selected model's test metrics, as the other search commands write them (read on the kept columns)
    test = _data(trained_run).select_fields(_data(trained_run).schema.field_positions(info["fields_kept"])).split("test")
    assert info["test"] == pytest.approx(evaluate_ctr(ckpt.model, test.ids, test.labels))
    assert info["test"]["rows"] == len(test) and ckpt.metrics["test"] == info["test"]
    # compress reads the full data through the kept fields (train.json's fields_kept)
    s = compress(tmp_path / "sel", budgets=["1MB"], methods=["int8"], out_dir=tmp_path / "c", profile=False, plot=False,
                 quiet=True)
    assert s["runs"][0]["fits"] and s["full_model"]["val"]["rows"] == len(_data(trained_run).split("val"))
    bad = runner.invoke(cli, ["search", "features", str(trained_run), "--out", str(tmp_path / "x"), "--keep", "2",
                              "--budget", "10KB"])
    assert bad.exit_code == 2 and "error: give exactly one of --budget" in bad.output


def test_models_that_name_fields_themselves_are_refused_in_one_line() -> None:
    from ondevice.search.architecture.evolutionary import build_candidate

    net = build_candidate({"embed_dim": 4, "blocks": [{"type": "fm", "fields": [0, 1, 2]}]}, [5, 6, 7], seed=0)
    with pytest.raises(BadInputError, match="feature selection supports .*blocknet") as err:
        select_model_fields(net, [0, 2])
    assert "\n" not in str(err.value)


def test_a_selected_run_stays_selected_through_an_interaction_search(trained_run: Path, tmp_path: Path) -> None:
    """features -> interactions -> compress: the interaction run keeps the kept-field columns."""
    from ondevice.pipeline.search_runs import search_features, search_interactions
    from ondevice.search.interaction import AutoFISSearcher

    # the plumbing, not the rankings: both signal checks are off (their tiny 1-epoch searches fail them)
    selected = search_features(trained_run, tmp_path / "sel", keep=3, epochs=1, search_epochs=1, signal_level=0)
    search_interactions(tmp_path / "sel", tmp_path / "fis",
                        AutoFISSearcher(search_epochs=1, epochs=1, batch_size=256, test_level=0))
    info = json.loads((tmp_path / "fis" / "train.json").read_text())
    assert info["fields_kept"] == selected["fields_kept"]
    summary = compress(tmp_path / "fis", budgets=["1MB"], methods=["int8"], out_dir=tmp_path / "c", profile_runs=2,
                       quiet=True)
    assert summary["runs"][0]["file_bytes"] <= 1_000_000
