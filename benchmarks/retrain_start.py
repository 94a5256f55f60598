"""Does scoring the warm start as epoch 0 of the searchers' retrain change what they deploy?

The embedding searchers warm-start a smaller model from the full one and retrain it with early
stopping on validation. On data whose models overfit within an epoch or two, the first
retraining epoch can already be worse than the warm start; before ``score_start`` the start was
never scored, so that worse epoch was deployed. This runs SSEDS, PEP and uniform at ¼ and ⅒ of
the full DeepFM's bytes with the start scored (the default) and not, on the synthetic
Criteo-like set ``compress_quality`` uses (200,000 rows, seed 0, ``prepare --min-count 2``;
DeepFM dim 16, MLP 64-64, ``train``'s CTR defaults). Selected on validation, test read once.

    python benchmarks/retrain_start.py [--work /tmp/w/rs] [--rows 200000]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import log, test_auc, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("sseds", "pep", "uniform")
FRACTIONS = (("1/4", 0.25), ("1/10", 0.1))


def _full_run(work: Path, rows: int) -> tuple[Path, Path]:
    from ondevice.data import generate_ctr, prepare
    from ondevice.train import TrainConfig, train

    raw, data, run = work / f"synthetic{rows}.tsv", work / f"data{rows}", work / f"run{rows}"
    if not raw.is_file():
        generate_ctr(raw, rows, seed=0, format="criteo")
    if not (data / "schema.json").is_file():
        prepare([raw], data, format="criteo", split="random", seed=0, min_count=2, force=True)
    if not (run / "model.pt").is_file():
        train(data, run, TrainConfig(model="deepfm", embed_dim=16, mlp_dims=[64, 64], seed=0, threads=1),
              quiet=True, force=True)
    return data, run


def _search(method: str, ckpt: Any, data: Any, budget: int, overhead: int, score_start: bool) -> dict[str, Any]:
    import ondevice.search.retrain as retrain
    from ondevice.pipeline.fitting import search_fitting
    from ondevice.search import make_searcher

    loop_fit = retrain.fit
    if not score_start:  # the behaviour before: the start never competes
        retrain.fit = lambda *a, **kw: loop_fit(*a, **{**kw, "score_start": False})
    try:
        result, file_bytes, _ = search_fitting(make_searcher(method), ckpt, data, budget, overhead, mlp="auto")
    finally:
        retrain.fit = loop_fit
    return {"file_bytes": file_bytes, "val_auc": result.val["auc"], "test_auc": test_auc(result.model, data)}


def run(work: Path, rows: int) -> dict[str, Any]:
    from ondevice.data import EncodedDataset
    from ondevice.pipeline.measure import measure_file_bytes
    from ondevice.train import load_checkpoint

    torch.set_num_threads(1)
    work.mkdir(parents=True, exist_ok=True)
    data_dir, run_dir = _full_run(work, rows)
    data, ckpt = EncodedDataset(data_dir), load_checkpoint(run_dir)
    full_file, full_params = measure_file_bytes(ckpt.model)
    res: dict[str, Any] = {"rows": rows, "full": {"file_bytes": full_file, "val_auc": ckpt.metrics["val"]["auc"],
                                                  "test_auc": test_auc(ckpt.model, data)}, "runs": []}
    for label, frac in FRACTIONS:
        for method in METHODS:
            for score_start in (False, True):
                row = {"budget": label, "budget_bytes": int(full_file * frac), "method": method,
                       "score_start": score_start,
                       **_search(method, ckpt, data, int(full_file * frac), full_file - full_params, score_start)}
                log(f"{label} {method} score_start={score_start}: val {row['val_auc']:.4f} test {row['test_auc']:.4f}")
                res["runs"].append(row)
    return res


def render(res: dict[str, Any]) -> str:
    full = res["full"]
    lines = ["# Retrain: the warm start scored as epoch 0 (`score_start`)", "",
             f"Command: `python benchmarks/retrain_start.py --rows {res['rows']}`. Synthetic Criteo-like set, "
             f"{res['rows']:,} rows; full DeepFM {full['file_bytes']:,} B, val AUC {full['val_auc']:.4f}, "
             f"test AUC {full['test_auc']:.4f}. One torch thread; `--mlp auto`; searcher defaults.", "",
             "| budget | method | start scored | file B | val AUC | test AUC |", "|---|---|---|---:|---:|---:|"]
    for r in res["runs"]:
        lines.append(f"| {r['budget']} | {r['method']} | {'yes' if r['score_start'] else 'no (before)'} | "
                     f"{r['file_bytes']:,} | {r['val_auc']:.4f} | {r['test_auc']:.4f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/w/rs"))
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    write_results(args.out, "retrain_start", run(args.work, args.rows), render)


if __name__ == "__main__":
    main()
