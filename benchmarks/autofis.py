"""AutoFIS benchmark (issue 6): does it find planted pairs, and what does it do to a DeepFM?

(a) Planted data (``ondevice.data.generate_ctr``, libFM format, 8 fields of 20 values, 30K
    rows): ``clear`` plants 3 sign×sign pairs and nothing else; ``with-main-effects`` adds 2
    fields with main effects (the other 6 form the 3 pairs). Precision / recall of the kept
    pairs against the truth file, for FM and DeepFM, ``c="auto"`` (default) and ``c="paper"``.
(b) Frappe (``../shared/data/frappe/nfm-libfm``: validation + test files pooled, seeded
    random 80/10/10 split, as ``compress_quality.py``) and the Criteo 10K head
    (``../shared/data/criteo/criteo_dac_train_head10k.tsv.gz``, ``prepare --format criteo``,
    random 80/10/10): the full DeepFM against AutoFIS retrained on the kept pairs. Test AUC
    (each model selected on validation, test read once), kept pairs / total, artefact bytes,
    onnxruntime p50 latency at batch 1 and 256 (1 thread, the two artefacts interleaved in
    rounds in one process), search seconds. Missing data files are skipped with a message.

Models: DeepFM dim 10, MLP 64-64 (small on purpose: 2 shared CPU cores; with the usual
400-400-400 the MLP dominates latency and pair removal is invisible), Adam lr 1e-3, batch
1024 (256 on the 8K-row Criteo head), up to 10 epochs with patience 2. AutoFIS: 3 search
epochs (from scratch), retrain up to 10 epochs, same batches. Planted runs: batch 512, lr 5e-3
for the full model and AutoFIS alike.

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/autofis.py [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
FRAPPE = SHARED / "frappe" / "nfm-libfm"
CRITEO_HEAD = SHARED / "criteo" / "criteo_dac_train_head10k.tsv.gz"


def prepare_planted(work: Path, n_important: int) -> tuple[Path, set[tuple[int, int]]]:
    from ondevice.data import EncodedDataset, generate_ctr, prepare

    out = work / f"planted-{n_important}"
    truth = generate_ctr(work / f"planted-{n_important}.libfm", 30_000, fields=8, vocab=20, seed=0, format="libfm",
                         n_important=n_important, n_pairs=3, alpha=0.5)
    prepare(work / f"planted-{n_important}.libfm", out, format="libfm", seed=0, force=True)
    names = EncodedDataset(out).schema.field_names
    return out, {tuple(sorted(names.index(n) for n in t["fields"])) for t in truth["interactions"]}


def prepare_real(work: Path, name: str) -> Path | None:
    from ondevice.data import prepare

    if name == "frappe":
        files = [FRAPPE / "frappe.validation.libfm.gz", FRAPPE / "frappe.test.libfm.gz"]
        if not all(f.is_file() for f in files):
            return None
        prepare(files, work / "frappe", format="libfm", split="random", seed=0, force=True)
        return work / "frappe"
    if not CRITEO_HEAD.is_file():
        return None
    prepare([CRITEO_HEAD], work / "criteo10k", format="criteo", split="random", seed=0, force=True)
    return work / "criteo10k"


def train_full(data, name: str, batch_size: int, epochs: int = 10, lr: float = 1e-3):
    from ondevice.models import build_model
    from ondevice.search.retrain import fit_ctr

    torch.manual_seed(0)
    kw = {"mlp_dims": [64, 64]} if name == "deepfm" else {}
    model = build_model(name, data.schema.vocab_sizes, embed_dim=10, **kw)
    t0 = time.perf_counter()
    fit = fit_ctr(model, data, epochs=epochs, lr=lr, batch_size=batch_size, seed=0, patience=2)
    return model, fit, time.perf_counter() - t0


def test_auc(model, data) -> float:
    from ondevice.train import evaluate_ctr

    s = data.split("test")
    return float(evaluate_ctr(model.eval(), s.ids, s.labels)["auc"])


def latency(files: dict[str, Path], vocab: list[int], rounds: int = 5) -> dict[str, dict[str, float]]:
    """p50 ms per file at batch 1 and 256, 1 thread, the files interleaved over ``rounds``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    sessions = {k: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for k, p in files.items()}
    rng = np.random.default_rng(0)
    out: dict[str, dict[str, float]] = {k: {} for k in files}
    for batch, calls in ((1, 300), (256, 30)):
        x = np.stack([rng.integers(0, v, size=batch) for v in vocab], axis=1).astype(np.int64)
        samples: dict[str, list[float]] = {k: [] for k in files}
        for s in sessions.values():
            for _ in range(10):
                s.run(None, {"ids": x})
        for _ in range(rounds):
            for k, s in sessions.items():
                for _ in range(calls):
                    t0 = time.perf_counter_ns()
                    s.run(None, {"ids": x})
                    samples[k].append((time.perf_counter_ns() - t0) / 1e6)
        for k in files:
            out[k][f"p50_ms_b{batch}"] = float(np.median(samples[k]))
    return out


def run_planted(work: Path, log) -> list[dict[str, Any]]:
    from ondevice.data import EncodedDataset
    from ondevice.search.interaction import AutoFISSearcher
    from ondevice.train import Checkpoint

    rows = []
    for label, n_imp in (("clear", 0), ("with-main-effects", 2)):
        data_dir, truth = prepare_planted(work, n_imp)
        data = EncodedDataset(data_dir)
        for base in ("fm", "deepfm"):
            full, fit, _ = train_full(data, base, 512, epochs=10, lr=5e-3)  # same Adam as the AutoFIS runs
            for c in ("auto", "paper"):
                t0 = time.perf_counter()
                r = AutoFISSearcher(search_epochs=3, c=c, epochs=10, batch_size=512, lr=5e-3).search(
                    Checkpoint(model=full, schema=data.schema), data, 10**12)
                kept = {tuple(k["pair"]) for k in r.trace[1]["kept"]}
                hit = len(kept & truth)
                row = {"data": label, "base": base, "c": c, "c_value": r.trace[0]["grda"]["c"],
                       "mu": r.trace[0]["grda"]["mu"], "kept": sorted(kept), "planted": sorted(truth),
                       "precision": hit / len(kept) if kept else None, "recall": hit / len(truth),
                       "val_auc_full": fit.val["auc"], "val_auc_autofis": r.val["auc"],
                       "seconds": time.perf_counter() - t0}
                rows.append(row)
                log(f"[planted {label} {base} c={c}] kept {len(kept)}/28, precision {row['precision']}, "
                    f"recall {row['recall']:.2f}, val {fit.val['auc']:.4f} -> {r.val['auc']:.4f}")
    return rows


def run_real(work: Path, name: str, log) -> dict[str, Any] | None:
    from ondevice.data import EncodedDataset
    from ondevice.export import export_artefact
    from ondevice.search.interaction import AutoFISSearcher
    from ondevice.train import Checkpoint

    data_dir = prepare_real(work, name)
    if data_dir is None:
        log(f"[{name}] data files absent under {SHARED}; skipped")
        return None
    data = EncodedDataset(data_dir)
    bs = 256 if name == "criteo10k" else 1024
    full, fit, full_s = train_full(data, "deepfm", bs)
    log(f"[{name}] full DeepFM val {fit.val['auc']:.4f} ({full_s:.0f}s)")
    result = AutoFISSearcher(search_epochs=3, epochs=10, batch_size=bs, lr=1e-3).search(
        Checkpoint(model=full, schema=data.schema), data, 10**12)
    kept, total = result.trace[1]["kept_count"], result.trace[1]["candidates"]
    log(f"[{name}] AutoFIS kept {kept}/{total}, val {result.val['auc']:.4f}, search {result.timings['search_s']:.0f}s")
    files, sizes = {}, {}
    for label, model in (("full DeepFM", full), ("AutoFIS DeepFM", result.model)):
        folder = work / f"{name}-{label.split()[0]}"
        export_artefact(Checkpoint(model=model, schema=data.schema), folder, force=True)
        files[label] = folder / "model.onnx"
        sizes[label] = files[label].stat().st_size
    lat = latency(files, list(data.schema.vocab_sizes))
    rows = []
    for label, model, val, secs in (("full DeepFM", full, fit.val, full_s),
                                    ("AutoFIS DeepFM", result.model, result.val, result.timings["total_s"])):
        rows.append({"model": label, "val_auc": val["auc"], "test_auc": test_auc(model, data),
                     "pairs": total if label.startswith("full") else kept, "file_bytes": sizes[label],
                     **lat[label], "seconds": secs})
    return {"dataset": name, "rows": {s: len(data.split(s)) for s in ("train", "val", "test")},
            "fields": len(data.schema.vocab_sizes), "candidate_pairs": total, "kept_pairs": kept,
            "kept": result.trace[1]["kept"], "grda": result.trace[0]["grda"],
            "search_s": result.timings["search_s"], "retrain_s": result.timings["retrain_s"], "models": rows}


def render(res: dict[str, Any]) -> str:
    lines = ["# AutoFIS (issue 6)", "", f"Command: `{res['command']}`  ", f"Machine: {res['machine']}; "
             f"torch {res['torch']}; 1 thread; shared 2-core host, times indicative.", "",
             "## (a) Planted pairs (8 fields, 28 candidate pairs, 3 planted)", "",
             "| data | base | c | c value | kept | precision | recall | val AUC full | val AUC AutoFIS |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in res["planted"]:
        p = "–" if r["precision"] is None else f"{r['precision']:.2f}"
        lines.append(f"| {r['data']} | {r['base']} | {r['c']} | {r['c_value']:.2g} | {len(r['kept'])} | {p} | "
                     f"{r['recall']:.2f} | {r['val_auc_full']:.4f} | {r['val_auc_autofis']:.4f} |")
    for d in res["real"]:
        lines += ["", f"## (b) {d['dataset']} ({d['rows']['train']:,} train rows, {d['fields']} fields): "
                  f"kept {d['kept_pairs']} of {d['candidate_pairs']} pairs (c = {d['grda']['c']:.2g}, "
                  f"μ = {d['grda']['mu']}); search {d['search_s']:.0f} s, retrain {d['retrain_s']:.0f} s", "",
                  "| model | pairs | val AUC | test AUC | bytes | p50 b1 (ms) | p50 b256 (ms) |",
                  "|---|---|---|---|---|---|---|"]
        for m in d["models"]:
            lines.append(f"| {m['model']} | {m['pairs']} | {m['val_auc']:.4f} | {m['test_auc']:.4f} | "
                         f"{m['file_bytes']:,} | {m['p50_ms_b1']:.3f} | {m['p50_ms_b256']:.2f} |")
    for s in res["skipped"]:
        lines += ["", f"{s}: data absent, skipped."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--datasets", default="planted,frappe,criteo10k")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"{time.perf_counter() - started:7.1f}s {msg}", file=sys.stderr, flush=True)

    names = args.datasets.split(",")
    res: dict[str, Any] = {"command": "OMP_NUM_THREADS=1 nice -n 19 python benchmarks/autofis.py " + " ".join(argv or sys.argv[1:]),
                           "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                           "torch": torch.__version__, "planted": [], "real": [], "skipped": []}
    with tempfile.TemporaryDirectory(prefix="autofis-bench-") as tmp:
        work = Path(tmp)
        if "planted" in names:
            res["planted"] = run_planted(work, log)
        for name in ("frappe", "criteo10k"):
            if name in names:
                d = run_real(work, name, log)
                if d is None:
                    res["skipped"].append(name)
                else:
                    res["real"].append(d)
    res["seconds"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    from ondevice.io import atomic_write_json, atomic_write_text

    atomic_write_json(args.out / "autofis.json", res)
    atomic_write_text(args.out / "autofis.md", render(res))
    print(render(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
