"""DeepLight benchmark (issue 5): AUC vs non-zeros and bytes against the full DeepFwFM and PEP,
and onnxruntime CPU latency of dense vs pruned (unstructured vs structured) artefacts.

Data: Frappe (``../shared/data/frappe/nfm-libfm/``, validation + test files prepared as one
table with a seeded random 80/10/10 split) and a synthetic Criteo-like set
(``ondevice.data.generate_ctr``, 13 integer + 26 categorical columns, ``--min-count 10``).
Model: DeepFwFM, dim 10, MLP 400-400-400 (the paper's), trained 2 epochs; DeepLight 2 pruning
+ 1 fine-tune epochs, PEP 2 search + 1 retrain epochs (kept short: 2 shared CPU cores).

Per dataset, two budgets: ``loose`` = everything but the table + 30 % of the dense table
(PEP can meet it: it only prunes the table), ``tight`` = 12 % of the full file (only
DeepLight, which prunes the DNN too, can). Metrics: validation AUC (what the searchers
select on) and test AUC (read once, after selection), non-zero parameters, file bytes.

Latency (batch 1 and 256, 1 intra-op thread, one process, the variants interleaved in
rounds so machine noise hits all alike; p50 in ms):

* ``full``: the dense DeepFwFM artefact;
* ``pruned, dense storage``: DeepLight's weights with the zeros stored (the latency floor of
  any format that densifies at load);
* ``pruned, ONNX sparse_initializer``: that file with every ≥ 2/3-sparse MLP weight moved
  to ``graph.sparse_initializer`` (values fp32 + spec int64 indices; onnxruntime densifies
  them when the session is created);
* ``unstructured (SparseLinear)``: the tight-budget DeepLight search run with ``structured=False``;
* ``structured``: the same weights with dead neurons removed (the default export; its row in
  the quality table);
* ``structured + neuron_sparsity 0.5``: the extension that prunes half the neurons whole.

    python benchmarks/deeplight.py [--out benchmarks/results] [--rows 50000]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper, numpy_helper
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
FRAPPE = ROOT.parent / "shared" / "data" / "frappe" / "nfm-libfm"


# ---------------------------------------------------------------------- data + models
def prepare_data(work: Path, rows: int) -> dict[str, Path]:
    from ondevice.data import generate_ctr, prepare

    out = {}
    prepare([FRAPPE / "frappe.validation.libfm.gz", FRAPPE / "frappe.test.libfm.gz"], work / "frappe",
            format="libfm", split="random", seed=0)
    out["frappe"] = work / "frappe"
    raw = work / "synthetic.txt"
    generate_ctr(raw, rows, seed=0, format="criteo")
    prepare([raw], work / "synthetic", format="criteo", split="random", seed=0, min_count=10)
    out["synthetic-criteo"] = work / "synthetic"
    return out


def nonzeros(model: nn.Module) -> int:
    """Non-zero weights the exported model holds (tables by their effective values)."""
    from ondevice.embedding import EmbeddingLayer

    total = 0
    for _, m in model.named_children():
        if isinstance(m, EmbeddingLayer):
            total += int((m.dense_weight() != 0).sum())
    for name, p in model.named_parameters():
        if not name.startswith(("embedding.", "linear.")):
            total += int((p.detach() != 0).sum())
    return total


def test_auc(model: nn.Module, data) -> float:
    from ondevice.train import evaluate_ctr

    s = data.split("test")
    return float(evaluate_ctr(copy.deepcopy(model).eval(), s.ids, s.labels)["auc"])


def densify(model):
    """A DeepLight model with its SparseLinear layers stored dense again (zeros stored)."""
    from ondevice.models.sparse_linear import SparseLinear

    model = copy.deepcopy(model)
    for i, m in enumerate(model.mlp):
        if isinstance(m, SparseLinear):
            model.mlp[i] = m.to_linear()
    model.sparse_mlp = None
    return model


# ---------------------------------------------------------------------- ONNX files
def export_file(model, path: Path) -> Path:
    from ondevice.export.lowering import export_module
    from ondevice.export.onnx_export import deployable_model, export_onnx

    deployed = deployable_model(model)
    module, io = export_module(deployed)
    path = path.parent / path.stem / "model.onnx"  # export_onnx wants a folder of its own
    path.parent.mkdir(parents=True)
    export_onnx(module, io, torch.zeros(2, deployed.num_fields, dtype=torch.int64), path)
    return path


def to_sparse_initializers(src: Path, dst: Path, min_sparsity: float = 2 / 3) -> int:
    """Move 2-D fp32 initializers that are ≥ ``min_sparsity`` zero into ``sparse_initializer``."""
    m = onnx.load(str(src))
    g = m.graph
    moved = 0
    for t in list(g.initializer):
        a = numpy_helper.to_array(t)
        if a.ndim != 2 or a.dtype != np.float32 or a.size < 1024 or np.mean(a == 0) < min_sparsity:
            continue
        flat = a.reshape(-1)
        nz = np.flatnonzero(flat)
        sp = helper.make_sparse_tensor(numpy_helper.from_array(flat[nz], t.name),
                                       numpy_helper.from_array(nz.astype(np.int64)), list(a.shape))
        g.initializer.remove(t)
        g.sparse_initializer.append(sp)
        moved += 1
    onnx.checker.check_model(m)
    onnx.save(m, str(dst))
    return moved


def latency(files: dict[str, Path], fields: int, vocab: list[int], rounds: int = 5) -> dict[str, dict[str, float]]:
    """p50 ms per file at batch 1 and 256, 1 thread, variants interleaved over ``rounds``."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    sessions = {k: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for k, p in files.items()}
    rng = np.random.default_rng(0)
    out: dict[str, dict[str, float]] = {k: {} for k in files}
    for batch, calls in ((1, 200), (256, 20)):
        x = np.stack([rng.integers(0, v, size=batch) for v in vocab], axis=1).astype(np.int64)
        samples: dict[str, list[float]] = {k: [] for k in files}
        ref = None
        for k, s in sessions.items():  # warm-up + outputs agree across formats
            y = s.run(None, {"ids": x})[0]
            for _ in range(10):
                s.run(None, {"ids": x})
            if ref is None:
                ref = k
            out[k][f"out_b{batch}"] = y
        for _ in range(rounds):
            for k, s in sessions.items():
                for _ in range(calls):
                    t0 = time.perf_counter_ns()
                    s.run(None, {"ids": x})
                    samples[k].append((time.perf_counter_ns() - t0) / 1e6)
        for k in files:
            out[k][f"p50_ms_b{batch}"] = float(np.median(samples[k]))
    return out


# ---------------------------------------------------------------------- one dataset
def run_dataset(name: str, data_dir: Path, work: Path, log) -> dict[str, Any]:
    from ondevice.data import EncodedDataset
    from ondevice.pipeline.measure import measure_file_bytes
    from ondevice.search import ByteAccountant, make_searcher
    from ondevice.search.pruning.deeplight import compact_deepfwfm
    from ondevice.search.retrain import val_metrics
    from ondevice.train import TrainConfig, load_checkpoint, train

    data = EncodedDataset(data_dir)
    cfg = TrainConfig(model="deepfwfm", embed_dim=10, mlp_dims=[400, 400, 400], epochs=2, batch_size=1024,
                      lr=1e-3, patience=1, seed=0)
    t0 = time.perf_counter()
    train(data_dir, work / f"run-{name}", cfg, quiet=True)
    train_s = time.perf_counter() - t0
    ckpt = load_checkpoint(work / f"run-{name}")
    full = ckpt.model
    full_file, full_params = measure_file_bytes(full)
    acc = ByteAccountant(graph_overhead_bytes=full_file - full_params)
    table = full.embedding.storage_bytes()
    budgets = {"loose": acc.fixed_bytes(full) + int(0.3 * table), "tight": int(0.12 * full_file)}
    log(f"[{name}] rows {sum(len(data.split(s)) for s in ('train', 'val', 'test')):,}, vocab {sum(data.schema.vocab_sizes):,}, "
        f"full {full_file:,} B (table {table:,} B), trained in {train_s:.0f}s; budgets {budgets}")
    rows: list[dict[str, Any]] = [{
        "method": "full DeepFwFM", "budget": None, "budget_bytes": None, "file_bytes": full_file,
        "nonzeros": nonzeros(full), "val_auc": val_metrics(copy.deepcopy(full), data)["auc"],
        "test_auc": test_auc(full, data), "seconds": train_s}]
    results: dict[str, Any] = {}
    for label, budget in budgets.items():
        for method, params in (("deeplight", {"epochs": 2, "finetune_epochs": 1, "structured": label != "tight"}),
                               ("pep", {"search_epochs": 2, "epochs": 1})):
            t0 = time.perf_counter()
            try:
                r = make_searcher(method, seed=0, **params).search(ckpt, data, budget, accountant=acc)
                if method == "deeplight" and label == "tight":  # searched unstructured: keep it for latency
                    results["unstructured"] = r.model
                    r.model = compact_deepfwfm(densify(r.model), structured=True)
            except Exception as err:  # noqa: BLE001 - a method that cannot meet a budget is a result
                rows.append({"method": method, "budget": label, "budget_bytes": budget, "error": str(err)[:200]})
                log(f"[{name}] {method} @ {label}: {str(err)[:120]}")
                continue
            secs = time.perf_counter() - t0
            fb, _ = measure_file_bytes(r.model)
            row = {"method": method, "budget": label, "budget_bytes": budget, "file_bytes": fb, "fits": fb <= budget,
                   "nonzeros": nonzeros(r.model), "val_auc": r.val["auc"], "test_auc": test_auc(r.model, data),
                   "seconds": secs}
            if method == "deeplight":
                c = r.config["_data"]
                row.update({"sparsity": c["achieved"], "pairs_kept": f"{c['pairs_kept']}/{c['pairs_total']}",
                            "mlp_dims": r.model.mlp_dims, "period_Q": c["period"]})
            rows.append(row)
            results[(method, label)] = r
            log(f"[{name}] {method} @ {label}: {fb:,} B, val AUC {row['val_auc']:.4f}, {secs:.0f}s")

    # --- latency of the tight-budget DeepLight model in its storage variants
    lat_files: dict[str, Path] = {}
    sizes: dict[str, int] = {}
    d = work / f"onnx-{name}"
    lat_files["full"] = export_file(full, d / "full.onnx")
    unstructured = results["unstructured"]
    dense_pruned = densify(unstructured)
    lat_files["pruned, dense storage"] = export_file(dense_pruned, d / "pruned_dense.onnx")
    moved = to_sparse_initializers(lat_files["pruned, dense storage"], d / "pruned_sparse_init.onnx")
    lat_files["pruned, ONNX sparse_initializer"] = d / "pruned_sparse_init.onnx"  # d itself holds no export
    lat_files["unstructured (SparseLinear)"] = export_file(unstructured, d / "unstructured.onnx")
    structured = compact_deepfwfm(dense_pruned, structured=True)
    lat_files["structured"] = export_file(structured, d / "structured.onnx")
    neuron = make_searcher("deeplight", seed=0, epochs=2, finetune_epochs=1, neuron_sparsity=0.5).search(
        ckpt, data, budgets["tight"], accountant=acc)
    lat_files["structured + neuron_sparsity 0.5"] = export_file(neuron.model, d / "neuron.onnx")
    rows.append({"method": "deeplight neuron_sparsity=0.5", "budget": "tight", "budget_bytes": budgets["tight"],
                 "file_bytes": lat_files["structured + neuron_sparsity 0.5"].stat().st_size,
                 "nonzeros": nonzeros(neuron.model), "val_auc": neuron.val["auc"],
                 "test_auc": test_auc(neuron.model, data), "mlp_dims": neuron.model.mlp_dims})
    sizes = {k: p.stat().st_size for k, p in lat_files.items()}
    lat = latency(lat_files, data.schema.num_fields, list(data.schema.vocab_sizes))
    ref1, ref256 = lat["pruned, dense storage"]["out_b1"], lat["pruned, dense storage"]["out_b256"]
    variants = []
    for k in lat_files:
        same = k in ("pruned, dense storage", "pruned, ONNX sparse_initializer", "unstructured (SparseLinear)", "structured")
        diff = max(float(np.abs(lat[k]["out_b1"] - ref1).max()), float(np.abs(lat[k]["out_b256"] - ref256).max()))
        variants.append({"variant": k, "file_bytes": sizes[k], "p50_ms_b1": lat[k]["p50_ms_b1"],
                         "p50_ms_b256": lat[k]["p50_ms_b256"],
                         "max_abs_diff_vs_pruned_dense": diff if same else None})
    base = variants[0]
    for v in variants:
        v["speedup_b1_vs_full"] = base["p50_ms_b1"] / v["p50_ms_b1"]
        v["speedup_b256_vs_full"] = base["p50_ms_b256"] / v["p50_ms_b256"]
    log(f"[{name}] latency: " + "; ".join(f"{v['variant']} {v['p50_ms_b1']:.3f}/{v['p50_ms_b256']:.2f} ms" for v in variants))
    return {"dataset": name, "vocab_total": int(sum(data.schema.vocab_sizes)), "fields": data.schema.num_fields,
            "rows": {s: len(data.split(s)) for s in ("train", "val", "test")}, "train_config": cfg.__dict__,
            "budgets": budgets, "quality": rows, "latency": variants,
            "sparse_initializers_moved": moved,
            "structured_mlp_dims": structured.mlp_dims}


# ---------------------------------------------------------------------- report
def render(res: dict[str, Any]) -> str:
    lines = ["# DeepLight vs PEP vs the full DeepFwFM", "",
             f"`python benchmarks/deeplight.py` — {res['machine']}, torch {res['versions']['torch']}, "
             f"onnxruntime {res['versions']['onnxruntime']}, total {res['seconds']:.0f} s. DeepFwFM dim 10, MLP 400-400-400. "
             "AUC: validation (selection) and test (read once). Bytes: the exported `model.onnx`.", ""]
    for ds in res["datasets"]:
        lines += [f"## {ds['dataset']} ({ds['rows']['train']:,} train rows, {ds['fields']} fields, {ds['vocab_total']:,} ids)", "",
                  f"Budgets: loose {ds['budgets']['loose']:,} B (all but the table + 30 % of it), "
                  f"tight {ds['budgets']['tight']:,} B (12 % of the full file).", "",
                  "| method | budget | file B | non-zeros | val AUC | test AUC | notes |", "|---|---|---:|---:|---:|---:|---|"]
        for r in ds["quality"]:
            if "error" in r:
                lines.append(f"| {r['method']} | {r['budget']} ({r['budget_bytes']:,} B) | — | — | — | — | does not fit: {r['error'][:110]} |")
                continue
            note = ""
            if "sparsity" in r:
                s = r["sparsity"]
                note = (f"sparsity emb {s['embedding']:.2f} / DNN {s['dnn']:.2f} / R {s['pairs']:.2f}; pairs {r['pairs_kept']}; "
                        f"MLP {r['mlp_dims']}; Q={r['period_Q']:.2f}")
            elif "mlp_dims" in r:
                note = f"MLP {r['mlp_dims']}"
            budget = "—" if r["budget"] is None else f"{r['budget']}"
            lines.append(f"| {r['method']} | {budget} | {r['file_bytes']:,} | {r['nonzeros']:,} | {r['val_auc']:.4f} | "
                         f"{r['test_auc']:.4f} | {note} |")
        lines += ["", "ORT CPU latency, 1 thread, p50 (tight budget; interleaved rounds, same process):", "",
                  "| variant | file B | b=1 ms | b=256 ms | × vs full (b=1 / b=256) | max |Δ| vs pruned dense |",
                  "|---|---:|---:|---:|---:|---:|"]
        for v in ds["latency"]:
            diff = "—" if v["max_abs_diff_vs_pruned_dense"] is None else f"{v['max_abs_diff_vs_pruned_dense']:.1e}"
            lines.append(f"| {v['variant']} | {v['file_bytes']:,} | {v['p50_ms_b1']:.3f} | {v['p50_ms_b256']:.2f} | "
                         f"{v['speedup_b1_vs_full']:.2f} / {v['speedup_b256_vs_full']:.2f} | {diff} |")
        lines.append("")
    lines += ["## Reading the numbers", "",
              "* **Unstructured sparsity shrinks the file, not the latency.** onnxruntime's CPU MatMul is dense; "
              "`SparseLinear` rebuilds each dense weight per call (Range/Gather/CumSum/ScatterElements), which costs "
              "extra time at batch 1. ONNX `sparse_initializer` (int64 indices: 12 B per kept weight vs our ≈ 5 B) is "
              "densified when the session loads, so it runs at dense speed with a larger file than ours.",
              "* **The paper's 46× (Criteo) / 27× (Avazu)** came from a C++ sparse-matrix benchmark "
              "(`latency/criteo_latency.cpp` on `uestla/Sparse-Matrix`), not from a dense-kernel runtime; "
              "we cannot reproduce it with ORT's standard kernels.",
              "* **Structured pruning is what speeds ORT up**: removing dead neurons shrinks the MatMuls themselves. "
              "At 90-95 % per-weight sparsity 30-60 % of the 400-wide neurons die by themselves (zero row with "
              "bias ≤ 0, or an unread column) and are removed exactly; the `neuron_sparsity` extension prunes half "
              "of each layer whole (lower AUC here). Batch 1 stays slower than dense while the remaining layers "
              "are expanded per call; batch 256 gets faster.",
              "* At the tight budgets the DNN/R targets were escalated from 0.9 to 0.95 (the budget needed more "
              "than the paper's defaults), as the planner documents.",
              "* Every pruned variant stores the table in its cheapest exact format (CSR `SparseEmbedding` when "
              "pruned), whose lookup (Gather + ScatterElements) costs more than the dense table's one Gather; the "
              "variants differ only in how the DNN is stored.",
              "* PEP prunes only the table; where the DNN dominates the bytes (here) it cannot reach tight budgets.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--rows", type=int, default=50_000, help="rows of the synthetic Criteo-like set")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    warnings.simplefilter("ignore")
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"{time.perf_counter() - started:7.1f}s {msg}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        dirs = prepare_data(work, args.rows)
        datasets = [run_dataset(name, d, work, log) for name, d in dirs.items()]
    from ondevice.export.onnx_export import versions

    res = {"benchmark": "deeplight", "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
           "versions": versions(), "datasets": datasets, "seconds": time.perf_counter() - started}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "deeplight.json").write_text(json.dumps(res, indent=1, default=str))
    (args.out / "deeplight.md").write_text(render(res))
    log(f"wrote {args.out / 'deeplight.json'} and deeplight.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
