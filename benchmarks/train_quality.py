"""Real-data results table (issue 2): full models trained with ondevice on the shared datasets.

For each dataset: ``prepare`` -> ``train`` (early stopping on validation) -> the test split
evaluated once with the model chosen on validation. Reports test AUC/logloss (CTR) or
Recall@20/NDCG@20 with full ranking that excludes training items (top-K), parameters,
fp32 bytes and training time.

* ``criteo-head10k``: DeepFM on the first 10,000 rows of Criteo Kaggle DAC (random 80/10/10,
  min-count 2) — a smoke-size sample; AUCs are far below full-Criteo numbers (~0.81).
* ``frappe``: DeepFM on Frappe (NFM libFM validation + test files pooled, random 80/10/10;
  the NFM train file is not in ../shared/data, so numbers are not comparable with BARS's
  0.98 on the full split).
* ``ml1m-lcfn``: BPR-MF on MovieLens-1M, LCFN implicit split (given train/test; validation =
  10 % of each user's train interactions).
* ``amazon-cds``: BPR-MF on Amazon-CDs, BGCF split (same protocol).

    python benchmarks/train_quality.py [--only NAME ...] [--threads 2]

Writes ``benchmarks/results/train_quality.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ondevice.data import prepare
from ondevice.io import atomic_write_json, atomic_write_text
from ondevice.train import TrainConfig, load_checkpoint, train

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
CACHE = REPO / "benchmarks" / ".cache" / "train_quality"
RESULTS = REPO / "benchmarks" / "results"

DATASETS: dict[str, dict[str, Any]] = {
    "criteo-head10k": {
        "inputs": ["criteo/criteo_dac_train_head10k.tsv.gz"],
        "prepare": {"format": "criteo", "min_count": 2, "split": "random", "seed": 0},
        "config": TrainConfig(model="deepfm", embed_dim=16, mlp_dims=[400, 400, 400], dropout=0.2, epochs=10,
                              patience=2, batch_size=256),
    },
    "frappe": {
        "inputs": ["frappe/nfm-libfm/frappe.validation.libfm.gz", "frappe/nfm-libfm/frappe.test.libfm.gz"],
        "prepare": {"format": "libfm", "split": "random", "seed": 0},
        "config": TrainConfig(model="deepfm", embed_dim=10, mlp_dims=[400, 400, 400], epochs=30, patience=2,
                              batch_size=1024),
    },
    "ml1m-lcfn": {
        "inputs": ["movielens-1m/lcfn-implicit-split/train.txt.gz", "movielens-1m/lcfn-implicit-split/test.txt.gz"],
        "prepare": {"format": "implicit", "split": "given", "seed": 0},
        "config": TrainConfig(model="bprmf", embed_dim=64, lr=5e-3, l2=1e-4, epochs=30, patience=3, batch_size=2048),
    },
    "amazon-cds": {
        "inputs": ["amazon-yelp/bgcf-amazon-cds/train.txt.gz", "amazon-yelp/bgcf-amazon-cds/test.txt.gz"],
        "prepare": {"format": "implicit", "split": "given", "seed": 0},
        "config": TrainConfig(model="bprmf", embed_dim=64, lr=5e-3, l2=1e-4, epochs=20, patience=3, batch_size=4096),
    },
}


def run_one(name: str, spec: dict[str, Any], threads: int) -> dict[str, Any]:
    inputs = [SHARED / p for p in spec["inputs"]]
    work = CACHE / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    info = prepare(inputs, work / "data", **spec["prepare"])
    prepare_s = time.perf_counter() - t0
    config: TrainConfig = spec["config"]
    config.threads = threads
    result = train(work / "data", work / "run", config, quiet=True)
    model = load_checkpoint(work / "run").model
    params = sum(p.numel() for p in model.parameters())
    return {
        "dataset": name,
        "inputs": [str(p.relative_to(SHARED)) for p in inputs],
        "rows": info["rows"],
        "model": config.model,
        "config": {k: getattr(config, k) for k in ("embed_dim", "mlp_dims", "dropout", "lr", "l2", "batch_size", "epochs", "patience")},
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "val": result.val,
        "test": result.test,
        "params": params,
        "fp32_bytes": sum(t.numel() * t.element_size() for t in model.state_dict().values()),
        "train_seconds": result.train_seconds,
        "prepare_seconds": prepare_s,
        "samples_per_s_last_epoch": result.history[-1]["samples_per_s"],
    }


def to_markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# Full models on the shared real datasets (issue 2)",
        "",
        f"Machine: {meta['machine']}; torch {meta['torch']}; {meta['threads']} torch threads; {meta['date']}.",
        f"Command: `{meta['command']}`. Test split evaluated once with the epoch chosen on validation.",
        f"Timing caveat: {meta['note']}." if meta.get("note") else "",
        "",
        "| dataset | model | rows (train/val/test) | best epoch | test metric | val metric | params | fp32 bytes | train s |",
        "|---|---|---|---:|---|---|---:|---:|---:|",
    ]
    for r in rows:
        rows_s = "/".join(f"{r['rows'][s]:,}" for s in ("train", "val", "test"))
        if r["model"] == "bprmf":
            test = f"Recall@20 {r['test']['recall@20']:.4f}, NDCG@20 {r['test']['ndcg@20']:.4f}"
            val = f"Recall@20 {r['val']['recall@20']:.4f}"
        else:
            test = f"AUC {r['test']['auc']:.4f}, logloss {r['test']['logloss']:.4f}"
            val = f"AUC {r['val']['auc']:.4f}"
        lines.append(f"| {r['dataset']} | {r['model']} | {rows_s} | {r['best_epoch']}/{r['epochs_run']} | {test} | {val} "
                     f"| {r['params']:,} | {r['fp32_bytes']:,} | {r['train_seconds']:.0f} |")
    lines += ["", "Notes:", ""]
    lines.append("- criteo-head10k is the first 10,000 rows only (8,000 to train): a smoke-size sample, not a Criteo result.")
    lines.append("- frappe pools NFM's validation and test libFM files (the train file is not available offline) and "
                 "splits them 80/10/10 at random; not comparable with BARS's Frappe_x1.")
    lines.append("- top-K: full ranking over all items, training (and, for test, validation) items excluded; "
                 "validation = 10 % of each user's train interactions.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=sorted(DATASETS), help="run only these datasets")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not SHARED.is_dir():
        print(f"skipped: {SHARED} is absent (the shared datasets are not redistributable)")
        return
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.only or list(DATASETS):
        print(f"== {name}", flush=True)
        row = run_one(name, DATASETS[name], args.threads)
        print(json.dumps({k: row[k] for k in ("dataset", "test", "train_seconds")}), flush=True)
        rows.append(row)
    meta = {
        "machine": f"{platform.machine()} {platform.processor() or ''}, {torch.get_num_threads()} threads".strip(),
        "torch": torch.__version__,
        "threads": args.threads,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python benchmarks/train_quality.py " + " ".join(sys.argv[1:]),
        "note": "train s measured on a shared 2-core machine with another benchmark running at nice 19",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    previous = RESULTS / "train_quality.json"
    if args.only and previous.is_file():  # keep the other datasets' rows from the last run
        done = {r["dataset"] for r in rows}
        kept = [r for r in json.loads(previous.read_text())["results"] if r["dataset"] not in done]
        rows = sorted(kept + rows, key=lambda r: list(DATASETS).index(r["dataset"]))
    atomic_write_json(RESULTS / "train_quality.json", {"meta": meta, "results": rows})
    atomic_write_text(RESULTS / "train_quality.md", to_markdown(rows, meta))
    print((RESULTS / "train_quality.md").read_text())


if __name__ == "__main__":
    main()
