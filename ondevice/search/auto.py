"""``--method auto``: try the applicable methods within a time limit, keep the best that fits.

The survey's AutoML idea applied to compression itself (issue 6): for one budget, run every
candidate method the model's task supports (embedding searchers, quantisation, their
compositions, feature selection), measure each result's exported bytes, and keep the one
with the best **validation** metric whose file fits the budget. Nothing here reads the test
split: candidates are compared on the validation metric their searcher reports.

Candidate order (cheapest first, so a short ``time_limit_s`` still yields an answer): the
post-training quantisers (``int8``, ``fp16``: no retraining), then the retraining searchers
in the order of :data:`CTR_CANDIDATES` / :data:`TOPK_CANDIDATES`. Before a candidate starts,
the remaining time is compared with the slowest retraining candidate seen so far; when it
would not finish in time it is skipped and the skip is recorded (``"skipped": "time limit"``).
The limit is soft: a candidate that has started is never interrupted, so a run can overshoot
by one candidate's time when that candidate is slower than every one before it (PEP's
threshold search, typically); the summary lists every candidate's seconds.
A candidate whose smallest model does not fit the budget (``BudgetTooSmallError``, raised
before any training) is recorded as ``"does not fit"`` with its minimum; any other
``OndeviceError`` of a candidate is recorded and the search goes on. Only when no
candidate produced a fitting model is an error raised: the smallest minimum any
candidate reported, so the message says what budget would work.

Bytes of each candidate are the exported ONNX file's bytes, not an estimate: each candidate
goes through ``compress``'s fit loop (search, export, measure; tighten the byte margin and
retry when over), exactly as it would as a single ``--method``, and one still over the
budget is not chosen. The choice and every
candidate (method, val metric, file bytes, seconds, outcome) are in the result's
``candidates`` (``compress`` puts them in ``summary.json``/``summary.md`` and marks the
chosen point on the Pareto plot).

``auto`` is never worse than the best method it tried *on the validation metric* by
construction; whether that carries to the test split is what ``benchmarks/auto.py`` measures.
"""

from __future__ import annotations

import time
from typing import Any

from ondevice.errors import BadInputError, BudgetTooSmallError, OndeviceError
from ondevice.search.base import (
    SEARCHERS,
    SearchContext,
    Searcher,
    SearchResult,
    make_config,
    make_searcher,
    register_searcher,
)

__all__ = ["AutoSearcher", "CTR_CANDIDATES", "TOPK_CANDIDATES", "candidate_methods"]

# Cheapest first; methods whose module is not installed/registered are left out at run time.
CTR_CANDIDATES = ("int8", "fp16", "sseds", "sseds+int8", "uniform", "uniform+int8", "mde", "mde+int8",
                  "autofield", "pep", "hash")
TOPK_CANDIDATES = ("int8", "fp16", "rule", "rule+int8", "uniform", "uniform+int8", "pep", "pep+fp16")
_NO_RETRAIN = {"int8", "fp16"}


def candidate_methods(task: str, methods: tuple[str, ...] | list[str] | None = None) -> list[str]:
    """The candidate ``--method`` values for ``task`` (``ctr``/``topk``) that are registered."""
    names = list(methods) if methods else list(CTR_CANDIDATES if task == "ctr" else TOPK_CANDIDATES)
    out = []
    for m in names:
        base = m.partition("+")[0]
        if base == "auto":
            raise BadInputError("auto cannot be one of its own candidates; list concrete methods")
        cls = SEARCHERS.get(base)
        if cls is None:
            if methods:  # the user named it: say so
                raise BadInputError(f"unknown candidate method {m!r} for auto")
            continue
        if task in cls.tasks:
            out.append(m)
    return out


@register_searcher
class AutoSearcher(Searcher):
    """Best validation metric over the applicable methods that fit (module docstring).

    Parameters
    ----------
    methods : candidate ``--method`` values (default: every registered method of the task,
        :data:`CTR_CANDIDATES` / :data:`TOPK_CANDIDATES`).
    time_limit_s : wall-clock limit for one budget; candidates that would start after it, or
        that are not expected to finish within it, are skipped (the first always runs).
    epochs, seed : passed to every candidate that takes them (``None`` = the method's default).
    candidate_params : per-method extra settings, e.g. ``{"pep": {"threshold_init": -4}}``.
    """

    name = "auto"
    delegates = True
    tasks = ("ctr", "topk")

    def __init__(self, *, methods: list[str] | None = None, time_limit_s: float = 900.0, epochs: int | None = None,
                 seed: int = 0, candidate_params: dict[str, dict[str, Any]] | None = None) -> None:
        self.methods = methods
        self.time_limit_s = time_limit_s
        self.epochs = epochs
        self.seed = seed
        self.candidate_params = candidate_params

    def _search(self, ctx: SearchContext) -> SearchResult:
        from ondevice.compress import _search_fitting

        if self.time_limit_s <= 0:
            raise BadInputError(f"--time-limit must be > 0 seconds, got {self.time_limit_s}")
        names = candidate_methods(ctx.task, self.methods)
        if not names:
            raise BadInputError(f"no candidate method applies to {ctx.task} models")
        started = time.perf_counter()
        slowest_retrain = 0.0
        candidates: list[dict[str, Any]] = []
        best: tuple[float, SearchResult, str] | None = None
        minimums: list[tuple[int, str]] = []
        for method in names:
            elapsed = time.perf_counter() - started
            expected = 0.0 if method in _NO_RETRAIN else slowest_retrain
            if candidates and elapsed + expected > self.time_limit_s:
                candidates.append({"method": method, "outcome": "skipped: time limit",
                                   "elapsed_s": elapsed, "expected_s": expected})
                continue
            params = {"epochs": self.epochs, "seed": self.seed, **(self.candidate_params or {}).get(method, {})}
            searcher = make_searcher(method, **params)
            t0 = time.perf_counter()
            try:
                result, file_bytes, attempts = _search_fitting(searcher, ctx.ckpt, ctx.data, ctx.budget_bytes,
                                                               ctx.accountant.graph_overhead_bytes, ctx.work_dir,
                                                               mlp=ctx.mlp)
            except BudgetTooSmallError as err:
                if err.minimum_bytes is not None:
                    minimums.append((err.minimum_bytes, method))
                candidates.append({"method": method, "outcome": "does not fit", "minimum_bytes": err.minimum_bytes,
                                   "message": str(err), "seconds": time.perf_counter() - t0})
                continue
            except OndeviceError as err:
                candidates.append({"method": method, "outcome": f"failed: {type(err).__name__}", "message": str(err),
                                   "seconds": time.perf_counter() - t0})
                continue
            seconds = time.perf_counter() - t0
            if method not in _NO_RETRAIN:
                slowest_retrain = max(slowest_retrain, seconds)
            fits = file_bytes <= ctx.budget_bytes
            candidates.append({"method": method, "outcome": "fits" if fits else "over budget after export",
                               "val_metric": result.val_metric, "metric": result.metric, "val": result.val,
                               "file_bytes": file_bytes, "seconds": seconds, "fit_attempts": len(attempts),
                               "config": result.config})
            if fits and (best is None or result.val_metric > best[0]):
                best = (result.val_metric, result, method)
        if best is None:
            if minimums:
                need, what = min(minimums)
                raise BudgetTooSmallError(
                    f"no method auto tried fits the budget of {ctx.budget_bytes:,} B; the smallest model any of them "
                    f"can build is {need:,} B ({what}); raise the budget", minimum_bytes=need)
            reasons = "; ".join(f"{c['method']}: {c.get('message', c['outcome'])}" for c in candidates)
            raise BadInputError(f"auto found no candidate that fits ({reasons[:400]})")
        _, result, chosen = best
        for c in candidates:
            c["chosen"] = c["method"] == chosen
        result.config = make_config("AutoConfig", {"chosen": chosen, "config": result.config,
                                                   "candidates": [c["method"] for c in candidates]})
        result.trace = [{"auto": candidates}, *result.trace]
        result.candidates = candidates
        result.timings = {**result.timings, "auto_total_s": time.perf_counter() - started}
        return result
