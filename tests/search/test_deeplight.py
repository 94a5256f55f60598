"""DeepLight (``--method deeplight``): schedule, pruning scopes, compact export, structured removal."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from ondevice.data import EncodedDataset
from ondevice.errors import BadInputError, BudgetTooSmallError
from ondevice.export import export_artefact, verify_artefact
from ondevice.models import DeepFM, DeepFwFM
from ondevice.models.sparse_linear import (
    SparseLinear,
    delta_code,
    remove_dead_neurons,
    sparse_linear_bytes,
)
from ondevice.pipeline.measure import measure_file_bytes
from ondevice.search import make_searcher
from ondevice.search.pruning.deeplight import magnitude_keep, period_for, target_sparsity
from ondevice.train import TrainConfig, load_checkpoint, train
from ondevice.train.checkpoint import Checkpoint
from tests.conftest import make_ctr

KW = {"batch_size": 256, "epochs": 2, "finetune_epochs": 1}


@pytest.fixture(scope="module")
def fwfm_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("deeplight")
    data = make_ctr(root / "data")
    # no BatchNorm: structured pruning removes dead neurons only from plain Linear/ReLU stacks
    cfg = TrainConfig(model="deepfwfm", embed_dim=16, mlp_dims=[64, 32], epochs=6, batch_size=256, lr=5e-3, patience=2,
                      batch_norm=False, dropout=0.0)
    train(data, root / "run", cfg, quiet=True)
    return root / "run", data


@pytest.fixture(scope="module")
def searched(fwfm_run: tuple[Path, Path]):
    run, data = fwfm_run
    ckpt = load_checkpoint(run)
    full_file, _ = measure_file_bytes(ckpt.model)
    budget = full_file // 2
    result = make_searcher("deeplight", **KW).search(ckpt, EncodedDataset(data), budget)
    return ckpt, result, budget, full_file


# ---------------------------------------------------------------------- schedule
def test_schedule_has_the_documented_values() -> None:
    assert target_sparsity(0, 0.9, 0.99, 100) == 0.0
    assert target_sparsity(100, 0.9, 0.99, 100) == pytest.approx(0.9 * 0.01)  # one period: S(1 − D)
    # The paper's constants: 95 % of the target after Q·ln 0.05 / ln D ≈ 29.8k iterations.
    t95 = 100 * math.log(0.05) / math.log(0.99)
    assert t95 == pytest.approx(29_807, abs=1)
    assert target_sparsity(t95, 0.9, 0.99, 100) == pytest.approx(0.95 * 0.9)
    # The rescaling rule: Q = −0.8·T·ln D / ln 20, so 95 % at 80 % of T, ≈ 97.6 % at T.
    T = 1000
    q = period_for(T, 0.99)
    assert q == pytest.approx(-0.8 * T * math.log(0.99) / math.log(20))
    assert target_sparsity(0.8 * T, 1.0, 0.99, q) == pytest.approx(0.95)
    assert target_sparsity(T, 1.0, 0.99, q) == pytest.approx(1 - 0.05 ** 1.25)
    with pytest.raises(BadInputError, match="damping"):
        period_for(T, 1.0)


def test_magnitude_keep_is_one_threshold_over_the_tensor() -> None:
    w = torch.tensor([[0.1, -5.0], [0.3, 0.2], [-0.4, 9.0]])
    keep = magnitude_keep(w, 0.5)
    assert keep.tolist() == [[False, True], [False, False], [True, True]]
    assert magnitude_keep(w, 0.0).all() and not magnitude_keep(w, 1.0).any()


# ---------------------------------------------------------------------- SparseLinear
def test_delta_code_fillers_sum_back_to_positions() -> None:
    pos = torch.tensor([3, 10, 600, 601, 2000])
    deltas, real = delta_code(pos, 255)
    assert torch.equal(deltas.cumsum(0)[real], pos) and int((~real).sum()) == 2 + 5  # gaps 590, 1399
    assert bool((deltas <= 255).all())


@pytest.mark.parametrize("density", [0.1, 0.003])
def test_sparse_linear_is_exact_and_its_bytes_are_what_the_file_stores(tmp_path: Path, density: float) -> None:
    torch.manual_seed(0)
    lin = nn.Linear(300, 200)
    with torch.no_grad():
        lin.weight.mul_((torch.rand_like(lin.weight) < density).float())
    sl = SparseLinear.from_linear(lin)
    assert torch.equal(sl.dense_weight(), lin.weight.detach())
    x = torch.randn(5, 300)
    assert torch.allclose(sl(x), lin(x), atol=1e-6, rtol=0)
    nbytes = sum(t.numel() * t.element_size() for t in sl.state_dict().values())
    assert sl.storage_bytes() == nbytes == sparse_linear_bytes(sl.stored, 200, sl.delta_dtype)
    other = "int16" if sl.delta_dtype == "uint8" else "uint8"
    assert sl.storage_bytes() <= SparseLinear.from_linear(lin, other).storage_bytes()
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(sl, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    init = onnx.load(str(path)).graph.initializer
    stored = sum(len(t.raw_data) for t in init)
    assert stored == sl.storage_bytes()  # the expansion was not constant-folded into a dense weight
    assert path.stat().st_size < sl.storage_bytes() + 3000 < 4 * 300 * 200


def test_remove_dead_neurons_is_exact() -> None:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 1))
    with torch.no_grad():
        mlp[0].weight[1].zero_()
        mlp[0].bias[1] = -0.5  # dead row, ReLU(b) = 0: removed
        mlp[0].weight[2].zero_()
        mlp[0].bias[2] = 0.7  # dead row but a constant output: kept
        mlp[2].weight[:, 3].zero_()  # hidden-1 neuron 3 is never read: removed
        mlp[4].weight[0, 0] = 0.0  # hidden-2 neuron 0 is never read: removed ...
        mlp[2].weight[1].zero_()
        mlp[2].bias[1] = -1.0  # ... and neuron 1 always outputs 0: removed
    x = torch.randn(64, 6)
    new, widths = remove_dead_neurons(mlp)
    assert widths == [3, 2]
    assert torch.allclose(new(x), mlp(x), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------- the searcher
def test_reaches_targets_fits_and_verifies(searched, fwfm_run, tmp_path: Path) -> None:
    ckpt, result, budget, full_file = searched
    cfg = result.config["_data"]
    targets, achieved = cfg["targets"], cfg["achieved"]
    for part in ("embedding", "dnn", "pairs"):
        assert achieved[part] >= targets[part] - 0.01, part
    assert targets["dnn"] == targets["pairs"] == 0.9 and 0 < targets["embedding"] < 1
    model = result.model
    # pruned pairs are gone from the model and the graph; kept pairs are non-zero
    assert len(model.pairs) == cfg["pairs_kept"] == 1 and bool((model.pair_weight != 0).all())
    art = tmp_path / "art"
    manifest = export_artefact(Checkpoint(model=model, schema=ckpt.schema), art, budget_bytes=budget, inputs="ids")
    graph = onnx.load(str(art / "model.onnx")).graph
    dims = {t.name: list(t.dims) for t in graph.initializer}
    assert dims["model.pair_weight"] == [1]
    assert manifest["budget"]["fits"] and manifest["files"]["model.onnx"]["bytes"] <= budget < full_file
    assert verify_artefact(art)["passed"]
    assert result.val["auc"] > 0.6
    # the file stores exactly the compact tensors the accountant counted
    assert sum(len(t.raw_data) for t in graph.initializer) == manifest["storage"]["parameter_bytes"]
    assert result.bytes_estimate >= manifest["files"]["model.onnx"]["bytes"]


def test_exported_file_shrinks_with_dnn_sparsity(fwfm_run) -> None:
    """Same model pruned: dense Linear zeros vs the SparseLinear form (90 % -> ≈ 5/40 of the bytes)."""
    from ondevice.search.pruning.deeplight import _Pruner, compact_deepfwfm

    run, _ = fwfm_run
    model = load_checkpoint(run).model
    pruner = _Pruner(model)
    pruner.apply(pruner.masks(0.0, 0.9, 0.0))
    dense_file, _ = measure_file_bytes(model)
    compact = compact_deepfwfm(model, structured=False)
    sparse_file, _ = measure_file_bytes(compact)
    dnn_dense = 4 * (80 * 64 + 64 * 32)
    dnn_sparse = sum(m.storage_bytes() - 4 * m.out_features for m in compact.mlp if isinstance(m, SparseLinear))
    assert dnn_sparse <= 0.15 * dnn_dense
    assert dense_file - sparse_file >= dnn_dense - dnn_sparse - 2 * 2048  # minus the expansion nodes
    x = torch.randint(0, 10, (32, 5))
    assert torch.allclose(compact(x), model.eval()(x), atol=1e-6, rtol=0)


def test_structured_pruning_removes_neurons_and_keeps_outputs(searched) -> None:
    from ondevice.search.pruning.deeplight import compact_deepfwfm

    _, result, _, _ = searched
    cfg = result.config["_data"]
    assert sum(cfg["neurons_removed"]) > 0 and cfg["mlp_dims"] == result.model.mlp_dims
    # structured=False on the same weights gives the same function with the original widths
    assert sum(cfg["neurons_removed"]) == 64 + 32 - sum(result.model.mlp_dims)
    model = result.model
    x = torch.randint(-1, 60, (128, 5))
    unstructured = compact_deepfwfm(model, structured=False)
    assert torch.allclose(unstructured(x), model(x), atol=1e-6, rtol=0)


def test_neuron_sparsity_extension_removes_whole_neurons(fwfm_run) -> None:
    run, data = fwfm_run
    ckpt = load_checkpoint(run)
    result = make_searcher("deeplight", neuron_sparsity=0.5, **{**KW, "epochs": 1, "finetune_epochs": 0}).search(
        ckpt, EncodedDataset(data), 10**6)
    assert all(w <= h // 2 for w, h in zip(result.model.mlp_dims, [64, 32], strict=True))


def test_same_seed_same_result(fwfm_run) -> None:
    run, data = fwfm_run
    ckpt, ds = load_checkpoint(run), EncodedDataset(data)
    kw = {**KW, "epochs": 1, "finetune_epochs": 1}
    a = make_searcher("deeplight", **kw).search(ckpt, ds, 30_000)
    b = make_searcher("deeplight", **kw).search(ckpt, ds, 30_000)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.val == b.val


def test_errors(fwfm_run) -> None:
    run, data = fwfm_run
    ckpt, ds = load_checkpoint(run), EncodedDataset(data)
    other = Checkpoint(model=DeepFM.from_vocab(list(ckpt.model.embedding.vocab_sizes), embed_dim=4, mlp_dims=[4]),
                       schema=ckpt.schema)
    with pytest.raises(BadInputError, match="prunes DeepFwFM models"):
        make_searcher("deeplight").search(other, ds, 10**6)
    with pytest.raises(BudgetTooSmallError, match="below the smallest model deeplight"):
        make_searcher("deeplight", **KW).search(ckpt, ds, 5_000)
    assert isinstance(ckpt.model, DeepFwFM)
    np.testing.assert_equal(len(ckpt.model.pairs), 10)
