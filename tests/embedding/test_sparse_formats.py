"""The sparse-format choice, measured: CSR vs blocked CSR vs ELL on a 10^5 x 16 table at 70 % / 90 % zeros.

Both layouts are exported with the project's ONNX convention and run in onnxruntime; the
file must hold exactly ``storage_bytes()`` of tensors (the docstring formulas), and CSR
and BCSR must be the smaller (the numbers are in ``ondevice/embedding/sparse.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from ondevice.embedding import DenseEmbedding, SparseEmbedding
from tests.embedding.embedding_testkit import LayerOnly, export_onnx, initializer_bytes, random_ids

ROWS, DIM = 100_000, 16


@pytest.mark.parametrize("zero_share", [0.7, 0.9])
def test_csr_beats_ell_on_a_1e5_by_16_table(zero_share: float, tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(ROWS, DIM, generator=g)
    w[torch.rand(ROWS, DIM, generator=g) < zero_share] = 0
    dense = DenseEmbedding([ROWS], DIM)
    with torch.no_grad():
        dense.weight.copy_(w)
    nnz = int((w != 0).sum())
    k = int((w != 0).sum(1).max())

    sizes = {}
    for layout in ("csr", "bcsr", "ell"):
        layer = SparseEmbedding.from_dense(dense, layout=layout).eval()
        assert layer.nnz == nnz and layer.max_row_nnz == k
        pointers = {"csr": 4 * (ROWS + 1),
                    "bcsr": 4 * -(-(ROWS + 1) // getattr(layer, "block_rows", 1)) + (ROWS + 1)}  # uint8 offsets
        formula = (pointers[layout] + 5 * nnz + 8 * k + 16) if layout != "ell" else (ROWS * k * 5 + 16)
        assert layer.storage_bytes() == formula
        path = export_onnx(LayerOnly(layer), random_ids((ROWS,), 4), tmp_path / f"{layout}.onnx")
        assert initializer_bytes(path) == formula
        ids = random_ids((ROWS,), 512, seed=1)
        got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"ids": ids.numpy()})[0]
        with torch.no_grad():
            np.testing.assert_array_equal(got, layer(ids).numpy())
        sizes[layout] = path.stat().st_size

    assert sizes["bcsr"] < sizes["csr"] < sizes["ell"]
    assert sizes["csr"] < dense.storage_bytes() * (0.45 if zero_share == 0.7 else 0.2)
    assert sizes["bcsr"] < sizes["csr"] - 2.5 * ROWS  # blocked pointers: > 2.5 of the 4 B per row saved
