"""export -> verify round trips, OOV handling, budgets, atomicity and corrupt artefacts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from ondevice.embedding.base import _EMBEDDING_TYPES, embedding_from_spec
from ondevice.export import MANIFEST_KEYS, OPSET, export_artefact, verify_artefact
from ondevice.export.golden import bad_ids
from tests.export.conftest import CTR_MODELS, VOCAB, make_run


@pytest.mark.parametrize("name", [*CTR_MODELS, "bprmf"])
def test_export_verify_round_trip(name: str, exported, cli_runner) -> None:
    art = exported(name)
    m = json.loads((art / "manifest.json").read_text())
    assert set(MANIFEST_KEYS) <= set(m)
    assert m["opset"] == OPSET and m["versions"]["torch"] == torch.__version__
    assert sorted(p.name for p in art.iterdir()) == [".ondevice-output.json", "manifest.json", "model.onnx",
                                                     "reference_model.pt", "required_operators.config", "runner.py", "schema.json"]
    model = onnx.load(str(art / "model.onnx"))
    assert not any(onnx.external_data_helper.uses_external_data(t) for t in model.graph.initializer)
    inp = model.graph.input[0].type.tensor_type
    assert inp.shape.dim[0].dim_param == "batch"
    assert inp.elem_type == (onnx.TensorProto.INT64 if name != "bprmf" else onnx.TensorProto.FLOAT)
    assert m["mobile_usability"]["ran"] is True and m["mobile_usability"]["nnapi"] in ("YES", "MAYBE", "NO")
    assert {c["name"] for c in m["golden"]} >= {"batch1", "batch64"}
    result = cli_runner("verify", art)
    assert result.exit_code == 0, result.output
    assert "verified" in result.output
    v = json.loads((art / "verify.json").read_text())
    assert v["passed"] and any(c["name"] == "random_batch256" for c in v["cases"])
    assert json.loads((art / "manifest.json").read_text())["verify"]["passed"] is True


def test_ctr_outputs_are_probabilities_and_oov_ids_hit_row_zero(exported) -> None:
    art = exported("deepfm")
    sess = ort.InferenceSession(str(art / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    base = np.array([[int(rng.integers(1, v)) for v in VOCAB]], dtype=np.int64)
    for f, v in enumerate(VOCAB):
        zero = base.copy()
        zero[0, f] = 0
        expected = sess.run(None, {"ids": zero})[0]
        for bad in bad_ids(v):
            row = base.copy()
            row[0, f] = bad
            got = sess.run(None, {"ids": row})[0]
            np.testing.assert_array_equal(got, expected, err_msg=f"field {f} id {bad} did not map to the OOV row")
    p = sess.run(None, {"ids": np.repeat(base, 300, axis=0)})[0]
    assert p.shape == (300,) and p.dtype == np.float32 and np.all((p > 0) & (p < 1))


def test_topk_outputs(exported) -> None:
    art = exported("bprmf")
    m = json.loads((art / "manifest.json").read_text())
    sess = ort.InferenceSession(str(art / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    ids, scores = sess.run(None, {"user_vector": x, "exclude_items": np.zeros((3, 0), dtype=np.int64)})
    assert ids.dtype == np.int64 and ids.shape == (3, 20) and scores.shape == (3, 20)
    assert np.all(ids >= 1) and np.all(ids < 300) and np.all(np.diff(scores, axis=1) <= 0)
    assert m["storage"]["embedding_bytes"] == {"item_embedding": 300 * 8 * 4 + 16}  # user table stays on the server
    assert [i["name"] for i in m["inputs"]] == ["user_vector", "exclude_items"]
    assert {c["name"] for c in m["golden"]} >= {"batch1", "exclude_most"}


def test_topk_excluded_items_never_come_back(exported) -> None:
    """Seen items (with -1 padding and ids the graph ignores) never appear; the next best take their place."""
    art = exported("bprmf")
    sess = ort.InferenceSession(str(art / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    free_ids = sess.run(None, {"user_vector": x, "exclude_items": np.zeros((3, 0), dtype=np.int64)})[0]
    seen = np.concatenate([free_ids[:, :10], np.full((3, 4), -1), np.asarray([[0, 300, -5, 10**12]] * 3)], axis=1)
    seen[1, 5:10] = -1  # row 1 has seen only 5 of them
    ids, scores = sess.run(None, {"user_vector": x, "exclude_items": seen})
    for r in range(3):
        banned = set(seen[r][(seen[r] > 0) & (seen[r] < 300)].tolist())
        assert not banned & set(ids[r].tolist())
        assert ids[r, 0] == [i for i in free_ids[r] if i not in banned][0]  # the best unseen item leads
    most = np.setdiff1d(np.arange(1, 300), free_ids[0, :3])[None, :]  # all but three items seen
    ids, scores = sess.run(None, {"user_vector": x[:1], "exclude_items": most})
    assert sorted(ids[0, :3].tolist()) == sorted(free_ids[0, :3].tolist())
    assert np.all(ids[0, 3:] == -1) and np.all(np.isneginf(scores[0, 3:]))


def test_topk_table_per_call_on_request_and_refused_for_ort_at_load(tmp_path: Path, cli_runner) -> None:
    run = make_run(tmp_path / "run", "bprmf")
    m = export_artefact(run, tmp_path / "call", top_k=5, topk_table="call")
    assert m["topk"]["item_table"] == "decoded per call" and m["export_options"]["topk_table"] == "call"
    assert verify_artefact(tmp_path / "call")["passed"]
    result = cli_runner("export", run, "--out", tmp_path / "x", "--format", "ort", "--topk-table", "load")
    assert result.exit_code == 2 and "--topk-table load needs --format onnx" in result.output
    assert not (tmp_path / "x").exists()


def test_topk_ort_format_decodes_per_call_and_verifies(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", "bprmf")
    m = export_artefact(run, tmp_path / "art", top_k=5, format="ort")
    assert m["topk"]["item_table"] == "decoded per call"
    assert verify_artefact(tmp_path / "art")["passed"]
    sess = ort.InferenceSession(str(tmp_path / "art" / "model.ort"), providers=["CPUExecutionProvider"])
    ids, _ = sess.run(None, {"user_vector": np.ones((1, 8), np.float32), "exclude_items": np.asarray([[-1, 3]])})
    assert 3 not in ids[0].tolist() and ids.shape == (1, 5)


def test_topk_verify_cases_and_a_pre_exclude_artefact_refused_before_any_feed(exported, tmp_path: Path,
                                                                              monkeypatch) -> None:
    from ondevice.errors import ArtefactError
    from ondevice.export import golden
    from ondevice.export.lowering import export_module
    from ondevice.export.manifest import load_artefact, write_manifest

    art = exported("bprmf")
    names = [c["name"] for c in verify_artefact(art, seed=3, write=False)["cases"]]
    assert names.count("golden_exclude_most") == 1 and "exclude_most" not in names  # fresh cases: no second one
    model = load_artefact(art).load_reference_model().eval()
    module, _ = export_module(model, k=20)
    vectors = golden.fresh_inputs(model, 3, (1, 16))
    with_most = golden.topk_golden_feeds(module, vectors, ("u", "e"), 300, seed=3)
    without = golden.topk_golden_feeds(module, vectors, ("u", "e"), 300, seed=3, exclude_most=False)
    assert set(with_most) - set(without) == {"exclude_most"}
    for name, feeds in without.items():  # the other cases draw the same exclusions
        np.testing.assert_array_equal(feeds["e"], with_most[name]["e"])
    old = tmp_path / "old"
    shutil.copytree(art, old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["inputs"] = [i for i in manifest["inputs"] if i["name"] != "exclude_items"]
    write_manifest(old, manifest)

    def no_feeds(*_a, **_k):
        raise AssertionError("fresh feeds built for an artefact that is refused")

    monkeypatch.setattr(golden, "fresh_inputs", no_feeds)
    monkeypatch.setattr(golden, "topk_golden_feeds", no_feeds)
    with pytest.raises(ArtefactError, match="predates the exclude_items input; re-export it"):
        verify_artefact(old, write=False)


def test_topk_ties_verify(tmp_path: Path) -> None:
    from ondevice.train.checkpoint import load_checkpoint, save_checkpoint

    run = make_run(tmp_path / "run", "bprmf")
    ckpt = load_checkpoint(run)
    with torch.no_grad():
        ckpt.model.item_embedding.weight[:] = ckpt.model.item_embedding.weight[:1]  # every item ties
    save_checkpoint(run / "model.pt", ckpt.model, ckpt.schema)
    export_artefact(run, tmp_path / "art", top_k=5)
    assert verify_artefact(tmp_path / "art")["passed"]


def test_over_budget_exits_3_and_leaves_nothing(tmp_path: Path, cli_runner) -> None:
    run = make_run(tmp_path / "run", "deepfm")
    result = cli_runner("export", run, "--out", tmp_path / "art", "--budget", "10KB")
    assert result.exit_code == 3
    assert result.output.startswith("error: model.onnx is") and "over the budget of 10,000 B" in result.output
    assert result.output.count("\n") == 1
    assert not (tmp_path / "art").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no temp folder left either


def test_force_and_atomic_replace(tmp_path: Path, cli_runner) -> None:
    run = make_run(tmp_path / "run", "fm")
    out = tmp_path / "art"
    assert cli_runner("export", run, "--out", out, "--budget", "1MiB").exit_code == 0
    again = cli_runner("export", run, "--out", out)
    assert again.exit_code == 2 and "--force" in again.output
    before = (out / "manifest.json").read_text()
    failed = cli_runner("export", run, "--out", out, "--force", "--budget", "1KB")
    assert failed.exit_code == 3 and (out / "manifest.json").read_text() == before  # old artefact kept
    assert cli_runner("export", run, "--out", out, "--force", "--device-profile", "android-low").exit_code == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["device_profile"]["name"] == "android-low" and m["runtime_format"] == "ort"
    assert m["budget"]["bytes"] == 2_000_000 and m["budget"]["fits"] is True
    assert set(m["files"]) == {"model.onnx", "model.ort"}
    sess = ort.InferenceSession(str(out / "model.ort"), providers=["CPUExecutionProvider"])
    assert m["input_encoding"] == "raw"  # the default: the .ort file takes raw values too
    from ondevice.export._runner import runner_module

    assert sess.run(None, runner_module().make_inputs(m, 2, 0))[0].shape == (2,)


@pytest.mark.parametrize("damage", ["truncate", "flip", "schema", "manifest"])
def test_corrupt_artefact_exits_2(damage: str, exported, tmp_path: Path, cli_runner) -> None:
    art = tmp_path / "art"
    shutil.copytree(exported("widedeep"), art)
    model = art / "model.onnx"
    if damage == "truncate":
        model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
        expect = "truncated or modified"
    elif damage == "flip":
        data = bytearray(model.read_bytes())
        data[-100] ^= 0xFF
        model.write_bytes(bytes(data))
        expect = "sha256"
    elif damage == "schema":
        schema = json.loads((art / "schema.json").read_text())
        schema["fields"][0]["vocab_size"] += 1
        (art / "schema.json").write_text(json.dumps(schema))
        expect = "fingerprint"
    else:
        (art / "manifest.json").write_text("{not json")
        expect = "not valid JSON"
    for cmd in (("verify", art), ("profile", art, "--runs", "1"), ("report", art)):
        result = cli_runner(*cmd)
        assert result.exit_code == 2, result.output
        assert result.output.startswith("error: ") and expect in result.output and result.output.count("\n") == 1


# Constructor arguments for layer types whose ``from_dense`` needs a compression setting.
_FROM_DENSE_ARGS = {
    "hashed": lambda d: {"buckets": [max(2, v // 2) for v in d.vocab_sizes]},
    "mixed_dim": lambda d: {"dims": [max(1, d.dim // 2)] * d.num_fields},
    "row_pruned": lambda d: {"keep": torch.rand(sum(d.vocab_sizes)) < 0.6},
}


# Layer types that hold one field (RULE's elastic item tables): exported in a BPR-MF artefact.
_ITEM_ONLY = {"elastic_blocks", "elastic_subset"}


def _check_item_only_overhead(tmp_path: Path, type_name: str) -> None:
    import numpy as np

    from ondevice.embedding import DenseEmbedding, ElasticBlockEmbedding
    from ondevice.models import BPRMF
    from ondevice.schema import Field, Schema
    from ondevice.train.checkpoint import Checkpoint

    items, users = 20_000, 50
    layer = ElasticBlockEmbedding.from_dense(DenseEmbedding([items], 16), np.arange(items)[::-1], n_blocks=4, n_groups=5)
    mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]], dtype=bool)
    if type_name == "elastic_subset":
        layer = layer.deploy(mask, dtype="int8")
    schema = Schema(task="topk", fields=[Field(name="user", vocab_size=users, encoding="identity", role="user"),
                                         Field(name="item", vocab_size=items, encoding="identity", role="item")])
    model = BPRMF(DenseEmbedding([users], 16), layer).eval()
    m = export_artefact(Checkpoint(model=model, schema=schema), tmp_path / f"art-{type_name}", check_mobile=False)
    s = m["storage"]
    assert s["file_bytes"] >= 100_000, (type_name, s)
    assert s["embedding_bytes"]["item_embedding"] == layer.to_deployable().storage_bytes()
    assert 0 <= s["graph_overhead_ratio"] <= 0.03, (type_name, s)
    assert verify_artefact(tmp_path / f"art-{type_name}")["passed"]


@pytest.mark.parametrize("table", ["load", "call"])
@pytest.mark.parametrize("mask", [[[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0]],    # used dims a prefix: Slice
                                  [[1, 0, 1, 0], [0, 0, 1, 0], [1, 0, 0, 0]]])   # blocks 0 and 2: Gather
def test_elastic_table_is_scored_in_its_used_dims_only(tmp_path: Path, mask: list[list[int]], table: str) -> None:
    """RULE's deployed table leaves some blocks zero for every item. Folded at load, the artefact
    decodes only the used dims and scores the matching slice of the user vector; decoded per call,
    each subset table is scored against its own dims. Both give PyTorch's top-K and scores."""
    from ondevice.embedding import DenseEmbedding, ElasticBlockEmbedding
    from ondevice.models import BPRMF
    from ondevice.schema import Field, Schema
    from ondevice.train.checkpoint import Checkpoint

    torch.manual_seed(0)
    items, users = 600, 30
    layer = ElasticBlockEmbedding.from_dense(DenseEmbedding([items], 16, init_std=0.3), np.arange(items)[::-1],
                                             n_blocks=4, n_groups=3)
    layer = layer.deploy(np.array(mask, dtype=bool))
    assert len(layer.used_dims()) == 8 < 16
    schema = Schema(task="topk", fields=[Field(name="user", vocab_size=users, encoding="identity", role="user"),
                                         Field(name="item", vocab_size=items, encoding="identity", role="item")])
    model = BPRMF(DenseEmbedding([users], 16, init_std=0.3), layer).eval()
    art = tmp_path / "art"
    manifest = export_artefact(Checkpoint(model=model, schema=schema), art, check_mobile=False, topk_table=table)
    assert verify_artefact(art)["passed"]
    assert manifest["topk"]["resident_item_table_bytes"] == items * 8 * 4  # the used dims only
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    sess = ort.InferenceSession(str(art / "model.onnx"), so, providers=["CPUExecutionProvider"])
    folded = [list(i.dims) for i in onnx.load(str(tmp_path / "opt.onnx")).graph.initializer if len(i.dims) == 2]
    if table == "load":
        assert folded == [[8, items]]  # the folded item table holds the used dims only (was [16, items])
    else:  # per call: one MatMul per distinct subset, against the stored rows (no [D, N] table)
        matmuls = [n for n in onnx.load(str(art / "model.onnx")).graph.node if n.op_type in ("MatMul", "Gemm")]
        assert len(matmuls) == len({tuple(r) for r in mask}) and items not in {d for dims in folded for d in dims}
    user = torch.randn(5, 16)
    ids, scores = sess.run(None, {"user_vector": user.numpy(), "exclude_items": np.zeros((5, 0), dtype=np.int64)})
    want = user @ layer.dense_weight().t()  # every item's score in PyTorch, all 16 dims
    want[:, 0] = float("-inf")
    top = torch.topk(want, ids.shape[1], dim=1)
    np.testing.assert_allclose(scores, top.values.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ids, top.indices.numpy())


def test_overhead_at_most_3_percent_for_every_layer_type(tmp_path: Path) -> None:
    """File bytes = distinct stored tensors (Σ storage_bytes() + MLP) + small graph overhead, >= 100 KB models."""
    from ondevice.embedding import DenseEmbedding
    from ondevice.models import DeepFM
    from ondevice.train.checkpoint import load_checkpoint, save_checkpoint

    vocab = [2000, 1500, 1000, 800, 700]
    tried, skipped = [], []
    for type_name, cls in sorted(_EMBEDDING_TYPES.items()):
        torch.manual_seed(0)
        if type_name in _ITEM_ONLY:  # one-field item tables: checked inside a BPR-MF artefact
            _check_item_only_overhead(tmp_path, type_name)
            tried.append(type_name)
            continue
        try:
            if hasattr(cls, "from_dense"):
                extra = _FROM_DENSE_ARGS.get(type_name, lambda d: {})
                d16, d1 = DenseEmbedding(vocab, 16), DenseEmbedding(vocab, 1, init_std=0.1)
                emb, lin = cls.from_dense(d16, **extra(d16)), cls.from_dense(d1, **extra(d1))
            else:
                emb = embedding_from_spec({"type": type_name, "vocab_sizes": vocab, "dim": 16})
                lin = embedding_from_spec({"type": type_name, "vocab_sizes": vocab, "dim": 1})
        except Exception:  # noqa: BLE001 - types needing more arguments are covered by their owners' tests
            skipped.append(type_name)
            continue
        run = make_run(tmp_path / f"run-{type_name}", "deepfm", vocab=vocab, dim=16, mlp_dims=(64, 32))
        ckpt = load_checkpoint(run)
        save_checkpoint(run / "model.pt", DeepFM(emb, lin, mlp_dims=[64, 32]).eval(), ckpt.schema)
        m = export_artefact(run, tmp_path / f"art-{type_name}", check_mobile=False)
        s = m["storage"]
        assert s["file_bytes"] >= 100_000, (type_name, s)
        assert s["embedding_bytes"]["embedding"] == emb.to_deployable().storage_bytes()
        assert 0 <= s["graph_overhead_ratio"] <= 0.03, (type_name, s)
        assert verify_artefact(tmp_path / f"art-{type_name}")["passed"]
        tried.append(type_name)
    assert {"dense", "quantized"} <= set(tried) or tried == ["dense"], (tried, skipped)
    assert not skipped, f"layer types not exported by this test: {skipped}"
