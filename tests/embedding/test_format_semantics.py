"""What each storage format computes (beyond the shared contract in test_storage_contract.py)."""

from __future__ import annotations

import pytest
import torch

from ondevice.embedding import (
    DenseEmbedding,
    HashedEmbedding,
    MaskedEmbedding,
    MixedDimEmbedding,
    QuantizedEmbedding,
    RowPrunedEmbedding,
    SparseEmbedding,
    field_offsets,
    table_bytes,
)
from ondevice.embedding.quantized import quantize_rows_int8
from ondevice.embedding.sparse import bcsr_plan
from ondevice.errors import BadInputError
from tests.embedding.embedding_testkit import random_ids, sparse_dense_layer

VOCAB = (300, 40, 7)
DIM = 8


def _dense(seed: int = 0, scale: float = 1.0) -> DenseEmbedding:
    torch.manual_seed(seed)
    layer = DenseEmbedding(VOCAB, DIM)
    with torch.no_grad():
        layer.weight.mul_(scale * 100)  # rows of very different norms below
        layer.weight[::7] *= 1e-3
    return layer


# ----------------------------------------------------------------------------- quantized
@pytest.mark.parametrize("dtype", ["int8", "float16"])
def test_quantization_error_within_documented_bound(dtype: str) -> None:
    dense = _dense()
    q = QuantizedEmbedding.from_dense(dense, dtype=dtype)
    err = (q.dense_weight() - dense.dense_weight()).abs()  # [R, D]
    bound = QuantizedEmbedding.max_abs_error_bound(dense.dense_weight(), dtype)  # [R]
    assert (err <= bound.unsqueeze(1) + 1e-12).all()
    if dtype == "int8":
        amax = dense.dense_weight().abs().amax(dim=1)
        assert (bound <= amax / 254 * (1 + 2.0**-10) + 2.0**-25).all()
    assert not list(q.parameters()), "quantized tables are frozen buffers"


def test_int8_scales_are_fp16_rounded_up_and_nothing_clips() -> None:
    w = torch.randn(500, 16) * torch.logspace(-6, 3, 500).unsqueeze(1)
    q, s = quantize_rows_int8(w)
    assert q.dtype == torch.int8 and s.dtype == torch.float16 and s.shape == (500,)
    assert (s.float() >= w.abs().amax(1) / 127).all()
    assert q.abs().max() <= 127
    zero_q, zero_s = quantize_rows_int8(torch.zeros(3, 4))
    assert (zero_q == 0).all() and (zero_s == 0).all()


def test_int8_table_bytes_state_scale_bytes() -> None:
    assert table_bytes(1000, 16, "int8") == 1000 * 16 + 1000 * 2  # fp16 scale: 2 bytes a row
    assert table_bytes(1000, 16, "float16") == 1000 * 16 * 2
    with pytest.raises(BadInputError, match="dtype must be one of"):
        QuantizedEmbedding(VOCAB, DIM, dtype="float32")


# ----------------------------------------------------------------------------- hashed
def test_hashing_is_id_mod_buckets_and_oov_stays_row_zero() -> None:
    layer = HashedEmbedding(VOCAB, DIM, buckets=[50, 100, 3]).eval()
    assert layer.buckets == (50, 40, 3)  # capped at the vocabulary
    table = layer.table.dense()
    starts = field_offsets(layer.buckets)
    ids = random_ids(VOCAB, 200)
    with torch.no_grad():
        out = layer(ids)
    for f, (v, b) in enumerate(zip(VOCAB, layer.buckets, strict=True)):
        col = ids[:, f]
        col = torch.where((col >= 0) & (col < v), col, torch.zeros_like(col))
        assert torch.equal(out[:, f], table[starts[f] + col % b])


def test_hashed_from_dense_averages_colliding_rows() -> None:
    dense = _dense()
    layer = HashedEmbedding.from_dense(dense, buckets=[100, 40, 7])
    w = dense.dense_weight()
    expected = w[[1, 101, 201]].mean(0)  # field 0: ids 1, 101, 201 share bucket 1
    assert torch.allclose(layer.table.dense()[1], expected)
    assert torch.equal(layer.table.dense()[100:140], w[300:340])  # field 1 is unhashed


# ----------------------------------------------------------------------------- mixed dim
def test_mixed_dim_from_dense_reproduces_kept_columns() -> None:
    dense = _dense()
    keep = [[0, 3, 5], list(range(DIM)), []]
    layer = MixedDimEmbedding.from_dense(dense, keep=keep)
    assert layer.dims == (3, DIM, 0)
    w, got = dense.dense_weight(), layer.dense_weight()
    expected = torch.zeros_like(w)
    expected[:300, [0, 3, 5]] = w[:300, [0, 3, 5]]
    expected[300:340] = w[300:340]
    assert torch.equal(got, expected)
    assert [p.numel() for p in layer.projections] == [3 * DIM, 0]  # no projection for d_f == dim


def test_mixed_dim_rejects_bad_dims() -> None:
    with pytest.raises(BadInputError, match=r"one width in \[0, 8\] per field"):
        MixedDimEmbedding(VOCAB, DIM, dims=[4, 9, 1])


# ----------------------------------------------------------------------------- row pruned
def test_row_pruned_oov_mode_reads_the_field_oov_row() -> None:
    dense = _dense()
    keep = torch.zeros(sum(VOCAB), dtype=torch.bool)
    keep[[5, 6, 300 + 3]] = True
    layer = RowPrunedEmbedding.from_dense(dense, keep).eval()
    assert layer.kept_rows == (3, 2, 1)  # + each field's OOV row
    w = dense.dense_weight()
    ids = torch.tensor([[5, 3, 2], [7, 4, 0], [-1, 999, 6]])
    with torch.no_grad():
        out = layer(ids)
    assert torch.equal(out[0], torch.stack([w[5], w[303], w[340]]))
    assert torch.equal(out[1], torch.stack([w[0], w[300], w[340]]))  # pruned -> OOV rows
    assert torch.equal(out[2], torch.stack([w[0], w[300], w[340]]))
    remap = layer.remap_per_field()
    assert remap[0][[0, 5, 6, 7]].tolist() == [0, 1, 2, 0]


def test_row_pruned_zero_mode_is_exact_for_zero_rows_and_pays_off_past_one_over_dim() -> None:
    dense = sparse_dense_layer(VOCAB, DIM, zero_share=0.0, zero_rows=0.5)
    keep = dense.dense_weight().abs().sum(1) > 0
    layer = RowPrunedEmbedding.from_dense(dense, keep, pruned_to="zero")
    assert torch.equal(layer.dense_weight(), dense.dense_weight())
    assert layer.storage_bytes() < dense.storage_bytes()
    # Pruning fewer than 1/D of the rows costs more than it saves (4 B remap per id).
    few = torch.ones(sum(VOCAB), dtype=torch.bool)
    few[1 : sum(VOCAB) // (2 * DIM)] = False
    assert RowPrunedEmbedding.from_dense(dense, few).storage_bytes() > dense.storage_bytes()


# ----------------------------------------------------------------------------- sparse + masked
@pytest.mark.parametrize("layout", ["csr", "bcsr", "ell"])
def test_sparse_layouts_are_exact(layout: str) -> None:
    dense = sparse_dense_layer(VOCAB, DIM, zero_share=0.7, zero_rows=0.2)
    layer = SparseEmbedding.from_dense(dense, layout=layout)
    assert torch.equal(layer.dense_weight(), dense.dense_weight())
    assert layer.nnz == int((dense.dense_weight() != 0).sum())


@pytest.mark.parametrize("per_row", [1, 3, 16, 200])
def test_bcsr_plan_is_the_cheapest_feasible_blocking(per_row: int) -> None:
    """Brute force over every block size 1..R+1 and both offset dtypes: the plan is minimal."""
    g = torch.Generator().manual_seed(per_row)
    row_nnz = torch.randint(0, per_row + 1, (700,), generator=g)
    b, dtype, nbytes = bcsr_plan(row_nnz)
    ptr = torch.cat([torch.zeros(1, dtype=torch.int64), row_nnz.cumsum(0)])
    n, idx = len(ptr), torch.arange(len(ptr))
    best = min(4 * -(-n // bb) + size * n
               for bb in range(1, n + 1) for size, limit in ((1, 255), (2, 32767))
               if int((ptr - ptr[(idx // bb) * bb]).max()) <= limit)
    assert nbytes <= best * 1.1  # powers of two only (monotone, cheap per PEP step): within 10 % of any block size
    assert nbytes < 4 * n  # always cheaper than int32 row pointers
    layer = SparseEmbedding.from_weight([700], _rows_with_counts(row_nnz, 256), layout="bcsr")
    assert (layer.block_rows, layer.offset_dtype) == (b, dtype)
    assert torch.equal(layer._row_pointer(torch.arange(701)), ptr)


def _rows_with_counts(row_nnz: torch.Tensor, dim: int) -> torch.Tensor:
    w = torch.zeros(len(row_nnz), dim)
    for r, c in enumerate(row_nnz.tolist()):
        w[r, :c] = torch.arange(1, c + 1, dtype=torch.float32)
    return w


def test_all_zero_table_still_builds() -> None:
    layer = SparseEmbedding.from_weight(VOCAB, torch.zeros(sum(VOCAB), DIM))
    assert layer.nnz == 0 and torch.equal(layer.dense_weight(), torch.zeros(sum(VOCAB), DIM))


def test_masked_gradient_is_masked_and_values_stay_pruned() -> None:
    dense = _dense()
    mask = torch.rand(sum(VOCAB), DIM, generator=torch.Generator().manual_seed(0)) < 0.3
    layer = MaskedEmbedding.from_dense(dense, mask)
    layer.sparse = False
    layer.train()
    ids = torch.randint(0, 7, (32, 3))
    layer(ids).pow(2).sum().backward()
    assert (layer.weight.grad[~mask] == 0).all()
    assert (layer.weight.grad[mask] != 0).any()


@pytest.mark.parametrize(
    ("zero_share", "zero_rows", "expected"),
    [(0.0, 0.0, "dense"), (0.0, 0.6, "row_pruned"), (0.8, 0.0, "sparse_bcsr")],
)
def test_masked_deploys_to_smallest_exact_format(zero_share: float, zero_rows: float, expected: str) -> None:
    dense = sparse_dense_layer((3000, 200), 16, zero_share=zero_share, zero_rows=zero_rows)
    layer = MaskedEmbedding.from_dense(dense)
    name, nbytes = layer.best_format()
    assert name == expected
    deployed = layer.to_deployable()
    assert nbytes == layer.storage_bytes() == deployed.storage_bytes()
    assert nbytes == min(b for b, _ in layer.deploy_candidates().values())
    assert torch.equal(deployed.dense_weight(), layer.dense_weight())  # exact
    ids = random_ids((3000, 200), 64)
    layer.eval()
    with torch.no_grad():
        assert torch.equal(deployed(ids), layer(ids))


def test_masked_int8_composes_pep_with_quantization() -> None:
    dense = sparse_dense_layer((3000, 200), 16, zero_share=0.0, zero_rows=0.6)
    layer = MaskedEmbedding.from_dense(dense, deploy_dtype="int8")
    deployed = layer.to_deployable()
    assert isinstance(deployed, RowPrunedEmbedding) and deployed.dtype_name == "int8"
    assert layer.storage_bytes() == deployed.storage_bytes()
    assert (deployed.dense_weight()[~(dense.dense_weight().abs().sum(1) > 0)] == 0).all()


def test_expected_bytes_count_equal_int64_vectors_once() -> None:
    unhashed = HashedEmbedding(VOCAB, DIM, buckets=10_000)  # capped: buckets == vocab on every field
    assert unhashed.storage_bytes() == HashedEmbedding.expected_bytes(VOCAB, DIM, unhashed.buckets)
    assert unhashed.storage_bytes() == 4 * sum(VOCAB) * DIM + 16 * len(VOCAB)
    # CSR window [0, 1, 2] == field offsets [0, 1, 2] (fields of one id): stored once
    w = torch.zeros(7, 3)
    w[0] = 1.0
    w[3, :2] = 2.0
    tiny = SparseEmbedding.from_weight((1, 1, 5), w)
    assert tiny.max_row_nnz == 3
    assert tiny.storage_bytes() == SparseEmbedding.expected_bytes((1, 1, 5), 3, tiny.nnz, 3)
    assert tiny.storage_bytes() == 4 * 8 + 5 * 5 + 16 * 3  # row_ptr + nnz * (4 + 1) + vocab/offsets
