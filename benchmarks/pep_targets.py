"""Does PEP reach 50 / 80 / 90 / 95 % embedding sparsity through its thresholds (not the
magnitude fallback) on every CTR dataset in ``../shared/data``, with the searcher's defaults
(issue 12, point 3)?

Datasets (``prepare`` with a seeded random 80/10/10 split):

* ``frappe``: the NFM libFM validation + test files pooled (86,582 rows, 10 fields);
* ``criteo-head10k``: the first 10,000 rows of Criteo's Kaggle train file (``--min-count 2``);
* ``movielens-head10k``: the first 10,000 MovieLens-1M ratings with user and movie features
  (``--format movielens``, rating ≥ 4 is a click).

Per dataset a DeepFM is trained with ``ondevice train``'s defaults; PEP then searches each
sparsity (non-zeros of the whole table, the paper's unit) from that model. Reported: how
the target was reached, the search steps, validation and test AUC (selected on validation,
test read once) against the full model, seconds. One torch thread; shared 2-core machine.

    python benchmarks/pep_targets.py [--datasets frappe,criteo-head10k,movielens-head10k]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import log, test_auc, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SPARSITIES = (0.5, 0.8, 0.9, 0.95)
DATASETS: dict[str, dict[str, Any]] = {
    "frappe": {"files": [SHARED / "frappe/nfm-libfm/frappe.validation.libfm.gz",
                         SHARED / "frappe/nfm-libfm/frappe.test.libfm.gz"], "format": "libfm", "min_count": 1},
    "criteo-head10k": {"files": [SHARED / "criteo/criteo_dac_train_head10k.tsv.gz"], "format": "criteo", "min_count": 2},
    "movielens-head10k": {"files": [SHARED / "movielens-1m/ratings_head10k.dat.gz"], "format": "movielens",
                          "min_count": 1},
}


def run_dataset(name: str, work: Path, log) -> dict[str, Any] | None:
    from ondevice.data import EncodedDataset, prepare
    from ondevice.search import make_searcher
    from ondevice.train import TrainConfig, load_checkpoint, train

    spec = DATASETS[name]
    if not all(f.is_file() for f in spec["files"]):
        log(f"[{name}] skipped: {spec['files'][0]} not found")
        return None
    data_dir = work / f"data-{name}"
    if not (data_dir / "schema.json").is_file():
        prepare(spec["files"], data_dir, format=spec["format"], min_count=spec["min_count"], seed=0, force=True)
    data = EncodedDataset(data_dir)
    t0 = time.perf_counter()
    full = train(data_dir, work / f"run-{name}", TrainConfig(model="deepfm", threads=1), quiet=True, force=True)
    train_s = time.perf_counter() - t0
    ckpt = load_checkpoint(work / f"run-{name}")
    total = ckpt.model.embedding.weight.numel()
    row: dict[str, Any] = {"dataset": name, "rows": {s: len(data.split(s)) for s in ("train", "val", "test")},
                           "table_entries": total, "full": {"val_auc": full.val["auc"], "test_auc": full.test["auc"],
                                                             "seconds": train_s}, "pep": []}
    log(f"[{name}] full DeepFM: val {full.val['auc']:.4f} test {full.test['auc']:.4f} ({train_s:.0f} s), {total:,} table entries")
    for sparsity in SPARSITIES:
        t0 = time.perf_counter()
        r = make_searcher("pep", target_sparsity=sparsity).search(ckpt, data, 10**12)
        c = r.config["_data"]
        entry = {"sparsity": sparsity, "nonzeros": c["mask_nnz"], "reached_by": c["reached_by"],
                 "search_step": c["search_step"], "search_steps_budget": r.trace[0]["search_steps_budget"],
                 "val_auc": r.val["auc"], "test_auc": test_auc(r.model, data), "seconds": time.perf_counter() - t0}
        row["pep"].append(entry)
        log(f"[{name}] PEP {sparsity:.0%}: {entry['nonzeros']:,} non-zeros by {entry['reached_by']} at step "
            f"{entry['search_step']}/{entry['search_steps_budget']}, val {entry['val_auc']:.4f} test {entry['test_auc']:.4f}")
    return row


def render(res: dict[str, Any]) -> str:
    out = ["# PEP sparsity targets on every shared CTR dataset (searcher defaults)", "",
           f"Command: `{res['command']}`. DeepFM with `ondevice train` defaults; selected on validation, test read once. "
           "One torch thread on a shared 2-core machine; seconds are indicative.", "",
           "| dataset | sparsity | non-zeros / table | reached by | search step / budget | val AUC | test AUC | "
           "full val / test AUC | seconds |", "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for row in res["datasets"]:
        f = row["full"]
        for p in row["pep"]:
            out.append(f"| {row['dataset']} | {p['sparsity']:.0%} | {p['nonzeros']:,} / {row['table_entries']:,} | "
                       f"{p['reached_by']} | {p['search_step']} / {p['search_steps_budget']} | {p['val_auc']:.4f} | "
                       f"{p['test_auc']:.4f} | {f['val_auc']:.4f} / {f['test_auc']:.4f} | {p['seconds']:.0f} |")
    reached = [p["reached_by"] == "threshold" for row in res["datasets"] for p in row["pep"]]
    out += ["", f"Reached by the thresholds: {sum(reached)} of {len(reached)} targets."]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--datasets", default=",".join(DATASETS))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    work = args.work or Path(tempfile.mkdtemp(prefix="ondevice-pep-"))
    work.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"command": "python benchmarks/pep_targets.py " + " ".join(argv or sys.argv[1:]),
                           "machine": platform.platform(), "torch": torch.__version__, "datasets": []}
    for name in args.datasets.split(","):
        row = run_dataset(name, work, log)
        if row is not None:
            res["datasets"].append(row)
    write_results(args.out, "pep_targets", res, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
