"""Top-K artefacts with a sparse (PEP-style) item table: batch-1 latency of the two decodes.

A BPR-MF with a 40,000 x 64 item table (random normal, seed 0, 85 % of the entries zeroed,
about what PEP leaves at a quarter of the bytes) exported as ondevice exports top-K models
(``user_vector -> item_ids, scores``), for the dense table and each ``SparseEmbedding``
layout in fp32: file bytes and onnxruntime p50/p99 at batch 1 and 256, one thread,
with the item vectors read

* ``window``: through the layer's lookup over ids 1..N-1 (a K-wide window gather per row:
  the form before issue 13), and
* ``decode``: through ``SparseEmbedding.full_table`` (O(nnz) scatter; what ``TopKExport``
  uses now).

The top-k ids of both equal PyTorch's on the timed input (``ids_match``).

    python benchmarks/topk_sparse_latency.py

Writes ``benchmarks/results/topk_sparse_latency.{json,md}``.
"""

from __future__ import annotations

import platform
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from ondevice.embedding import DenseEmbedding, SparseEmbedding
from ondevice.export._runner import runner_module
from ondevice.export.lowering import TopKExport, export_module
from ondevice.export.onnx_export import export_onnx
from ondevice.io import atomic_write_json, atomic_write_text
from ondevice.models import BPRMF

RESULTS = Path(__file__).resolve().parent / "results"
ITEMS, DIM, ZEROS, RUNS = 40_000, 64, 0.85, 200


class WindowTopK(TopKExport):
    """The previous lowering: item vectors from the layer's per-id lookup."""

    def forward(self, user_vector: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start = user_vector.shape[0] * 0 + 1
        item_ids = torch.arange(start, start + self.num_items - 1, dtype=torch.int64).unsqueeze(1)
        items = self.item_embedding(item_ids).squeeze(1)
        top_scores, top_idx = torch.topk(user_vector @ items.t(), self.k, dim=1)
        return top_idx + 1, top_scores


def _measure(module: torch.nn.Module, io: dict, runner) -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(module, io, torch.zeros(2, DIM), path)
        out["file_bytes"] = path.stat().st_size
        session = runner.make_session(path, 1)
        for batch in (1, 256):
            x = np.random.default_rng(batch).normal(size=(batch, DIM)).astype(np.float32)
            ids = session.run(None, {"user_vector": x})[0]
            out[f"ids_match_b{batch}"] = bool(np.array_equal(ids, module(torch.from_numpy(x))[0].numpy()))
            stats = runner.latency_stats(runner.time_calls(lambda x=x: session.run(None, {"user_vector": x}), RUNS, 20),
                                         batch)
            out[f"p50_ms_b{batch}"], out[f"p99_ms_b{batch}"] = stats["p50_ms"], stats["p99_ms"]
    return out


def main() -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    runner = runner_module()
    users = DenseEmbedding([100], DIM)
    weight = torch.randn(ITEMS, DIM)
    weight[torch.rand_like(weight) < ZEROS] = 0
    dense = DenseEmbedding([ITEMS], DIM)
    with torch.no_grad():
        dense.weight.copy_(weight)
    rows = []
    for layout in ("dense", "csr", "bcsr", "ell"):
        items = dense if layout == "dense" else SparseEmbedding.from_weight([ITEMS], weight, layout=layout)
        model = BPRMF(users, items).eval()
        module, io = export_module(model)
        forms = [("decode" if layout != "dense" else "dense", module)]
        if layout != "dense":
            forms.append(("window", WindowTopK(model, io["topk"]["k"]).eval()))
        for form, mod in forms:
            row = {"layout": layout, "read": form, **_measure(mod, io, runner)}
            rows.append(row)
            print(row, flush=True)
    result = {"items": ITEMS, "dim": DIM, "zeros": ZEROS, "runs": RUNS, "threads": 1, "rows": rows,
              "machine": platform.machine(), "processor": platform.processor() or platform.machine(),
              "torch": torch.__version__, "onnxruntime": runner.ort.__version__}
    RESULTS.mkdir(exist_ok=True)
    atomic_write_json(RESULTS / "topk_sparse_latency.json", result)
    dense_p50 = next(r["p50_ms_b1"] for r in rows if r["layout"] == "dense")
    lines = ["# Top-K artefact with a sparse item table: batch-1 latency", "",
             f"{ITEMS:,} x {DIM} item table, {ZEROS:.0%} zeros, fp32, onnxruntime {result['onnxruntime']}, one thread, "
             f"{RUNS} timed calls; `python benchmarks/topk_sparse_latency.py`.", "",
             "| layout | item vectors | file B | p50 ms b=1 | p99 ms b=1 | × dense p50 | p50 ms b=256 | ids = PyTorch |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['layout']} | {r['read']} | {r['file_bytes']:,} | {r['p50_ms_b1']:.3f} | {r['p99_ms_b1']:.3f} | "
                     f"{r['p50_ms_b1'] / dense_p50:.1f} | {r['p50_ms_b256']:.3f} | "
                     f"{r['ids_match_b1'] and r['ids_match_b256']} |")
    atomic_write_text(RESULTS / "topk_sparse_latency.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
