"""Does default BPR-MF (``ondevice train --model bprmf``, no flags) beat a popularity baseline
by a wide margin (≥ 1.5× Recall@20) on every top-K dataset in ``../shared/data`` (issue 12)?

Datasets (``prepare --format implicit``; validation carved from train with the default 10 %):

* ``ml1m``: MovieLens-1M, LCFN implicit split (``--split given``: train.txt, test.txt);
* ``cds``: Amazon-CDs, BGCF split (``--split given``);
* ``beauty``, ``sports``, ``toys``: the S3-Rec Amazon sequences, ``video``: SASRec's Amazon
  Video Games (one interaction per line); these come without a split, so interactions are
  split 80/10/10 at random (``--split random --seed 0``).

Per dataset: the most-popular baseline (every user gets the items with the most training
interactions, training items excluded), the default BPR-MF, and with ``--previous`` the
defaults before issue 12 (lr 1e-3, 10 epochs, patience 2, lazy Adam), and with ``--variants``
other settings (what the default was chosen against, on validation), all on the same prepared
data. Recall@20 / NDCG@20 with full ranking (training items excluded; for test, validation
items too); the model is selected on validation and test is read once. One torch thread;
seconds are indicative (shared 2-core machine).

    python benchmarks/topk_defaults.py [--datasets ml1m,cds,beauty,sports,toys,video] [--previous]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import log, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DATASETS: dict[str, tuple[list[Path], str]] = {
    "ml1m": ([SHARED / "movielens-1m/lcfn-implicit-split/train.txt.gz",
              SHARED / "movielens-1m/lcfn-implicit-split/test.txt.gz"], "given"),
    "cds": ([SHARED / "amazon-yelp/bgcf-amazon-cds/train.txt.gz", SHARED / "amazon-yelp/bgcf-amazon-cds/test.txt.gz"], "given"),
    "beauty": ([SHARED / "amazon-yelp/s3rec/Beauty.txt.gz"], "random"),
    "sports": ([SHARED / "amazon-yelp/s3rec/Sports_and_Outdoors.txt.gz"], "random"),
    "toys": ([SHARED / "amazon-yelp/s3rec/Toys_and_Games.txt.gz"], "random"),
    "video": ([SHARED / "amazon-yelp/sasrec/Video.txt.gz"], "random"),
}
MARGIN = 1.5


def run_dataset(name: str, work: Path, previous: bool, variants: dict[str, dict[str, Any]], log) -> dict[str, Any] | None:
    from ondevice.data import EncodedDataset, prepare
    from ondevice.train import TrainConfig, evaluate_topk, train
    from ondevice.train.evaluate import popularity_model

    files, split = DATASETS[name]
    if not all(f.is_file() for f in files):
        log(f"[{name}] skipped: {files[0].parent} not found")
        return None
    data_dir = work / f"data-{name}"
    if not (data_dir / "schema.json").is_file():
        prepare(files, data_dir, format="implicit", split=split, seed=0, force=True)
    data = EncodedDataset(data_dir)
    train_pairs = np.asarray(data.split("train").ids, dtype=np.int64)
    val, test = np.asarray(data.split("val").ids), np.asarray(data.split("test").ids)
    n_users, n_items = data.schema.vocab_sizes
    pop = popularity_model(train_pairs, n_users, n_items)
    row: dict[str, Any] = {"dataset": name, "split": split, "users": n_users - 1, "items": n_items - 1,
                           "train": len(train_pairs), "val": len(val), "test": len(test),
                           "popularity": {"val": evaluate_topk(pop, val, [train_pairs]),
                                          "test": evaluate_topk(pop, test, [train_pairs, val])}}
    configs = {"default": TrainConfig(model="bprmf", threads=1)}
    if previous:
        configs["previous defaults"] = TrainConfig(model="bprmf", threads=1, lr=1e-3, epochs=10, patience=2,
                                                   sparse_embeddings=True)
    for label, overrides in variants.items():
        configs[label] = TrainConfig(model="bprmf", threads=1, **overrides)
    row["runs"] = {}
    for label, config in configs.items():
        t0 = time.perf_counter()
        r = train(data_dir, work / f"run-{name}-{label.replace(' ', '-')}", config, quiet=True, force=True)
        row["runs"][label] = {"val": r.val, "test": r.test, "best_epoch": r.best_epoch, "seconds": time.perf_counter() - t0,
                              "config": {k: getattr(config, k) for k in ("lr", "l2", "embed_dim", "batch_size", "epochs",
                                                                          "patience", "sparse_embeddings")}}
        ratio = r.test["recall@20"] / max(row["popularity"]["test"]["recall@20"], 1e-12)
        log(f"[{name}] {label}: test R@20 {r.test['recall@20']:.4f} vs popularity "
            f"{row['popularity']['test']['recall@20']:.4f} ({ratio:.2f}x), epoch {r.best_epoch}")
    return row


def render(res: dict[str, Any]) -> str:
    out = ["# Default BPR-MF against the popularity baseline", "",
           f"Command: `{res['command']}`. Full ranking, training items excluded; selected on validation, test read once. "
           f"Target: test Recall@20 ≥ {MARGIN}× popularity on every dataset.", "",
           "| dataset | users | items | train | run | val R@20 | test R@20 | test NDCG@20 | popularity test R@20 | × popularity | "
           "best epoch | seconds |", "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in res["datasets"]:
        pop = row["popularity"]["test"]["recall@20"]
        for label, r in row["runs"].items():
            ratio = r["test"]["recall@20"] / max(pop, 1e-12)
            mark = " ✓" if ratio >= MARGIN else " ✗"
            out.append(f"| {row['dataset']} ({row['split']} split) | {row['users']:,} | {row['items']:,} | {row['train']:,} | "
                       f"{label} | {r['val']['recall@20']:.4f} | {r['test']['recall@20']:.4f} | {r['test']['ndcg@20']:.4f} | "
                       f"{pop:.4f} | {ratio:.2f}{mark if label == 'default' else ''} | {r['best_epoch']} | {r['seconds']:.0f} |")
    cfg = res["datasets"][0]["runs"]["default"]["config"] if res["datasets"] else {}
    out += ["", f"Default config: {json.dumps(cfg)}."]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--work", type=Path, default=None, help="keep prepared data and runs here")
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--previous", action="store_true", help="also train the pre-issue-12 defaults")
    ap.add_argument("--variants", default="{}", help='JSON {label: {TrainConfig overrides}} also trained, e.g. '
                                                     '\'{"l2 1e-4": {"l2": 1e-4}}\'')
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    work = args.work or Path(tempfile.mkdtemp(prefix="ondevice-topk-"))
    work.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"command": "python benchmarks/topk_defaults.py " + " ".join(argv or sys.argv[1:]),
                           "machine": platform.platform(), "torch": torch.__version__, "datasets": []}
    for name in args.datasets.split(","):
        row = run_dataset(name, work, args.previous, json.loads(args.variants), log)
        if row is not None:
            res["datasets"].append(row)
    write_results(args.out, "topk_defaults", res, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
