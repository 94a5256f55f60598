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


def _session(module, io, path: Path):
    export_onnx(module, io, torch.zeros(2, io["inputs"][0]["shape"][1]), path)
    return runner_module().make_session(path, 1)


@pytest.mark.parametrize("layout", ["csr", "bcsr", "ell"])
def test_sparse_topk_artefact_matches_torch_and_stays_small(layout: str, tmp_path: Path) -> None:
    items = SparseEmbedding.from_weight([2000], _weight(2000, 16, 0.85), layout=layout)
    model = BPRMF(DenseEmbedding([10], 16), items).eval()
    module, io = export_module(model)
    sess = _session(module, io, tmp_path / "m.onnx")
    x = np.random.default_rng(0).normal(size=(5, 16)).astype(np.float32)
    ids, scores = sess.run(None, {"user_vector": x})
    with torch.no_grad():
        ref_ids, ref_scores = module(torch.from_numpy(x))
    assert np.array_equal(ids, ref_ids.numpy()) and np.allclose(scores, ref_scores.numpy(), atol=1e-5)
    # The decoded table is computed per call, not folded into the file as a dense initializer.
    assert (tmp_path / "m.onnx").stat().st_size < items.storage_bytes() + 8_000


# The decode's speed against the old per-row window gather is measured in
# benchmarks/topk_sparse_latency.py (speed belongs in benchmarks, not in timed unit tests).
