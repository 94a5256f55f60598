"""Artefact commands: export, verify, profile, report (DESIGN §8-§10).

Each command parses options, calls one ``ondevice.export`` function and prints; torch,
onnx and onnxruntime are imported inside the command so ``ondevice --help`` stays instant.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from ondevice.cli import cli


@cli.command("export")
@click.argument("run_dir", type=click.Path(exists=True, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="artefact folder to write")
@click.option("--budget", default=None, help="max bytes of each model file: 2MB = 2,000,000 B, 2MiB = 2,097,152 B")
@click.option("--device-profile", "profile", default=None,
              help="device profile name (android-low, android-mid, rpi4, desktop) or .toml path")
@click.option("--format", "fmt", type=click.Choice(["onnx", "ort"]), default=None,
              help="ort also writes model.ort (default: the profile's runtime_format, else onnx)")
@click.option("--top-k", default=20, show_default=True, type=click.IntRange(min=1), help="k of top-K (BPR-MF) artefacts")
@click.option("--inputs", "inputs", type=click.Choice(["ids", "raw"]), default=None,
              help="raw (default for CTR models): the model takes raw field values (strings, numbers) and encodes "
                   "them in the graph (vocabulary, transforms, OOV) exactly as prepare does; ids (default for top-K): "
                   "int64 ids encoded with schema.json")
@click.option("--topk-table", "topk_table", type=click.Choice(["load", "call"]), default=None,
              help="top-K: decode the item table once at session creation (load: fastest, the session holds the "
                   "fp32 table; default for onnx) or on every call (call: least resident memory; always for ort)")
@click.option("--force", is_flag=True, help="replace an existing --out folder")
def export_cmd(run_dir: Path, out: Path, budget: str | None, profile: str | None, fmt: str | None, top_k: int,
               inputs: str | None, topk_table: str | None, force: bool) -> None:
    """Export RUN_DIR (a run folder or model.pt) to a verified single-file ONNX artefact.

    Exit 3 when a model file is over budget or onnxruntime disagrees with PyTorch on the
    golden inputs; nothing is written then.
    """
    from ondevice.budget import parse_budget
    from ondevice.export import export_artefact

    budget_bytes = parse_budget(budget) if budget is not None else None  # parsed once, here
    m = export_artefact(run_dir, out, budget_bytes=budget_bytes, budget_source=f"--budget {budget}", profile=profile, format=fmt, force=force, top_k=top_k, inputs=inputs,
                        topk_table=topk_table)
    b, s = m["budget"], m["storage"]
    sizes = ", ".join(f"{n} {i['bytes']:,} B" for n, i in m["files"].items())
    fits = "" if b["bytes"] is None else f"; budget {b['bytes']:,} B ({b['source']}): fits, headroom {b['headroom_bytes']:,} B"
    click.echo(f"exported {out}: {sizes}{fits}; graph overhead {100 * s['graph_overhead_ratio']:.2f} %; "
               f"golden parity ok (atol {m['tolerance']['atol']:.1e})")
    parts = ", ".join(f"{k} {v:,} B" for k, v in s["by_part"].items() if k != "total")
    pay = m["app_payload"]
    click.echo(f"  model bytes by part: {parts}; the app ships {pay['bytes']:,} B ({', '.join(pay['files'])})")


@cli.command("verify")
@click.argument("artefact_dir", type=click.Path(path_type=Path))
@click.option("--seed", type=int, default=None, help="seed of the fresh random inputs (default: new each run)")
@click.option("--json", "as_json", is_flag=True, help="print the full result as JSON")
@click.option("--arch", type=click.Choice(["x86_64", "arm64"]), default="x86_64", show_default=True,
              help="arm64: run the device runner on emulated ARM cores (needs `ondevice arm64 setup`) and compare "
                   "with this host's onnxruntime outputs")
@click.option("--cpu", "cpus", multiple=True,
              help="emulated core for --arch arm64 (repeatable; default cortex-a53, neoverse-n1, neoverse-n2, max)")
def verify_cmd(artefact_dir: Path, seed: int | None, as_json: bool, arch: str, cpus: tuple[str, ...]) -> None:
    """Compare onnxruntime with PyTorch on golden and fresh inputs (exit 3 above tolerance).

    With --arch arm64: the artefact's outputs on each emulated ARM core against x86, within
    1e-5 (fp32 storage) or the manifest's quantized bound; writes verify_arm64.json.
    """
    if arch == "arm64":
        _verify_arm64(artefact_dir, seed, as_json, cpus)
        return
    if cpus:
        raise click.UsageError("--cpu needs --arch arm64")
    from ondevice.export import verify_artefact

    r = verify_artefact(artefact_dir, seed=seed)
    if as_json:
        click.echo(json.dumps(r, indent=2))
        return
    diffs = ", ".join(f"{k} {v:.2e}" for k, v in r["max_abs_diff"].items())
    click.echo(f"verified {artefact_dir}: {len(r['cases'])} cases, max abs diff {diffs} <= atol {r['atol']:.1e} (seed {r['seed']})"
               f"{'' if r['recorded'] else '; not recorded in the read-only folder'}")


def _verify_arm64(artefact_dir: Path, seed: int | None, as_json: bool, cpus: tuple[str, ...]) -> None:
    import os

    from ondevice.arm64 import arm64_parity
    from ondevice.errors import ParityError

    seed = int.from_bytes(os.urandom(4), "little") if seed is None else seed
    log = None if as_json else (lambda line: click.echo(line, err=True))
    r = arm64_parity(artefact_dir, cores=list(cpus) or None, seed=seed, log=log)
    if as_json:
        click.echo(json.dumps(r, indent=2))
    else:
        for c in r["cores"]:
            if c.get("kleidiai_note"):
                click.echo(f"{c['cpu']:>12}: {c['kleidiai_note']}")
        click.echo(f"arm64 parity {artefact_dir}: {'pass' if r['passed'] else 'FAIL'} on {len(r['cores'])} emulated cores, "
                   f"max |arm-x86| {r['max_abs_diff']:.2e} <= {r['atol']:.1e} ({r['storage']} storage, seed {seed}); "
                   "see verify_arm64.json (emulated timings are not device latency)")
    if not r["passed"]:
        bad = next(c for c in r["cores"] if not c["passed"])
        worst = max(bad["max_abs_diff"].values(), default=float("nan"))
        raise ParityError(f"arm64 ({bad['cpu']}) differs from x86: {bad.get('error') or f'max abs diff {worst:.3g}'} "
                          f"(atol {r['atol']:.3g}); see {artefact_dir / 'verify_arm64.json'}",
                          max_abs_diff=worst, tolerance=r["atol"])


@cli.command("profile")
@click.argument("artefact_dir", type=click.Path(path_type=Path))
@click.option("--batch", "batches", type=click.IntRange(min=1), multiple=True, help="batch size (repeatable; default 1 and 256)")
@click.option("--threads", "threads", type=click.IntRange(min=1), multiple=True, help="intra-op threads (repeatable; default 1 and 2)")
@click.option("--runs", default=1000, show_default=True, type=click.IntRange(min=1), help="timed calls per measurement")
@click.option("--warmup", default=100, show_default=True, type=click.IntRange(min=0), help="untimed calls first")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--model-file", default=None, help="model.onnx (default) or model.ort")
@click.option("--no-torch", is_flag=True, help="skip the PyTorch eager baseline")
@click.option("--json", "as_json", is_flag=True, help="print profile.json to stdout")
def profile_cmd(artefact_dir: Path, batches: tuple[int, ...], threads: tuple[int, ...], runs: int, warmup: int,
                seed: int, model_file: str | None, no_torch: bool, as_json: bool) -> None:
    """Latency percentiles, throughput and RSS per batch x threads, against PyTorch eager.

    Exit 3 when the device profile's p99 target is checked on this machine and missed.
    """
    from ondevice.export import profile_artefact
    from ondevice.export.profile import render_profile_markdown

    r = profile_artefact(artefact_dir, batches=batches or (1, 256), threads=threads or (1, 2), runs=runs,
                         warmup=warmup, seed=seed, torch_baseline=not no_torch, model_file=model_file)
    click.echo(json.dumps(r, indent=2) if as_json else render_profile_markdown(r))


@cli.command("report")
@click.argument("artefact_dir", type=click.Path(path_type=Path))
@click.option("--device-result", "device_results", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSON written by `python runner.py ARTEFACT --json FILE` on a device (repeatable)")
def report_cmd(artefact_dir: Path, device_results: tuple[Path, ...]) -> None:
    """Write report.json and report.md for an artefact, merging device results."""
    from ondevice.export import build_report
    from ondevice.export.report import render_report_markdown

    r = build_report(artefact_dir, device_results=list(device_results))
    click.echo(render_report_markdown(r))
