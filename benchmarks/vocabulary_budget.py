"""Raw-feature artefacts below the vocabulary's size: ``frequency`` (rare ids' rows and keys
dropped) against id artefacts at the same bytes (issue 16, item 2).

Criteo's first 10,000 rows (``ondevice prepare … --format criteo``, ``ondevice train`` with
defaults: DeepFM, 80/10/10 split) carry 787,638 B of vocabulary and encoder, so at 1MB, 500KB
and 300KB a raw artefact with every key has no room (``compress`` without ``--inputs`` switches
to ids above a 50 % share). Per budget, each through ``ondevice.pipeline.compress``:

* ``frequency``, ``frequency+int8`` with ``inputs="raw"``: keys counted per kept id;
* ``uniform`` with ``inputs="raw"``: the old way, the whole vocabulary reserved (fails where it
  does not fit);
* ``auto`` with ``inputs="ids"`` (what the default call gave here before ``frequency``: ids above
  the 50 % share), ``auto`` with the default inputs (now: its candidates take ids and
  ``frequency`` also runs raw; the artefact takes the chosen one's inputs), ``uniform`` with ids.

Reported: the model file's bytes and its vocabulary part (``manifest.storage.by_part``), the
inputs, validation AUC (what every choice uses) and test AUC (onnxruntime on ``model.onnx``,
read once after the choices). One torch thread; shared 2-core machine.

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/vocabulary_budget.py [--budgets 1MB,500KB,300KB]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import log, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CRITEO = ROOT.parent / "shared" / "data" / "criteo" / "criteo_dac_train_head10k.tsv.gz"
#: (label, methods, inputs) of each compress call
CALLS = (("frequency raw", ["frequency", "frequency+int8"], "raw"), ("uniform raw (full reserve)", ["uniform"], "raw"),
         ("auto ids", ["auto"], "ids"), ("auto (default inputs)", ["auto"], None), ("uniform ids", ["uniform"], "ids"))


def _cli(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "ondevice", *args], check=True, env=env, cwd=ROOT)


def _rows(out: Path, summary: dict[str, Any], call: str) -> list[dict[str, Any]]:
    rows = []
    for r in summary["runs"]:
        manifest = json.loads((out / r["folder"] / "manifest.json").read_text())
        search = json.loads((out / r["folder"] / "search.json").read_text())
        parts = manifest["storage"]["by_part"]
        chosen = next((c["method"] for c in r.get("candidates") or [] if c.get("chosen")), None)
        config = r["config"]["_data"]
        config = config["config"]["_data"] if chosen else config  # auto: the chosen candidate's config
        kept = next((t["kept_ids"] for t in search["trace"] if "kept_ids" in t), None)
        rows.append({"call": call, "budget": r["target"], "budget_bytes": r["budget_bytes"], "method": r["method"],
                     "chosen": chosen, "inputs": manifest["input_encoding"], "file_bytes": parts["total"],
                     "vocabulary_bytes": parts["vocabulary"], "embedding_bytes": parts["embeddings"],
                     "dense_bytes": parts["dense_layers"], "app_payload_bytes": manifest["app_payload"]["bytes"],
                     "kept_ids": kept, "mlp": config.get("mlp"),
                     "val_auc": r["val_metric"], "test_auc": r.get("test_metric"),
                     "parity_max_abs_diff": r["verify_max_abs_diff"], "seconds": r["wall_s"]})
    for f in summary["failures"]:
        rows.append({"call": call, "budget": f["target"], "budget_bytes": f["budget_bytes"], "method": f["method"],
                     "failed": f["message"]})
    return rows


def render(res: dict[str, Any]) -> str:
    full = res["full_model"]
    out = ["# Raw-feature artefacts below the vocabulary's size (Criteo head10k)", "",
           f"`{res['command']}` ({res['machine']}, torch {res['torch']}, {res['seconds']:.0f} s).", "",
           f"Full model: {full['file_bytes']:,} B, val AUC {full['val_auc']:.4f}, test AUC {full['test_auc']:.4f}; "
           f"vocabulary and encoder with every key: {res['vocabulary_reserve']:,} B. Validation {res['rows_val']:,} "
           f"rows, test {res['rows_test']:,}: AUC differences below about 0.02 are within noise.", "",
           "| budget | call | method | inputs | file B | vocabulary B | app payload B | kept ids | MLP | val AUC | test AUC |",
           "|---|---|---|---|---:|---:|---:|---:|---|---:|---:|"]
    for r in res["rows"]:
        if "failed" in r:
            out.append(f"| {r['budget']} | {r['call']} | {r['method']} | | | | | | | failed: {r['failed'][:90]}… | |")
            continue
        method = r["method"] + (f" → {r['chosen']}" if r["chosen"] else "")
        kept = f"{r['kept_ids']:,}" if r["kept_ids"] is not None else ""
        out.append(f"| {r['budget']} | {r['call']} | {method} | {r['inputs']} | {r['file_bytes']:,} | "
                   f"{r['vocabulary_bytes']:,} | {r['app_payload_bytes']:,} | {kept} | {r['mlp']} | {r['val_auc']:.4f} | "
                   f"{r['test_auc']:.4f} |")
    out += ["", "App payload: what the app ships (`manifest.app_payload`): an id artefact's model file plus "
            "`schema.json` (the app encodes with it), a raw one's model file alone (the encoding is inside). Val AUC "
            "is what every choice used; test AUC is read once, after them.", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budgets", default="1MB,500KB,300KB")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    if not CRITEO.is_file():
        log(f"skipped: {CRITEO} not found")
        return 0
    from ondevice.data import EncodedDataset
    from ondevice.export.raw import raw_encoder_bytes
    from ondevice.pipeline.compress import compress
    from ondevice.train import load_checkpoint

    torch.set_num_threads(1)
    budgets = args.budgets.split(",")
    started = time.time()
    res: dict[str, Any] = {"command": "OMP_NUM_THREADS=1 nice -n 19 python benchmarks/vocabulary_budget.py"
                           + (f" --budgets {args.budgets}" if args.budgets != "1MB,500KB,300KB" else ""),
                           "machine": platform.platform(), "torch": torch.__version__, "budgets": budgets, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _cli("prepare", str(CRITEO), "--format", "criteo", "--out", str(work / "D"))
        _cli("train", str(work / "D"), "--out", str(work / "RUN"))
        res["vocabulary_reserve"] = raw_encoder_bytes(load_checkpoint(work / "RUN").schema)
        data = EncodedDataset(work / "D")
        res["rows_val"], res["rows_test"] = len(data.split("val")), len(data.split("test"))
        for k, (label, methods, inputs) in enumerate(CALLS):
            log(f"[{label}] {', '.join(methods)} at {', '.join(budgets)}")
            out = work / f"out{k}"
            try:
                summary = compress(work / "RUN", budgets=budgets, methods=methods, out_dir=out, inputs=inputs,
                                   quiet=True, profile=False)
            except Exception as err:  # noqa: BLE001 - a failed run is a row; the summary lists it
                log(f"[{label}] {type(err).__name__}: {err}")
                summary = json.loads((out / "summary.json").read_text())
            full = summary["full_model"]
            res["full_model"] = {"file_bytes": full["file_bytes"], "val_auc": full["val"]["auc"],
                                 "test_auc": full["test"]["auc"] if full.get("test") else None}
            res["rows"] += _rows(out, summary, label)
    order = {b: i for i, b in enumerate(budgets)}
    res["rows"].sort(key=lambda r: order.get(r["budget"], 99))
    res["seconds"] = time.time() - started
    write_results(args.out, "vocabulary_budget", res, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
