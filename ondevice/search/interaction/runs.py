"""Run folders from an interaction search (``ondevice search interactions``).

``search_interactions(RUN_DIR, NEW_RUN, searcher)`` searches on ``RUN_DIR``'s checkpoint and
data and writes ``NEW_RUN`` (atomically) in the shape ``ondevice train`` writes, so
``ondevice compress NEW_RUN`` and ``ondevice export NEW_RUN`` take it like any trained run::

    NEW_RUN/model.pt     the retrained model (checkpoint: description + weights + schema)
    NEW_RUN/schema.json  the dataset schema
    NEW_RUN/train.json   data_dir, fingerprint, val metrics (the search's), test metrics
                         (evaluated once, after the search chose the model on validation)
    NEW_RUN/search.json  the searcher's parameters, config and trace
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from ondevice import __version__
from ondevice.budget import format_bytes
from ondevice.data.dataset import FieldSelectedDataset
from ondevice.errors import BadInputError, BudgetExceededError
from ondevice.io import atomic_output_dir, atomic_write_json
from ondevice.outputs import check_output
from ondevice.search.base import MLP_OPTIONS, Searcher
from ondevice.search.retrain import val_metrics
from ondevice.train import evaluate_ctr
from ondevice.train.checkpoint import load_checkpoint, run_data, save_checkpoint

__all__ = ["search_interactions"]

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
    from ondevice.compress import (  # compress sits above search (lazy: no cycle)
        _search_fitting,
        measure_file_bytes,
    )

    if mlp not in MLP_OPTIONS:
        raise BadInputError(f"--mlp must be one of {', '.join(MLP_OPTIONS)}; got {mlp!r}")
    val_before = val_metrics(copy.deepcopy(ckpt.model), data)
    full_file, full_params = measure_file_bytes(ckpt.model)  # the graph's real bytes, as compress measures them
    limit = NO_BUDGET if budget_bytes is None else int(budget_bytes)
    result, file_bytes, _ = _search_fitting(searcher, ckpt, data, limit, full_file - full_params, mlp=mlp)
    model = result.model.eval()
    if file_bytes > limit:
        raise BudgetExceededError(f"the searched model exports to {format_bytes(file_bytes)}, over the budget of "
                                  f"{format_bytes(limit)}; lower the budget", file_bytes=file_bytes, budget=limit)
    test = evaluate_ctr(model, data.split("test").ids, data.split("test").labels) if data.has_split("test") else {}
    kept = next((t for t in result.trace if "kept" in t), {})
    summary = {"method": result.params.get("method"), "kept_pairs": kept.get("kept_count"),
               "candidate_pairs": kept.get("candidates"), "val_auc_before": val_before["auc"],
               "val_auc_after": result.val["auc"], "test_auc": test.get("auc"),
               "seconds": result.timings.get("total_s")}
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
        atomic_write_json(tmp / "search.json", {**result.to_dict(), "summary": summary})
    return summary
