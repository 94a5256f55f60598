"""Feature selection (issue 6): does AutoField keep the informative fields first, and what does
dropping fields buy in bytes, latency and AUC on real data?

* ``planted``: ``generate_ctr`` libFM data (20 fields, 100 values each, 4 important fields
  with main effects of std 1.2..0.6, 2 interacting pairs with zero main effect; truth file),
  three seeds. DeepFM dim 8, MLP 32; AutoField with no byte limit; reports each planted
  field's rank and precision@k for k = |important| and k = |informative| (important ∪ pair
  fields).
* ``signal`` (issue 17): the signal check every selection now passes before it deploys
  (``subset.ranking_signal``: the kept fields' held-out importance on validation against all
  other subsets of as many fields, permutation p ≤ 0.1). On the planted data with
  ``num_fields`` = the informative fields (6 of 20), and on ``null`` data (the same generator
  with no planted effect at all: labels independent of every field), seeds 0-2, both methods:
  passed or refused (``WeakSignalError``), with p and Spearman's rho between the method's
  scores and the held-out importance. On real data below a refused selection is a row.
* ``frappe``: NFM's libFM Frappe validation + test files pooled, random 80/10/10 (seed 0), as
  ``compress_quality.py``'s ``frappe-small``: DeepFM dim 16, MLP 32-32 (the tables are 94 %
  of the bytes, the item table alone 71 %; Frappe's negatives are random items in a logged
  context, so the item field carries the signal).
* ``criteo-head10k``: the first 10,000 rows of Criteo DAC, ``prepare --format criteo
  --min-count 2``, random 80/10/10; DeepFM dim 16, MLP 64-64. A smoke-size sample.

Real data: the full DeepFM vs ``autofield`` and ``adafs`` (and ``uniform``, a smaller dim for every field,
for reference) at ¾, ½ and ¼ of the full artefact's bytes, each through ``compress``'s fit loop
(search, export, measure, retry); test AUC of the model selected on validation (test read
once per model), kept fields, ONNX file bytes, onnxruntime batch-1 p50 (1 thread, 300 runs
after 50 warm-up), search and retrain seconds. The controllers' architecture batches are a
held-out 10 % of train (AdaFS: its ranking rows), validation only picks the retrain's best epoch.

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/feature_selection.py [--only planted,signal,frappe,criteo-head10k]
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CACHE = ROOT / "benchmarks" / ".cache" / "feature_selection"
RESULTS = ROOT / "benchmarks" / "results"
FRACTIONS = {"3/4": (3, 4), "1/2": (1, 2), "1/4": (1, 4)}
SEARCH = {"epochs": 3, "batch_size": 1024, "seed": 0}
AUTOFIELD = {"search_epochs": 2}
METHODS = ("autofield", "adafs", "uniform")

REAL = {
    "frappe": {
        "inputs": [SHARED / "frappe" / "nfm-libfm" / "frappe.validation.libfm.gz",
                   SHARED / "frappe" / "nfm-libfm" / "frappe.test.libfm.gz"],
        "prepare": {"format": "libfm", "split": "random", "seed": 0},
        "train": {"model": "deepfm", "embed_dim": 16, "mlp_dims": [32, 32], "epochs": 10, "patience": 1,
                  "batch_size": 1024, "lr": 1e-3, "seed": 0, "threads": 1},
    },
    "criteo-head10k": {
        "inputs": [SHARED / "criteo" / "criteo_dac_train_head10k.tsv.gz"],
        "prepare": {"format": "criteo", "min_count": 2, "split": "random", "seed": 0},
        "train": {"model": "deepfm", "embed_dim": 16, "mlp_dims": [64, 64], "epochs": 10, "patience": 1,
                  "batch_size": 256, "lr": 1e-3, "seed": 0, "threads": 1},
    },
}


def log(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


# ---------------------------------------------------------------------- planted
def planted(seed: int, method: str) -> dict[str, Any]:
    from ondevice.data import EncodedDataset, generate_ctr, prepare
    from ondevice.search import make_searcher
    from ondevice.train import TrainConfig, train

    work = CACHE / f"planted-{seed}"
    raw = work / "raw.libfm"
    if not (work / "run" / "model.pt").is_file():
        work.mkdir(parents=True, exist_ok=True)
        generate_ctr(raw, 100_000, format="libfm", fields=20, vocab=100, n_important=4, n_pairs=2, seed=seed)
        prepare(raw, work / "data", format="libfm", seed=0, force=True)
        train(work / "data", work / "run", TrainConfig(model="deepfm", embed_dim=8, mlp_dims=[32], epochs=5, patience=1,
                                                       batch_size=1024, lr=3e-3, threads=1), quiet=True, force=True)
    truth = json.loads((work / "raw.libfm.truth.json").read_text())
    t0 = time.perf_counter()
    result = make_searcher(method, **SEARCH, **AUTOFIELD).search(work / "run", EncodedDataset(work / "data"), 10**12)
    seconds = time.perf_counter() - t0
    ranking = result.trace[0]["ranking"]
    important = [f["field"] for f in truth["important_fields"]]
    pairs = [f for p in truth["interactions"] for f in p["fields"]]
    informative = set(important) | set(pairs)
    rank = {f: ranking.index(f) + 1 for f in sorted(informative, key=ranking.index)}
    out = {"seed": seed, "method": method, "ranking": ranking, "important": important, "pair_fields": pairs, "rank": rank,
           "precision_at_important": len(set(ranking[:len(important)]) & set(important)) / len(important),
           "precision_at_informative": len(set(ranking[:len(informative)]) & informative) / len(informative),
           "scores": result.trace[0].get("keep_probability") or result.trace[0]["mean_weight"], "search_s": result.timings["search_s"],
           "seconds": seconds}
    log(f"[planted {seed} {method}] ranks {rank}; P@{len(important)} {out['precision_at_important']:.2f}, "
        f"P@{len(informative)} {out['precision_at_informative']:.2f} ({seconds:.0f}s)")
    return out


def _planted_run(seed: int, *, null: bool) -> Path:
    from ondevice.data import generate_ctr, prepare
    from ondevice.train import TrainConfig, train

    work = CACHE / (f"null-{seed}" if null else f"planted-{seed}")
    if not (work / "run" / "model.pt").is_file():
        work.mkdir(parents=True, exist_ok=True)
        kw = {"n_important": 0, "n_pairs": 0} if null else {"n_important": 4, "n_pairs": 2}
        generate_ctr(work / "raw.libfm", 100_000, format="libfm", fields=20, vocab=100, seed=seed, **kw)
        prepare(work / "raw.libfm", work / "data", format="libfm", seed=0, force=True)
        train(work / "data", work / "run", TrainConfig(model="deepfm", embed_dim=8, mlp_dims=[32], epochs=5, patience=1,
                                                       batch_size=1024, lr=3e-3, threads=1), quiet=True, force=True)
    return work


def signal_case(seed: int, method: str, *, null: bool, keep: int = 6) -> dict[str, Any]:
    """The searcher's signal check with ``num_fields=keep`` (module docstring, ``signal``)."""
    from ondevice.data import EncodedDataset
    from ondevice.errors import WeakSignalError
    from ondevice.search import make_searcher

    work = _planted_run(seed, null=null)
    out: dict[str, Any] = {"seed": seed, "method": method, "data": "null" if null else "planted", "keep": keep}
    t0 = time.perf_counter()
    try:
        r = make_searcher(method, **SEARCH, **AUTOFIELD, num_fields=keep).search(work / "run", EncodedDataset(work / "data"),
                                                                                   10**12)
        check = r.trace[0]["signal_check"]
        out.update(refused=None, kept=r.trace[0]["fields_kept"])
    except WeakSignalError as err:
        out.update(refused=str(err), p_value=err.statistic, needed_p=err.threshold)
        check = None
    if check is not None:
        out.update(p_value=check["p_value"], needed_p=check["needed_p"], spearman=check["spearman_score_vs_heldout"])
        truth = json.loads((work / "raw.libfm.truth.json").read_text())
        informative = {f["field"] for f in truth["important_fields"]} | {f for p in truth["interactions"] for f in p["fields"]}
        out["kept_informative"] = len(set(out["kept"]) & informative)
    out["seconds"] = time.perf_counter() - t0
    log(f"[signal {out['data']} {seed} {method}] {'REFUSED' if out['refused'] else 'passed'} p={out.get('p_value')}")
    return out


# ---------------------------------------------------------------------- real data
def _p50_batch1(model, schema) -> float:
    from ondevice.export import export_artefact, profile_artefact
    from ondevice.train import Checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        art = Path(tmp) / "art"
        export_artefact(Checkpoint(model=model, schema=schema), art, check_mobile=False)
        prof = profile_artefact(art, batches=(1,), threads=(1,), runs=300, warmup=50, torch_baseline=False,
                                plot=False, write=False, enforce_target=False)
    return float(prof["results"][0]["onnxruntime"]["p50_ms"])


def _test_auc(model, data) -> dict[str, float]:
    from ondevice.export.onnx_export import deployable_model
    from ondevice.train import evaluate_ctr

    s = data.split("test")
    out = evaluate_ctr(deployable_model(model), s.ids, s.labels)
    return {"auc": float(out["auc"]), "logloss": float(out["logloss"])}


def real(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    from ondevice.data import EncodedDataset, prepare
    from ondevice.errors import BudgetTooSmallError, WeakSignalError
    from ondevice.pipeline.fitting import search_fitting
    from ondevice.pipeline.measure import measure_file_bytes
    from ondevice.search import make_searcher
    from ondevice.search.retrain import val_metrics
    from ondevice.train import TrainConfig, load_checkpoint, train

    if not all(p.is_file() for p in spec["inputs"]):
        log(f"[{name}] skipped: {spec['inputs'][0]} is absent")
        return {"dataset": name, "skipped": f"{spec['inputs'][0]} is absent"}
    work = CACHE / name
    if not (work / "data" / "schema.json").is_file():
        prepare(spec["inputs"], work / "data", force=True, **spec["prepare"])
    data = EncodedDataset(work / "data")
    if not (work / "run" / "model.pt").is_file():
        t0 = time.perf_counter()
        train(work / "data", work / "run", TrainConfig(**spec["train"]), quiet=True, force=True)
        log(f"[{name}] trained the full model in {time.perf_counter() - t0:.0f}s")
    ckpt = load_checkpoint(work / "run")
    full_file, full_params = measure_file_bytes(ckpt.model)
    full = {"file_bytes": full_file, "val": val_metrics(ckpt.model, data), "test": _test_auc(ckpt.model, data),
            "p50_ms_batch1": _p50_batch1(ckpt.model, ckpt.schema), "fields": data.schema.num_fields}
    log(f"[{name}] full: {full_file:,} B, test AUC {full['test']['auc']:.4f}, p50 {full['p50_ms_batch1']:.3f} ms")
    runs = []
    for label, (num, den) in FRACTIONS.items():
        budget = full_file * num // den
        for method in METHODS:
            params = {**SEARCH, **(AUTOFIELD if method != "uniform" else {})}
            t0 = time.perf_counter()
            try:
                result, file_bytes, attempts = search_fitting(make_searcher(method, **params), ckpt, data, budget,
                                                               full_file - full_params)
            except BudgetTooSmallError as err:
                runs.append({"method": method, "budget": label, "budget_bytes": budget, "fits": False,
                             "min_bytes": err.minimum_bytes})
                log(f"[{name}] {label} {method}: does not fit (min {err.minimum_bytes:,} B)")
                continue
            except WeakSignalError as err:
                runs.append({"method": method, "budget": label, "budget_bytes": budget, "refused": str(err)})
                log(f"[{name}] {label} {method}: refused: {err}")
                continue
            wall = time.perf_counter() - t0
            schema = result.schema or ckpt.schema
            view = data.select_fields(data.schema.field_positions(schema.field_names)) if result.schema else data
            row = {"method": method, "budget": label, "budget_bytes": budget, "fits": file_bytes <= budget,
                   "file_bytes": file_bytes, "val": {k: float(v) for k, v in result.val.items()},
                   "test": _test_auc(result.model, view), "p50_ms_batch1": _p50_batch1(result.model, schema),
                   "fields_kept": schema.field_names if result.schema else None,
                   "search_s": float(result.timings.get("search_s", 0.0)),
                   "retrain_s": float(result.timings.get("retrain_s", 0.0)), "wall_s": wall, "fit_attempts": attempts,
                   "first_order": next((t["first_order"] for t in result.trace if "first_order" in t), None)}
            if method == "uniform":
                row["dim"] = result.config["_data"].get("dim")
            if method != "uniform":
                row["scores"] = result.trace[0].get("keep_probability") or result.trace[0]["mean_weight"]
                row["signal_check"] = {k: v for k, v in (result.trace[0].get("signal_check") or {}).items()
                                       if k in ("passed", "p_value", "needed_p", "spearman_score_vs_heldout", "reason")}
            runs.append(row)
            log(f"[{name}] {label} {method}: {file_bytes:,} B <= {budget:,}, test AUC {row['test']['auc']:.4f}, "
                f"kept {len(schema.field_names)} fields, p50 {row['p50_ms_batch1']:.3f} ms "
                f"(search {row['search_s']:.1f}s + retrain {row['retrain_s']:.1f}s)")
    return {"dataset": name, "rows": {s: len(data.split(s)) for s in ("train", "val", "test")},
            "ids": int(sum(data.schema.vocab_sizes)), "settings": {k: v for k, v in spec.items() if k != "inputs"},
            "full": full, "runs": runs}


# ---------------------------------------------------------------------- report
def render(res: dict[str, Any]) -> str:
    lines = ["# Feature selection (AutoField, AdaFS)", "",
             f"`{res['command']}` — {res['machine']}, torch {res['torch']}, 1 thread, nice 19 on a shared 2-core "
             "machine: times are indicative only.", "",
             "## Planted data (rank of the planted fields; no byte limit)", "",
             "| seed | method | important fields (rank) | pair fields (rank) | P@#important | P@#informative | search s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for p in res["planted"]:
        imp = ", ".join(f"{f} ({p['rank'][f]})" for f in p["important"])
        pair = ", ".join(f"{f} ({p['rank'][f]})" for f in p["pair_fields"])
        lines.append(f"| {p['seed']} | {p['method']} | {imp} | {pair} | {p['precision_at_important']:.2f} | "
                     f"{p['precision_at_informative']:.2f} | {p['search_s']:.1f} |")
    lines += ["", "Important fields are listed strongest first (effect std 1.2 → 0.6); a pair field has no main "
              "effect (coefficient 1.0 / 0.7 on ±1 signs).", ""]
    if res.get("signal"):
        lines += ["## Signal check (issue 17): keep 6 of 20 fields", "",
                  "| data | seed | method | result | permutation p (needed) | Spearman scores vs held-out | "
                  "informative kept |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for x in res["signal"]:
            rho = "–" if x.get("spearman") is None else f"{x['spearman']:.2f}"
            p = "–" if x.get("p_value") is None else f"{x['p_value']:.3f} ({x['needed_p']:.2f})"
            lines.append(f"| {x['data']} | {x['seed']} | {x['method']} | {'refused' if x['refused'] else 'deployed'} | "
                         f"{p} | {rho} | {x.get('kept_informative', '–')} |")
        lines += ["", "`null`: no planted effect, labels independent of every field (nothing to select). "
                  "`planted`: 6 informative fields of 20.", ""]
    for d in res["real"]:
        if "skipped" in d:
            lines += [f"## {d['dataset']}: skipped ({d['skipped']})", ""]
            continue
        f = d["full"]
        lines += [f"## {d['dataset']} ({d['rows']['train']:,} train rows, {d['ids']:,} ids, {f['fields']} fields)", "",
                  "| model | budget | file bytes | test AUC | val AUC | fields kept | ORT b1 p50 ms | search s | retrain s |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
                  f"| full DeepFM | — | {f['file_bytes']:,} | {f['test']['auc']:.4f} | {f['val']['auc']:.4f} | "
                  f"{f['fields']} | {f['p50_ms_batch1']:.3f} | — | — |"]
        for r in d["runs"]:
            if r.get("refused"):
                lines.append(f"| {r['method']} | {r['budget']} ({r['budget_bytes']:,}) | refused: {r['refused']} "
                             "| | | | | | |")
                continue
            if not r.get("file_bytes"):
                lines.append(f"| {r['method']} | {r['budget']} ({r['budget_bytes']:,}) | does not fit "
                             f"(min {r['min_bytes']:,}) | | | | | | |")
                continue
            kept = len(r["fields_kept"]) if r["fields_kept"] else f"{f['fields']} (dim {r.get('dim')})"
            lines.append(f"| {r['method']} | {r['budget']} ({r['budget_bytes']:,}) | {r['file_bytes']:,} | "
                         f"{r['test']['auc']:.4f} | {r['val']['auc']:.4f} | {kept} | {r['p50_ms_batch1']:.3f} | "
                         f"{r['search_s']:.1f} | {r['retrain_s']:.1f} |")
        for r in d["runs"]:
            if r.get("fields_kept"):
                lines.append(f"\n{r['budget']} {r['method']} kept: {', '.join(r['fields_kept'])}")
        lines.append("")
    lines += ["Test AUC is read once per model, chosen on validation (best retrain epoch). AutoField's "
              "and AdaFS's controllers never see validation (they rank on a held-out 10 % of train). `uniform` "
              "(every field at a smaller dim) is there for reference at the same bytes."]
    return "\n".join(lines) + "\n"


def main() -> None:
    from ondevice.io import atomic_write_json, atomic_write_text

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="planted,signal,frappe,criteo-head10k")
    args = ap.parse_args()
    only = set(args.only.split(","))
    torch.set_num_threads(1)
    CACHE.mkdir(parents=True, exist_ok=True)
    started = time.time()
    res = {"command": ("OMP_NUM_THREADS=1 nice -n 19 python benchmarks/feature_selection.py " + shlex.join(sys.argv[1:])).strip(),
           "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
           "settings": {"search": SEARCH, "autofield": AUTOFIELD, "fractions": FRACTIONS},
           "planted": [planted(s, m) for s in (0, 1, 2) for m in METHODS[:2]] if "planted" in only else [],
           "signal": [signal_case(s, m, null=null) for null in (False, True) for s in (0, 1, 2) for m in METHODS[:2]]
           if "signal" in only else [],
           "real": [real(n, s) for n, s in REAL.items() if n in only]}
    res["seconds"] = time.time() - started
    atomic_write_json(RESULTS / "feature_selection.json", res)
    atomic_write_text(RESULTS / "feature_selection.md", render(res))
    log(f"wrote {RESULTS / 'feature_selection.md'} ({res['seconds']:.0f}s)")


if __name__ == "__main__":
    main()
