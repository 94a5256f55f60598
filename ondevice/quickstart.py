"""``ondevice quickstart``: the whole flow on an embedded synthetic default, in about a minute.

generate (Criteo-format TSV with a planted model) -> prepare -> train a full DeepFM (about
4 MB of fp32 parameters) -> compress it to a 4 MB budget with SSEDS (search, retrain,
export, verify against PyTorch, profile latency) into a raw-feature artefact: the app sends
raw field values and ships the model file alone, its ~2.18 MB vocabulary inside the budget;
the last lines print that payload by part and the resident memory a session adds.
Everything lands in one folder (default
``ondevice-quickstart/``), each stage in its own sub-folder, so every step can be rerun by
hand with the commands printed at the end.

Torch runs on one thread here: these models gain little from two, and two OpenMP threads
on a busy 2-core machine can be ten times slower than one.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ondevice.export._runner import runner_module
from ondevice.io import check_writable_parent
from ondevice.outputs import OutputLock, check_replaceable, write_marker

#: Small enough for ~1 minute on 2 cores, large enough that DeepFM learns the planted model.
QUICKSTART_ROWS = 300_000
QUICKSTART_VOCAB = 4_000
#: what the app ships, vocabulary included: the raw-feature artefact carries ~2.18 MB of
#: vocabulary for this data (the id artefact shipped a 2 MB model plus a 2.07 MB schema.json)
QUICKSTART_BUDGET = "4MB"


def run_quickstart(
    out_dir: str | Path = "ondevice-quickstart",
    *,
    rows: int = QUICKSTART_ROWS,
    epochs: int = 3,
    seed: int = 0,
    force: bool = False,
    quiet: bool = False,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run generate -> prepare -> train -> export -> verify -> profile; return a summary.

    ``out_dir`` is locked for the run, replaced only with ``force`` when an earlier quickstart
    wrote it (``ondevice.outputs``), and removed again if the run fails.
    """
    out = Path(out_dir)
    check_writable_parent(out)
    with OutputLock(out):
        # not renamed at the end (the run records its data folder's path): removed on failure instead
        if check_replaceable(out, "quickstart", force, hint=" or --out another folder"):
            shutil.rmtree(out)
        out.mkdir(parents=True)
        try:
            summary = _run(out, rows=rows, epochs=epochs, seed=seed, quiet=quiet, echo=echo)
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)
            raise
        write_marker(out, "quickstart")
    return summary


def _run(out: Path, *, rows: int, epochs: int, seed: int, quiet: bool, echo: Callable[[str], None]) -> dict[str, Any]:
    import torch

    from ondevice.data.generate import generate_ctr
    from ondevice.data.preparation import prepare
    from ondevice.pipeline.compress import compress
    from ondevice.train import TrainConfig, train

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    raw = out / "raw" / "train.tsv.gz"
    raw.parent.mkdir()

    echo(f"[1/4] generating {rows:,} Criteo-format rows with a planted model -> {raw}")
    truth = generate_ctr(raw, rows, vocab=QUICKSTART_VOCAB, seed=seed)
    important = [f["field"] for f in truth.get("important_fields", [])]
    pairs = ["×".join(p["fields"]) for p in truth.get("interactions", [])]
    echo(f"      planted: important fields {', '.join(important)}; interacting pairs {', '.join(pairs)}"
         f" (truth: {raw}.truth.json)")

    data_dir = out / "data"
    echo(f"[2/4] preparing -> {data_dir}")
    info = prepare(raw, data_dir, format="criteo", min_count=2, seed=seed)
    echo(f"      rows {info.get('rows')}, {info.get('rows_per_s', 0):,.0f} rows/s ({_since(t0)})")

    run_dir = out / "run"
    echo(f"[3/4] training DeepFM -> {run_dir}")
    config = TrainConfig(model="deepfm", embed_dim=8, mlp_dims=[64, 32], batch_size=1024, epochs=epochs,
                         seed=seed, patience=1, threads=1)
    result = train(data_dir, run_dir, config, quiet=quiet)
    echo(f"      validation AUC {result.val['auc']:.4f} (test AUC {result.test['auc']:.4f}, best epoch {result.best_epoch}) ({_since(t0)})")

    compressed = out / "compressed"
    echo(f"[4/4] compressing to {QUICKSTART_BUDGET} with SSEDS: search, retrain, export, verify, profile -> {compressed}")
    summary = compress(run_dir, budgets=[QUICKSTART_BUDGET], methods=["sseds"], out_dir=compressed, epochs=2,
                       seed=seed, quiet=True, inputs="raw")  # raw even where the vocabulary is over half the budget
    full, run = summary["full_model"], summary["runs"][0]
    artefact = compressed / run["folder"]
    diff = max(run["verify_max_abs_diff"].values())
    echo(f"      full model {full['file_bytes']:,} B -> {run['file_bytes']:,} B <= {QUICKSTART_BUDGET}; "
         f"val AUC {full['val']['auc']:.4f} -> {run['val_metric']:.4f}; ORT vs PyTorch max diff {diff:.1e}; "
         f"p50 {run['p50_ms_batch1'] * 1000:.0f} µs at batch 1 ({_since(t0)})")
    manifest = json.loads((artefact / "manifest.json").read_text(encoding="utf-8"))
    parts, payload = manifest["storage"]["by_part"], manifest["app_payload"]
    memory = runner_module().measure_in_subprocess(artefact, "model.onnx", 1, 1, 50, 10, seed)["memory"]
    echo(f"      the app ships {', '.join(payload['files'])}: {payload['bytes']:,} B = embeddings {parts['embeddings']:,} B"
         f" + vocabulary {parts['vocabulary']:,} B + dense layers {parts['dense_layers']:,} B + graph {parts['graph']:,} B "
         f"(raw inputs: the app sends raw field values); a session adds "
         f"{(memory['runtime_bytes'] or 0) / 1e6:.1f} MB of resident memory")
    elapsed = time.perf_counter() - t0
    echo(f"done in {elapsed:.0f} s. Artefact: {artefact}/model.onnx; report: {compressed}/summary.md")
    echo(f"next: ondevice profile {artefact} --batch 1 --batch 256 --threads 1 --threads 2")
    return {
        "out_dir": str(out),
        "val_auc": result.val["auc"],
        "test_auc": result.test["auc"],
        "artefact": str(artefact),
        "full_bytes": full["file_bytes"],
        "file_bytes": run["file_bytes"],
        "compressed_val_auc": run["val_metric"],
        "verify_max_abs_diff": diff,
        "app_payload_bytes": payload["bytes"],
        "runtime_memory_bytes": memory["runtime_bytes"],
        "seconds": elapsed,
    }


def _since(t0: float) -> str:
    return f"{time.perf_counter() - t0:.0f} s elapsed"
