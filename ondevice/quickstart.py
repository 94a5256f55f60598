"""``ondevice quickstart``: the whole flow on an embedded synthetic default, in about a minute.

generate (Criteo-format TSV with a planted model) -> prepare -> train DeepFM -> export to a
2 MB-budget ONNX artefact -> verify against PyTorch -> profile latency. Everything lands in
one folder (default ``ondevice-quickstart/``), each stage in its own sub-folder, so every
step can be rerun by hand with the commands printed at the end.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ondevice.errors import OutputExistsError

#: Small enough for ~1 minute on 2 cores, large enough that DeepFM learns the planted model.
QUICKSTART_ROWS = 100_000
QUICKSTART_VOCAB = 1_000
QUICKSTART_BUDGET = "2MB"


def run_quickstart(
    out_dir: str | Path = "ondevice-quickstart",
    *,
    rows: int = QUICKSTART_ROWS,
    epochs: int = 2,
    seed: int = 0,
    force: bool = False,
    quiet: bool = False,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run generate -> prepare -> train -> export -> verify -> profile; return a summary."""
    from ondevice.data.generate import generate_ctr
    from ondevice.data.preparation import prepare
    from ondevice.export import export_artefact, profile_artefact, verify_artefact
    from ondevice.train import TrainConfig, train

    out = Path(out_dir)
    if out.exists():
        if not force:
            raise OutputExistsError(f"{out} already exists; pass --force to replace it or --out another folder")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    raw = out / "raw" / "train.tsv.gz"
    raw.parent.mkdir()

    echo(f"[1/5] generating {rows:,} Criteo-format rows with a planted model -> {raw}")
    truth = generate_ctr(raw, rows, vocab=QUICKSTART_VOCAB, seed=seed)
    important = [f["field"] for f in truth.get("important_fields", [])]
    pairs = ["×".join(p["fields"]) for p in truth.get("interactions", [])]
    echo(f"      planted: important fields {', '.join(important)}; interacting pairs {', '.join(pairs)}"
         f" (truth: {raw}.truth.json)")

    data_dir = out / "data"
    echo(f"[2/5] preparing -> {data_dir}")
    info = prepare(raw, data_dir, format="criteo", min_count=2, seed=seed)
    echo(f"      rows {info.get('rows')}, {info.get('rows_per_s', 0):,.0f} rows/s ({_since(t0)})")

    run_dir = out / "run"
    echo(f"[3/5] training DeepFM -> {run_dir}")
    # One thread: this small model gains little from two, and one thread stays fast when
    # the machine is busy (two OpenMP threads on a loaded 2-core box can be 10x slower).
    config = TrainConfig(model="deepfm", embed_dim=8, mlp_dims=[64, 32], batch_size=1024, epochs=epochs,
                         seed=seed, patience=1, threads=1)
    result = train(data_dir, run_dir, config, quiet=quiet)
    echo(f"      validation AUC {result.val['auc']:.4f} (test AUC {result.test['auc']:.4f}, best epoch {result.best_epoch}) ({_since(t0)})")

    artefact = out / "artefact"
    echo(f"[4/5] exporting with budget {QUICKSTART_BUDGET} and verifying -> {artefact}")
    manifest = export_artefact(run_dir, artefact, budget=QUICKSTART_BUDGET)
    verified = verify_artefact(artefact)
    file_bytes = manifest["files"]["model.onnx"]["bytes"] if "model.onnx" in manifest.get("files", {}) else None
    echo(f"      model.onnx {file_bytes:,} B <= {QUICKSTART_BUDGET}; ORT vs PyTorch: {_verify_line(verified)} ({_since(t0)})")

    echo("[5/5] profiling (batch 1 and 256, 1 thread)")
    prof = profile_artefact(artefact, batches=(1, 256), threads=(1,), runs=200, warmup=20, plot=False, torch_baseline=True)
    elapsed = time.perf_counter() - t0
    echo(f"done in {elapsed:.0f} s. Artefact: {artefact}/model.onnx; report: {artefact}/profile.md")
    echo(f"next: ondevice profile {artefact} --batch 1 --batch 256 --threads 1 --threads 2")
    return {
        "out_dir": str(out),
        "val_auc": result.val["auc"],
        "test_auc": result.test["auc"],
        "artefact": str(artefact),
        "file_bytes": file_bytes,
        "verify": verified,
        "profile": prof,
        "seconds": elapsed,
    }


def _since(t0: float) -> str:
    return f"{time.perf_counter() - t0:.0f} s elapsed"


def _verify_line(verified: dict[str, Any]) -> str:
    diff = verified.get("max_abs_diff")
    if isinstance(diff, dict):
        diff = max(diff.values())
    return f"max abs diff {diff:.2e} (tolerance {verified.get('atol', verified.get('tolerance'))})" if diff is not None else "ok"
