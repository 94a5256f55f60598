"""OptInter (issue 6) vs the full DeepFM on Frappe and the Criteo 10K head.

For each dataset: train a DeepFM (val-selected), then OptInter at 1.1×, 1.5× and 2× the
full model's exported bytes (OptInter keeps every field table and spends bytes on memorized
crosses, so it cannot go below the full model: at 1× and ½ its smallest model does not fit,
measured in the first run of this script): test AUC (test split read once per model, after validation
selection), choices (memorized / factorized / none), exported bytes, ORT batch-1 p50
(1 thread), search seconds. A budget below OptInter's smallest model is recorded as such.

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/optinter.py [--datasets criteo frappe]

Writes ``benchmarks/results/optinter.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CACHE = ROOT / "benchmarks" / ".cache" / "optinter"
OUT = ROOT / "benchmarks" / "results"
SOURCES = {"frappe": ([SHARED / "frappe/nfm-libfm/frappe.validation.libfm.gz", SHARED / "frappe/nfm-libfm/frappe.test.libfm.gz"], "libfm"),
           "criteo": ([SHARED / "criteo/criteo_dac_train_head10k.tsv.gz"], "criteo")}
SHARES = (1.1, 1.5, 2.0)  # budgets as multiples of the full model's exported bytes
TRAIN = {"frappe": dict(model="deepfm", embed_dim=10, mlp_dims=[64, 64], epochs=10),
         "criteo": dict(model="deepfm", embed_dim=8, mlp_dims=[64, 64], epochs=5)}


def ort_p50_ms(model, fields: int, runs: int = 300) -> float:
    import onnxruntime as ort

    from ondevice.export.lowering import export_module
    from ondevice.export.onnx_export import deployable_model, export_onnx

    module, io = export_module(deployable_model(model))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        export_onnx(module, io, torch.zeros(2, fields, dtype=torch.int64), path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        x = np.ones((1, fields), dtype=np.int64)
        for _ in range(30):
            sess.run(None, {"ids": x})
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            sess.run(None, {"ids": x})
            times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times))


def run_dataset(name: str, search_epochs: int, epochs: int) -> dict:
    from ondevice.data import EncodedDataset, prepare
    from ondevice.errors import BudgetTooSmallError
    from ondevice.pipeline.measure import measure_file_bytes
    from ondevice.search import ByteAccountant, OptInterSearcher
    from ondevice.train import TrainConfig, evaluate_ctr, train
    from ondevice.train.checkpoint import load_checkpoint

    files, fmt = SOURCES[name]
    if not all(f.is_file() for f in files):
        return {"dataset": name, "skipped": "data not found"}
    data_dir, run_dir = CACHE / f"data-{name}", CACHE / f"run-{name}"
    if not (data_dir / "schema.json").is_file():
        prepare(files, data_dir, format=fmt, split="random", seed=0, force=True)
    if not (run_dir / "model.pt").is_file():
        train(data_dir, run_dir, TrainConfig(**TRAIN[name], lr=1e-3, batch_size=1024, patience=1, seed=0), quiet=True,
              force=True)
    ckpt, data = load_checkpoint(run_dir), EncodedDataset(data_dir)
    test = data.split("test")
    fields = data.schema.num_fields
    full_file, full_params = measure_file_bytes(ckpt.model)
    rows = [{"model": "deepfm (full)", "budget": None, "bytes": full_file,
             "test_auc": evaluate_ctr(copy.deepcopy(ckpt.model).eval(), test.ids, test.labels)["auc"],
             "p50_ms": ort_p50_ms(ckpt.model, fields), "search_s": None, "choices": None}]
    acc = ByteAccountant(graph_overhead_bytes=full_file - full_params)
    for share in SHARES:
        budget = int(full_file * share)
        searcher = OptInterSearcher(search_epochs=search_epochs, epochs=epochs, batch_size=1024, seed=0,
                                    first_order="keep")
        try:
            r = searcher.search(ckpt, data, budget, accountant=acc)
        except BudgetTooSmallError as err:
            rows.append({"model": "optinter", "budget": budget, "outcome": f"too small (minimum {err.minimum_bytes} B)"})
            continue
        file_bytes, _ = measure_file_bytes(r.model)
        rows.append({"model": "optinter", "budget": budget, "bytes": file_bytes, "fits": file_bytes <= budget,
                     "test_auc": evaluate_ctr(r.model, test.ids, test.labels)["auc"], "val_auc": r.val["auc"],
                     "p50_ms": ort_p50_ms(r.model, fields), "search_s": r.timings["total_s"],
                     "choices": r.trace[1]["counts"], "argmax": r.trace[1]["argmax_counts"]})
    return {"dataset": name, "train": TRAIN[name], "rows": data.split("train").__len__(), "results": rows}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", nargs="+", default=["criteo", "frappe"])
    ap.add_argument("--search-epochs", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    CACHE.mkdir(parents=True, exist_ok=True)
    out = {"command": "OMP_NUM_THREADS=1 nice -n 19 python benchmarks/optinter.py " + " ".join(["--datasets", *args.datasets]),
           "datasets": [run_dataset(d, args.search_epochs, args.epochs) for d in args.datasets]}
    from ondevice.io import atomic_write_json, atomic_write_text

    atomic_write_json(OUT / "optinter.json", out)
    lines = ["# OptInter vs full DeepFM", "", f"`{out['command']}`", "",
             "| dataset | model | budget B | bytes | test AUC | mem/fact/none | ORT b1 p50 ms | search s |",
             "|---|---|---|---|---|---|---|---|"]
    notes = ["", "Budgets are 1.1×, 1.5× and 2× the full model's bytes: OptInter adds crosses to a model that keeps "
             "every field table, so it needs headroom above the full model (at 1× and ½ its smallest model does not fit). "
             "`mem/fact/none`: pairs memorized (own hashed cross table) / factorized (e_i ⊙ e_j) / dropped."]
    for d in out["datasets"]:
        for r in d.get("results", []):
            c = r.get("choices")
            lines.append(f"| {d['dataset']} | {r['model']} | {r.get('budget') or '-'} | {r.get('bytes', r.get('outcome'))} | "
                         f"{r['test_auc']:.4f} | " if "test_auc" in r else f"| {d['dataset']} | {r['model']} | {r['budget']} | "
                         f"{r.get('outcome')} | - | ")
            lines[-1] += (f"{c['memorized']}/{c['factorized']}/{c['none']} | " if c else "- | ") + \
                (f"{r['p50_ms']:.3f} | " if "p50_ms" in r else "- | ") + (f"{r['search_s']:.1f} |" if r.get("search_s") else "- |")
    lines += notes
    atomic_write_text(OUT / "optinter.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
