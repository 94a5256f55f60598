"""``profile_artefact``: latency, throughput and memory of an artefact, against PyTorch eager.

For every batch x threads pair, onnxruntime is measured in a **fresh subprocess** through the
device runner's own ``measure_one`` (onnxruntime does not give memory back, so RSS after
session creation is only meaningful in a new process; the device runs the same code). The
PyTorch eager model (the deployable reference, same inputs from the same seed,
``torch.set_num_threads(threads)``, ``inference_mode``) is measured in one more subprocess.
Reported: session creation time, first inference, p50/p90/p99/p999/max, throughput, RSS and
peak RSS after session creation and after the runs, and PyTorch/ORT ratios. When the
artefact has a device profile, its (batch_size, threads) pair is always measured and its p99
target is checked if this machine has the profile's architecture.

Outputs ``profile.json``, ``profile.md`` and ``profile.png`` (when matplotlib is installed:
``pip install ondevice[plot]``) in the artefact folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from ondevice.errors import ArtefactError, BadInputError, LatencyTargetError, RuntimeMemoryError
from ondevice.export._runner import runner_module
from ondevice.export.manifest import MODEL_ONNX, load_artefact
from ondevice.io import atomic_write_json, atomic_write_text

__all__ = ["profile_artefact", "render_profile_markdown"]


def _torch_subprocess(artefact_dir: Path, combos: list[tuple[int, int]], runs: int, warmup: int, seed: int) -> list[dict[str, Any]]:
    spec = ",".join(f"{b}x{t}" for b, t in combos)
    cmd = [sys.executable, "-m", "ondevice.export.profile", str(artefact_dir), spec, str(runs), str(warmup), str(seed)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ArtefactError(f"PyTorch baseline failed: {tail[:300]}")
    return json.loads(proc.stdout)


def _torch_worker(artefact_dir: str, spec: str, runs: int, warmup: int, seed: int) -> list[dict[str, Any]]:
    """Measure the PyTorch eager reference for each ``BxT`` in ``spec`` (run in a subprocess)."""
    import time

    import torch

    from ondevice.export.lowering import export_module
    from ondevice.export.raw import encode_reference

    runner = runner_module()
    art = load_artefact(artefact_dir, check_hashes=False)
    model = art.load_reference_model().eval()
    module, _ = export_module(model, k=(art.manifest.get("topk") or {}).get("k") or 20)
    results = []
    for item in spec.split(","):
        b, t = (int(v) for v in item.split("x"))
        torch.set_num_threads(t)
        feeds = runner.make_inputs(art.manifest, b, seed)
        plan = art.manifest.get("raw_inputs")  # raw artefact: PyTorch gets prepare's ids (encoding not timed)
        if plan:
            x = (torch.from_numpy(encode_reference(art.schema, plan, feeds)),)
        else:  # every input in the manifest's order (top-K: the user vector and the seen items)
            x = tuple(torch.from_numpy(feeds[i["name"]]) for i in art.manifest["inputs"])
        with torch.inference_mode():
            t0 = time.perf_counter_ns()
            module(*x)
            first = (time.perf_counter_ns() - t0) / 1e6
            samples = runner.time_calls(lambda x=x: module(*x), runs, warmup)
        entry = {"runtime": "pytorch-eager", "batch": b, "threads": t, "runs": runs, "warmup": warmup, "seed": seed,
                 "first_inference_ms": first, "torch": torch.__version__}
        entry.update(runner.latency_stats(samples, b))
        results.append(entry)
    return results


def profile_artefact(
    artefact_dir: str | Path,
    *,
    batches: tuple[int, ...] | list[int] = (1, 256),
    threads: tuple[int, ...] | list[int] = (1, 2),
    runs: int = 1000,
    warmup: int = 100,
    seed: int = 0,
    torch_baseline: bool = True,
    model_file: str | None = None,
    plot: bool = True,
    write: bool = True,
    enforce_target: bool = True,
) -> dict[str, Any]:
    """Profile an artefact on this machine; returns (and writes) the profile JSON.

    Raises ``LatencyTargetError`` (exit 3) after writing the outputs when the device profile's
    p99 target was checked on this machine (same architecture) and missed.
    """
    if runs < 1 or warmup < 0 or not batches or not threads or min(batches) < 1 or min(threads) < 1:
        raise BadInputError("profile needs --runs >= 1, --warmup >= 0, and batch/threads values >= 1")
    art = load_artefact(artefact_dir)
    runner = runner_module()
    manifest = art.manifest
    model_file = model_file or MODEL_ONNX
    if model_file not in manifest["files"]:
        raise BadInputError(f"{str(model_file)[:80]!r} is not in this artefact; choose one of: {', '.join(manifest['files'])}")
    try:
        runner.artefact_file(art.path, model_file)  # no '..', absolute path or symlink out of the folder
    except runner.RunnerError as err:
        raise ArtefactError(str(err)) from None
    combos = [(int(b), int(t)) for b in batches for t in threads]
    prof = manifest.get("device_profile")
    if prof and (prof["batch_size"], prof["threads"]) not in combos:
        combos.append((prof["batch_size"], prof["threads"]))
    ort_entries = []
    for b, t in combos:
        try:
            ort_entries.append(runner.measure_in_subprocess(art.path, model_file, b, t, runs, warmup, seed))
        except runner.RunnerError as err:
            raise ArtefactError(str(err)) from None
    torch_entries = _torch_subprocess(art.path, combos, runs, warmup, seed) if torch_baseline else []
    rows = []
    for o in ort_entries:
        p = next((e for e in torch_entries if e["batch"] == o["batch"] and e["threads"] == o["threads"]), None)
        ratio = None
        if p:
            ratio = {"p50_torch_over_ort": p["p50_ms"] / o["p50_ms"], "p99_torch_over_ort": p["p99_ms"] / o["p99_ms"],
                     "throughput_ort_over_torch": o["throughput_rows_per_s"] / p["throughput_rows_per_s"]}
        rows.append({"batch": o["batch"], "threads": o["threads"], "onnxruntime": o, "pytorch": p, "ratio": ratio})
    info = runner.device_info()
    result: dict[str, Any] = {
        "format": "ondevice-profile",
        "artefact": {"model_file": model_file, **manifest["files"][model_file]},
        "machine": info,
        "settings": {"runs": runs, "warmup": warmup, "seed": seed, "process_per_measurement": True,
                     "session_options": runner.session_options_doc()},
        "results": rows,
        "target": runner.check_target(manifest, ort_entries, info["machine"]),
        "memory_target": runner.check_memory(manifest, ort_entries),
    }
    if write:
        atomic_write_json(art.path / "profile.json", result)
        atomic_write_text(art.path / "profile.md", render_profile_markdown(result))
        result["plot"] = _plot(result, art.path / "profile.png") if plot else None
        if result["plot"]:
            atomic_write_json(art.path / "profile.json", result)
    if enforce_target:
        enforce_targets(result)
    return result


def enforce_targets(result: dict[str, Any]) -> None:
    """Raise for a profile's missed runtime-memory budget or p99 target (``profile_artefact``'s result)."""
    mt = result["memory_target"]
    if mt and mt["passed"] is False:
        raise RuntimeMemoryError(f"a session adds {mt['runtime_bytes']:,} B of resident memory (batch {mt['batch']} x "
                                 f"{mt['threads']} threads), over the {mt['profile']} memory_budget_runtime of "
                                 f"{mt['budget_bytes']:,} B; compress further or pick a larger device")
    tgt = result["target"]
    if tgt and tgt["checked"] and tgt["passed"] is False:
        raise LatencyTargetError(f"p99 {tgt['p99_ms']:.3f} ms at batch {tgt['batch']} x {tgt['threads']} threads is over "
                                 f"the {tgt['profile']} target of {tgt['p99_target_ms']} ms; compress further or pick a larger device")


def _fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _mb(v: float | None) -> str:
    return "-" if v is None else f"{v / 1e6:.1f}"


def render_profile_markdown(result: dict[str, Any]) -> str:
    """The profile as a Markdown table (latency in ms, memory in MB)."""
    m = result["machine"]
    lines = [
        f"# Latency profile: {result['artefact']['model_file']} ({result['artefact']['bytes']:,} B)",
        "",
        f"Machine: {m['machine']} {m['processor']}, {m['cpu_count']} CPUs, onnxruntime {m['onnxruntime']}, "
        f"python {m['python']}. {result['settings']['runs']} timed runs after {result['settings']['warmup']} warm-up, "
        "one fresh process per measurement. Memory: resident bytes the session adds after loading and at its "
        "peak after the runs, over a warm-up session on a trivial model (onnxruntime's start-up not counted).",
        "",
        "| batch | threads | ORT p50 | p90 | p99 | p999 | max | rows/s | session ms | first ms | session adds MB | peak added after runs MB | torch p50 | torch p99 | torch/ORT p50 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["results"]:
        o, p, q = r["onnxruntime"], r["pytorch"] or {}, r["ratio"] or {}
        mem = o.get("memory") or {}
        lines.append(
            f"| {r['batch']} | {r['threads']} | {_fmt(o['p50_ms'])} | {_fmt(o['p90_ms'])} | {_fmt(o['p99_ms'])} | "
            f"{_fmt(o['p999_ms'])} | {_fmt(o['max_ms'])} | {o['throughput_rows_per_s']:,.0f} | {_fmt(o['session_create_ms'], 1)} | "
            f"{_fmt(o['first_inference_ms'])} | {_mb(mem.get('load_added_bytes'))} | {_mb(mem.get('peak_added_bytes'))} | "
            f"{_fmt(p.get('p50_ms'))} | {_fmt(p.get('p99_ms'))} | {_fmt(q.get('p50_torch_over_ort'), 2)} |"
        )
    t = result.get("target")
    if t:
        verdict = ("PASS" if t["passed"] else "FAIL") if t["checked"] else f"not checked ({t['reason']})"
        lines += ["", f"Target ({t['profile']}, {t['arch']}): p99 <= {t['p99_target_ms']} ms at batch {t['batch']} x "
                      f"{t['threads']} threads; measured {_fmt(t['p99_ms'])} ms: **{verdict}**"]
    return "\n".join(lines) + "\n"


def _plot(result: dict[str, Any], path: Path) -> str | None:
    """p50/p99 bars per (batch, threads), ORT vs PyTorch, log scale; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = result["results"]
    labels = [f"b{r['batch']}\nt{r['threads']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(rows)), 3.6), dpi=110)
    width = 0.2
    series = [("ORT p50", lambda r: r["onnxruntime"]["p50_ms"]), ("ORT p99", lambda r: r["onnxruntime"]["p99_ms"]),
              ("torch p50", lambda r: (r["pytorch"] or {}).get("p50_ms")), ("torch p99", lambda r: (r["pytorch"] or {}).get("p99_ms"))]
    for i, (name, get) in enumerate(series):
        vals = [get(r) or 0.0 for r in rows]
        if any(vals):
            ax.bar([j + (i - 1.5) * width for j in range(len(rows))], vals, width, label=name)
    t = result.get("target")
    if t:
        ax.axhline(t["p99_target_ms"], color="red", linestyle="--", linewidth=1, label=f"{t['profile']} p99 target")
    ax.set_yscale("log")
    ax.set_xticks(range(len(rows)), labels)
    ax.set_ylabel("latency per call (ms, log)")
    ax.set_title(f"{result['artefact']['model_file']} on {result['machine']['machine']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path.name


if __name__ == "__main__":  # PyTorch baseline worker: python -m ondevice.export.profile DIR 1x1,256x2 RUNS WARMUP SEED
    _dir, _spec, _runs, _warmup, _seed = sys.argv[1:6]
    print(json.dumps(_torch_worker(_dir, _spec, int(_runs), int(_warmup), int(_seed))))
    sys.stdout.flush()
