"""What an app ships and holds (issue 16): file bytes by part, app payload, runtime memory, raw-input overhead.

For each shared CTR dataset (Criteo 10K head, Frappe NFM test file, MovieLens-1M 10K ratings
head; prepared with ``min_count=2``, all rows in train) a DeepFM (dim 16, MLP 400-400-400,
random weights: bytes, memory and latency do not depend on training) at two storage points
of the dense layers (fp32, int8 ``--mlp int8``) is exported twice: ``--inputs ids`` and
``--inputs raw``. Reported per artefact:

* model bytes by part (embeddings, vocabulary, dense layers, graph) and the app payload
  (id artefact: model + ``schema.json``; raw artefact: the model alone);
* runtime resident memory a session adds (after a warm-up session on a trivial model):
  after load, peak during load, after N runs, for each onnxruntime memory setting
  (default; no arena; no memory pattern; no pre-packing; all three off), each in a fresh
  process (the device runner's ``--_measure``);
* onnxruntime p50/p99 at batch 1, 1 thread, ids vs raw inputs (raw = encoding in the graph),
  and the raw overhead in percent.

Not covered here (left for a compress-based run): the ¼ / ⅒ / 1/30 budgets of the trained
models and browser parity (``tests/test_web_example.py``).

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/app_payload.py [--runs 2000] [--rows 3000]

Writes ``benchmarks/results/app_payload.json`` and ``.md``; skips a dataset whose files are absent.
"""

from __future__ import annotations

import argparse
import gzip
import platform
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from ondevice.data import prepare
from ondevice.data.dataset import EncodedDataset
from ondevice.export import export_artefact
from ondevice.export._runner import runner_module
from ondevice.io import atomic_write_json, atomic_write_text
from ondevice.models import build_model
from ondevice.models.int8_linear import quantize_dense_layers_
from ondevice.train.checkpoint import save_checkpoint

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
if not SHARED.is_dir():
    SHARED = Path("/work/shared/data")
OUT = Path(__file__).resolve().parent / "results"
MEMORY_VARIANTS = {
    "default": {},
    "no_arena": {"arena": False},
    "no_mem_pattern": {"mem_pattern": False},
    "no_prepacking": {"prepacking": False},
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


def datasets(work: Path, rows: int) -> dict[str, Path]:
    """Prepared dataset folders of the shared CTR datasets that are present."""
    found: dict[str, Path] = {}
    criteo = SHARED / "criteo" / "criteo_dac_train_head10k.tsv.gz"
    if criteo.is_file():
        prepare(_head(criteo, work / "criteo.tsv", rows), work / "criteo", format="criteo", min_count=2,
                val_fraction=0.0, test_fraction=0.0)
        found["criteo"] = work / "criteo"
    frappe = sorted((SHARED / "frappe" / "nfm-libfm").glob("*test*"))
    if frappe:
        prepare(_head(frappe[0], work / "frappe.libfm", rows), work / "frappe", format="libfm", min_count=2,
                val_fraction=0.0, test_fraction=0.0)
        found["frappe"] = work / "frappe"
    ml = SHARED / "movielens-1m"
    if (ml / "ratings_head10k.dat.gz").is_file():
        _head(ml / "ratings_head10k.dat.gz", work / "ratings.dat", rows)
        for side in ("users.dat", "movies.dat"):
            shutil.copyfile(ml / side, work / side)
        prepare(work / "ratings.dat", work / "movielens", format="movielens", min_count=2, val_fraction=0.0,
                test_fraction=0.0)
        found["movielens"] = work / "movielens"
    return found


def artefacts(work: Path, name: str, data: Path) -> dict[str, Path]:
    schema = EncodedDataset(data).schema
    out: dict[str, Path] = {}
    for mlp in ("fp32", "int8"):
        torch.manual_seed(0)
        model = build_model("deepfm", schema.vocab_sizes, embed_dim=16, mlp_dims=[400, 400, 400])
        if mlp == "int8":
            quantize_dense_layers_(model)
        run = work / f"{name}_{mlp}_run"
        run.mkdir()
        save_checkpoint(run / "model.pt", model, schema, metrics={})
        for inputs in ("ids", "raw"):
            art = work / f"{name}_{mlp}_{inputs}"
            export_artefact(run / "model.pt", art, inputs=inputs, check_mobile=False)
            out[f"{mlp}/{inputs}"] = art
    return out


def measure(art: Path, runs: int) -> dict[str, Any]:
    runner = runner_module()
    manifest = runner.load_manifest(art)
    memory = {}
    for label, opts in MEMORY_VARIANTS.items():
        m = runner.measure_in_subprocess(art, "model.onnx", 1, 1, min(runs, 200), 20, 0, memory=opts)
        memory[label] = m["memory"]
    lat = runner.measure_in_subprocess(art, "model.onnx", 1, 1, runs, 200, 0)
    parts = manifest["storage"]["by_part"]
    return {"bytes_by_part": parts, "app_payload": manifest["app_payload"], "memory": memory,
            "p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"], "session_create_ms": lat["session_create_ms"]}


def render(result: dict[str, Any]) -> str:
    mb = 1e6
    lines = ["# App payload and runtime memory (issue 16)", "",
             f"Command: `{result['command']}` on {result['machine']} (onnxruntime {result['onnxruntime']}). "
             "DeepFM dim 16, MLP 400-400-400, random weights; batch 1, 1 thread.", "",
             "## Bytes and latency", "",
             "| dataset | dense | inputs | embeddings | vocabulary | dense layers | graph | model file | app payload | "
             "p50 ms | p99 ms | raw overhead p50 |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for ds, rows in result["datasets"].items():
        for key, r in rows.items():
            mlp, inputs = key.split("/")
            p = r["bytes_by_part"]
            over = ""
            if inputs == "raw":
                base = rows[f"{mlp}/ids"]["p50_ms"]
                over = f"{100 * (r['p50_ms'] / base - 1):+.1f} %"
            lines.append(f"| {ds} | {mlp} | {inputs} | {p['embeddings'] / mb:.3f} MB | {p['vocabulary'] / mb:.3f} MB | "
                         f"{p['dense_layers'] / mb:.3f} MB | {p['graph'] / mb:.4f} MB | {p['total'] / mb:.3f} MB | "
                         f"{r['app_payload']['bytes'] / mb:.3f} MB | {r['p50_ms']:.4f} | {r['p99_ms']:.4f} | {over} |")
    lines += ["", "## Runtime resident memory a session adds (MB): after load / peak during load / after runs / "
              "runtime (the max, what `memory_budget_runtime` bounds)", "",
              "| dataset | dense | inputs | " + " | ".join(MEMORY_VARIANTS) + " |",
              "|---|---|---|" + "---:|" * len(MEMORY_VARIANTS)]
    for ds, rows in result["datasets"].items():
        for key, r in rows.items():
            mlp, inputs = key.split("/")
            cells = []
            for label in MEMORY_VARIANTS:
                m = r["memory"][label]

                def f(v: int | None) -> str:
                    return "-" if v is None else f"{v / mb:.2f}"

                cells.append(f"{f(m['load_added_bytes'])} / {f(m['load_peak_added_bytes'])} / "
                             f"{f(m['after_runs_added_bytes'])} / **{f(m['runtime_bytes'])}**")
            lines.append(f"| {ds} | {mlp} | {inputs} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=2000)
    p.add_argument("--rows", type=int, default=3000, help="rows of each shared file to prepare")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    import onnxruntime

    result: dict[str, Any] = {"command": "python benchmarks/app_payload.py " + " ".join(argv or sys.argv[1:]),
                              "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                              "onnxruntime": onnxruntime.__version__, "datasets": {}}
    with tempfile.TemporaryDirectory(prefix="app_payload_") as tmp:
        work = Path(tmp)
        for name, data in datasets(work, args.rows).items():
            arts = artefacts(work, name, data)
            result["datasets"][name] = {key: measure(art, args.runs) for key, art in arts.items()}
            print(f"{name}: done", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "app_payload.json", result)
    atomic_write_text(args.out / "app_payload.md", render(result))
    print(render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
