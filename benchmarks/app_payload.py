"""What an app ships and holds (issue 16): file bytes by part, app payload, runtime memory, raw-input overhead.

Shared CTR datasets (Criteo 10K head, Frappe NFM test file, MovieLens-1M 10K ratings head;
``--rows`` rows prepared with ``min_count=2``). Two parts:

1. **Full size, random weights** (bytes, memory and latency do not depend on training): a
   DeepFM (dim 16, MLP 400-400-400) at two storage points of the dense layers (fp32, int8)
   exported with ``--inputs ids`` and ``--inputs raw``. Runtime resident memory a session adds
   (after a warm-up session on a trivial model) for each onnxruntime memory setting (default;
   no arena; no memory pattern; no pre-packing; all three off), each in a fresh process (the
   device runner's ``--_measure``), and p50/p99 at batch 1, 1 thread for all on, no
   pre-packing (the runner's default) and all off (the six sessions of a dataset and dense type
   interleaved), and at batch 256 for all on vs no pre-packing (id artefacts).
2. **Budgets 1/4, 1/10, 1/30** of the full model's raw artefact (what the app ships at full
   size): the same DeepFM trained (``--epochs``) on 80 % of the rows, compressed by
   ``compress --method uniform`` (``--mlp auto``: int8 / narrower dense layers when needed)
   with raw inputs (the vocabulary inside the budget); the same compressed model exported
   with ``--inputs ids`` too.

Per artefact: bytes by part (embeddings, vocabulary, dense layers, graph), app payload (id
artefact: model + ``schema.json``; raw: the model alone), runtime memory, p50/p99 ids vs raw
(interleaved: ``--rounds`` rounds of ``--runs`` calls alternating between the two sessions in one
process, so machine load hits both alike), raw overhead, and browser parity (examples/web in
headless Chromium with onnxruntime-web: golden outputs' max |diff| and the page's p50; ``-`` when
Chromium/npm are absent).

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/app_payload.py [--runs 200] [--rounds 15] [--rows 3000]

Writes ``benchmarks/results/app_payload.json`` and ``.md``; skips a dataset whose files are absent.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import platform
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ondevice.data import prepare
from ondevice.data.dataset import EncodedDataset
from ondevice.errors import OndeviceError
from ondevice.export import export_artefact
from ondevice.export._runner import runner_module
from ondevice.models import build_model
from ondevice.models.int8_linear import quantize_dense_layers_
from ondevice.pipeline.compress import compress
from ondevice.train import TrainConfig, train
from ondevice.train.checkpoint import save_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
if not SHARED.is_dir():
    SHARED = Path("/work/shared/data")
OUT = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
FRACTIONS = {"1/4": 4, "1/10": 10, "1/30": 30}
#: memory settings timed too (p50/p99, all sessions interleaved): does lowering memory cost latency?
LATENCY_VARIANTS = ("all_on", "no_prepacking", "all_off")
DEFAULT = "no_prepacking"  # the runner's MEMORY_OPTIONS
#: explicit settings (the runner's default, MEMORY_OPTIONS, is no_prepacking since this benchmark)
MEMORY_VARIANTS = {
    "all_on": {"arena": True, "mem_pattern": True, "prepacking": True},
    "no_arena": {"arena": False, "mem_pattern": True, "prepacking": True},
    "no_mem_pattern": {"arena": True, "mem_pattern": False, "prepacking": True},
    "no_prepacking": {"arena": True, "mem_pattern": True, "prepacking": False},
    "all_off": {"arena": False, "mem_pattern": False, "prepacking": False},
}


def _head(src: Path, dst: Path, rows: int) -> Path:
    opener = gzip.open if src.suffix == ".gz" else open
    with opener(src, "rt", encoding="latin-1") as fh, open(dst, "w", encoding="latin-1") as out:
        for k, line in enumerate(fh):
            if k >= rows:
                break
            out.write(line)
    return dst


def datasets(work: Path, rows: int) -> dict[str, tuple[Path, Path]]:
    """(prepared folder, raw file) of the shared CTR datasets that are present (80/10/10 splits)."""
    found: dict[str, tuple[Path, Path]] = {}
    split = {"min_count": 2, "val_fraction": 0.1, "test_fraction": 0.1}
    criteo = SHARED / "criteo" / "criteo_dac_train_head10k.tsv.gz"
    if criteo.is_file():
        raw = _head(criteo, work / "criteo.tsv", rows)
        prepare(raw, work / "criteo", format="criteo", **split)
        found["criteo"] = (work / "criteo", raw)
    frappe = sorted((SHARED / "frappe" / "nfm-libfm").glob("*test*"))
    if frappe:
        raw = _head(frappe[0], work / "frappe.libfm", rows)
        prepare(raw, work / "frappe", format="libfm", **split)
        found["frappe"] = (work / "frappe", raw)
    ml = SHARED / "movielens-1m"
    if (ml / "ratings_head10k.dat.gz").is_file():
        raw = _head(ml / "ratings_head10k.dat.gz", work / "ratings.dat", rows)
        for side in ("users.dat", "movies.dat"):
            shutil.copyfile(ml / side, work / side)
        prepare(raw, work / "movielens", format="movielens", **split)
        found["movielens"] = (work / "movielens", raw)
    return found


def records(name: str, raw: Path, n: int = 64) -> list[dict[str, Any]]:
    """The first ``n`` rows of the raw file as records (column -> value), for the browser check."""
    lines = raw.read_text(encoding="latin-1").splitlines()[:n]
    if name == "criteo":
        cols = ["label", *[f"I{i}" for i in range(1, 14)], *[f"C{i}" for i in range(1, 27)]]
        return [dict(zip(cols, ln.split("\t"), strict=False)) for ln in lines]
    if name == "frappe":
        return [{f"f{i}": tok for i, tok in enumerate(ln.split()[1:], start=1)} for ln in lines]
    return [dict(zip(["user", "item"], ln.split("::")[:2], strict=False)) for ln in lines]


def interleaved(arts: dict[Any, Path], runs: int, rounds: int, memory: dict[Any, dict[str, bool]] | None = None,
                batch: int = 1) -> dict[Any, Any]:
    """p50/p99 (ms, batch 1, 1 thread) of each artefact (``memory[key]``: its session's memory
    settings), ``rounds`` rounds of ``runs`` calls alternating between the sessions of one
    process (load changes hit every session alike)."""
    runner = runner_module()
    sessions, feeds = {}, {}
    for key, art in arts.items():
        manifest = runner.load_manifest(art)
        sessions[key] = runner.make_session(art / "model.onnx", 1, memory=(memory or {}).get(key))
        feeds[key] = runner.make_inputs(manifest, batch, 0)
    samples: dict[Any, list[int]] = {key: [] for key in arts}
    for _ in range(rounds):
        for key, sess in sessions.items():
            f = feeds[key]
            samples[key] += runner.time_calls(lambda sess=sess, f=f: sess.run(None, f), runs, 20)
    return {key: {"p50_ms": float(np.percentile(v, 50) / 1e6), "p99_ms": float(np.percentile(v, 99) / 1e6)}
            for key, v in samples.items()}


def browser(art: Path, recs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """examples/web in headless Chromium (None when Chromium/npm/the package are missing)."""
    spec = importlib.util.spec_from_file_location("web_check", ROOT / "examples" / "web" / "check.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    if mod.browser() is None:
        return None
    try:
        r = mod.check(art, recs)
    except FileNotFoundError:
        return None
    return {"golden_max_abs_diff": r["golden_max_abs_diff"], "records_max_abs_diff": r["records_max_abs_diff"],
            "records": r["records"], "p50_ms": r["p50_ms"], "mean_ms": r["mean_ms"], "load_ms": r["load_ms"],
            "onnxruntime_web": r["onnxruntime_web"]}


def describe(art: Path, memory_variants: dict[str, dict[str, bool]], runs: int) -> dict[str, Any]:
    runner = runner_module()
    manifest = runner.load_manifest(art)
    memory = {label: runner.measure_in_subprocess(art, "model.onnx", 1, 1, min(runs, 200), 20, 0, memory=opts)["memory"]
              for label, opts in memory_variants.items()}
    return {"bytes_by_part": manifest["storage"]["by_part"], "app_payload": manifest["app_payload"], "memory": memory}


def full_size(work: Path, name: str, data: Path, recs: list[dict[str, Any]], runs: int, rounds: int) -> dict[str, Any]:
    schema = EncodedDataset(data).schema
    out: dict[str, Any] = {}
    for mlp in ("fp32", "int8"):
        torch.manual_seed(0)
        model = build_model("deepfm", schema.vocab_sizes, embed_dim=16, mlp_dims=[400, 400, 400])
        if mlp == "int8":
            quantize_dense_layers_(model)
        run = work / f"{name}_{mlp}_run"
        run.mkdir()
        save_checkpoint(run / "model.pt", model, schema, metrics={})
        arts = {inputs: work / f"{name}_{mlp}_{inputs}" for inputs in ("ids", "raw")}
        for inputs, art in arts.items():
            export_artefact(run / "model.pt", art, inputs=inputs, check_mobile=False)
        keys = [(inputs, label) for inputs in arts for label in LATENCY_VARIANTS]
        lat = interleaved({k: arts[k[0]] for k in keys}, runs, rounds, memory={k: MEMORY_VARIANTS[k[1]] for k in keys})
        big = interleaved({v: arts["ids"] for v in ("all_on", "no_prepacking")}, max(runs // 10, 5), rounds,
                          memory=MEMORY_VARIANTS, batch=256)  # does pre-packing matter at a large batch?
        for inputs, art in arts.items():
            row = describe(art, MEMORY_VARIANTS, runs)
            row["latency"] = {label: lat[(inputs, label)] for label in LATENCY_VARIANTS}
            if inputs == "ids":
                row["latency_batch256"] = big
            row["browser"] = browser(art, recs) if inputs == "raw" else None
            out[f"{mlp}/{inputs}"] = row
    return out


def budgets(work: Path, name: str, data: Path, recs: list[dict[str, Any]], runs: int, rounds: int,
            epochs: int) -> dict[str, Any]:
    """Train, compress to 1/4, 1/10, 1/30 of the full raw artefact, export ids too, measure."""
    config = TrainConfig(model="deepfm", embed_dim=16, mlp_dims=[400, 400, 400], epochs=epochs, threads=1, seed=0)
    result = train(data, work / f"{name}_trained", config, quiet=True)
    full = export_artefact(work / f"{name}_trained", work / f"{name}_full_raw", inputs="raw", check_mobile=False)
    full_bytes = full["files"]["model.onnx"]["bytes"]
    targets = {label: int(full_bytes / d) for label, d in FRACTIONS.items()}
    out: dict[str, Any] = {"full_raw_bytes": full_bytes, "full_val_auc": result.val["auc"], "targets": {}}
    comp = work / f"{name}_compressed"
    try:
        compress(work / f"{name}_trained", budgets=list(targets.values()), methods=["uniform"], out_dir=comp, epochs=1,
                 profile=False, plot=False, quiet=True, evaluate_test=False, inputs="raw")
    except OndeviceError as err:  # some budgets fail (e.g. below the vocabulary alone): summary.json lists them
        print(f"{name}: {str(err)[:200]}", flush=True)
    summary = json.loads((comp / "summary.json").read_text())
    for label, nbytes in targets.items():
        run = next((r for r in summary["runs"] if r["budget_bytes"] == nbytes), None)
        if run is None:
            fail = next((f for f in summary["failures"] if f["budget_bytes"] == nbytes), {})
            out["targets"][label] = {"budget_bytes": nbytes, "failed": fail.get("message", "no run")[:300]}
            continue
        raw_art = comp / run["folder"]
        ids_art = work / f"{name}_{run['folder']}_ids"
        export_artefact(raw_art / "reference_model.pt", ids_art, inputs="ids", check_mobile=False)
        arts = {"ids": ids_art, "raw": raw_art}
        lat = interleaved(arts, runs, rounds)
        rows = {}
        for inputs, art in arts.items():
            row = describe(art, {"default": {}}, runs)  # the runner's default settings
            row["latency"] = {"default": lat[inputs]}
            row["browser"] = browser(art, recs) if inputs == "raw" else None
            rows[inputs] = row
        out["targets"][label] = {"budget_bytes": nbytes, "val_auc": run["val_metric"], "method": run["method"], **rows}
    return out


def _mb(v: float | None) -> str:
    return "-" if v is None else f"{v / 1e6:.3f}"


def _parts(p: dict[str, int]) -> str:
    return f"{_mb(p['embeddings'])} | {_mb(p['vocabulary'])} | {_mb(p['dense_layers'])} | {_mb(p['graph'])} | {_mb(p['total'])}"


def _browser(b: dict[str, Any] | None) -> str:
    return "-" if not b else f"{b['golden_max_abs_diff']:.1e} / {b['records_max_abs_diff']:.1e} ({b['mean_ms']:.3f} ms)"


def render(result: dict[str, Any]) -> str:
    lines = ["# App payload and runtime memory (issue 16)", "",
             f"Command: `{result['command']}` on {result['machine']} (onnxruntime {result['onnxruntime']}). "
             "Latency: batch 1, 1 thread, ids and raw sessions interleaved in one process; overhead = raw p50 / ids p50 - 1. "
             "Memory: resident MB a session adds (fresh process, after a warm-up session on a trivial model), the max of "
             "after load / peak during load / after runs (what `memory_budget_runtime` bounds). Browser: examples/web in "
             "headless Chromium, onnxruntime-web: golden max |diff| / records max |diff| vs onnxruntime in Python (mean ms "
             "per batch-1 run in the page).", "",
             "## Full size, random weights (DeepFM dim 16, MLP 400-400-400; latency and memory with the runner's "
             "default settings, no pre-packing)", "",
             "| dataset | dense | inputs | embeddings MB | vocabulary MB | dense layers MB | graph MB | model file MB | "
             "app payload MB | p50 ms | p99 ms | raw overhead p50 | memory MB | browser |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for ds, part in result["datasets"].items():
        for key, r in part["full_size"].items():
            mlp, inputs = key.split("/")
            lat = r["latency"][DEFAULT]
            over = ""
            if inputs == "raw":
                over = f"{100 * (lat['p50_ms'] / part['full_size'][f'{mlp}/ids']['latency'][DEFAULT]['p50_ms'] - 1):+.1f} %"
            lines.append(f"| {ds} | {mlp} | {inputs} | {_parts(r['bytes_by_part'])} | {_mb(r['app_payload']['bytes'])} | "
                         f"{lat['p50_ms']:.4f} | {lat['p99_ms']:.4f} | {over} | "
                         f"{_mb(r['memory'][DEFAULT]['runtime_bytes'])[:-1]} | {_browser(r['browser'])} |")
    lines += ["", "## Budgets 1/4, 1/10, 1/30 of the full raw artefact (trained, `compress --method uniform`, raw inputs)", "",
              "| dataset | budget | val AUC | inputs | embeddings MB | vocabulary MB | dense layers MB | graph MB | "
              "model file MB | app payload MB | p50 ms | p99 ms | raw overhead p50 | memory MB | browser |",
              "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for ds, part in result["datasets"].items():
        b = part["budgets"]
        lines.append(f"| {ds} | full ({_mb(b['full_raw_bytes'])} MB raw) | {b['full_val_auc']:.4f} | | | | | | | | | | | | |")
        for label, t in b["targets"].items():
            head = f"| {ds} | {label} = {t['budget_bytes']:,} B"
            if "failed" in t:
                lines.append(f"{head} | | | failed: {t['failed']} | | | | | | | | | | |")
                continue
            for inputs in ("ids", "raw"):
                r = t[inputs]
                lat = r["latency"]["default"]
                over = f"{100 * (lat['p50_ms'] / t['ids']['latency']['default']['p50_ms'] - 1):+.1f} %" if inputs == "raw" else ""
                lines.append(f"{head} | {t['val_auc']:.4f} | {inputs} | {_parts(r['bytes_by_part'])} | "
                             f"{_mb(r['app_payload']['bytes'])} | {lat['p50_ms']:.4f} | {lat['p99_ms']:.4f} | {over} | "
                             f"{_mb(r['memory']['default']['runtime_bytes'])[:-1]} | {_browser(r['browser'])} |")
    lines += ["", "## Memory settings (full size): resident MB a session adds, and p50 / p99 ms with that setting", "",
              "| dataset | dense | inputs | " + " | ".join(MEMORY_VARIANTS) + " | "
              + " | ".join(f"p50/p99 {v}" for v in LATENCY_VARIANTS) + " |",
              "|---|---|---|" + "---:|" * (len(MEMORY_VARIANTS) + len(LATENCY_VARIANTS))]
    for ds, part in result["datasets"].items():
        for key, r in part["full_size"].items():
            mlp, inputs = key.split("/")
            cells = [_mb(r["memory"][label]["runtime_bytes"])[:-1] for label in MEMORY_VARIANTS]
            lat = [f"{r['latency'][v]['p50_ms']:.4f} / {r['latency'][v]['p99_ms']:.4f}" for v in LATENCY_VARIANTS]
            lines.append(f"| {ds} | {mlp} | {inputs} | " + " | ".join(cells) + " | " + " | ".join(lat) + " |")
    lines += ["", "Batch 256, id artefacts (p50 / p99 ms, the two sessions interleaved):", "",
              "| dataset | dense | all_on | no_prepacking |", "|---|---|---:|---:|"]
    for ds, part in result["datasets"].items():
        for key, r in part["full_size"].items():
            if key.endswith("/ids"):
                b = r["latency_batch256"]
                lines.append(f"| {ds} | {key.split('/')[0]} | {b['all_on']['p50_ms']:.3f} / {b['all_on']['p99_ms']:.3f} | "
                             f"{b['no_prepacking']['p50_ms']:.3f} / {b['no_prepacking']['p99_ms']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=200, help="calls per round")
    p.add_argument("--rounds", type=int, default=15, help="interleaved rounds per session")
    p.add_argument("--rows", type=int, default=3000, help="rows of each shared file to prepare")
    p.add_argument("--epochs", type=int, default=2, help="training epochs of the full model (part 2)")
    p.add_argument("--only", nargs="*", default=None, help="datasets to run (default: all present)")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    import onnxruntime

    result: dict[str, Any] = {"command": "python benchmarks/app_payload.py " + " ".join(argv or sys.argv[1:]),
                              "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                              "onnxruntime": onnxruntime.__version__, "datasets": {}}
    with tempfile.TemporaryDirectory(prefix="app_payload_") as tmp:
        work = Path(tmp)
        for name, (data, raw) in datasets(work, args.rows).items():
            if args.only and name not in args.only:
                continue
            recs = records(name, raw)
            result["datasets"][name] = {"full_size": full_size(work, name, data, recs, args.runs, args.rounds),
                                        "budgets": budgets(work, name, data, recs, args.runs, args.rounds, args.epochs)}
            print(f"{name}: done", flush=True)
    write_results(args.out, "app_payload", result, render)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
