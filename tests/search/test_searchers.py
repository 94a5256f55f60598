"""Searcher protocol, registry and method behaviour on the planted CTR data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ondevice.data import EncodedDataset
from ondevice.embedding import DenseEmbedding, MaskedEmbedding, MixedDimEmbedding
from ondevice.errors import BadInputError, BudgetTooSmallError
from ondevice.search import SEARCHERS, ByteAccountant, make_searcher, method_names
from ondevice.search.embedding.mde import mde_dims
from ondevice.search.embedding.pep import PEPEmbedding
from ondevice.search.embedding.sseds import field_dim_salience, greedy_dims, svd_start
from ondevice.train import load_checkpoint

SEARCH_KW = {"batch_size": 256}


def _data(run: Path) -> EncodedDataset:
    return EncodedDataset(json.loads((run / "train.json").read_text())["data_dir"])


@pytest.mark.parametrize("method", method_names())
def test_get_params_round_trips(method: str) -> None:
    s = make_searcher(method, shared={"epochs": 1, "seed": 3})
    params = s.get_params()
    json.dumps(params)  # goes into the manifest
    clone = s.clone()
    assert clone.get_params() == params and type(clone) is type(s)
    assert s.method_name() == method
    if "epochs" in params:
        assert params["epochs"] == 1 and params["seed"] == 3


def test_registry_names_and_errors() -> None:
    assert {"pep", "sseds", "mde", "uniform", "hash", "int8", "fp16"} <= set(SEARCHERS)
    assert make_searcher("sseds+int8").dtype == "int8"
    assert make_searcher("mde+fp16").dtype == "float16"
    assert make_searcher("pep+fp16").dtype == "float16"
    for bad in ("nope", "int8+int8", "autofis+int8", "sseds+int4"):
        with pytest.raises(BadInputError, match="unknown --method"):
            make_searcher(bad)
    with pytest.raises(BadInputError, match="several methods are given as --method rule --method uniform"):
        make_searcher("rule, uniform")


def test_pep_threshold_rises_only_through_coupled_weight_decay() -> None:
    """σ(-15) ≈ 3e-7: the loss gradient on s is 0, Adam's coupled L2 moves s by ≈ lr per step."""
    layer = PEPEmbedding([5, 4], 3, threshold_init=-15.0)
    with torch.no_grad():
        layer.weight.normal_(std=0.1)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-3, weight_decay=1e-5)
    ids = torch.tensor([[1, 2], [3, 1]])
    for _ in range(10):
        opt.zero_grad()
        layer(ids).pow(2).sum().backward()
        opt.step()
    assert torch.allclose(layer.threshold.detach(), torch.full_like(layer.threshold, -15 + 10e-3), atol=1e-5)
    # AdamW (decoupled) would barely move s: the reason the paper's optimiser matters.
    layer2 = PEPEmbedding([5, 4], 3, threshold_init=-15.0)
    opt2 = torch.optim.AdamW(layer2.parameters(), lr=1e-3, weight_decay=1e-5)
    for _ in range(10):
        opt2.zero_grad()
        layer2(ids).pow(2).sum().backward()
        opt2.step()
    assert float((layer2.threshold.detach() + 15).abs().max()) < 1e-6


def test_pep_high_threshold_prunes_and_mask_survives_retraining(trained_run: Path) -> None:
    ckpt = load_checkpoint(trained_run)
    searcher = make_searcher("pep", threshold_init=-1.0, epochs=2, search_epochs=3, **SEARCH_KW)
    result = searcher.search(ckpt, _data(trained_run), 17_000)
    cfg = result.config["_data"]
    assert cfg["reached_by"] == "threshold"
    layer = result.model.embedding
    assert isinstance(layer, MaskedEmbedding)
    mask = layer.mask
    assert 0 < int(mask.sum()) == cfg["mask_nnz"] < mask.numel()
    assert torch.all(layer.weight.detach()[~mask] == 0)
    assert torch.all(layer.dense_weight()[~mask] == 0)
    assert torch.all(layer.to_deployable().dense_weight()[~mask] == 0)
    # rewound: kept entries start at the step-0 (pretrained) values and were then retrained
    assert result.bytes_estimate <= 17_000


def test_sseds_salience_ranks_planted_fields_first(trained_run: Path) -> None:
    ckpt = load_checkpoint(trained_run)
    sal = field_dim_salience(ckpt.model, _data(trained_run), batches=8, batch_size=256, seed=0)
    per_field = sal.sum(dim=1)
    assert torch.isclose(sal.sum(), torch.tensor(1.0))
    assert min(per_field[:3]) > max(per_field[3:]), per_field  # fields 0,1,2 carry the signal
    vocab = list(ckpt.model.embedding.vocab_sizes)
    full_bytes = MixedDimEmbedding.expected_bytes(vocab, 16, [16] * 5)
    keep, drops = greedy_dims(sal, vocab, 16, full_bytes // 3)
    dims = [len(k) for k in keep]
    assert sum(dims[:3]) / 3 > sum(dims[3:]) / 2, dims  # informative fields keep more dims
    first = [d["drop"][0] for d in drops[:10]]
    assert sum(f >= 3 for f in first) > 5, first  # noise fields' dims go first
    assert MixedDimEmbedding.expected_bytes(vocab, 16, dims) <= full_bytes // 3


def test_sseds_per_byte_rank_keeps_cheap_fields_and_more_salience() -> None:
    # field 0: 2 ids (a column costs 8 B), field 1: 1,000 ids (4,000 B); field 0 slightly less salient
    sal = torch.tensor([[0.04] * 8, [0.06 + 0.001 * j for j in range(8)]])
    sal = sal / sal.sum()
    vocab, target = [2, 1000], MixedDimEmbedding.expected_bytes([2, 1000], 8, [8, 4])
    by_salience, _ = greedy_dims(sal, vocab, 8, target, rank="salience")
    per_byte, _ = greedy_dims(sal, vocab, 8, target, rank="per_byte")
    # the paper's order strips the 8-byte columns first; the fill-back returns one to the slack left by the last cut
    assert [len(k) for k in by_salience] == [2, 4]
    assert [len(k) for k in per_byte] == [8, 4]  # same cut on the large field, the cheap one kept whole

    def kept(keep: list[list[int]]) -> float:
        return float(sum(sal[f, j] for f, cols in enumerate(keep) for j in cols))

    assert kept(per_byte) > kept(by_salience)
    assert MixedDimEmbedding.expected_bytes(vocab, 8, [len(k) for k in per_byte]) <= target
    with pytest.raises(BadInputError, match="rank must be one of"):
        greedy_dims(sal, vocab, 8, target, rank="size")


def test_sseds_svd_start_is_each_fields_best_low_rank_fit() -> None:
    torch.manual_seed(0)
    full = DenseEmbedding([3, 40, 25], 6)
    keep = [[0, 1, 2, 3, 4, 5], [0, 2], [1, 3, 5, 4]]  # field 0 keeps all, 1 and 2 are narrowed (field 0: rank 3 < 6)
    ids = torch.stack([torch.arange(25) % 3, torch.arange(25) + 15, torch.arange(25)], dim=1)  # [25, 3]
    target = full(ids)  # [25, 3, 6]
    cols = MixedDimEmbedding.from_dense(full, keep=keep)
    svd = svd_start(MixedDimEmbedding.from_dense(full, keep=keep), full)
    err_cols, err_svd = (target - cols(ids)).pow(2).sum(dim=(0, 2)), (target - svd(ids)).pow(2).sum(dim=(0, 2))
    assert torch.allclose(svd(ids)[:, 0], target[:, 0])  # a full-width field is untouched
    assert (err_svd[1:] < err_cols[1:]).all(), (err_svd, err_cols)
    w = full.dense_weight()[3:43]
    u, sv, vh = torch.linalg.svd(w, full_matrices=False)
    assert torch.allclose(svd.dense_weight()[3:43], (u[:, :2] * sv[:2]) @ vh[:2], atol=1e-5)  # Eckart-Young rank 2
    assert svd.storage_bytes() == cols.storage_bytes()


def test_mde_dims_follow_the_power_law() -> None:
    dims = mde_dims([10, 100, 1000, 10000], 16, 40.0, 0.3)
    assert dims == sorted(dims, reverse=True) and min(dims) >= 1 and max(dims) <= 16


@pytest.mark.parametrize("method", ["sseds", "int8", "pep", "mde", "uniform", "hash"])
def test_too_small_budget_names_the_minimum(trained_run: Path, method: str) -> None:
    with pytest.raises(BudgetTooSmallError, match="smallest model") as err:
        make_searcher(method, shared={"epochs": 1}).search(trained_run, _data(trained_run), 5_000)
    assert err.value.minimum_bytes > 5_000
    assert f"{err.value.minimum_bytes:,} B" in str(err.value) and sum(err.value.parts.values()) == err.value.minimum_bytes
    assert "ONNX graph" in str(err.value) and "format margin" in str(err.value)
    assert "\n" not in str(err.value)


def test_same_seed_same_result(trained_run: Path) -> None:
    data = _data(trained_run)
    ckpt = load_checkpoint(trained_run)
    a = make_searcher("sseds", epochs=1, seed=5, **SEARCH_KW).search(ckpt, data, 17_000)
    b = make_searcher("sseds", epochs=1, seed=5, **SEARCH_KW).search(ckpt, data, 17_000)
    assert a.config == b.config and a.val == b.val
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_accountant_splits_budget(trained_run: Path) -> None:
    model = load_checkpoint(trained_run).model
    acc = ByteAccountant(graph_overhead_bytes=1000, margin_bytes=0)
    parts = acc.fixed_parts(model)
    assert parts["onnx graph"] == 1000 and parts["mlp"] > 0 and parts["linear"] > 0
    assert acc.fixed_bytes(model) == sum(parts.values())
    assert acc.embedding_target(model, 50_000) == 50_000 - acc.fixed_bytes(model)
    assert acc.parameter_bytes(model) >= acc.fixed_bytes(model) - 1000 + model.embedding.storage_bytes() - 16 * 5 * 2


def test_make_searcher_rejects_a_typo_but_ignores_shared_options() -> None:
    with pytest.raises(BadInputError, match="pep has no setting 'treshold_init'; its settings: .*threshold_init"):
        make_searcher("pep", treshold_init=-4)
    assert "epochs" not in make_searcher("int8", shared={"epochs": 3}).get_params()  # int8 does not train
