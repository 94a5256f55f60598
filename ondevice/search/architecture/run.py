"""``search_architecture``: constraints from flags or a device profile -> search -> retrain -> run folder.

The run folder is what ``ondevice train`` writes (``model.pt``, ``schema.json``,
``train.json``; ``compress`` and ``export`` take it), plus ``search.json``: the searcher's
settings, the constraints and how latency was measured, every candidate (genotype, val AUC,
bytes, p50/p99, feasible, age) and the retrained model's own re-measured cost. The test
split is read once, after the architecture and its epoch were chosen on validation.
"""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path
from typing import Any

import torch

from ondevice import __version__
from ondevice.budget import load_profile, parse_budget
from ondevice.data import EncodedDataset
from ondevice.errors import BadInputError
from ondevice.io import atomic_output_dir, atomic_write_json, check_writable_parent
from ondevice.outputs import check_output
from ondevice.search.architecture.evolutionary import (
    Constraints,
    EvolutionaryArchitectureSearch,
    build_candidate,
    measure_cost,
    violation,
)
from ondevice.search.retrain import fit_ctr
from ondevice.train import evaluate_ctr
from ondevice.train.checkpoint import save_checkpoint

__all__ = ["parse_latency", "resolve_constraints", "search_architecture"]

_LATENCY_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|us|µs|s)?\s*$", re.IGNORECASE)
_TO_MS = {"ms": 1.0, "us": 1e-3, "µs": 1e-3, "s": 1e3}


def parse_latency(text: str | float) -> float:
    """``"1ms"`` -> 1.0, ``"500us"`` -> 0.5, ``"0.02s"`` -> 20.0 (milliseconds; a bare number is ms).

    >>> parse_latency("500us"), parse_latency("1.5ms"), parse_latency(2)
    (0.5, 1.5, 2.0)
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        m = _LATENCY_RE.match(str(text))
        if m is None:
            raise BadInputError(f"latency {text!r} is not a duration; use e.g. 1ms, 500us, 0.5ms or 0.002s")
        value = float(m.group(1)) * _TO_MS[(m.group(2) or "ms").lower()]
    if not value > 0:
        raise BadInputError(f"latency target must be > 0, got {text!r}; use e.g. 1ms or 500us")
    return value


def resolve_constraints(budget: str | int | None, latency_p99: str | float | None,
                        profile: str | Path | None) -> Constraints:
    """Explicit ``--budget`` / ``--latency-p99`` win over the profile's; threads/batch from the profile (else 1/1)."""
    dev = load_profile(profile) if profile is not None else None
    return Constraints(
        budget_bytes=parse_budget(budget) if budget is not None else (dev.memory_budget if dev else None),
        p99_ms=parse_latency(latency_p99) if latency_p99 is not None else (dev.p99_latency_ms if dev else None),
        threads=dev.threads if dev else 1, batch_size=dev.batch_size if dev else 1,
        profile=dev.name if dev else None, arch=dev.arch if dev else None)


def search_architecture(data_dir: str | Path, out_dir: str | Path, *, budget: str | int | None = None,
                        latency_p99: str | float | None = None, profile: str | Path | None = None,
                        epochs: int = 10, patience: int = 2, force: bool = False,
                        searcher: EvolutionaryArchitectureSearch | None = None) -> dict[str, Any]:
    """Search an architecture meeting the constraints, retrain it fully, write the run folder ``out_dir``.

    Raises ``BudgetTooSmallError`` (exit 2) when no candidate meets both constraints.
    Returns the summary also stored in ``search.json["result"]``.
    """
    out_dir = Path(out_dir)
    check_output(out_dir, kind="search-architecture", inputs=[data_dir], force=force)
    check_writable_parent(out_dir)
    if epochs < 1:
        raise BadInputError(f"--epochs must be >= 1, got {epochs}")
    constraints = resolve_constraints(budget, latency_p99, profile)
    searcher = searcher or EvolutionaryArchitectureSearch()
    data = EncodedDataset(data_dir)
    if data.task != "ctr":
        raise BadInputError(f"architecture search is for CTR data; {data_dir} is a {data.task!r} dataset")
    started = time.perf_counter()
    found = searcher.search(data, constraints)
    search_seconds = time.perf_counter() - started

    # retrain the chosen genotype from scratch on the full training split (early stopping on val)
    best = found.best
    model = build_candidate(best.genotype, list(data.schema.vocab_sizes), searcher.seed)
    fit = fit_ctr(model, data, epochs=epochs, lr=searcher.lr, batch_size=searcher.batch_size, seed=searcher.seed,
                  patience=patience)
    final = measure_cost(model, constraints, runs=max(searcher.latency_runs, 1000),
                         warmup=max(searcher.latency_warmup, 50), repeats=searcher.latency_repeats, seed=searcher.seed)
    test = {}
    if data.has_split("test"):  # once, with the architecture and epoch chosen on validation
        s = data.split("test")
        test = evaluate_ctr(model, s.ids, s.labels)
    retrain_seconds = time.perf_counter() - started - search_seconds

    config = {"model": "blocknet", "embed_dim": best.genotype["embed_dim"], "blocks": best.genotype["blocks"],
              "lr": searcher.lr, "batch_size": searcher.batch_size, "epochs": epochs, "patience": patience,
              "seed": searcher.seed, "k": 20}
    result = {
        "genotype": best.genotype, "search_candidate": best.id, "search_val_auc": best.val_auc,
        "val": fit.val, "test": test, "best_epoch": fit.best_epoch,
        "file_bytes": int(final["file_bytes"]), "param_bytes": int(final["param_bytes"]),
        "p50_ms": final["p50_ms"], "p99_ms": final["p99_ms"], "search_p99_ms": best.p99_ms,
        "meets_budget": constraints.budget_bytes is None or final["file_bytes"] <= constraints.budget_bytes,
        "meets_latency_remeasured": constraints.p99_ms is None or final["p99_ms"] <= constraints.p99_ms,
        "violation_remeasured": violation(final, constraints),
        "latency_note": constraints.latency_note(),
        "search_seconds": search_seconds, "retrain_seconds": retrain_seconds,
        "candidates_evaluated": found.evaluations,
        "candidates_trained": sum(c.feasible and not c.reused for c in found.candidates),
    }
    with atomic_output_dir(out_dir, kind="search-architecture", inputs=[data_dir], force=force) as tmp:
        metrics = {"epoch": fit.best_epoch, "val": fit.val, "test": test, "selected_on": "val auc"}
        save_checkpoint(tmp / "model.pt", model, data.schema, train_config=config, metrics=metrics)
        data.schema.save(tmp / "schema.json")
        atomic_write_json(tmp / "train.json", {
            "ondevice_version": __version__, "torch_version": torch.__version__,
            "data_dir": str(data.root.resolve()), "schema_fingerprint": data.schema.fingerprint(),
            "task": data.task, "config": config, "world_size": 1, "best_epoch": fit.best_epoch,
            "selected_on": "val auc", "val": fit.val, "test": test, "train_seconds": fit.seconds,
            "params": sum(p.numel() for p in model.parameters()), "history": fit.history,
            "architecture_search": "search.json",
        })
        atomic_write_json(tmp / "search.json", {
            "method": "autoctr-evolution", "params": searcher.get_params(),
            "constraints": dataclasses.asdict(constraints), "result": result,
            "evolution": {"evaluations": found.evaluations, "seconds": found.seconds, "history": found.history,
                          "mutation_stats": found.mutation_stats},
            "candidates": [dataclasses.asdict(c) for c in found.candidates],
        })
    return {"run_dir": str(out_dir), **result}
