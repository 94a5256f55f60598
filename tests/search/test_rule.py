"""RULE (``ondevice/search/embedding/rule.py``), its elastic layer and the shared evolution loop."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ondevice.data import EncodedDataset
from ondevice.embedding import DenseEmbedding, ElasticBlockEmbedding, ElasticSubsetEmbedding
from ondevice.embedding.elastic import config_bytes, popularity_groups
from ondevice.errors import BadInputError, BudgetTooSmallError
from ondevice.export import export_artefact, verify_artefact
from ondevice.models import BPRMF
from ondevice.pipeline.measure import measure_file_bytes
from ondevice.search import ByteAccountant, make_searcher
from ondevice.search.evolution import regularized_evolution
from ondevice.train.checkpoint import Checkpoint, load_checkpoint
from tests.topk_runs import pretrained_topk_run

FAST = {"n_blocks": 4, "n_groups": 4, "epochs": 3, "lr": 5e-3, "batch_size": 512, "n_samples": 150, "finetune_epochs": 0,
        "eval_users": None, "cycles": 300}


@pytest.fixture(scope="module")
def topk_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pretrained_topk_run(tmp_path_factory.mktemp("rule_run"))


@pytest.fixture(scope="module")
def setting(topk_run: Path):
    ckpt = load_checkpoint(topk_run)
    data = EncodedDataset(json.loads((topk_run / "train.json").read_text())["data_dir"])
    file_bytes, params = measure_file_bytes(ckpt.model)
    return ckpt, data, ByteAccountant(graph_overhead_bytes=file_bytes - params), file_bytes


# ---------------------------------------------------------------------- the elastic layer
def _elastic(n: int = 301, dim: int = 16, n_blocks: int = 4, n_groups: int = 5, seed: int = 0) -> ElasticBlockEmbedding:
    torch.manual_seed(seed)
    counts = np.random.default_rng(seed).integers(0, 40, size=n)
    return ElasticBlockEmbedding.from_dense(DenseEmbedding([n], dim, init_std=0.1), counts, n_blocks=n_blocks,
                                            n_groups=n_groups)


def test_popularity_groups_sort_by_count() -> None:
    group, sizes = popularity_groups([5, 0, 9, 9, 1, 3, 7], 3)
    assert sizes == [3, 2, 2]
    assert list(group) == [1, 2, 0, 0, 2, 1, 0]  # 9, 9, 7 | 5, 3 | 1, 0


def test_subset_layer_matches_training_form_and_counts_bytes() -> None:
    layer = _elastic()
    mask = np.zeros((5, 4), dtype=bool)
    mask[0] = True
    mask[1, [0, 2]] = True
    mask[2, [0, 2]] = True  # same subset as group 1: one shared table
    mask[3, 3] = True
    mask[4, 1] = True
    sub = layer.deploy(mask)
    layer.set_config(mask)
    torch.testing.assert_close(sub.dense_weight(), layer.dense_weight(), rtol=0, atol=0)
    assert len(sub.tables) == 4
    for dtype in ("float32", "float16", "int8"):
        s = layer.deploy(mask, dtype=dtype)
        assert s.storage_bytes() == config_bytes(layer.group_sizes, mask, 16, dtype) == \
            ElasticSubsetEmbedding.expected_bytes(layer.group_sizes, mask, 16, dtype)
    # RULE's accounting: Σ items × d_b × 4 over the pairs, + int16 positions, 3 block indices, vocab size.
    values = sum(layer.group_sizes[g] * 4 * 4 * int(mask[g].sum()) for g in range(5))
    assert sub.storage_bytes() == values + 301 * 2 + 3 * 8 * 4 + 8


def test_subset_layer_oov_and_spec_roundtrip() -> None:
    from ondevice.embedding import embedding_from_spec

    layer = _elastic()
    mask = np.ones((5, 4), dtype=bool)
    mask[2:, 1:] = False
    sub = layer.deploy(mask, dtype="int8")
    ids = torch.tensor([[0], [-1], [301], [5]])
    out = sub(ids)
    torch.testing.assert_close(out[1], out[0])
    torch.testing.assert_close(out[2], out[0])
    twin = embedding_from_spec(sub.spec())
    twin.load_state_dict(sub.state_dict())
    torch.testing.assert_close(twin(ids), out)


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_elastic_artefact_bytes_match_and_verify(tmp_path: Path, topk_run: Path, dtype: str) -> None:
    ckpt = load_checkpoint(topk_run)
    full: BPRMF = ckpt.model  # type: ignore[assignment]
    data = EncodedDataset(json.loads((topk_run / "train.json").read_text())["data_dir"])
    counts = np.bincount(np.asarray(data.split("train").ids)[:, 1], minlength=full.num_items)
    layer = ElasticBlockEmbedding.from_dense(full.item_embedding, counts, n_blocks=4, n_groups=4)
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]], dtype=bool)
    model = BPRMF(full.user_embedding, layer.deploy(mask, dtype=dtype))
    manifest = export_artefact(Checkpoint(model=model, schema=ckpt.schema, train_config=ckpt.train_config),
                               tmp_path / "art", budget_bytes=10**6)
    assert manifest["storage"]["parameter_bytes"] == model.item_embedding.storage_bytes()
    assert manifest["storage"]["embedding_bytes"]["item_embedding"] == config_bytes(layer.group_sizes, mask, 16, dtype)
    assert verify_artefact(tmp_path / "art")["passed"] is True


# ---------------------------------------------------------------------- evolution
def test_regularized_evolution_solves_onemax_reproducibly() -> None:
    def run(seed: int):
        return regularized_evolution(
            init=lambda rng: rng.random(20) < 0.2,
            mutate=lambda p, rng: np.where(np.arange(20) == rng.integers(20), ~p, p),
            fitness=lambda x: float(x.sum()), population=10, cycles=400, tournament=3, seed=seed)

    a, b = run(1), run(1)
    assert a.best_fitness >= 18.0 > a.history[0]["best_fitness"] and a.evaluations == 410
    assert [h["best_fitness"] for h in a.history] == [h["best_fitness"] for h in b.history]
    with pytest.raises(BadInputError, match="tournament"):
        regularized_evolution(init=lambda r: 0, mutate=lambda p, r: p, fitness=float, population=2, tournament=3)


# ---------------------------------------------------------------------- the searcher
@pytest.fixture(scope="module")
def rule_results(setting):
    ckpt, data, acc, full_bytes = setting
    budgets = [int(full_bytes * f) for f in (0.6, 0.75, 0.9)]
    searcher = make_searcher("rule", **FAST)
    return budgets, [searcher.clone().search(ckpt, data, b, accountant=acc) for b in budgets]


def test_rule_never_exceeds_budget(rule_results) -> None:
    budgets, results = rule_results
    for budget, r in zip(budgets, results, strict=True):
        file_bytes, _ = measure_file_bytes(r.model)
        assert file_bytes <= budget
        assert r.bytes_estimate <= budget
        assert all(len(b) >= 1 for b in r.config["_data"]["blocks"])  # never an empty subset
    pairs = [r.trace[1]["pairs"] for r in results]
    assert pairs == sorted(pairs) and pairs[0] < pairs[-1]  # a larger budget searches more blocks


def test_rule_deployed_metric_never_falls_with_the_budget(rule_results) -> None:
    """A larger budget falls back to a smaller budget's configuration when that scores better (issue 17)."""
    _, results = rule_results
    vals = [r.val["recall@20"] for r in results]
    assert vals == sorted(vals), vals
    for r in results[1:]:
        deployed = r.trace[2]["deployed"]
        assert {c["source"] for c in deployed["candidates"]} >= {"searched", "earlier budget"}
        best = max(c["recall@20"] for c in deployed["candidates"])
        assert r.val["recall@20"] == pytest.approx(best)


def test_rule_spends_more_blocks_on_popular_groups(rule_results) -> None:
    _, results = rule_results
    for r in results[:2]:  # budgets where a choice must be made
        per_group = r.trace[1]["blocks_per_group"]
        assert per_group[0] >= max(per_group[2:]) and per_group[0] > min(per_group), per_group


def test_rule_estimator_beats_a_constant(rule_results) -> None:
    _, results = rule_results
    stats = results[0].trace[0]["supernet"]["estimator_heldout"]
    assert stats["mse"] < stats["mse_constant"]
    assert stats["spearman"] > 0.5


def test_rule_trains_once_for_all_budgets(rule_results) -> None:
    _, results = rule_results
    assert results[0].timings["supernet_s"] > results[1].timings["supernet_s"]
    assert results[1].timings["supernet_s"] < 0.5 and results[2].timings["search_s"] < 10


def test_rule_minimum_budget_and_task_checks(setting, trained_run: Path) -> None:
    ckpt, data, acc, _ = setting
    with pytest.raises(BudgetTooSmallError, match="smallest model rule can build"):
        make_searcher("rule", **FAST).search(ckpt, data, 3000, accountant=acc)
    with pytest.raises(BadInputError, match="top-K"):
        make_searcher("rule", **FAST).search(trained_run, EncodedDataset(
            json.loads((trained_run / "train.json").read_text())["data_dir"]), 10**6)
    with pytest.raises(BadInputError, match="for top-K models use --method"):
        make_searcher("sseds").search(ckpt, data, 10**6)


# ---------------------------------------------------------------------- issue 17: signal, full model, cache
def test_weak_estimator_is_not_deployed(setting) -> None:
    from ondevice.errors import WeakSignalError

    ckpt, data, acc, full_bytes = setting
    strict = {**FAST, "min_estimator_rho": 0.999}  # no estimator reaches it: the signal check fails
    with pytest.raises(WeakSignalError, match="rule: the performance estimator ranks held-out configurations") as err:
        make_searcher("rule", **strict, nested_candidates=False).search(ckpt, data, int(full_bytes * 0.75), accountant=acc)
    assert "\n" not in str(err.value) and err.value.threshold == 0.999
    # with nested candidates the evolution's pick is left out; a nested configuration is deployed
    r = make_searcher("rule", **strict).search(ckpt, data, int(full_bytes * 0.75), accountant=acc)
    picked = r.trace[2]["picked"]
    assert "evolution" not in picked["scored"] and picked["evolution_dropped"] and picked["source"].startswith("nested")
    assert r.trace[2]["estimator_signal"]["passed"] is False
    assert r.warnings and "evolutionary pick was dropped" in r.warnings[0]  # the fallback is said aloud


def test_rule_never_deploys_more_than_the_full_model_unless_better(setting) -> None:
    ckpt, data, acc, full_bytes = setting
    results = [make_searcher("rule", **FAST).clone().search(ckpt, data, b, accountant=acc)
               for b in (int(full_bytes * 1.5), 4 * full_bytes)]
    full_val = results[0].trace[2]["deployed"]["candidates"][-1]
    assert full_val["source"] == "full model"
    for r in results:
        file_bytes, _ = measure_file_bytes(r.model)
        assert file_bytes <= full_bytes or r.val["recall@20"] > full_val["recall@20"], (file_bytes, full_bytes)
        assert r.trace[2]["deployed"]["full_model_fits"]
    assert results[0].val == results[1].val  # same choice at both budgets


def test_fleet_profiles_with_one_configuration_share_one_finetune(setting) -> None:
    ckpt, data, acc, full_bytes = setting
    searcher = make_searcher("rule", **{**FAST, "finetune_epochs": 1, "seed": 3})  # its own registry entries
    first, second = (searcher.clone().search(ckpt, data, int(full_bytes * 0.8), accountant=acc) for _ in range(2))
    assert first.config == second.config and first.val == second.val
    assert first.timings["retrain_s"] > 0 and second.timings["retrain_s"] == 0.0
    assert second.trace[-1]["finetune"].startswith("shared")


def test_supernet_is_cached_beside_the_run_and_reused_by_a_later_compress(tmp_path: Path, capsys) -> None:
    from ondevice.pipeline.compress import compress
    from ondevice.search.embedding import rule

    run = pretrained_topk_run(tmp_path / "r")
    kw = {"methods": ["rule"], "profile": False, "plot": False, "quiet": True,
          "searcher_params": {"rule": {**FAST, "seed": 5}}}
    full_bytes, _ = measure_file_bytes(load_checkpoint(run).model)
    budget = int(full_bytes * 0.75)
    a = compress(run, budgets=[budget], out_dir=tmp_path / "a", **{**kw, "quiet": False})
    cached = sorted((run / "_cache" / "rule").glob("supernet-*.pt"))
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("  rule: ")]
    stats = json.loads((tmp_path / "a" / a["runs"][0]["folder"] / "search.json").read_text())["trace"][0]["supernet"]
    took = stats["train_s"] + stats["score_samples_s"] + stats["estimator_s"]
    assert said == [f"  rule: supernet trained in {took:.1f} s, cached as {cached[0]}"]  # compress says which
    assert len(cached) == 1 and not (tmp_path / "a" / "_cache").exists()
    assert not list((run / "_cache" / "rule").glob(".*tmp"))  # written atomically: no temp file left
    rule._CACHE.clear()  # a new process: only the file remains
    b = compress(run, budgets=[budget, budget + 1000], out_dir=tmp_path / "b", **{**kw, "quiet": False})
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("  rule: ")]
    assert said == [f"  rule: supernet reused from {cached[0]}, skipping {took:.1f} s of training",
                    f"  rule: supernet reused from memory, skipping {took:.1f} s of training"]
    ta, tb = a["runs"][0]["timings"], b["runs"][0]["timings"]
    assert tb["supernet_s"] < ta["supernet_s"] / 3
    assert a["runs"][0]["config"] == b["runs"][0]["config"] and a["runs"][0]["val"] == b["runs"][0]["val"]
    search = json.loads((tmp_path / "b" / b["runs"][0]["folder"] / "search.json").read_text())
    assert search["trace"][0]["supernet"]["loaded_from"] == str(cached[0])
    # another checkpoint in the same folder (a different checksum) does not reuse it
    ckpt = load_checkpoint(run)
    with torch.no_grad():
        ckpt.model.item_embedding.weight.mul_(1.01)
    from ondevice.train.checkpoint import save_checkpoint

    save_checkpoint(run / "model.pt", ckpt.model, ckpt.schema, train_config=ckpt.train_config, metrics=ckpt.metrics)
    rule._CACHE.clear()
    compress(run, budgets=[budget], out_dir=tmp_path / "c", **kw)
    assert len(list((run / "_cache" / "rule").glob("supernet-*.pt"))) == 2
    assert "rule:" not in capsys.readouterr().err  # --quiet: no line


# ---------------------------------------------------------------------- per-budget fine-tuning (step 4)
@pytest.fixture(scope="module")
def finetuned(setting, rule_results):
    ckpt, data, acc, _ = setting
    budgets, plain = rule_results
    searcher = make_searcher("rule", **{**FAST, "finetune_epochs": 2, "finetune_lr": 5e-3})
    return budgets[0], plain[0], searcher.search(ckpt, data, budgets[0], accountant=acc)


def test_rule_finetune_keeps_the_searched_config_and_never_loses_on_val(finetuned) -> None:
    budget, plain, tuned = finetuned
    assert tuned.config["_data"]["blocks"] == plain.config["_data"]["blocks"]  # same supernet, same search
    assert tuned.val["recall@20"] >= plain.val["recall@20"]  # epoch 0 competes in the selection
    ft = tuned.trace[-1]
    assert ft["val_before"]["recall@20"] == pytest.approx(plain.val["recall@20"], abs=1e-12)
    assert len(ft["finetune"]) >= 1 and tuned.timings["retrain_s"] > 0 and plain.timings["retrain_s"] == 0.0
    assert measure_file_bytes(tuned.model)[0] <= budget


def test_rule_finetuned_model_deploys_exactly(finetuned, setting, tmp_path: Path) -> None:
    from ondevice.embedding import embedding_from_spec
    from ondevice.search.embedding.rule import finetune_config
    from ondevice.search.retrain import val_metrics

    _, plain, tuned = finetuned
    ckpt, data, _, _ = setting
    sub = tuned.model.item_embedding
    twin = embedding_from_spec(sub.spec())  # spec/state round trip of the fine-tuned subset layer
    twin.load_state_dict(sub.state_dict())
    torch.testing.assert_close(twin.dense_weight(), sub.dense_weight(), rtol=0, atol=0)
    assert not torch.equal(sub.dense_weight(), plain.model.item_embedding.dense_weight())  # it did train
    # The training form, fine-tuned again from the cached supernet, is the deployed model, value for value.
    from ondevice.search.embedding.rule import _CACHE

    net = next(iter(_CACHE.values()))
    mask = sub.mask
    again = finetune_config(net.model, mask, data, epochs=2, lr=5e-3, batch_size=512, l2=1e-4, patience=2, k=20, seed=0)
    torch.testing.assert_close(again.model.item_embedding.dense_weight(), sub.dense_weight(), rtol=0, atol=0)
    torch.testing.assert_close(again.model.user_embedding.dense_weight(), tuned.model.user_embedding.dense_weight(),
                               rtol=0, atol=0)
    assert val_metrics(again.model, data)["recall@20"] == pytest.approx(tuned.val["recall@20"], abs=1e-12)
    export_artefact(Checkpoint(model=tuned.model, schema=ckpt.schema, train_config=ckpt.train_config),
                    tmp_path / "art", budget_bytes=10**6)
    assert verify_artefact(tmp_path / "art")["passed"] is True


def test_nested_configs_are_graded_prefixes_that_fit() -> None:
    from ondevice.search.embedding.rule import nested_configs

    sizes = [50] * 5
    def fits(m: np.ndarray) -> bool:
        return config_bytes(sizes, m, 16) <= 6000
    configs = nested_configs(sizes, 4, fits)
    assert len(configs) >= 2
    for _, mask in configs:
        lengths = mask.sum(1)
        assert fits(mask) and lengths.min() >= 1
        assert all(mask[g, :n].all() and not mask[g, n:].any() for g, n in enumerate(lengths))  # leading blocks
        assert list(lengths) == sorted(lengths, reverse=True)  # popular groups keep at least as many
    assert configs[0][0] == "nested tilt 0" and len(set(configs[0][1].sum(1))) == 1  # tilt 0: uniform
    assert nested_configs(sizes, 4, lambda m: False) == []


def test_rule_picks_the_best_scored_candidate(rule_results) -> None:
    _, results = rule_results
    for r in results:
        picked = r.trace[2]["picked"]
        assert picked["scored"][picked["source"]] == max(picked["scored"].values())
        assert "evolution" in picked["scored"]


def test_positions_above_32767_items_stay_int16_and_export(tmp_path: Path) -> None:
    """32,768..65,535 items: 2 B per position (int16, rows >= 32,768 wrapped), decoded in the graph."""
    import onnxruntime as ort

    layer = _elastic(n=40_001, dim=8, n_blocks=2, n_groups=3)
    mask = np.array([[1, 1], [1, 0], [0, 1]], dtype=bool)
    sub = layer.deploy(mask)
    layer.set_config(mask)
    assert sub.position.dtype == torch.int16 and int(sub.position.min()) < 0  # wrapped rows are stored
    torch.testing.assert_close(sub.dense_weight(), layer.dense_weight(), rtol=0, atol=0)
    assert sub.storage_bytes() == config_bytes(layer.group_sizes, mask, 8)

    class Lookup(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.sub = sub

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.sub(ids)

    ids = torch.tensor([[0], [1], [32_767], [32_768], [40_000], [40_001], [-3], [12_345]])
    path = tmp_path / "lookup.onnx"
    torch.onnx.export(Lookup(), (ids,), str(path), input_names=["ids"], output_names=["v"],
                      dynamic_axes={"ids": {0: "b"}}, opset_version=17, dynamo=False)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"ids": ids.numpy()})[0]
    np.testing.assert_allclose(got, sub(ids).detach().numpy(), rtol=0, atol=0)


# ---------------------------------------------------------------------- PEP on the item table (issue 5's baseline)
def test_pep_prunes_the_item_table_of_bprmf_and_the_artefact_verifies(setting, tmp_path: Path) -> None:
    from ondevice.embedding import MaskedEmbedding
    from ondevice.export import export_artefact, verify_artefact
    from ondevice.train.checkpoint import Checkpoint

    ckpt, data, acc, full_bytes = setting
    budget = full_bytes // 3
    result = make_searcher("pep", epochs=2, lr=5e-3, batch_size=512, search_epochs=4, threshold_lr=5e-2).search(
        ckpt, data, budget, accountant=acc)
    layer = result.model.item_embedding
    assert isinstance(layer, MaskedEmbedding) and result.metric == "recall@20"
    assert int(layer.mask.sum()) == result.config["_data"]["mask_nnz"] < layer.mask.numel()
    assert torch.all(layer.dense_weight()[~layer.mask] == 0)
    assert result.model.user_embedding.dense_weight().ne(0).all()  # the user table (server side) stays dense
    assert measure_file_bytes(result.model)[0] <= budget
    assert result.val["recall@20"] > 0.05  # far above random (20 of 1,000 items)
    out = Checkpoint(model=result.model, schema=ckpt.schema, train_config=ckpt.train_config, metrics={}, path=ckpt.path)
    export_artefact(out, tmp_path / "art", budget_bytes=budget)
    assert verify_artefact(tmp_path / "art")["passed"]


def test_a_time_limit_stops_the_estimator_samples_and_the_supernet_is_not_cached(setting, tmp_path: Path) -> None:
    from ondevice.search.embedding import rule
    from ondevice.search.retrain import deadline

    ckpt, data, acc, full_bytes = setting
    searcher = make_searcher("rule", **{**FAST, "epochs": 1, "seed": 11, "finetune_epochs": 1})
    rule._CACHE.clear()
    cache = Path(ckpt.path).parent / "_cache" / "rule"
    before = set(cache.glob("supernet-*.pt"))
    with deadline(0.0):  # already past: training stops at its first step, scoring after the minimum
        r = searcher.search(ckpt, data, int(full_bytes * 0.75), accountant=acc, work_dir=tmp_path)
    stats = r.trace[0]["supernet"]
    assert stats["stopped_at_deadline"] and stats["n_samples"] == rule.MIN_SAMPLES_AT_DEADLINE
    assert stats["not_saved"] == "stopped at the time limit" and set(cache.glob("supernet-*.pt")) == before
    signal = r.trace[2]["estimator_signal"]
    assert signal["passed"] is False and "time limit" in signal["reason"]
    assert r.warnings and "stopped at the time limit" in r.warnings[0]
    assert r.trace[-1] == {"finetune": "skipped: past the time limit"} and r.timings["retrain_s"] == 0.0
    assert measure_file_bytes(r.model)[0] <= int(full_bytes * 0.75)  # still a valid model within the budget
    rule._CACHE.clear()


def test_rule_declares_its_sample_scoring_to_auto_until_the_supernet_is_cached(setting) -> None:
    from ondevice.search.embedding import rule

    ckpt, data, acc, full_bytes = setting
    searcher = make_searcher("rule", **{**FAST, "seed": 13})
    rule._CACHE.clear()
    fresh = searcher.expected_validation_passes(ckpt, data)
    assert fresh >= FAST["n_samples"]  # eval_users=None: every sample is a full validation pass
    searcher.search(ckpt, data, int(full_bytes * 0.75), accountant=acc)
    cached = searcher.expected_validation_passes(ckpt, data)
    assert cached == fresh - FAST["n_samples"] and cached < 10
    assert make_searcher("uniform").expected_validation_passes(ckpt, data) == 0.0
    rule._CACHE.clear()
