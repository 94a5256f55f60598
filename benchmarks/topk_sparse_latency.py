"""Top-K artefacts with a sparse (PEP-style) item table: batch-1 latency of the table forms.

A BPR-MF with a 40,000 x 64 item table (random normal, seed 0, 85 % of the entries zeroed,
about what PEP leaves at a quarter of the bytes) exported as ondevice exports top-K models
(``user_vector, exclude_items -> item_ids, scores``; 32 seen items per row, 4 of them -1
padding), for the dense table and each ``SparseEmbedding`` layout in fp32: file bytes,
session creation time, the RSS a session adds, and onnxruntime p50/p99 at batch 1 and 256,
one thread, with the item table

* ``at load``: computed from an initializer 0, so onnxruntime folds the decode (sparse) or
  the gather (dense) once at session creation; each call is MatMul + exclusion + TopK
  (what ``export`` writes for ``.onnx``);
* ``per call``: computed from ``Shape(user_vector)[0]·0``, decoded on every call
  (``SparseEmbedding.full_table``, O(nnz) scatter; what ``export`` writes for ``.ort``,
  whose converter would otherwise store the folded table dense);
* ``window``: sparse only, the layer's lookup over ids 1..N-1 (a K-wide window gather per
  row: the form before issue 13), per call.

The top-k ids equal PyTorch's on the timed inputs (``ids_match``).

    python benchmarks/topk_sparse_latency.py
    python benchmarks/topk_sparse_latency.py --malloc-mmap-threshold 131072

Writes ``benchmarks/results/topk_sparse_latency.{json,md}`` (``_mmap131072`` appended with
the option). The option fixes glibc's ``M_MMAP_THRESHOLD`` in the memory processes
(``MALLOC_MMAP_THRESHOLD_``): by default glibc raises it after freeing a large block, so the
10 MB intermediates of a table folded at load come from the heap and stay resident after the
session is built; with a fixed threshold they are unmapped when freed, which is what
allocators that map large blocks (Android's scudo, jemalloc) do.
"""

from __future__ import annotations

import multiprocessing
import platform
import tempfile
import time
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
    """The first lowering: item vectors from the layer's per-id lookup."""

    def item_table(self, seed: torch.Tensor) -> torch.Tensor:
        item_ids = torch.arange(seed, seed + self.num_items, dtype=torch.int64).unsqueeze(1)
        return self.item_embedding(item_ids).squeeze(1).t()


def _memory(path: str, queue) -> None:
    """In a fresh process: resident memory the session adds, and the peak over 20 batch-1 calls (runner's counters)."""
    runner = runner_module()
    runner.warm_up_runtime(1)
    before = runner.rss_bytes()
    runner.reset_peak_rss()
    session = runner.make_session(path, 1)
    after = runner.rss_bytes()
    feeds = _feeds(1)
    for _ in range(20):
        session.run(None, feeds)
    queue.put({"session_rss_bytes": after - before, "peak_rss_bytes": runner.peak_rss_bytes() - before})


def _feeds(batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch)
    seen = rng.integers(1, ITEMS, size=(batch, 32)).astype(np.int64)
    seen[:, 28:] = -1
    return {"user_vector": rng.normal(size=(batch, DIM)).astype(np.float32), "exclude_items": seen}


def _measure(module: torch.nn.Module, io: dict, runner, at_load: bool) -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(module, io, torch.zeros(2, DIM), path, table_at_load=at_load)
        out["file_bytes"] = path.stat().st_size
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        proc = ctx.Process(target=_memory, args=(str(path), queue))
        proc.start()
        out.update(queue.get(timeout=300))
        proc.join()
        t0 = time.perf_counter()
        session = runner.make_session(path, 1)
        out["session_create_ms"] = (time.perf_counter() - t0) * 1e3
        for batch in (1, 256):
            feeds = _feeds(batch)
            ids = session.run(None, feeds)[0]
            with torch.no_grad():
                ref = module(*(torch.from_numpy(v) for v in feeds.values()))[0].numpy()
            out[f"ids_match_b{batch}"] = bool(np.array_equal(ids, ref))
            stats = runner.latency_stats(runner.time_calls(lambda f=feeds, s=session: s.run(None, f), RUNS, 20), batch)
            out[f"p50_ms_b{batch}"], out[f"p99_ms_b{batch}"] = stats["p50_ms"], stats["p99_ms"]
        del session
    return out


def main() -> None:
    import argparse
    import os

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--malloc-mmap-threshold", type=int, default=None)
    args = parser.parse_args()
    suffix = ""
    if args.malloc_mmap_threshold is not None:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)  # the spawned memory processes read it
        suffix = f"_mmap{args.malloc_mmap_threshold}"
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
        forms = [("at load", module, True), ("per call", module, False)]
        if layout != "dense":
            forms.append(("window", WindowTopK(model, io["topk"]["k"]).eval(), False))
        for form, mod, at_load in forms:
            row = {"layout": layout, "table": form, **_measure(mod, io, runner, at_load)}
            rows.append(row)
            print(row, flush=True)
    result = {"items": ITEMS, "dim": DIM, "zeros": ZEROS, "runs": RUNS, "threads": 1, "rows": rows,
              "machine": platform.machine(), "processor": platform.processor() or platform.machine(),
              "torch": torch.__version__, "onnxruntime": runner.ort.__version__,
              "malloc_mmap_threshold": args.malloc_mmap_threshold}
    RESULTS.mkdir(exist_ok=True)
    atomic_write_json(RESULTS / f"topk_sparse_latency{suffix}.json", result)
    dense_p50 = {r["table"]: r["p50_ms_b1"] for r in rows if r["layout"] == "dense"}
    lines = ["# Top-K artefact with a sparse item table: batch-1 latency", "",
             f"{ITEMS:,} x {DIM} item table, {ZEROS:.0%} zeros, fp32, 32 excluded items per row, onnxruntime "
             f"{result['onnxruntime']}, one thread, {RUNS} timed calls; `python benchmarks/topk_sparse_latency.py`. "
             "*at load*: the table is computed once at session creation (what `export` writes for .onnx); "
             "*per call*: decoded every call (what it writes for .ort); *window*: the per-row gather before issue 13. "
             "*× dense*: p50 at batch 1 over the dense table's *at load* p50. *session RSS* / *peak*: resident "
             "memory the session adds after creation / at its peak over 20 batch-1 calls (a fresh process each, "
             "the device runner's counters, over the RSS before the session).", "",
             "| layout | item table | file B | session ms | session RSS MB | peak MB | p50 ms b=1 | p99 ms b=1 | × dense | "
             "p50 ms b=256 | ids = PyTorch |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['layout']} | {r['table']} | {r['file_bytes']:,} | {r['session_create_ms']:.1f} | "
                     f"{r['session_rss_bytes'] / 1e6:.1f} | {r['peak_rss_bytes'] / 1e6:.1f} | {r['p50_ms_b1']:.3f} | {r['p99_ms_b1']:.3f} | "
                     f"{r['p50_ms_b1'] / dense_p50['at load']:.1f} | {r['p50_ms_b256']:.3f} | "
                     f"{r['ids_match_b1'] and r['ids_match_b256']} |")
    atomic_write_text(RESULTS / f"topk_sparse_latency{suffix}.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
