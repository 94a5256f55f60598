"""Run folders from the ``ondevice search interactions|features|architecture`` commands.

Each searches on a trained run (or, for the architecture, on a dataset) and writes a new run
folder atomically, in the shape ``ondevice train`` writes, so ``ondevice compress NEW_RUN`` and
``ondevice export NEW_RUN`` take it like any trained run::

    NEW_RUN/model.pt     the (re)trained model (checkpoint: description + weights + schema)
    NEW_RUN/schema.json  the dataset schema (feature selection: the kept fields' schema, what
                         the app encodes and sends)
    NEW_RUN/train.json   data_dir, fingerprint, val metrics (the search's), test metrics
                         (evaluated once, after the search chose the model on validation);
                         feature selection also ``fields_kept`` (names, in input order):
                         ``compress`` reads the data through ``select_fields`` of those names
    NEW_RUN/search.json  the searcher's parameters, config and trace; the architecture search
                         also its constraints, how latency was measured, every candidate
                         (genotype, val AUC, bytes, p50/p99, feasible, age) and the retrained
                         model's own re-measured cost

Interactions and features go through the fit loop ``compress --method`` runs
(:func:`~ondevice.pipeline.fitting.search_fitting`: same byte accountant, graph measured on the
full model, ``mlp`` forms, margin retry), so both reach the same smallest model and a too-small
budget gets the same itemised minimum. The architecture search measures each candidate with
:func:`~ondevice.pipeline.measure.measure_cost` (exact file bytes and onnxruntime latency).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from ondevice import __version__
from ondevice.budget import format_bytes
from ondevice.data import EncodedDataset
from ondevice.data.dataset import FieldSelectedDataset
from ondevice.errors import BadInputError, BudgetExceededError
from ondevice.io import atomic_output_dir, atomic_write_json, check_writable_parent
from ondevice.models import CTRModel
from ondevice.outputs import check_output
from ondevice.pipeline.fitting import search_fitting
from ondevice.pipeline.measure import host_arch, measure_cost, measure_file_bytes
from ondevice.search.architecture.constraints import resolve_constraints
from ondevice.search.architecture.evolutionary import (
    EvolutionaryArchitectureSearch,
    build_candidate,
    violation,
)
from ondevice.search.base import Searcher, make_searcher
from ondevice.search.byte_accountant import ByteAccountant
from ondevice.search.fixed_parts import MLP_OPTIONS
from ondevice.search.retrain import fit_ctr, val_metrics
from ondevice.train import evaluate_ctr
from ondevice.train.checkpoint import load_checkpoint, run_data, save_checkpoint

__all__ = ["search_architecture", "search_features", "search_interactions"]

#: Without a budget the search is unconstrained (AutoFIS does not shrink tables).
NO_BUDGET = 2**62


def search_interactions(run_dir: str | Path, out_dir: str | Path, searcher: Searcher, *,
                        data_dir: str | Path | None = None, budget_bytes: int | None = None,
                        force: bool = False, mlp: str = "auto") -> dict[str, Any]:
    """Search ``run_dir``'s model with ``searcher`` and write the run folder ``out_dir``.

    The search goes through the fit loop ``compress --method`` runs (same byte accountant,
    graph measured on the full model, ``mlp`` forms, margin retry), so both reach the same
    smallest model and a too-small budget gets the same itemised minimum.
    Returns the summary: kept pairs, validation AUC before (the full model) and after,
    test AUC of the result, seconds.
    """
    run_dir = Path(run_dir)
    check_output(out_dir, kind="search-interactions", inputs=[run_dir, data_dir], force=force)  # before any work
    ckpt = load_checkpoint(run_dir)
    data = run_data(run_dir, data_dir)
    if data.schema.fingerprint() != ckpt.schema.fingerprint():
        raise BadInputError(f"the data in {data.root} is not the data {run_dir} was trained on (schema fingerprint differs)")
    if data.task != "ctr":
        raise BadInputError(f"interaction search needs a CTR run; {run_dir} is a {data.task} run")
    if mlp not in MLP_OPTIONS:
        raise BadInputError(f"--mlp must be one of {', '.join(MLP_OPTIONS)}; got {mlp!r}")
    val_before = val_metrics(copy.deepcopy(ckpt.model), data)
    full_file, full_params = measure_file_bytes(ckpt.model)  # the graph's real bytes, as compress measures them
    limit = NO_BUDGET if budget_bytes is None else int(budget_bytes)
    result, file_bytes, _ = search_fitting(searcher, ckpt, data, limit, full_file - full_params, mlp=mlp)
    model = result.model.eval()
    if file_bytes > limit:
        raise BudgetExceededError(f"the searched model exports to {format_bytes(file_bytes)}, over the budget of "
                                  f"{format_bytes(limit)}; lower the budget", file_bytes=file_bytes, budget=limit)
    test = evaluate_ctr(model, data.split("test").ids, data.split("test").labels) if data.has_split("test") else {}
    kept = next((t for t in result.trace if "kept" in t), {})
    summary = {"method": result.params.get("method"), "kept_pairs": kept.get("kept_count"),
               "candidate_pairs": kept.get("candidates"), "val_auc_before": val_before["auc"],
               "val_auc_after": result.val["auc"], "test_auc": test.get("auc"),
               "signal_check": _signal_check(result.trace),
               "seconds": result.timings.get("total_s"), "warnings": list(result.warnings)}
    train_config = {**ckpt.train_config, "searched_from": str(run_dir.resolve()), "search": result.params}
    metrics = {"val": result.val, "test": test, "selected_on": "val auc"}
    with atomic_output_dir(out_dir, kind="search-interactions", inputs=[run_dir, data.root], force=force) as tmp:
        save_checkpoint(tmp / "model.pt", model, data.schema, train_config=train_config, metrics=metrics)
        data.schema.save(tmp / "schema.json")
        atomic_write_json(tmp / "train.json", {
            "ondevice_version": __version__, "torch_version": torch.__version__,
            "data_dir": str(data.root.resolve()), "schema_fingerprint": data.schema.fingerprint(),
            "task": data.task, "config": train_config, "selected_on": "val auc",
            "val": result.val, "test": test, "val_before": val_before, "summary": summary, "file_bytes": file_bytes,
            # a run over selected fields (``ondevice search features``) stays one: compress reads these columns
            **({"fields_kept": data.schema.field_names} if isinstance(data, FieldSelectedDataset) else {}),
            "params": sum(p.numel() for p in model.parameters()),
        })
        atomic_write_json(tmp / "search.json", _no_sentinel({**result.to_dict(), "summary": summary}))
    return summary


def _no_sentinel(value: Any) -> Any:
    """``value`` with :data:`NO_BUDGET` written as ``null``: no budget was given, not 2**62 bytes."""
    if isinstance(value, dict):
        return {k: _no_sentinel(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_no_sentinel(v) for v in value]
    return None if isinstance(value, int) and not isinstance(value, bool) and value == NO_BUDGET else value


def _signal_check(trace: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The trace's signal check (AutoFIS, AutoField/AdaFS; OptInter: its screen's), ``None`` without one."""
    for entry in trace:
        if entry.get("signal_check") is not None:
            return entry["signal_check"]
        if isinstance(entry.get("screen"), dict) and entry["screen"].get("signal_check") is not None:
            return entry["screen"]["signal_check"]
    return None


def signal_text(signal: dict[str, Any] | None, none: str = "no signal check (nothing to test)") -> str:
    """One clause for a CLI line: what the signal check decided, or ``none`` when there was none."""
    if signal is None:
        return none
    if "survivors" in signal:  # the held-out pair test (AutoFIS, OptInter's screen)
        return (f"held-out pair test: {signal['passed_count']} of {signal['survivors']} gRDA survivors "
                f"pass z >= {signal['threshold_z']:.2f}")
    if signal.get("p_value") is None:
        return f"signal check: {signal.get('reason', 'not run')}"
    verdict = "passed" if signal["passed"] else "failed"
    return f"signal check {verdict}: p {signal['p_value']:.3g} (needs <= {signal['needed_p']:.3g})"


def search_features(run_dir: str | Path, out_dir: str | Path, *, budget_bytes: int | None = None,
                    keep: int | None = None, method: str = "autofield", epochs: int | None = None,
                    search_epochs: int | None = None, seed: int = 0, data_dir: str | Path | None = None,
                    force: bool = False, signal_level: float | None = None, mlp: str = "auto") -> dict[str, Any]:
    """Select fields of ``run_dir``'s model within ``budget_bytes`` (or keep the ``keep`` best).

    Returns the summary written to ``train.json`` (with the test metrics of the selected model,
    read once after selection on validation). ``budget_bytes`` (parsed by the caller,
    ``parse_budget``) is the exported file's limit
    (graph included, measured on the full model as ``compress`` does); with ``keep`` alone
    there is no byte limit. ``signal_level``: the ranking's signal check (``subset.ranking_signal``;
    ``None``: the searcher's default, 0: off).
    The search goes through ``compress --method``'s fit loop (same accountant, ``mlp`` forms,
    margin retry): both reach the same smallest model.
    """
    if mlp not in MLP_OPTIONS:
        raise BadInputError(f"--mlp must be one of {', '.join(MLP_OPTIONS)}; got {mlp!r}")

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if (budget_bytes is None) == (keep is None):
        raise BadInputError("give exactly one of --budget (e.g. 50KB) or --keep N")
    check_output(out_dir, kind="search-features", inputs=[run_dir, data_dir], force=force)
    ckpt = load_checkpoint(run_dir)
    if not isinstance(ckpt.model, CTRModel):
        raise BadInputError(f"feature selection applies to CTR models; {run_dir} holds {ckpt.model.name}")
    data = run_data(run_dir, data_dir)
    if data.schema.fingerprint() != ckpt.schema.fingerprint():
        raise BadInputError(f"the data in {data.root} is not the data {run_dir} was trained on (schema fingerprint differs)")
    val_before = val_metrics(copy.deepcopy(ckpt.model), data)
    full_file, full_params = measure_file_bytes(ckpt.model)
    acc = ByteAccountant(graph_overhead_bytes=full_file - full_params)
    limit = budget_bytes if budget_bytes is not None else acc.file_bytes_estimate(ckpt.model)
    searcher = make_searcher(method, shared={"epochs": epochs, "seed": seed}, num_fields=keep,
                             search_epochs=search_epochs, signal_level=signal_level)
    result, file_bytes, _ = search_fitting(searcher, ckpt, data, limit, acc.graph_overhead_bytes, mlp=mlp)
    if budget_bytes is not None and file_bytes > limit:
        raise BudgetExceededError(f"the selected model exports to {format_bytes(file_bytes)}, over the budget of "
                                  f"{format_bytes(limit)}; lower the budget or pass --keep", file_bytes=file_bytes,
                                  budget=limit)
    schema = result.schema or ckpt.schema
    test = {}
    if data.has_split("test"):  # once, with the fields chosen on validation
        s = data.select_fields(data.schema.field_positions(schema.field_names)).split("test")
        test = evaluate_ctr(result.model, s.ids, s.labels)
    summary = {
        "method": searcher.method_name(), "source_run": str(run_dir.resolve()), "data_dir": str(Path(data.root).resolve()),
        "fields_kept": schema.field_names, "fields_dropped": [n for n in data.schema.field_names if n not in schema.field_names],
        "schema_fingerprint": schema.fingerprint(), "task": "ctr", "budget_bytes": budget_bytes,
        "file_bytes": file_bytes, "full_file_bytes": full_file, "val": result.val, "val_before": val_before,
        "test": test, "signal_check": _signal_check(result.trace), "selected_on": f"val {result.metric}",
        "config": ckpt.train_config, "search": {"config": result.config, "params": result.params, "timings": result.timings},
    }
    metrics = {"val": result.val, "test": test, "selected_on": f"val {result.metric}", "method": summary["method"],
               "search": {"config": result.config, "params": result.params}}
    with atomic_output_dir(out_dir, kind="search-features", inputs=[run_dir, data.root], force=force) as tmp:
        save_checkpoint(tmp / "model.pt", result.model, schema, train_config=ckpt.train_config, metrics=metrics,
                        extra={"selected_from": str(ckpt.path) if ckpt.path else None})
        schema.save(tmp / "schema.json")
        atomic_write_json(tmp / "train.json", summary)
        atomic_write_json(tmp / "search.json", _no_sentinel({**result.to_dict(), "file_bytes": file_bytes}))
    return summary


def search_architecture(data_dir: str | Path, out_dir: str | Path, *, budget_bytes: int | None = None,
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
    constraints = resolve_constraints(budget_bytes, latency_p99, profile)
    searcher = searcher or EvolutionaryArchitectureSearch()
    data = EncodedDataset(data_dir)
    if data.task != "ctr":
        raise BadInputError(f"architecture search is for CTR data; {data_dir} is a {data.task!r} dataset")
    started = time.perf_counter()
    found = searcher.search(data, constraints, measure=measure_cost)
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
        "latency_note": constraints.latency_note(host_arch()),
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
