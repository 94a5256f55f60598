"""``build_report``: one host report per artefact, merging device runner results.

Reads ``manifest.json`` (size, budget, storage, mobile usability), ``verify.json`` and
``profile.json`` when present, plus device results written by ``export/runner.py``. A device
result given with ``--device-result`` is checked (it must be for this artefact's model file,
same sha256) and kept in ``device_results/`` so later reports include it too. Writes
``report.json`` and ``report.md``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ondevice.budget import format_bytes
from ondevice.errors import ArtefactError, BadInputError
from ondevice.export.manifest import load_artefact
from ondevice.io import atomic_write_json, atomic_write_text, read_json, safe_child

__all__ = ["build_report", "load_device_result"]


def load_device_result(path: str | Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Read a runner JSON and check it belongs to this artefact (one-line errors, exit 2)."""
    from ondevice.validation import DEVICE_RESULT_SCHEMA, validate

    data = read_json(path, what="device result")
    if not isinstance(data, dict) or data.get("format") != "ondevice-device-result":
        raise BadInputError(f"{path} is not a device result; write one with `python runner.py ARTEFACT --json out.json`")
    art_schema = DEVICE_RESULT_SCHEMA["properties"]["artefact"]
    validate(data.get("artefact"), art_schema, f"{path}.artefact")  # which artefact first: the likelier mistake
    art = data["artefact"]
    entry = manifest["files"].get(art["model_file"])
    if entry is None or entry["sha256"] != art["sha256"]:
        raise ArtefactError(f"{path} was measured on another artefact (sha256 {str(art.get('sha256'))[:12]}...); "
                            "run the runner on this artefact's files")
    return validate(data, DEVICE_RESULT_SCHEMA, str(path))


def build_report(artefact_dir: str | Path, *, device_results: list[str | Path] | None = None) -> dict[str, Any]:
    """Write ``report.json`` + ``report.md`` for an artefact; returns the report dict."""
    art = load_artefact(artefact_dir)
    m = art.manifest
    saved_dir = art.path / "device_results"
    for p in device_results or []:
        data = load_device_result(p, m)
        saved_dir.mkdir(exist_ok=True)
        dev = data["device"]
        name = f"{dev.get('hostname') or 'device'}-{dev.get('machine', '')}-{int(data.get('created_unix', 0))}.json"
        atomic_write_json(safe_child(saved_dir, name), data)
    devices = []
    if saved_dir.is_dir():
        for p in sorted(saved_dir.glob("*.json")):
            try:
                devices.append(load_device_result(p, m))
            except (BadInputError, ArtefactError):
                continue  # a stale result from a previous export of this folder
    verify = json.loads((art.path / "verify.json").read_text()) if (art.path / "verify.json").is_file() else None
    profile = json.loads((art.path / "profile.json").read_text()) if (art.path / "profile.json").is_file() else None
    report = {
        "format": "ondevice-report",
        "artefact": str(art.path),
        "task": m["task"],
        "model": m["model"]["model"],
        "files": m["files"],
        "budget": m["budget"],
        "device_profile": m["device_profile"],
        "storage": m["storage"],
        "metrics": m["metrics"],
        "mobile_usability": {k: v for k, v in (m["mobile_usability"] or {}).items() if k != "operators"},
        "verify": verify,
        "host_profile": profile,
        "devices": devices,
        "versions": m["versions"],
    }
    atomic_write_json(art.path / "report.json", report)
    atomic_write_text(art.path / "report.md", render_report_markdown(report))
    return report


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def render_report_markdown(r: dict[str, Any]) -> str:
    b, s = r["budget"], r["storage"]
    lines = [f"# ondevice report: {r['model']} ({r['task']})", "", "## Artefact", ""]
    for name, info in r["files"].items():
        lines.append(f"- `{name}`: {format_bytes(info['bytes'])}, sha256 `{info['sha256'][:16]}...`")
    if b and b.get("bytes"):
        lines.append(f"- budget: {format_bytes(b['bytes'])} ({b['source']}): **{'fits' if b['fits'] else 'OVER'}**, "
                     f"headroom {b['headroom_bytes']:,} B")
    lines.append(f"- parameters/storage {s['parameter_bytes']:,} B, graph overhead {s['graph_overhead_bytes']:,} B "
                 f"({100 * s['graph_overhead_ratio']:.2f} % of the file)")
    for name, nbytes in s["embedding_bytes"].items():
        lines.append(f"  - embedding `{name}` ({s['embedding_types'][name]}): {nbytes:,} B")
    mu = r["mobile_usability"]
    if mu:
        lines.append(f"- mobile usability: NNAPI {mu.get('nnapi', '?')}, CoreML NN {mu.get('coreml_neuralnetwork', '?')}, "
                     f"CoreML MLProgram {mu.get('coreml_mlprogram', '?')}; recommended EP: {mu.get('recommended_ep', '?')}")
    if r["metrics"]:
        lines.append(f"- metrics (from the checkpoint): {json.dumps(r['metrics'], sort_keys=True)[:300]}")
    lines += ["", "## Verify", ""]
    v = r["verify"]
    if v:
        diffs = ", ".join(f"{k} {d:.2e}" for k, d in v["max_abs_diff"].items())
        lines.append(f"{'PASS' if v['passed'] else 'FAIL'}: max abs diff {diffs} (atol {v['atol']:.1e}, seed {v['seed']}, "
                     f"{len(v['cases'])} cases)")
    else:
        lines.append("not run (`ondevice verify`)")
    lines += ["", "## Latency", ""]
    rows = []
    if r["host_profile"]:
        for e in r["host_profile"]["results"]:
            o, p = e["onnxruntime"], e["pytorch"] or {}
            rows.append(("host " + r["host_profile"]["machine"]["machine"], o, p.get("p50_ms")))
    for d in r["devices"]:
        for o in d["latency"]:
            rows.append((f"{d['device'].get('hostname', '')} {d['device']['machine']}", o, None))
    if rows:
        lines += ["| where | batch | threads | p50 ms | p90 ms | p99 ms | max ms | rows/s | session ms | peak RSS MB | torch p50 ms |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for where, o, tp50 in rows:
            peak = o.get("peak_rss_after_runs_bytes")
            lines.append(f"| {where} | {o['batch']} | {o['threads']} | {_ms(o['p50_ms'])} | {_ms(o['p90_ms'])} | "
                         f"{_ms(o['p99_ms'])} | {_ms(o['max_ms'])} | {o['throughput_rows_per_s']:,.0f} | "
                         f"{o['session_create_ms']:.1f} | {'-' if peak is None else f'{peak / 1e6:.1f}'} | {_ms(tp50)} |")
    else:
        lines.append("not measured (`ondevice profile`, or `python runner.py` on the device)")
    for d in r["devices"]:
        g, t = d["golden"], d.get("target")
        line = f"- device {d['device'].get('hostname', '')} ({d['device']['machine']}, onnxruntime {d['device']['onnxruntime']}): golden {'PASS' if g['passed'] else 'FAIL'}"
        if t:
            line += f"; p99 target {t['p99_target_ms']} ms: " + (("PASS" if t["passed"] else "FAIL") if t["checked"] else f"not checked ({t['reason']})")
        lines.append(line)
    hp = r["host_profile"]
    if hp and hp.get("target"):
        t = hp["target"]
        lines.append(f"- host p99 target ({t['profile']}): " + (("PASS" if t["passed"] else "FAIL") if t["checked"] else f"not checked ({t['reason']})"))
    return "\n".join(lines) + "\n"
