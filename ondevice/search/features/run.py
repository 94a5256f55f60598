"""``search_features``: a feature-selection search over a trained run, written as a new run folder.

The library function behind ``ondevice search features``. The output is a trained run like
``ondevice train`` writes, so ``ondevice compress`` and ``ondevice export`` take it::

    NEW_RUN/model.pt      the model over the kept fields, with the kept fields' schema
    NEW_RUN/schema.json   that schema (what the app encodes and sends: the kept fields only)
    NEW_RUN/train.json    data_dir (the full dataset) + fields_kept (names, in input order):
                          ``compress`` reads the data through ``select_fields`` of those names
    NEW_RUN/search.json   the searcher's params, config and trace (keep probabilities, ranking)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ondevice.budget import format_bytes, parse_budget
from ondevice.errors import BadInputError, BudgetExceededError
from ondevice.io import atomic_output_dir, atomic_write_json
from ondevice.models import CTRModel
from ondevice.outputs import check_output
from ondevice.search.base import MLP_OPTIONS, ByteAccountant, make_searcher
from ondevice.train.checkpoint import load_checkpoint, run_data, save_checkpoint

__all__ = ["search_features"]


def search_features(run_dir: str | Path, out_dir: str | Path, *, budget: str | int | None = None,
                    keep: int | None = None, method: str = "autofield", epochs: int | None = None,
                    search_epochs: int | None = None, seed: int = 0, data_dir: str | Path | None = None,
                    force: bool = False, signal_level: float | None = None, mlp: str = "auto") -> dict[str, Any]:
    """Select fields of ``run_dir``'s model within ``budget`` bytes (or keep the ``keep`` best).

    Returns the summary written to ``train.json``. ``budget`` is the exported file's limit
    (graph included, measured on the full model as ``compress`` does); with ``keep`` alone
    there is no byte limit. ``signal_level``: the ranking's signal check (``subset.ranking_signal``;
    ``None``: the searcher's default, 0: off).
    The search goes through ``compress --method``'s fit loop (same accountant, ``mlp`` forms,
    margin retry): both reach the same smallest model.
    """
    from ondevice.compress import (  # compress sits above search (lazy: no cycle)
        _search_fitting,
        measure_file_bytes,
    )

    if mlp not in MLP_OPTIONS:
        raise BadInputError(f"--mlp must be one of {', '.join(MLP_OPTIONS)}; got {mlp!r}")

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if (budget is None) == (keep is None):
        raise BadInputError("give exactly one of --budget (e.g. 50KB) or --keep N")
    check_output(out_dir, kind="search-features", inputs=[run_dir, data_dir], force=force)
    ckpt = load_checkpoint(run_dir)
    if not isinstance(ckpt.model, CTRModel):
        raise BadInputError(f"feature selection applies to CTR models; {run_dir} holds {ckpt.model.name}")
    data = run_data(run_dir, data_dir)
    if data.schema.fingerprint() != ckpt.schema.fingerprint():
        raise BadInputError(f"the data in {data.root} is not the data {run_dir} was trained on (schema fingerprint differs)")
    full_file, full_params = measure_file_bytes(ckpt.model)
    acc = ByteAccountant(graph_overhead_bytes=full_file - full_params)
    limit = parse_budget(budget) if budget is not None else acc.file_bytes_estimate(ckpt.model)
    searcher = make_searcher(method, shared={"epochs": epochs, "seed": seed}, num_fields=keep,
                             search_epochs=search_epochs, signal_level=signal_level)
    result, file_bytes, _ = _search_fitting(searcher, ckpt, data, limit, acc.graph_overhead_bytes, mlp=mlp)
    if budget is not None and file_bytes > limit:
        raise BudgetExceededError(f"the selected model exports to {format_bytes(file_bytes)}, over the budget of "
                                  f"{format_bytes(limit)}; lower the budget or pass --keep", file_bytes=file_bytes,
                                  budget=limit)
    schema = result.schema or ckpt.schema
    summary = {
        "method": searcher.method_name(), "source_run": str(run_dir.resolve()), "data_dir": str(Path(data.root).resolve()),
        "fields_kept": schema.field_names, "fields_dropped": [n for n in data.schema.field_names if n not in schema.field_names],
        "schema_fingerprint": schema.fingerprint(), "task": "ctr", "budget_bytes": limit if budget is not None else None,
        "file_bytes": file_bytes, "full_file_bytes": full_file, "val": result.val, "selected_on": f"val {result.metric}",
        "config": ckpt.train_config, "search": {"config": result.config, "params": result.params, "timings": result.timings},
    }
    metrics = {"val": result.val, "selected_on": f"val {result.metric}", "method": summary["method"],
               "search": {"config": result.config, "params": result.params}}
    with atomic_output_dir(out_dir, kind="search-features", inputs=[run_dir, data.root], force=force) as tmp:
        save_checkpoint(tmp / "model.pt", result.model, schema, train_config=ckpt.train_config, metrics=metrics,
                        extra={"selected_from": str(ckpt.path) if ckpt.path else None})
        schema.save(tmp / "schema.json")
        atomic_write_json(tmp / "train.json", summary)
        atomic_write_json(tmp / "search.json", {**result.to_dict(), "file_bytes": file_bytes})
    return summary
