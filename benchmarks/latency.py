"""Latency benchmark (issue 3): onnxruntime artefacts vs PyTorch eager vs the onnxruntime floor.

Models (freshly initialised weights; latency does not depend on training):

* ``frappe-deepfm``: DeepFM at Frappe size: 10 fields, 5,382 ids in total, dim 10, MLP 400-400-400;
* ``criteo26-deepfm``: a 26-field Criteo-like DeepFM: 200,000 ids in total, dim 16, MLP 400-400.

For batch 1 and 256 and 1 and 2 intra-op threads, each measurement runs in a fresh process:
the artefact through the device runner's ``measure_one`` (the same code as
``ondevice profile`` and ``export/runner.py``), PyTorch eager on the same inputs, and the
*floor*: a graph holding one Identity node with the same input and session options, i.e.
the per-call cost of ``InferenceSession.run`` itself. Also reports each artefact's overhead
ratio, (file bytes - parameter bytes) / file bytes.

Targets: batch-1 ORT p50 <= 3x floor and <= 1/6 of PyTorch eager; batch-256 ORT throughput
>= PyTorch eager. Writes ``benchmarks/results/latency.json`` and ``latency.md``.

    python benchmarks/latency.py [--runs-b1 2000] [--runs-b256 300] [--out benchmarks/results]
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

MODELS: dict[str, dict[str, Any]] = {
    "frappe-deepfm": {"fields": 10, "total_ids": 5382, "dim": 10, "mlp": [400, 400, 400]},
    "criteo26-deepfm": {"fields": 26, "total_ids": 200_000, "dim": 16, "mlp": [400, 400]},
}


def split_vocab(total: int, fields: int) -> list[int]:
    """Zipf-ish field sizes summing to ``total`` (a few large fields, many small ones)."""
    weights = [1.0 / (i + 1) ** 1.2 for i in range(fields)]
    sizes = [max(2, int(total * w / sum(weights))) for w in weights]
    sizes[0] += total - sum(sizes)
    return sizes


def build_artefact(name: str, spec: dict[str, Any], root: Path) -> Path:
    import torch

    from ondevice.export import export_artefact
    from ondevice.models import build_model
    from ondevice.schema import Field, Schema
    from ondevice.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    vocab = split_vocab(spec["total_ids"], spec["fields"])
    schema = Schema(task="ctr", fields=[Field(f"C{i + 1}", v, encoding="identity") for i, v in enumerate(vocab)])
    model = build_model("deepfm", vocab, embed_dim=spec["dim"], mlp_dims=spec["mlp"])
    run = root / f"run-{name}"
    run.mkdir()
    save_checkpoint(run / "model.pt", model, schema)
    schema.save(run / "schema.json")
    export_artefact(run, root / name, check_mobile=False)
    return root / name


def floor_worker(batch: int, fields: int, threads: int, runs: int, warmup: int) -> dict[str, Any]:
    """Per-call floor: one Identity node, same input shape/dtype and session options."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from ondevice.export._runner import runner_module

    runner = runner_module()
    graph = helper.make_graph([helper.make_node("Identity", ["ids"], ["out"])], "floor",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", fields])],
                              [helper.make_tensor_value_info("out", TensorProto.INT64, ["batch", fields])])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "identity.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
        sess = runner.make_session(path, threads)
        feeds = {"ids": np.zeros((batch, fields), dtype=np.int64)}
        names = ["out"]
        samples = runner.time_calls(lambda: sess.run(names, feeds), runs, warmup)
    return {"runtime": "onnxruntime-identity-floor", "batch": batch, "threads": threads, **runner.latency_stats(samples, batch)}


def measure(art: Path, fields: int, batch: int, threads: int, runs: int, warmup: int) -> dict[str, Any]:
    from ondevice.export._runner import runner_module
    from ondevice.export.profile import _torch_subprocess

    runner = runner_module()
    ort_r = runner.measure_in_subprocess(art, "model.onnx", batch, threads, runs, warmup, seed=0)
    torch_r = _torch_subprocess(art, [(batch, threads)], runs, warmup, 0)[0]
    proc = subprocess.run([sys.executable, __file__, "--_floor", str(batch), str(fields), str(threads), str(runs),
                           str(warmup)], capture_output=True, text=True, check=True)
    floor_r = json.loads(proc.stdout)
    return {"batch": batch, "threads": threads, "onnxruntime": ort_r, "pytorch": torch_r, "floor": floor_r,
            "ratio": {"ort_p50_over_floor_p50": ort_r["p50_ms"] / floor_r["p50_ms"],
                      "torch_p50_over_ort_p50": torch_r["p50_ms"] / ort_r["p50_ms"],
                      "torch_p99_over_ort_p99": torch_r["p99_ms"] / ort_r["p99_ms"],
                      "ort_throughput_over_torch": ort_r["throughput_rows_per_s"] / torch_r["throughput_rows_per_s"]}}


def targets(row: dict[str, Any]) -> dict[str, bool]:
    r = row["ratio"]
    if row["batch"] == 1:
        return {"p50_le_3x_floor": r["ort_p50_over_floor_p50"] <= 3.0, "p50_le_torch_over_6": r["torch_p50_over_ort_p50"] >= 6.0}
    return {"throughput_ge_torch": r["ort_throughput_over_torch"] >= 1.0}


def render_md(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = ["# Latency: onnxruntime artefact vs PyTorch eager vs onnxruntime floor", "",
             f"Machine: {m['machine']} {m['processor']}, {m['cpu_count']} CPUs, load average before/after "
             f"{res['loadavg_before']} / {res['loadavg_after']}; onnxruntime {m['onnxruntime']}, torch {res['torch']}. "
             "One fresh process per measurement; batch 1: "
             f"{res['settings']['runs_b1']} runs after {res['settings']['warmup_b1']} warm-up; batch 256: "
             f"{res['settings']['runs_b256']} runs after {res['settings']['warmup_b256']}. Times in microseconds.", "",
             "Command: `" + res["command"] + "`", "",
             "| model | batch | threads | floor p50 | ORT p50 | ORT p99 | torch p50 | torch p99 | ORT/floor p50 | torch/ORT p50 | ORT/torch rows/s | targets |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, mres in res["models"].items():
        for row in mres["results"]:
            o, p, f, r = row["onnxruntime"], row["pytorch"], row["floor"], row["ratio"]
            t = ", ".join(f"{k} {'PASS' if v else 'MISS'}" for k, v in row["targets"].items())
            lines.append(f"| {name} | {row['batch']} | {row['threads']} | {f['p50_ms'] * 1e3:.1f} | {o['p50_ms'] * 1e3:.1f} | "
                         f"{o['p99_ms'] * 1e3:.1f} | {p['p50_ms'] * 1e3:.1f} | {p['p99_ms'] * 1e3:.1f} | "
                         f"{r['ort_p50_over_floor_p50']:.2f} | {r['torch_p50_over_ort_p50']:.2f} | "
                         f"{r['ort_throughput_over_torch']:.2f} | {t} |")
    if max(res["loadavg_before"][0], res["loadavg_after"][0]) > (m["cpu_count"] or 1):
        lines += ["", f"**Warning:** the load average exceeded the {m['cpu_count']} CPUs during this run (other jobs "
                  "were running), so tails (p99) and batch-256 numbers are inflated; re-run on an idle machine."]
    lines += ["", "| model | file bytes | parameter bytes | overhead | overhead ratio |", "|---|---:|---:|---:|---:|"]
    for name, mres in res["models"].items():
        s = mres["storage"]
        lines.append(f"| {name} | {s['file_bytes']:,} | {s['parameter_bytes']:,} | {s['graph_overhead_bytes']:,} | "
                     f"{100 * s['graph_overhead_ratio']:.3f} % |")
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_floor":
        b, f, t, runs, warmup = (int(v) for v in sys.argv[2:7])
        print(json.dumps(floor_worker(b, f, t, runs, warmup)))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs-b1", type=int, default=2000)
    ap.add_argument("--warmup-b1", type=int, default=200)
    ap.add_argument("--runs-b256", type=int, default=300)
    ap.add_argument("--warmup-b256", type=int, default=30)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()
    import torch

    from ondevice.export._runner import runner_module

    result: dict[str, Any] = {"command": "python benchmarks/latency.py " + " ".join(sys.argv[1:]),
                              "machine": runner_module().device_info(), "torch": torch.__version__,
                              "loadavg_before": [round(x, 2) for x in os.getloadavg()],
                              "settings": {"runs_b1": args.runs_b1, "warmup_b1": args.warmup_b1,
                                           "runs_b256": args.runs_b256, "warmup_b256": args.warmup_b256},
                              "models": {}}
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in MODELS.items():
            art = build_artefact(name, spec, Path(tmp))
            manifest = json.loads((art / "manifest.json").read_text())
            rows = []
            for batch in (1, 256):
                runs, warmup = (args.runs_b1, args.warmup_b1) if batch == 1 else (args.runs_b256, args.warmup_b256)
                for threads in (1, 2):
                    row = measure(art, spec["fields"], batch, threads, runs, warmup)
                    row["targets"] = targets(row)
                    rows.append(row)
                    print(f"{name} b{batch} t{threads}: ORT p50 {row['onnxruntime']['p50_ms'] * 1e3:.1f} us, "
                          f"torch p50 {row['pytorch']['p50_ms'] * 1e3:.1f} us, floor {row['floor']['p50_ms'] * 1e3:.1f} us",
                          file=sys.stderr)
            result["models"][name] = {"spec": spec, "vocab_sizes": manifest["vocab_sizes"], "storage": manifest["storage"],
                                      "results": rows}
    result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    result["seconds"] = time.time() - started
    result["platform"] = platform.platform()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latency.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "latency.md").write_text(render_md(result))
    print(render_md(result))


if __name__ == "__main__":
    main()
