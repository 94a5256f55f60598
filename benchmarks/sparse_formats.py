"""Sparse table layouts: CSR vs blocked CSR vs ELL, exact bytes and ONNX file bytes.

A 10^5 x 16 fp32 table (random normal, seed 0) with 70 %, 90 % and 97 % of its entries
zeroed, stored in each ``SparseEmbedding`` layout, exported the way ondevice exports
(opset 17, one file) and run in onnxruntime on 512 ids (OOV and negative ids included):
storage bytes (``storage_bytes()``), file bytes, graph bytes (file − storage), the blocked
layout's block size and offset dtype, and exact parity with PyTorch.

    python benchmarks/sparse_formats.py

Writes ``benchmarks/results/sparse_formats.{json,md}``.
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from ondevice.embedding import DenseEmbedding, SparseEmbedding
from ondevice.export.onnx_export import OPSET
from ondevice.io import atomic_write_json, atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"
ROWS, DIM = 100_000, 16


class _Layer(torch.nn.Module):
    def __init__(self, layer: SparseEmbedding) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.layer(ids)


def _ids(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-3, ROWS + 3, (n, 1), generator=g)  # a few OOV and negative ids


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for share in (0.7, 0.9, 0.97):
            g = torch.Generator().manual_seed(0)
            w = torch.randn(ROWS, DIM, generator=g)
            w[torch.rand(ROWS, DIM, generator=g) < share] = 0
            dense = DenseEmbedding([ROWS], DIM)
            with torch.no_grad():
                dense.weight.copy_(w)
            for layout in ("csr", "bcsr", "ell"):
                layer = SparseEmbedding.from_dense(dense, layout=layout).eval()
                path = Path(tmp) / f"{layout}_{share}.onnx"
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    torch.onnx.export(_Layer(layer), (_ids(4, 0),), str(path), input_names=["ids"], output_names=["out"],
                                      dynamic_axes={"ids": {0: "batch"}, "out": {0: "batch"}}, opset_version=OPSET,
                                      dynamo=False)
                ids = _ids(512, 1)
                got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"ids": ids.numpy()})[0]
                with torch.no_grad():
                    exact = bool(np.array_equal(got, layer(ids).numpy()))
                storage, file_bytes = layer.storage_bytes(), path.stat().st_size
                rows.append({"zeros": share, "layout": layout, "nnz": layer.nnz, "max_row_nnz": layer.max_row_nnz,
                             "storage_bytes": storage, "file_bytes": file_bytes, "graph_bytes": file_bytes - storage,
                             "block_rows": layer.block_rows if layout == "bcsr" else None,
                             "offset_dtype": layer.offset_dtype if layout == "bcsr" else None, "exact": exact})
    result = {"command": "python benchmarks/sparse_formats.py " + " ".join(sys.argv[1:]), "rows": rows,
              "table": {"rows": ROWS, "dim": DIM, "dense_bytes": ROWS * DIM * 4 + 16}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS / "sparse_formats.json", result)
    lines = ["# Sparse table layouts: CSR vs blocked CSR vs ELL", "",
             f"{ROWS:,} x {DIM} fp32 table (dense {ROWS * DIM * 4 + 16:,} B), random normal, seed 0. "
             f"Command: `{result['command'].strip()}`.", "",
             "| zeros | layout | storage B | file B | graph B | vs csr storage | block rows / offsets | ORT exact |",
             "|---:|---|---:|---:|---:|---:|---|---|"]
    for r in rows:
        csr = next(x for x in rows if x["zeros"] == r["zeros"] and x["layout"] == "csr")
        blocked = f"{r['block_rows']} / {r['offset_dtype']}" if r["layout"] == "bcsr" else "—"
        lines.append(f"| {r['zeros']:.0%} | {r['layout']} | {r['storage_bytes']:,} | {r['file_bytes']:,} | "
                     f"{r['graph_bytes']:,} | {100 * (r['storage_bytes'] / csr['storage_bytes'] - 1):+.1f} % | "
                     f"{blocked} | {r['exact']} |")
    atomic_write_text(RESULTS / "sparse_formats.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
