"""Top-K artefacts with sparse item tables decode the table in O(nnz), exactly and without storing it dense."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ondevice.embedding import DenseEmbedding, SparseEmbedding
from ondevice.export._runner import runner_module
from ondevice.export.lowering import export_module
from ondevice.export.onnx_export import export_onnx
from ondevice.models import BPRMF


def _weight(rows: int, dim: int, zeros: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(rows, dim, generator=g)
    w[torch.rand(rows, dim, generator=g) < zeros] = 0
    w[3] = 0  # an empty row
    return w


@pytest.mark.parametrize("layout", ["csr", "bcsr", "ell"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_full_table_is_the_stored_table(layout: str, dtype: str) -> None:
    w = _weight(300, 16, 0.8)
    layer = SparseEmbedding.from_weight([300], w, layout=layout, dtype=dtype)
    assert torch.equal(layer.full_table(torch.tensor(0)), layer.dense_weight())
    assert torch.equal(layer.full_table(torch.tensor(0), transposed=True), layer.dense_weight().t())


def _session(module, io, path: Path, at_load: bool):
    export_onnx(module, io, torch.zeros(2, io["inputs"][0]["shape"][1]), path, table_at_load=at_load)
    return runner_module().make_session(path, 1)


@pytest.mark.parametrize("at_load", [True, False], ids=["table_at_load", "table_per_call"])
@pytest.mark.parametrize("layout", ["csr", "bcsr", "ell"])
def test_sparse_topk_artefact_matches_torch_and_stays_small(layout: str, at_load: bool, tmp_path: Path) -> None:
    items = SparseEmbedding.from_weight([2000], _weight(2000, 16, 0.85), layout=layout)
    model = BPRMF(DenseEmbedding([10], 16), items).eval()
    module, io = export_module(model)
    sess = _session(module, io, tmp_path / "m.onnx", at_load)
    x = np.random.default_rng(0).normal(size=(5, 16)).astype(np.float32)
    seen = np.random.default_rng(1).integers(-1, 2000, size=(5, 30))
    ids, scores = sess.run(None, {"user_vector": x, "exclude_items": seen})
    with torch.no_grad():
        ref_ids, ref_scores = module(torch.from_numpy(x), torch.from_numpy(seen))
    assert np.array_equal(ids, ref_ids.numpy()) and np.allclose(scores, ref_scores.numpy(), atol=1e-5)
    # Both forms keep the compressed table in the file (the decode is not folded into a dense initializer).
    assert (tmp_path / "m.onnx").stat().st_size < items.storage_bytes() + 8_000


def test_table_at_load_is_folded_by_onnxruntime_and_per_call_is_not(tmp_path: Path) -> None:
    """``.onnx`` form: onnxruntime decodes the sparse table once at session creation (the
    optimised graph is MatMul + TopK + the exclusion); ``.ort`` form: the decode stays in the graph."""
    import onnx
    import onnxruntime as ort

    items = SparseEmbedding.from_weight([500], _weight(500, 8, 0.85), layout="csr")
    module, io = export_module(BPRMF(DenseEmbedding([10], 8), items).eval())
    ops = {}
    for at_load in (True, False):
        (tmp_path / str(at_load)).mkdir()
        path = tmp_path / str(at_load) / "m.onnx"
        export_onnx(module, io, torch.zeros(2, 8), path, table_at_load=at_load)
        so = ort.SessionOptions()
        so.optimized_model_filepath = str(tmp_path / f"{at_load}.opt.onnx")
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        ops[at_load] = {n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node}
    assert "CumSum" not in ops[True] and "MatMul" in ops[True] and "TopK" in ops[True]
    assert "CumSum" in ops[False]


# The decode's speed against the old per-row window gather is measured in
# benchmarks/topk_sparse_latency.py (speed belongs in benchmarks, not in timed unit tests).
