"""How ``prepare`` scales: rows/s and peak RSS on synthetic Criteo-format files.

Question: does preparation stream (peak memory flat in the number of rows) and is it fast
enough (target >= 200K rows/s on 2 cores; peak RSS at 10^7 rows < 1.5x that at 10^6)?

For each size, a Criteo-format TSV is generated once into ``benchmarks/.cache/`` (git-ignored;
same seed, so re-runs reuse it), then ``prepare --format criteo`` runs in a **fresh
subprocess** so that its peak RSS (``ru_maxrss``) belongs to that run alone. Results go to
``benchmarks/results/prepare_scale.json`` and ``.md``.

Usage::

    python benchmarks/prepare_scale.py                   # 10^5, 10^6, 10^7 rows
    python benchmarks/prepare_scale.py --sizes 100000 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
RESULTS = HERE / "results"
RATE_TARGET = 200_000
RSS_RATIO_TARGET = 1.5

CHILD = """
import json, sys, time
from ondevice.data.preparation import prepare
info = prepare(sys.argv[1], sys.argv[2], format="criteo", force=True)
print(json.dumps(info))
"""


def _generate(rows: int, seed: int) -> tuple[Path, float | None]:
    from ondevice.data.generate import generate_ctr

    path = CACHE / f"criteo_synthetic_{rows}_seed{seed}.tsv"
    if path.is_file():
        return path, None
    t0 = time.perf_counter()
    generate_ctr(path, rows, seed=seed, format="criteo")
    return path, time.perf_counter() - t0


def _run_child(raw: Path, out: Path) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, str(raw), str(out)], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"prepare failed on {raw}:\n{proc.stderr}")
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    info["_process_wall_s"] = wall
    info["_cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep-raw", action="store_true", help="keep generated files in benchmarks/.cache/")
    args = ap.parse_args(argv)
    CACHE.mkdir(exist_ok=True)
    RESULTS.mkdir(exist_ok=True)
    runs = []
    for rows in args.sizes:
        raw, gen_s = _generate(rows, args.seed)
        out = CACHE / f"prepared_{rows}"
        load_before = os.getloadavg()[0]
        info = _run_child(raw, out)
        shutil.rmtree(out, ignore_errors=True)
        run = {
            "rows": rows,
            "file_bytes": raw.stat().st_size,
            "generate_s": None if gen_s is None else round(gen_s, 2),
            "prepare_s": info["elapsed_s"],
            "process_wall_s": round(info["_process_wall_s"], 2),
            "rows_per_s": info["rows_per_s"],
            "cpu_s": round(info["_cpu_s"], 2),
            "peak_rss_mb": info["peak_rss_mb"],
            "split_rows": info["rows"],
            "total_vocab": sum(info["vocab_size"].values()),
            "loadavg_1min_before": round(load_before, 2),
            "loadavg_1min_after": round(os.getloadavg()[0], 2),
        }
        runs.append(run)
        print(json.dumps(run), flush=True)
        if not args.keep_raw and rows >= 10_000_000:
            raw.unlink(missing_ok=True)  # 2.6 GB; regenerated on demand
    by_rows = {r["rows"]: r for r in runs}
    rss_ratio = (by_rows[10_000_000]["peak_rss_mb"] / by_rows[1_000_000]["peak_rss_mb"]
                 if 10_000_000 in by_rows and 1_000_000 in by_rows else None)
    best_rate = max(r["rows_per_s"] for r in runs)
    result = {
        "benchmark": "prepare_scale",
        "question": "rows/s and peak RSS of `prepare --format criteo` from 10^5 to 10^7 rows",
        "command": "python benchmarks/prepare_scale.py --sizes " + " ".join(map(str, args.sizes)),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "note": "shared machine: other jobs may run at the same time (see loadavg); cpu_s is the child's user+sys time",
        "runs": runs,
        "targets": {
            "rows_per_s": RATE_TARGET,
            "rss_ratio_target": RSS_RATIO_TARGET,
            "rows_per_s_met_at_all_sizes": all(r["rows_per_s"] >= RATE_TARGET for r in runs),
            "best_rows_per_s": best_rate,
            "rss_ratio_1e7_over_1e6": rss_ratio,
            "rss_ratio_met": None if rss_ratio is None else rss_ratio < RSS_RATIO_TARGET,
        },
    }
    (RESULTS / "prepare_scale.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# prepare scale (synthetic Criteo-format TSV)",
        "",
        f"`{result['command']}` on {os.cpu_count()} CPUs ({platform.platform()}).",
        "Each prepare runs in a fresh subprocess; peak RSS is that process's `ru_maxrss`.",
        "",
        "| rows | file MB | prepare s | rows/s | CPU s | peak RSS MB | load avg before/after |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(f"| {r['rows']:,} | {r['file_bytes'] / 1e6:,.0f} | {r['prepare_s']:.1f} | {r['rows_per_s']:,.0f} | "
                     f"{r['cpu_s']:.1f} | {r['peak_rss_mb']:.0f} | {r['loadavg_1min_before']} / {r['loadavg_1min_after']} |")
    t = result["targets"]
    lines += [
        "",
        f"- Target >= {RATE_TARGET:,} rows/s: {'met' if t['rows_per_s_met_at_all_sizes'] else 'NOT met'} at every size "
        f"(best {t['best_rows_per_s']:,.0f} rows/s).",
        f"- Target peak RSS(10^7) / RSS(10^6) < {RSS_RATIO_TARGET}: "
        + ("not measured" if rss_ratio is None else f"{rss_ratio:.2f} ({'met' if t['rss_ratio_met'] else 'NOT met'})."),
        f"- {result['note']}.",
    ]
    (RESULTS / "prepare_scale.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
