"""``--mlp int8``: dense layers stored as int8 weights with per-row scales.

The layer quantizes exactly as documented, the exported file holds int8 initializers and
runs the fp32 Gemm with bit-identical weights in onnxruntime, checkpoints rebuild it, and
``compress --mlp auto`` reaches budgets the fp32 MLP cannot (``--mlp fp32`` refuses them).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from ondevice.errors import BadInputError, BudgetTooSmallError
from ondevice.export import export_artefact, verify_artefact
from ondevice.models import build_model, model_from_description
from ondevice.models.int8_linear import (
    Int8Linear,
    int8_linear_bytes,
    quantizable_linears,
    quantize_dense_layers_,
)
from ondevice.models.narrow_mlp import can_narrow, narrow_mlp_, neuron_scores
from ondevice.pipeline.compress import compress
from ondevice.search import ByteAccountant, make_searcher
from ondevice.train import TrainConfig, load_checkpoint, train
from tests.conftest import make_ctr


@pytest.fixture(scope="module")
def wide_mlp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DeepFM whose MLP (80-128-128-1, 108 KB fp32) is most of the file, as in a Frappe-size model."""
    root = tmp_path_factory.mktemp("int8_mlp")
    cfg = TrainConfig(model="deepfm", embed_dim=16, mlp_dims=[128, 128], epochs=3, batch_size=256, lr=5e-3, patience=2)
    train(make_ctr(root / "data"), root / "run", cfg, quiet=True)
    return root / "run"


def test_int8_linear_quantizes_per_row_and_counts_its_bytes() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(30, 7)
    with torch.no_grad():
        lin.weight[3] = 0.0  # an all-zero row keeps scale 1 and exact zeros
    q = Int8Linear.from_linear(lin)
    w = lin.weight.detach()
    scale = w.abs().amax(dim=1) / 127
    assert torch.equal(q.scale[3], torch.tensor(1.0)) and torch.all(q.weight_q[3] == 0)
    err = (q.dequantized_weight() - w).abs()
    rows = [r for r in range(7) if r != 3]
    assert torch.all(err[rows] <= scale[rows].unsqueeze(1) / 2 + 1e-7)  # round to nearest
    assert int(q.weight_q.abs().max()) == 127  # the largest |w| of a row maps to ±127
    assert q.storage_bytes() == int8_linear_bytes(30, 7) == 7 * 30 + 8 * 7
    assert q.storage_bytes() == sum(t.numel() * t.element_size() for t in q.state_dict().values())
    x = torch.randn(5, 30)
    torch.testing.assert_close(q(x), x @ q.dequantized_weight().T + lin.bias, rtol=0, atol=1e-6)


def test_quantizable_linears_skip_embedding_layers_and_rebuild_from_description() -> None:
    model = build_model("deepfm", [5, 6, 7], embed_dim=4, mlp_dims=(8, 8))
    names = quantizable_linears(model)
    assert names == ["mlp.0", "mlp.2", "mlp.4"]
    quantize_dense_layers_(model)
    desc = model.describe()
    assert desc["int8_linears"] == names
    twin = model_from_description(json.loads(json.dumps(desc)))
    twin.load_state_dict(model.state_dict())
    ids = torch.randint(0, 5, (9, 3))
    model.eval(), twin.eval()
    with torch.no_grad():
        assert torch.equal(twin(ids), model(ids))


def test_accountant_counts_the_int8_form() -> None:
    model = build_model("deepfm", [50, 60], embed_dim=8, mlp_dims=(64, 32))
    fp32, int8 = ByteAccountant(mlp="fp32"), ByteAccountant(mlp="int8")
    mlp_fp32 = fp32.fixed_parts(model)["mlp"]
    mlp_int8 = int8.fixed_parts(model)["mlp"]
    assert mlp_fp32 == 4 * (16 * 64 + 64 * 32 + 32) + 4 * (64 + 32 + 1)
    assert mlp_int8 == int8_linear_bytes(16, 64) + int8_linear_bytes(64, 32) + int8_linear_bytes(32, 1)
    assert isinstance(model.mlp[0], nn.Linear)  # planning never changes the model
    assert int8.planned_file_bytes(model) == fp32.planned_file_bytes(model) - (mlp_fp32 - mlp_int8)


def test_export_stores_int8_and_onnxruntime_matches(wide_mlp_run: Path, tmp_path: Path) -> None:
    ckpt = load_checkpoint(wide_mlp_run)
    fp32_art = export_artefact(ckpt, tmp_path / "fp32")
    quantize_dense_layers_(ckpt.model)
    manifest = export_artefact(ckpt, tmp_path / "int8")
    graph = onnx.load(str(tmp_path / "int8" / "model.onnx")).graph
    int8_inits = [i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert sorted(tuple(i.dims) for i in int8_inits) == [(1, 128), (128, 80), (128, 128)]
    saved = fp32_art["files"]["model.onnx"]["bytes"] - manifest["files"]["model.onnx"]["bytes"]
    assert saved >= 3 * (80 * 128 + 128 * 128 + 128) - 4 * (128 + 128 + 1) - 512  # 3 B per weight, minus scales
    report = verify_artefact(tmp_path / "int8")
    assert report["passed"] and max(report["max_abs_diff"].values()) <= 1e-5  # fp32 compute: the fp32 tolerance


def test_compress_mlp_auto_reaches_budgets_fp32_cannot(wide_mlp_run: Path, tmp_path: Path) -> None:
    with pytest.raises(BudgetTooSmallError, match=r"MLP \(fp32, hidden"):
        compress(wide_mlp_run, budgets=["60KB"], methods=["uniform"], out_dir=tmp_path / "fp32", epochs=1,
                 profile=False, plot=False, quiet=True, mlp="fp32")
    s = compress(wide_mlp_run, budgets=["60KB"], methods=["uniform"], out_dir=tmp_path / "auto", epochs=1,
                 profile=False, plot=False, quiet=True, mlp="auto")
    run = s["runs"][0]
    assert run["file_bytes"] <= 60_000 and run["config"]["_data"]["mlp"] == "int8"
    assert max(run["verify_max_abs_diff"].values()) <= 1e-5 and run["val_metric"] > 0.6  # planted data: far above random
    search = json.loads((tmp_path / "auto" / run["folder"] / "search.json").read_text())
    assert any(t.get("mlp") == "int8" and t["tried"] for t in search["trace"])  # fp32 forms were tried first
    with pytest.raises(BadInputError, match="--mlp"):
        compress(wide_mlp_run, budgets=["60KB"], out_dir=tmp_path / "bad", mlp="int4", quiet=True)


def test_int8_mlp_predictions_stay_close_to_fp32(wide_mlp_run: Path) -> None:
    ckpt = load_checkpoint(wide_mlp_run)
    model = ckpt.model.eval()
    ids = torch.randint(0, 5, (512, model.num_fields))
    with torch.no_grad():
        ref = torch.sigmoid(model(ids)).numpy()
        quantize_dense_layers_(model)
        got = torch.sigmoid(model(ids)).numpy()
    assert float(np.abs(got - ref).max()) < 0.02  # weight-only int8: a small, bounded change


def test_narrow_mlp_keeps_the_strongest_neurons_and_rebuilds() -> None:
    torch.manual_seed(0)
    model = build_model("deepfm", [5, 6, 7], embed_dim=4, mlp_dims=(8, 6), batch_norm=True).eval()
    assert can_narrow(model)
    with torch.no_grad():
        model.mlp[0].weight[3] *= 100  # neuron 3 of the first hidden layer dominates
    w_in, w_out = model.mlp[0].weight.clone(), model.mlp[3].weight.clone()  # Linear, BN, ReLU, Linear...
    scores = neuron_scores(w_in, w_out)
    dims = narrow_mlp_(model, 0.5)
    assert dims == model.mlp_dims == [4, 3]
    kept = torch.sort(torch.topk(scores, 4).indices).values
    assert 3 in kept.tolist()
    assert torch.equal(model.mlp[0].weight, w_in[kept])
    assert torch.equal(model.mlp[3].weight[:, :], model.mlp[3].weight) and model.mlp[3].in_features == 4
    assert model.mlp[3].out_features == 3 and model.mlp[6].in_features == 3
    assert model.mlp[1].num_features == 4 and model.mlp[1].running_mean.shape == (4,)
    twin = model_from_description(json.loads(json.dumps(model.describe())))
    twin.load_state_dict(model.state_dict())  # shapes match: mlp_dims travel in the config
    ids = torch.randint(0, 5, (9, 3))
    with torch.no_grad():
        assert torch.equal(twin.eval()(ids), model(ids))


def test_narrow_mlp_at_full_width_changes_nothing() -> None:
    torch.manual_seed(1)
    model = build_model("deepfm", [5, 6], embed_dim=4, mlp_dims=(8, 8)).eval()
    ids = torch.randint(0, 5, (16, 2))
    with torch.no_grad():
        before = model(ids)
        narrow_mlp_(model, 1.0)
        assert torch.allclose(model(ids), before, atol=1e-6)  # same neurons, sorted order kept


def test_compress_mlp_auto_narrows_only_when_int8_is_not_enough(wide_mlp_run: Path, tmp_path: Path) -> None:
    s = compress(wide_mlp_run, budgets=["20KB"], methods=["sseds"], out_dir=tmp_path / "narrow", epochs=1,
                 profile=False, plot=False, quiet=True, mlp="auto")
    run = s["runs"][0]
    data = run["config"]["_data"]
    assert run["file_bytes"] <= 20_000 and data["mlp"].startswith("int8/")
    divisor = int(data["mlp"].split("/")[1])
    assert data["mlp_dims"] == [round(128 / divisor)] * 2
    assert max(run["verify_max_abs_diff"].values()) <= 1e-5 and run["val_metric"] > 0.6
    # post-training int8 tables are not retrained, so they are never given a narrowed MLP
    ckpt = load_checkpoint(wide_mlp_run)
    data_dir = json.loads((wide_mlp_run / "train.json").read_text())["data_dir"]
    with pytest.raises(BudgetTooSmallError, match=r"MLP \(int8") as err:
        make_searcher("int8").search(ckpt, data_dir, 20_000, mlp="auto")
    assert err.value.minimum_bytes > 20_000  # int8 tables + int8 MLP, never a narrowed one


def test_post_training_int8_counts_the_planned_mlp(wide_mlp_run: Path) -> None:
    """The PTQ baselines size the model with the MLP in its planned form (regression: fp32 was counted)."""
    from ondevice.pipeline.measure import measure_file_bytes

    ckpt = load_checkpoint(wide_mlp_run)
    data_dir = json.loads((wide_mlp_run / "train.json").read_text())["data_dir"]
    small = make_searcher("int8").search(ckpt, data_dir, 10**7, mlp="int8")
    budget = small.bytes_estimate  # exactly the int8-MLP model's estimate (default accountant)
    with pytest.raises(BudgetTooSmallError):
        make_searcher("int8").search(ckpt, data_dir, budget, mlp="fp32")
    result = make_searcher("int8").search(ckpt, data_dir, budget, mlp="auto")
    assert quantizable_linears(result.model) == [] and measure_file_bytes(result.model)[0] <= budget


def test_forms_that_cannot_close_the_gap_are_skipped(wide_mlp_run: Path) -> None:
    """A method that only fails after work is not rerun for forms saving too few bytes."""
    from ondevice.search.base import SearchContext, SearchResult
    from ondevice.search.fixed_parts import search_with_fixed_parts

    ckpt = load_checkpoint(wide_mlp_run)
    data = json.loads((wide_mlp_run / "train.json").read_text())["data_dir"]
    from ondevice.data import EncodedDataset

    embedding_need = 30_000  # what the (pretend) method needs besides the fixed parts
    calls: list[tuple[str, int]] = []

    def run(ctx: SearchContext) -> SearchResult:
        fixed = ctx.accountant.fixed_bytes(ctx.model)
        calls.append((ctx.accountant.mlp, fixed))
        if fixed + embedding_need > ctx.budget_bytes:
            raise BudgetTooSmallError("too small", minimum_bytes=fixed + embedding_need)
        return SearchResult(model=ctx.model, config={"_data": {}}, val={"auc": 0.5}, metric="auc")

    acc = ByteAccountant()
    no_table = copy.deepcopy(ckpt.model)
    no_table.linear = None
    fixed = ByteAccountant(mlp="int8", first_order="drop").fixed_bytes(no_table)
    budget = fixed + embedding_need - 1  # (table dropped, int8 MLP) misses by 1 B; narrowing the MLP to 1/2 fits
    ctx = SearchContext(ckpt=ckpt, data=EncodedDataset(data), budget_bytes=budget, accountant=acc)
    result = search_with_fixed_parts(run, ctx, "auto", "auto", narrow=True)
    trace = result.trace[-1]
    assert trace["mlp"] == "int8/2" and result.config["_data"]["mlp_dims"] == [64, 64]
    ran = [t for t in trace["tried"] if "minimum_bytes" in t]
    skipped = [t for t in trace["tried"] if "skipped" in t]
    assert [(t["first_order"], t["mlp"]) for t in ran] == [("keep", "fp32")]
    # the forms between save less than the first gap (int8 at full width, no table, misses by 1 B): never run
    assert [(t["first_order"], t["mlp"]) for t in skipped] == [("fp16", "fp32"), ("keep", "int8"), ("fp16", "int8"),
                                                                ("drop", "fp32"), ("drop", "int8")]
    # the second: int8 at half width, which fits; the third: one step narrower (1/4), retrained
    # and compared on validation (a tie keeps the wider form)
    assert [m for m, _ in calls] == ["fp32", "int8", "int8"]
    alternative = [t for t in trace["tried"] if "against" in t]
    assert [(t["mlp"], t["against"]["mlp"]) for t in alternative] == [("int8/4", "int8/2")]


def test_a_narrower_int8_mlp_is_kept_when_it_validates_better(wide_mlp_run: Path) -> None:
    """--mlp auto: the widest int8 MLP that fits may starve the table; one step narrower is tried too."""
    from ondevice.data import EncodedDataset
    from ondevice.search.base import SearchContext, SearchResult
    from ondevice.search.fixed_parts import search_with_fixed_parts

    ckpt = load_checkpoint(wide_mlp_run)
    data = EncodedDataset(json.loads((wide_mlp_run / "train.json").read_text())["data_dir"])

    def run(ctx: SearchContext) -> SearchResult:  # pretend: the fewer MLP bytes, the more table, the better
        fixed = ctx.accountant.fixed_bytes(ctx.model)
        if fixed > ctx.budget_bytes:
            raise BudgetTooSmallError("too small", minimum_bytes=fixed)
        return SearchResult(model=ctx.model, config={"_data": {}}, val={"auc": 1.0 - fixed / 1e7}, metric="auc")

    acc = ByteAccountant()
    int8_bytes = ByteAccountant(mlp="int8").fixed_bytes(ckpt.model)
    ctx = SearchContext(ckpt=ckpt, data=data, budget_bytes=int8_bytes + 1_000, accountant=acc)
    result = search_with_fixed_parts(run, ctx, "keep", "auto", narrow=True)
    assert result.trace[-1]["mlp"] == "int8/2" and result.config["_data"]["mlp"] == "int8/2"
    # not for searchers that do not retrain (narrow=False): the widest form that fits stays
    assert search_with_fixed_parts(run, ctx, "keep", "auto", narrow=False).trace[-1]["mlp"] == "int8"
