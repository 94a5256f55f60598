"""``compress`` (auto) on every shared dataset at ¼, ⅒ and 1/30 of the full artefact, with ``--time-limit``
(issue 13, "Done means").

For each dataset of ``../shared/data`` (skipped with a message when absent) the full model is
trained with ``ondevice train``'s defaults for its model, at one thread, with the number of
epochs capped (``--ctr-epochs`` / ``--topk-epochs``: the defaults' 50 epochs with early stopping
do not fit this benchmark's compute; the cap is in the results). Then, for each fraction, one
``compress RUN --budget B --method auto --time-limit L`` call (the library function the CLI
calls, default quality floor 2 %, default ``--mlp auto``, seed 0) runs in this process and its
whole wall time (load, probe, candidates, export, verify, profile, test evaluation) is compared
with the limit: the issue asks for total wall time <= limit + 10 %.

Reported per (dataset, fraction): budget, the command's wall time vs the limit, the chosen
method (or the one-line failure: e.g. no candidate within the quality floor), its artefact
bytes, validation and test metric (AUC for CTR; Recall@20 for top-K, full ranking, seen
items excluded), loss vs the full model on validation, onnxruntime p99 at batch 1, one thread
(``compress``'s profile, 20 calls) and how many candidates ran, were stopped at the limit or
were skipped for time.

Datasets: ``frappe`` (NFM's libFM validation + test files pooled, random 80/10/10 split,
DeepFM), ``criteo`` (first 10,000 rows of Criteo's Kaggle train, random split, DeepFM),
``ml1m`` (MovieLens-1M LCFN implicit split, BPR-MF), ``cds`` (Amazon CDs BGCF split, BPR-MF).

The machine is a shared 2-core host; the run is at nice 19 and one thread, so times are
indicative and the wall-time check is conservative (other processes steal time from the limit).

    nice -n 19 env OMP_NUM_THREADS=1 python benchmarks/auto_shared.py \\
        [--datasets frappe,criteo,ml1m,cds] [--ctr-limit 60] [--topk-limit 90] [--ctr-epochs 10] [--topk-epochs 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CACHE = ROOT / "benchmarks" / ".cache" / "auto_shared"
RESULTS = ROOT / "benchmarks" / "results"
FRACTIONS = {"1/4": 4, "1/10": 10, "1/30": 30}
DATASETS: dict[str, dict[str, Any]] = {
    "frappe": {"task": "ctr", "model": "deepfm", "format": "libfm", "split": "random",
               "files": [SHARED / "frappe/nfm-libfm/frappe.validation.libfm.gz",
                         SHARED / "frappe/nfm-libfm/frappe.test.libfm.gz"]},
    "criteo": {"task": "ctr", "model": "deepfm", "format": "criteo", "split": "random",
               "files": [SHARED / "criteo/criteo_dac_train_head10k.tsv.gz"]},
    "ml1m": {"task": "topk", "model": "bprmf", "format": "implicit", "split": "given",
             "files": [SHARED / "movielens-1m/lcfn-implicit-split/train.txt.gz",
                       SHARED / "movielens-1m/lcfn-implicit-split/test.txt.gz"]},
    "cds": {"task": "topk", "model": "bprmf", "format": "implicit", "split": "given",
            "files": [SHARED / "amazon-yelp/bgcf-amazon-cds/train.txt.gz",
                      SHARED / "amazon-yelp/bgcf-amazon-cds/test.txt.gz"]},
}


def log(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def full_model(name: str, spec: dict[str, Any], epochs: int) -> tuple[Path, dict[str, Any]] | None:
    """Prepared data and the trained full model (cached in benchmarks/.cache/auto_shared)."""
    from ondevice.data import prepare
    from ondevice.train import TrainConfig, train

    if not all(f.is_file() for f in spec["files"]):
        return None
    data = CACHE / f"data-{name}"
    if not (data / "schema.json").is_file():
        prepare(spec["files"], data, format=spec["format"], split=spec["split"], seed=0, force=True)
    run = CACHE / f"run-{name}-e{epochs}"
    stamp = run / "bench_train.json"
    if not stamp.is_file():
        t0 = time.perf_counter()
        train(data, run, TrainConfig(model=spec["model"], epochs=epochs, threads=1, seed=0), quiet=True,
              **({"force": True} if run.exists() else {}))
        stamp.write_text(json.dumps({"seconds": time.perf_counter() - t0}))
        log(f"[{name}] trained the full model in {time.perf_counter() - t0:.0f}s")
    info = json.loads((run / "train.json").read_text())
    return run, {"train_seconds": json.loads(stamp.read_text())["seconds"], "epochs_cap": epochs,
                 "epochs_run": len(info.get("history") or []), "config": info.get("config")}


def one_budget(name: str, run: Path, fraction: str, budget: int, limit_s: float) -> dict[str, Any]:
    from ondevice.errors import OndeviceError
    from ondevice.pipeline.compress import compress
    from ondevice.pipeline.summary import load_summary

    out = CACHE / f"compress-{name}-{fraction.replace('/', 'of')}"
    t0 = time.perf_counter()
    error = None
    try:
        compress(run, budgets=[budget], methods=["auto"], out_dir=out, force=True, time_limit_s=limit_s, seed=0,
                 quiet=True)
    except OndeviceError as err:
        error = f"{type(err).__name__} (exit {err.exit_code}): {err}"
    wall = time.perf_counter() - t0
    summary = load_summary(out) if (out / "summary.json").is_file() else {}
    row: dict[str, Any] = {"dataset": name, "fraction": fraction, "budget_bytes": budget, "time_limit_s": limit_s,
                           "wall_s": round(wall, 1), "within_limit_10pct": wall <= 1.1 * limit_s, "error": error}
    row.update(wall_plan=summary.get("wall_plan"), timings=summary.get("timings"))
    runs = summary.get("runs") or []
    failed = (summary.get("failures") or [{}])[0]
    cands = (runs[0].get("candidates") if runs else failed.get("candidates")) or []  # a floor failure keeps them too
    row.update({
        "candidates_run": sum("val_metric" in c for c in cands),
        "stopped_at_limit": sum(bool(c.get("stopped_at_limit")) for c in cands),
        "skipped_for_time": sum(c.get("outcome") == "skipped: time limit" for c in cands),
        "candidates": [{k: c.get(k) for k in ("method", "outcome", "file_bytes", "val_metric", "loss", "p99_ms",
                                              "expected_s", "started_s", "seconds", "stopped_at_limit", "chosen")}
                       for c in cands],
    })
    if runs:
        r = runs[0]
        row.update({
            "chosen": next((c["method"] for c in cands if c.get("chosen")), None), "file_bytes": r["file_bytes"],
            "metric": r["metric"], "val": r["val_metric"], "test": r.get("test_metric"), "loss_vs_full": r.get("loss"),
            "p50_ms_b1": r.get("p50_ms_batch1"), "p99_ms_b1": r.get("p99_ms_batch1"),
            "search_to_profile_s": r.get("wall_s"),
            "test_users": (r.get("test") or {}).get("users"), "test_users_in_split": (r.get("test") or {}).get("users_in_split"),
        })
    log(f"[{name} {fraction}] {wall:.0f}s (limit {limit_s:.0f}s): "
        + (f"{row['chosen']} {row['file_bytes']:,} B val {row['val']:.4f} test {row['test']:.4f}" if runs else error or "?"))
    return row


def render(result: dict[str, Any]) -> str:
    f = lambda v, spec=".4f": "—" if v is None else format(v, spec)  # noqa: E731
    lines = ["# auto on every shared dataset at ¼, ⅒, 1/30 of the full artefact, with --time-limit", "",
             f"Command: `{result['command']}`. {result['machine']}. One `compress --method auto --budget B "
             "--time-limit L` call per row (default quality floor 2 %, `--mlp auto`, seed 0); *wall* is the whole "
             "call (load, probe, candidates, export, verify, profile, test evaluation), checked against L + 10 %. "
             "Test metric: the shipped model.onnx through onnxruntime, read once after the choice. p99: batch 1, "
             "one thread, onnxruntime (compress's profile). Top-K metric: Recall@20, full ranking, seen items "
             "excluded. Full models: `ondevice train` defaults for the model, one thread, epochs capped "
             f"(CTR {result['ctr_epochs']}, top-K {result['topk_epochs']}) to fit the benchmark's compute.", "",
             "## Full models", "",
             "| dataset | model | file B | val | test | epochs run / cap | train s |",
             "|---|---|---:|---:|---:|---|---:|"]
    for d in result["datasets"]:
        if d.get("skipped"):
            lines.append(f"| {d['dataset']} | skipped: {d['skipped']} | | | | | |")
            continue
        m = d["metric"]
        lines.append(f"| {d['dataset']} | {d['model']} | {d['full_file_bytes']:,} | {f(d['full_val'].get(m))} | "
                     f"{f((d['full_test'] or {}).get(m))} | {d['train']['epochs_run']} / {d['train']['epochs_cap']} | "
                     f"{d['train']['train_seconds']:.0f} |")
    lines += ["", "## auto per budget", "",
              "| dataset | fraction | budget B | limit s | wall s | search→profile s | full val pass s | test eval s "
              "| ≤ limit+10 % | chosen | file B | metric "
              "| val | test | val loss vs full | p99 ms (b=1) | candidates run / stopped / skipped for time |",
              "|---|---|---:|---:|---:|---:|---:|---:|---|---|---:|---|---:|---:|---:|---:|---|"]
    for d in result["datasets"]:
        for r in d.get("rows", []):
            t = r.get("timings") or {}
            tcells = f"{f(t.get('full_validation_s'), '.1f')} | {f(t.get('test_evaluation_s'), '.1f')}"
            if r.get("chosen") is None:
                lines.append(f"| {r['dataset']} | {r['fraction']} | {r['budget_bytes']:,} | {r['time_limit_s']:.0f} | "
                             f"{r['wall_s']:.0f} | — | {tcells} | {'yes' if r['within_limit_10pct'] else '**no**'} | "
                             f"— ({(r['error'] or '').split(': ', 1)[-1]}) | | | | | | | "
                             + (f"{r['candidates_run']} / {r['stopped_at_limit']} / {r['skipped_for_time']} |"
                                if "candidates_run" in r else "|"))
                continue
            loss = "—" if r["loss_vs_full"] is None else f"{-r['loss_vs_full']:+.2%}"
            lines.append(f"| {r['dataset']} | {r['fraction']} | {r['budget_bytes']:,} | {r['time_limit_s']:.0f} | "
                         f"{r['wall_s']:.0f} | {f(r.get('search_to_profile_s'), '.0f')} | {tcells} | "
                         f"{'yes' if r['within_limit_10pct'] else '**no**'} | {r['chosen']} | "
                         f"{r['file_bytes']:,} | {r['metric']} | {f(r['val'])} | {f(r['test'])} | {loss} | "
                         f"{f(r['p99_ms_b1'], '.3f')} | {r['candidates_run']} / {r['stopped_at_limit']} / "
                         f"{r['skipped_for_time']} |")
    lines += ["", "The limit covers the whole call (`ondevice/pipeline/wall_plan.py`): loading, the full model's "
              "validation pass (*full val pass s*), the search, export, verify, profile and the test evaluation "
              "(*test eval s*: the full model's and the artefact's). Under a limit a top-K test split with more than "
              "10,000 users is read on a seeded sample of 10,000 (Amazon CDs: 43,169 test users), the same sample for "
              "the full model and the artefact. *search→profile s*: from the start of the budget's search to the end "
              "of its profile. Candidates are also counted for rows that end below the quality floor."]
    over = [r for d in result["datasets"] for r in d.get("rows", []) if not r["within_limit_10pct"]]
    if over:
        lines += ["", "Over the limit + 10 %: " + ", ".join(f"{r['dataset']} {r['fraction']} ({r['wall_s']:.0f} s)"
                                                         for r in over) + "."]
    commands = {d.get("command") or result["command"] for d in result["datasets"]}
    if len(commands) > 1:
        lines += ["", "Rows per dataset come from: " + "; ".join(
            f"{d['dataset']}: `{d.get('command') or result['command']}`" for d in result["datasets"]) + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--ctr-limit", type=float, default=60.0, help="--time-limit (s) per budget, CTR datasets")
    ap.add_argument("--topk-limit", type=float, default=90.0, help="--time-limit (s) per budget, top-K datasets")
    ap.add_argument("--ctr-epochs", type=int, default=10, help="epoch cap of the full CTR models")
    ap.add_argument("--topk-epochs", type=int, default=5, help="epoch cap of the full top-K models")
    ap.add_argument("--fractions", default=",".join(FRACTIONS))
    ap.add_argument("--render", action="store_true",
                    help="only re-render results/auto_shared.md from results/auto_shared.json (+ the cached summaries)")
    args = ap.parse_args()
    if args.render:
        result = json.loads((RESULTS / "auto_shared.json").read_text())
        for d in result["datasets"]:
            for r in d.get("rows", []):
                cached = CACHE / f"compress-{r['dataset']}-{r['fraction'].replace('/', 'of')}" / "summary.json"
                if "search_to_profile_s" not in r and r.get("chosen") and cached.is_file():
                    r["search_to_profile_s"] = json.loads(cached.read_text())["runs"][0].get("wall_s")
                if "timings" not in r and cached.is_file():  # rows written before the timings were recorded
                    r["timings"] = json.loads(cached.read_text()).get("timings")
        (RESULTS / "auto_shared.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        (RESULTS / "auto_shared.md").write_text(render(result))
        return
    torch.set_num_threads(1)
    CACHE.mkdir(parents=True, exist_ok=True)
    from ondevice.pipeline.measure import measure_file_bytes
    from ondevice.train.checkpoint import load_checkpoint

    result: dict[str, Any] = {
        "command": "nice -n 19 env OMP_NUM_THREADS=1 python benchmarks/auto_shared.py " + shlex.join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, torch {torch.__version__}, 1 thread, nice 19, "
                   "shared 2-core host",
        "ctr_epochs": args.ctr_epochs, "topk_epochs": args.topk_epochs, "datasets": []}
    started = time.perf_counter()
    for name in args.datasets.split(","):
        spec = DATASETS[name]
        got = full_model(name, spec, args.ctr_epochs if spec["task"] == "ctr" else args.topk_epochs)
        if got is None:
            log(f"[{name}] skipped: {spec['files'][0].parent} not found")
            result["datasets"].append({"dataset": name, "skipped": f"{spec['files'][0].parent} not found"})
            continue
        run, train_info = got
        info = json.loads((run / "train.json").read_text())
        full_file, _ = measure_file_bytes(load_checkpoint(run).model)
        metric = "auc" if spec["task"] == "ctr" else "recall@20"
        d = {"dataset": name, "model": spec["model"], "metric": metric, "full_file_bytes": full_file,
             "full_val": info.get("val") or {}, "full_test": info.get("test") or {}, "train": train_info, "rows": []}
        limit = args.ctr_limit if spec["task"] == "ctr" else args.topk_limit
        for fraction in args.fractions.split(","):
            d["rows"].append(one_budget(name, run, fraction, full_file // FRACTIONS[fraction], limit))
        d["command"] = result["command"]
        result["datasets"].append(d)
        result["seconds"] = time.perf_counter() - started
        earlier = json.loads((RESULTS / "auto_shared.json").read_text()) if (RESULTS / "auto_shared.json").is_file() else {}
        ran = {x["dataset"] for x in result["datasets"]} | set(args.datasets.split(","))
        for old in earlier.get("datasets", []):  # rows of datasets this command did not run stay, with their command
            if old["dataset"] not in ran:
                old.setdefault("command", earlier.get("command"))
                result["datasets"].append(old)
        result["datasets"].sort(key=lambda x: list(DATASETS).index(x["dataset"]))
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "auto_shared.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        (RESULTS / "auto_shared.md").write_text(render(result))
    log(f"done in {time.perf_counter() - started:.0f}s -> {RESULTS / 'auto_shared.md'}")


if __name__ == "__main__":
    main()
