"""Fleet reporting (``compress --fleet DIR``): one row per device profile of DIR.

Each row: bytes, metric, p50/p99 at the profile's batch and threads against its target
(judged only on a machine of the profile's architecture), the runtime memory a session adds,
and for arm64 profiles the device runner's outputs on an emulated ARM core compared with x86
(``ondevice.arm64``; "not checked" without ``ondevice arm64 setup``). Written to
``fleet.json`` / ``fleet.md`` (``ondevice.pipeline.compress`` module docstring, "Fleet").
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ondevice.budget import DeviceProfile, load_profile
from ondevice.errors import BadInputError, OndeviceError
from ondevice.pipeline.progress import log
from ondevice.pipeline.summary import metric_label

__all__ = ["FLEET_DEFAULT_CPU", "fleet_arm64_parity", "fleet_profiles_in", "fleet_report", "latency_at_profile",
           "render_fleet_markdown", "required_operators_of"]


def fleet_profiles_in(folder: str | Path) -> list[DeviceProfile]:
    """Every device profile (``*.toml``) in ``folder``, sorted by file name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInputError(f"--fleet {folder} is not a folder; pass a folder of device profiles such as budgets/")
    files = sorted(folder.glob("*.toml"))
    if not files:
        raise BadInputError(f"--fleet {folder} holds no *.toml device profiles; see budgets/README.md for the schema")
    return [load_profile(f) for f in files]


def latency_at_profile(prof: dict[str, Any] | None, dev: DeviceProfile | None) -> dict[str, Any] | None:
    """p50/p99 at the profile's (batch, threads) and the target verdict, from ``profile.json``."""
    if prof is None or dev is None:
        return None
    row = next((r["onnxruntime"] for r in prof.get("results", [])
                if r["batch"] == dev.batch_size and r["threads"] == dev.threads), None)
    tgt = prof.get("target") or {}
    if not tgt.get("checked"):
        verdict = "not measured on target arch" if row is not None else "not measured"
    else:
        verdict = "pass" if tgt.get("passed") else "fail"
    return {"batch": dev.batch_size, "threads": dev.threads, "p50_ms": row["p50_ms"] if row else None,
            "p99_ms": row["p99_ms"] if row else None, "p99_target_ms": dev.p99_latency_ms, "arch": dev.arch,
            "host_machine": (prof.get("machine") or {}).get("machine"), "verdict": verdict,
            "reason": tgt.get("reason", "")}


FLEET_DEFAULT_CPU = "neoverse-n1"  # v8.2 dotprod: phone big cores, RPi5, Graviton2


def fleet_arm64_parity(folder: Path, dev: DeviceProfile, seed: int, quiet: bool, name: str) -> dict[str, Any]:
    """arm64 parity of one fleet artefact on the profile's emulated core (``passed`` None: not checked)."""
    from ondevice.arm64.parity import arm64_parity
    from ondevice.arm64.setup import find_env, stamp_is_current, wanted_versions

    cpu = dev.emulated_cpu or FLEET_DEFAULT_CPU
    env, why = find_env()
    if env is not None and not stamp_is_current(env.stamp, wanted_versions()):  # e.g. onnxruntime upgraded since
        env, why = None, f"the arm64 environment in {env.cache} was built for other onnxruntime/numpy versions"
    if env is None:
        log(quiet, f"[{name}] arm64 parity: not checked ({why})")
        return {"checked": False, "cpu": cpu, "passed": None, "max_abs_diff": None,
                "reason": "not checked (run `ondevice arm64 setup`)"}
    try:
        r = arm64_parity(folder, cores=[cpu], seed=seed, cache=env.cache)
    except BadInputError:
        raise  # a bad profile or environment is bad input (exit 2), not a parity failure
    except OndeviceError as err:  # the artefact did not run under emulation: a failed check
        return {"checked": True, "cpu": cpu, "passed": False, "max_abs_diff": None, "reason": str(err)}
    core = r["cores"][0]
    diff = max(core["max_abs_diff"].values(), default=None)
    reason = core.get("error") or ("" if r["passed"] else f"max |arm-x86| {diff:.3g} > atol {r['atol']:.3g}")
    log(quiet, f"[{name}] arm64 parity on emulated {cpu}: {'pass' if r['passed'] else 'FAIL'}"
                + (f", max |arm-x86| {diff:.2e} <= {r['atol']:.1e}" if r["passed"] else f" ({reason})"))
    return {"checked": True, "cpu": cpu, "family": core["family"], "model_file": r["model_file"],
            "passed": bool(r["passed"]), "max_abs_diff": diff, "atol": r["atol"], "reason": reason}


def _parity_cell(parity: dict[str, Any] | None) -> str:
    if not parity:
        return "—"
    if not parity["checked"]:
        return "not checked (run `ondevice arm64 setup`)"
    diff = "—" if parity["max_abs_diff"] is None else f"{parity['max_abs_diff']:.1e}"
    return f"{'pass' if parity['passed'] else '**fail**'} {diff} ({parity['cpu']})"


def fleet_report(summary: dict[str, Any], profiles: Sequence[DeviceProfile], folder: str | Path) -> dict[str, Any]:
    """One row per (device profile, method): bytes, metric, latency vs target, arm64 parity, pass/fail."""
    rows: list[dict[str, Any]] = []
    for dev in profiles:
        for r in (x for x in summary["runs"] if x["device_profile"] == dev.name):
            lat = r.get("latency") or {}
            parity = r.get("arm64_parity")
            mem = r.get("runtime_memory")
            reasons = [_failure_text(f) for f in summary["failures"]
                       if f["target"] == dev.name and f["method"] == r["method"]]
            # any failure compress recorded for the row fails it (e.g. below --max-loss: compress exits 3)
            ok = (bool(r["fits"]) and bool(r.get("verified", True)) and lat.get("verdict") != "fail"
                  and (parity or {}).get("passed") is not False and (mem or {}).get("passed") is not False
                  and not reasons)
            rows.append({"device": dev.name, "arch": dev.arch, "method": r["method"], "budget_bytes": dev.memory_budget,
                         "file_bytes": r["file_bytes"], "fits": r["fits"], "verified": r.get("verified", True),
                         "metric": r["metric"], "val_metric": r["val_metric"], "latency": lat, "folder": r["folder"],
                         "arm64_parity": parity, "runtime_memory": mem, "required_operators": r.get("required_operators"),
                         "status": "pass" if ok else "fail",
                         **({} if ok else {"reason": "; ".join(reasons) or "see summary.md"})})
        for f in (x for x in summary["failures"] if x["target"] == dev.name):
            if any(row["device"] == dev.name and row["method"] == f["method"] for row in rows):
                continue  # the artefact exists; its row already says fail (latency)
            rows.append({"device": dev.name, "arch": dev.arch, "method": f["method"], "budget_bytes": dev.memory_budget,
                         "file_bytes": None, "fits": False, "verified": False, "metric": None, "val_metric": None,
                         "latency": {}, "folder": None, "arm64_parity": None, "status": "fail",
                         "error": _failure_text(f), "reason": _failure_text(f)})
    unchecked = [r["device"] for r in rows if (r["arm64_parity"] or {}).get("checked") is False]
    return {"format": "ondevice-fleet", "profiles_folder": str(folder), "run_dir": summary["run_dir"],
            "full_model": summary["full_model"], "rows": rows,
            "passed": all(r["status"] == "pass" for r in rows) and bool(rows),
            "arm64_parity_not_checked": unchecked,
            "rule": "pass = model file <= the profile's budget, golden parity verified, the runtime memory a session "
                    "adds <= the profile's memory_budget_runtime (when set), the p99 target met "
                    "where it could be judged (only on a machine of the profile's architecture), and for arm64 "
                    "profiles the outputs on the emulated core within the tolerance of x86 where emulation is set up"}


def _failure_text(failure: dict[str, Any]) -> str:
    """A ``summary["failures"]`` entry as one line: ``RuntimeMemoryError: a session adds ...``."""
    return " ".join(f"{failure['error']}: {failure['message']}".split())


def required_operators_of(folder: Path) -> str | None:
    """The artefact's ``required_operators.config`` text (None when absent)."""
    path = folder / "required_operators.config"
    return path.read_text(encoding="utf-8") if path.is_file() else None


def render_fleet_markdown(report: dict[str, Any]) -> str:
    full = report["full_model"]
    metric = full.get("metric", "auc")
    lines = [
        "# ondevice fleet",
        "",
        f"Run `{report['run_dir']}`, profiles from `{report['profiles_folder']}`. Full model {full['file_bytes']:,} B, "
        f"val {metric_label(metric)} {full['val'][metric]:.4f}. Latency is ORT on this host at each profile's batch and "
        "threads; a target is judged only on the profile's architecture. arm64 parity: max |arm - x86| of the "
        "device runner's outputs on an emulated ARM core (qemu; emulated time is not latency).",
        "",
        f"| device | arch | method | budget B | file B | val {metric_label(metric)} | p50 ms | p99 ms | p99 target ms | latency | arm64 parity | status | folder |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|---|---|---|",
    ]
    fmt = lambda v, d=3: "—" if v is None else f"{v:.{d}f}"  # noqa: E731
    notes: list[str] = []  # one footnote per failing row: why it failed
    for r in report["rows"]:
        lat = r["latency"] or {}
        file_b = f"{r['file_bytes']:,}" if r["file_bytes"] is not None else "—"
        status = "**PASS**"
        if r["status"] != "pass":
            notes.append(f"- [{len(notes) + 1}] {r['device']} / {r['method']}: {r.get('reason') or 'see summary.md'}")
            status = f"**FAIL** [{len(notes)}]"
        lines.append(f"| {r['device']} | {r['arch']} | {r['method']} | {r['budget_bytes']:,} | {file_b} | "
                     f"{fmt(r['val_metric'], 4)} | {fmt(lat.get('p50_ms'))} | {fmt(lat.get('p99_ms'))} | "
                     f"{fmt(lat.get('p99_target_ms'), 1)} (b={lat.get('batch', '—')}, t={lat.get('threads', '—')}) | "
                     f"{lat.get('verdict', '—')} | {_parity_cell(r.get('arm64_parity'))} | {status} | "
                     f"{'`' + r['folder'] + '`' if r['folder'] else '—'} |")
    if notes:
        lines += ["", "Why a row failed:", "", *notes]
    lines += ["", f"Fleet: **{'PASS' if report['passed'] else 'FAIL'}** ({report['rule']})."]
    if report.get("arm64_parity_not_checked"):
        lines += ["", f"arm64 parity: **not checked** for {', '.join(report['arm64_parity_not_checked'])}: no emulation "
                      "environment here; run `ondevice arm64 setup` and compress again (these rows pass on host parity alone)."]
    return "\n".join(lines) + "\n"
