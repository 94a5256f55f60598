"""``--method auto``: try the applicable methods within a time limit, keep the best that fits.

The survey's AutoML idea applied to compression itself (issue 6): for one budget, run every
candidate method the model's task supports (embedding searchers, quantisation, their
compositions), measure each result's exported bytes, and keep the one with the best
**validation** metric whose file fits the budget and whose quality is within the floor.
Nothing here reads the test split (``compress`` reads it once, after the choice).

Quality floor (``max_loss``, default 2 %): a candidate whose validation metric is more than
``max_loss`` below the full model's, relatively (``(full − cand) / full``), is never chosen
("below quality floor" in the summary). When every candidate that fits is below it,
:class:`~ondevice.errors.QualityFloorError` (exit 3) names the best one and its loss: an
``auto`` run never returns a model the summary would call broken.

Raw inputs below the vocabulary's size: where ``compress``'s default inputs would be raw but the
vocabulary takes more than half the budget, the other candidates are sized for ids (the app
encodes with ``schema.json``) and ``compress`` hands over the raw encoder (``raw_vocabulary``):
``frequency`` then also runs as a raw candidate (rare ids' rows and keys dropped, keys counted per
kept id) and is preferred whenever it fits within the quality floor, since the budget covers what
the app ships (an id artefact's app also ships ``schema.json``); otherwise the best id candidate.

Inputs are a contract: methods that change the artefact's inputs (feature selection:
``autofield``, ``adafs``; any candidate whose result carries a new input schema) are only
tried with ``allow_input_change=True``; otherwise they are listed as skipped with the reason.

Time limit (``time_limit_s``, ``None`` = none): a short measured probe (a few training steps
of the full model and one validation pass) gives the cost of an epoch; each candidate's
expected cost is that times the epochs its settings ask for (every ``*epochs`` parameter)
plus the validation passes it declares (``Searcher.expected_validation_passes``: RULE's sampled
configurations) plus an export, corrected by the ratio actual/expected of the candidates already run. The
candidates run cheapest first. One that is not expected to finish in the time left is
skipped once some candidate has produced a model (until then candidates keep starting, so a
short limit still yields an answer); the one running when the limit passes is stopped at its
next training step (``search.retrain.deadline``) and its best evaluated weights are still a
valid candidate (``"stopped_at_limit": true``). ``time_limit_s`` covers this search only;
``compress`` sets it from the budget's window of the whole call, minus what follows the
search (``pipeline.wall_plan``). Without a limit the
candidates and the choice do not depend on timing, so the same command, data and seed give
the same artefact.

Latency (``latency_p99_ms`` with ``latency_batch``/``latency_threads``, set by ``compress``
from the device profile): every candidate that fits is exported and timed with onnxruntime
at that batch and thread count on this machine; one whose p99 misses the target is
rejected before the choice ("rejected: p99 …"). Without a target the p99 at batch 1 is still
measured and reported, and a near-tie — metrics within ``tie_tolerance`` (relative) of the
best — goes to an artefact whose median latency is below :data:`TIE_SPEEDUP` × the best's
(the median and a clear margin, so timing noise does not make the choice vary between
identical runs).

A candidate whose smallest model does not fit the budget (``BudgetTooSmallError``, raised
before any training) is recorded as ``"does not fit"`` with its minimum; any other
``OndeviceError`` of a candidate is recorded and the search goes on. When no candidate
produced a fitting model, the smallest minimum any candidate reported is raised.

Bytes of each candidate are the exported ONNX file's bytes, not an estimate: each candidate
goes through the pipeline's fit loop (:func:`~ondevice.pipeline.fitting.search_fitting`: search,
export, measure; tighten the byte margin and retry when over), exactly as it would as a single
``--method``. The choice and every candidate (method, val metric, loss vs full, file bytes, p99,
seconds, outcome) are in the result's ``candidates`` (``compress`` writes them to
``summary.json``/``summary.md``).

``auto`` is a ``--method`` name in the searcher registry, but it lives in the pipeline (it
exports and times candidates and runs the other searchers; ``ondevice.search`` never imports
the pipeline or the exporter): importing ``ondevice.pipeline`` registers it.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

from ondevice.errors import BadInputError, BudgetTooSmallError, OndeviceError, QualityFloorError
from ondevice.io import atomic_write_json
from ondevice.outputs import crash_point
from ondevice.pipeline.fitting import search_fitting
from ondevice.pipeline.measure import candidate_latency
from ondevice.search.base import (
    SEARCHERS,
    SearchContext,
    Searcher,
    SearchResult,
    make_config,
    make_searcher,
    method_params,
    register_searcher,
)
from ondevice.search.byte_accountant import itemise_bytes
from ondevice.search.retrain import deadline
from ondevice.train.progress import progress_bar

__all__ = ["AutoSearcher", "CTR_CANDIDATES", "DEFAULT_MAX_LOSS", "INPUT_CHANGING", "TOPK_CANDIDATES",
           "candidate_methods", "relative_loss"]

# Listed cheapest first; the run order is by the measured expected cost (module docstring).
CTR_CANDIDATES = ("int8", "fp16", "sseds", "sseds+int8", "uniform", "uniform+int8", "mde", "mde+int8",
                  "autofield", "adafs", "pep", "hash")
TOPK_CANDIDATES = ("int8", "fp16", "rule", "rule+int8", "uniform", "uniform+int8", "pep", "pep+fp16")
_NO_RETRAIN = {"int8", "fp16"}
#: Methods whose artefact takes other inputs than the full model's (feature selection).
INPUT_CHANGING = ("autofield", "adafs")
#: The candidate sized for raw inputs when ``compress`` gives ``raw_vocabulary`` (it drops keys with rows).
RAW_CANDIDATE = "frequency"
#: Default quality floor: at most 2 % relative validation-metric loss vs the full model.
DEFAULT_MAX_LOSS = 0.02
#: Near-tie (relative metric difference) broken towards the faster artefact when no target is set.
DEFAULT_TIE_TOLERANCE = 0.001
#: A near-tie goes to another candidate only when its p50 is below this fraction of the best's: timing
#: noise (typically < 20 % between runs) then cannot flip the choice of two equally fast artefacts.
TIE_SPEEDUP = 0.67
#: Probe: training steps timed on a copy of the full model to cost an epoch.
PROBE_STEPS = 8


def relative_loss(full: float, value: float) -> float:
    """``(full − value) / |full|``: the relative loss of a higher-is-better metric (0 when ``full`` is 0)."""
    return (full - value) / abs(full) if full else 0.0


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


def _epochs_of(searcher: Searcher) -> int:
    """Training epochs a searcher's settings ask for (every ``*epochs`` parameter summed)."""
    return sum(int(v) for k, v in searcher.get_params().items() if k.endswith("epochs") and isinstance(v, int))


def _probe(ctx: SearchContext, seed: int, full_val: dict[str, Any] | None = None) -> dict[str, float]:
    """Seconds of one training epoch and one validation pass of the full model (a few timed steps).

    ``full_val`` (``{"metrics": ..., "seconds": ...}``): the full model's validation pass when the
    caller already ran it (``compress`` does), so it is not run twice.
    """
    import torch

    from ondevice.models import BPRMF
    from ondevice.search.retrain import fit_ctr, fit_topk, topk_pairs, val_metrics

    model = copy.deepcopy(ctx.ckpt.model)
    if full_val is not None:
        full_val, val_s = dict(full_val["metrics"]), float(full_val["seconds"])
    else:
        t0 = time.perf_counter()
        full_val = val_metrics(model, ctx.data)
        val_s = time.perf_counter() - t0
    batch = 1024
    rows = len(topk_pairs(ctx.data, "train")) if isinstance(model, BPRMF) else len(ctx.data.split("train"))
    steps = max(1, min(PROBE_STEPS, -(-rows // batch)))
    fit = fit_topk if isinstance(model, BPRMF) else fit_ctr
    rng = torch.get_rng_state()
    stamps: list[float] = []

    def _stamp(s: int) -> bool:  # the first step pays one-off costs (optimizer state, caches): time the rest
        stamps.append(time.perf_counter())
        return s >= steps + 1

    t0 = time.perf_counter()
    fit(model, ctx.data, epochs=1, batch_size=batch, seed=seed, evaluate=False, select_best=False,  # type: ignore[operator]
        on_step=_stamp)
    step_s = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else time.perf_counter() - t0
    torch.set_rng_state(rng)
    return {"val_s": val_s, "epoch_s": step_s * -(-rows // batch), "step_s": step_s, "full_val": full_val}


class _CandidateStore:
    """Finished candidates of one ``auto`` search in ``SearchContext.state_dir`` (``compress --resume``).

    ``probe.json`` holds the probe (its timings fix the run order, so a resumed search runs the
    candidates in the same order); ``NN-METHOD.json`` each finished candidate's entry (outcome,
    metric, bytes, p99, seconds, the correction ratio it added and the search's elapsed time);
    ``NN-METHOD.pt`` the result of a candidate that fits (:meth:`SearchResult.save`), the only
    ones the choice can take. Every file is written atomically, the ``.json`` last.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def _stem(self, position: int, method: str) -> Path:
        return self.folder / f"{position:02d}-{method.replace('+', '_')}"

    def probe(self) -> dict[str, Any] | None:
        path = self.folder / "probe.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def save_probe(self, probe: dict[str, Any]) -> None:
        atomic_write_json(self.folder / "probe.json", probe)

    def candidate(self, position: int, method: str) -> tuple[dict[str, Any], float | None, float] | None:
        """(entry with its ``_result``, correction ratio, elapsed seconds) of a finished candidate, or ``None``."""
        stem = self._stem(position, method)
        path = stem.with_suffix(".json")
        if not path.is_file():
            return None
        kept = json.loads(path.read_text())
        entry = kept["entry"]
        if kept["has_result"]:
            entry["_result"] = SearchResult.load(stem.with_suffix(".pt")) if entry["outcome"] == "fits" else None
        return entry, kept["ratio"], float(kept["elapsed_s"])

    def save_candidate(self, position: int, entry: dict[str, Any], ratio: float | None, elapsed_s: float) -> None:
        stem = self._stem(position, entry["method"])
        result = entry.get("_result")
        if result is not None and entry["outcome"] == "fits":
            result.save(stem.with_suffix(".pt"))
        atomic_write_json(stem.with_suffix(".json"), {
            "entry": {k: v for k, v in entry.items() if k != "_result"}, "has_result": "_result" in entry,
            "ratio": ratio, "elapsed_s": elapsed_s})


@register_searcher
class AutoSearcher(Searcher):
    """Best validation metric over the applicable methods that fit (module docstring).

    Parameters
    ----------
    methods : candidate ``--method`` values (default: every registered method of the task,
        :data:`CTR_CANDIDATES` / :data:`TOPK_CANDIDATES`).
    time_limit_s : wall-clock limit of one budget's search (``None``: no limit).
    epochs, seed : passed to every candidate that takes them (``None`` = the method's default).
    candidate_params : per-method extra settings, e.g. ``{"pep": {"threshold_init": -4}}``.
    max_loss : quality floor, the largest relative validation-metric loss vs the full model
        a chosen candidate may have (``None``: no floor).
    allow_input_change : also try methods that change the artefact's inputs (feature selection).
    latency_p99_ms, latency_batch, latency_threads : reject candidates whose onnxruntime p99 at
        that batch and thread count misses the target (``None``: measured at batch 1, not judged).
    tie_tolerance : relative metric difference treated as a tie, broken towards lower p99.
    progress : one line per candidate start/finish on stderr, and on a terminal an updating bar
        (epoch, step, time left) while a candidate trains (``train.progress``).
    full_val : ``{"metrics": {...}, "seconds": s}``, the full model's validation pass when the
        caller has run it (``compress``): the probe reuses it instead of running it again.
    raw_vocabulary : a raw artefact's encoder (``VocabularyCost``), given by ``compress`` where the
        vocabulary takes too much of the budget for raw inputs and the other candidates take ids:
        ``frequency`` then runs as a raw candidate, its keys counted per kept id (module docstring).
    """

    name = "auto"
    delegates = True
    tasks = ("ctr", "topk")

    def __init__(self, *, methods: list[str] | None = None, time_limit_s: float | None = None,
                 epochs: int | None = None, seed: int = 0, candidate_params: dict[str, dict[str, Any]] | None = None,
                 max_loss: float | None = DEFAULT_MAX_LOSS, allow_input_change: bool = False,
                 latency_p99_ms: float | None = None, latency_batch: int = 1, latency_threads: int = 1,
                 tie_tolerance: float = DEFAULT_TIE_TOLERANCE, latency_runs: int = 50, progress: bool = False,
                 full_val: dict[str, Any] | None = None, raw_vocabulary: Any = None) -> None:
        self.methods = methods
        self.time_limit_s = time_limit_s
        self.epochs = epochs
        self.seed = seed
        self.candidate_params = candidate_params
        self.max_loss = max_loss
        self.allow_input_change = allow_input_change
        self.latency_p99_ms = latency_p99_ms
        self.latency_batch = latency_batch
        self.latency_threads = latency_threads
        self.tie_tolerance = tie_tolerance
        self.latency_runs = latency_runs
        self.progress = progress
        self.full_val = full_val
        self.raw_vocabulary = raw_vocabulary

    def get_params(self) -> dict[str, Any]:
        """The settings, without ``full_val`` (a measurement handed over by the caller, not a setting:
        its seconds would make the artefact's recorded search parameters differ run to run) and
        ``raw_vocabulary`` (the data's encoder, handed over by ``compress`` per target)."""
        params = super().get_params()
        params.pop("full_val", None)
        params.pop("raw_vocabulary", None)
        return params

    def _say(self, text: str) -> None:
        if self.progress:
            sys.stderr.write(f"  auto {text}\n")
            sys.stderr.flush()

    def _search(self, ctx: SearchContext) -> SearchResult:
        if self.time_limit_s is not None and self.time_limit_s <= 0:
            raise BadInputError(f"--time-limit must be > 0 seconds, got {self.time_limit_s}")
        if self.max_loss is not None and not 0 <= self.max_loss < 1:
            raise BadInputError(f"--max-loss must be in [0, 1) (a fraction: 0.02 = 2 %), got {self.max_loss}")
        names = candidate_methods(ctx.task, self.methods)
        if not names:
            raise BadInputError(f"no candidate method applies to {ctx.task} models")
        raw = self.raw_vocabulary if ctx.task == "ctr" else None
        if raw is not None and self.methods is None:
            names.append(RAW_CANDIDATE)
        started = time.perf_counter()
        limit_at = None if self.time_limit_s is None else time.monotonic() + self.time_limit_s
        store = _CandidateStore(ctx.state_dir) if ctx.state_dir is not None else None
        probe = store.probe() if store is not None else None
        if probe is None:
            probe = _probe(ctx, self.seed, self.full_val)
            if store is not None:
                store.save_probe(probe)
        searchers: dict[str, Searcher] = {}
        candidates: list[dict[str, Any]] = []
        # each candidate is measured as the outer fit loop measures (an .ort profile: the .ort bytes)
        measure = {"measure": ctx.accountant.measure} if ctx.accountant.measure is not None else {}
        for method in names:
            searchers[method] = make_searcher(method, shared={"epochs": self.epochs, "seed": self.seed},
                                              **method_params(self.candidate_params or {}, method))
        export_s = 0.05 + probe["val_s"]  # refined by the first measured candidate
        expected = {m: probe["val_s"] * (1.0 + s.expected_validation_passes(ctx.ckpt, ctx.data))
                    + (0.0 if m in _NO_RETRAIN else _epochs_of(s) * (probe["epoch_s"] + probe["val_s"]))
                    for m, s in searchers.items()}
        order = sorted(names, key=lambda m: (expected[m], names.index(m)))  # stable: ties keep the listed order
        metric_name = None
        correction: list[float] = []
        for position, method in enumerate(order):
            if store is not None and (kept := store.candidate(position, method)) is not None:
                entry, kept_ratio, elapsed_s = kept  # finished by an interrupted run (compress --resume)
                candidates.append(entry)
                if kept_ratio is not None:
                    correction.append(kept_ratio)
                if entry.get("metric"):
                    metric_name = metric_name or entry["metric"]
                started = time.perf_counter() - elapsed_s  # its time counts against the limit
                if self.time_limit_s is not None:
                    limit_at = time.monotonic() + self.time_limit_s - elapsed_s
                self._say(f"{method}: {entry['outcome']} (kept from the interrupted run)")
                continue
            elapsed = time.perf_counter() - started
            ratio = sorted(correction)[len(correction) // 2] if correction else 1.0
            exp_s = (expected[method] + export_s) * ratio
            base = {"method": method, "expected_s": round(exp_s, 3), "started_s": round(elapsed, 3)}
            if method.partition("+")[0] in INPUT_CHANGING and not self.allow_input_change:
                candidates.append({**base, "outcome": "skipped: changes the inputs (--allow-input-change tries it)"})
                self._keep(store, position, candidates[-1], None, started)
                continue
            if limit_at is not None:
                left = limit_at - time.monotonic()
                answered = any("_result" in c for c in candidates)  # until one gave a model, keep starting
                if answered and (left <= 0 or exp_s > left):
                    candidates.append({**base, "outcome": "skipped: time limit", "time_left_s": round(max(left, 0.0), 3)})
                    self._say(f"{method}: skipped, expected {exp_s:.1f}s > {max(left, 0.0):.1f}s left")
                    self._keep(store, position, candidates[-1], None, started)
                    continue
            self._say(f"{method}: start at {elapsed:.1f}s (expected {exp_s:.1f}s)")
            crash_point("auto.candidate.start")
            t0 = time.perf_counter()
            try:
                # Training stops early enough for the stopped candidate's wrap-up (its validation pass,
                # the fit loop's export, the latency timing) to end by the limit.
                train_at = None if limit_at is None else limit_at - (probe["val_s"] + 2.0)
                left = None if train_at is None else (lambda at=train_at: at - time.monotonic())
                with deadline(train_at), progress_bar(f"  auto {method}", enabled=None if self.progress else False,
                                                      time_left=left):
                    as_raw = {"vocabulary": raw} if raw is not None and method == RAW_CANDIDATE else {}
                    result, file_bytes, attempts = search_fitting(searchers[method], ctx.ckpt, ctx.data, ctx.budget_bytes,
                                                                   ctx.accountant.graph_overhead_bytes, ctx.work_dir,
                                                                   mlp=ctx.mlp, **measure, **as_raw)
                    if as_raw:
                        result.inputs = "raw"
            except BudgetTooSmallError as err:
                candidates.append({**base, "outcome": "does not fit", "minimum_bytes": err.minimum_bytes,
                                   "minimum_parts": err.parts, "message": str(err), "seconds": time.perf_counter() - t0})
                self._say(f"{method}: does not fit ({time.perf_counter() - started:.1f}s)")
                self._keep(store, position, candidates[-1], None, started)
                continue
            except OndeviceError as err:
                candidates.append({**base, "outcome": f"failed: {type(err).__name__}", "message": str(err),
                                   "seconds": time.perf_counter() - t0})
                self._say(f"{method}: failed, {err}")
                self._keep(store, position, candidates[-1], None, started)
                continue
            seconds = time.perf_counter() - t0
            stopped = train_at is not None and time.monotonic() > train_at
            ratio_now = None
            if not stopped and expected[method] > 0:
                ratio_now = seconds / (expected[method] + export_s)
                correction.append(ratio_now)
            metric_name = metric_name or result.metric
            full = float(probe["full_val"][result.metric])
            loss = relative_loss(full, result.val_metric)
            entry: dict[str, Any] = {**base, "val_metric": result.val_metric, "metric": result.metric, "val": result.val,
                                     "loss": loss, "file_bytes": file_bytes, "seconds": seconds,
                                     "fit_attempts": len(attempts), "config": result.config, "_result": result,
                                     **({"inputs": result.inputs} if result.inputs else {})}
            if stopped:
                entry["stopped_at_limit"] = True
            if result.schema is not None and not self.allow_input_change:
                entry["outcome"] = "rejected: changes the inputs (--allow-input-change allows it)"
            elif file_bytes > ctx.budget_bytes:
                entry["outcome"] = "over budget after export"
            elif self.max_loss is not None and loss > self.max_loss:
                entry["outcome"] = f"below quality floor ({loss:.1%} > {self.max_loss:.1%} loss)"
            else:
                entry["outcome"] = "fits"
            if entry["outcome"] == "fits" or entry["outcome"].startswith("below"):
                lat = candidate_latency(result.model, batch=self.latency_batch, threads=self.latency_threads,
                                        runs=self.latency_runs, seed=self.seed)
                entry.update({"p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"], "latency_batch": self.latency_batch,
                              "latency_threads": self.latency_threads})
                if (entry["outcome"] == "fits" and self.latency_p99_ms is not None
                        and lat["p99_ms"] > self.latency_p99_ms):
                    entry["outcome"] = (f"rejected: p99 {lat['p99_ms']:.3f} ms > target {self.latency_p99_ms:g} ms "
                                        f"(batch {self.latency_batch}, {self.latency_threads} thread(s))")
            candidates.append(entry)
            p99 = f", p99 {entry['p99_ms']:.3f} ms" if "p99_ms" in entry else ""
            self._say(f"{method}: {entry['outcome']} at {time.perf_counter() - started:.1f}s ({seconds:.1f}s), "
                      f"val {result.metric} {result.val_metric:.4f} ({-loss:+.2%}), {file_bytes:,} B{p99}"
                      + (", stopped at the time limit" if stopped else ""))
            self._keep(store, position, entry, ratio_now, started)
        return self._choose(ctx, candidates, probe, started)

    @staticmethod
    def _keep(store: _CandidateStore | None, position: int, entry: dict[str, Any], ratio: float | None,
              started: float) -> None:
        """Record a finished candidate (``compress --resume`` continues after it)."""
        if store is not None:
            store.save_candidate(position, entry, ratio, time.perf_counter() - started)
            crash_point("auto.candidate.done")

    def _choose(self, ctx: SearchContext, candidates: list[dict[str, Any]], probe: dict[str, Any],
                started: float) -> SearchResult:
        ok = [c for c in candidates if c.get("outcome") == "fits"]
        if self.raw_vocabulary is not None and any(c.get("inputs") == "raw" for c in ok):
            # The budget covers what the app ships: an id candidate's app also ships schema.json.
            for c in ok:
                if c.get("inputs") != "raw":
                    c["outcome"] = "fits the file, not the app payload (+ schema.json); a raw candidate fits both"
            ok = [c for c in ok if c.get("inputs") == "raw"]
        measured = [c for c in candidates if "_result" in c]
        if not ok:
            for c in measured:
                c.pop("_result")
            slow = [c for c in candidates if str(c.get("outcome", "")).startswith("rejected: p99")]
            if slow:
                from ondevice.errors import LatencyTargetError

                fast = min(slow, key=lambda c: c["p99_ms"])
                raise LatencyTargetError(
                    f"no candidate auto tried at {ctx.budget_bytes:,} B meets the p99 target of {self.latency_p99_ms:g} ms "
                    f"(batch {self.latency_batch}, {self.latency_threads} thread(s)) within the quality floor: the fastest, "
                    f"{fast['method']}, takes {fast['p99_ms']:.3f} ms")
            floor = [c for c in candidates if str(c.get("outcome", "")).startswith("below quality floor")]
            if floor:
                best = max(floor, key=lambda c: c["val_metric"])
                full = probe["full_val"][best["metric"]]
                raise QualityFloorError(
                    f"no candidate auto tried at {ctx.budget_bytes:,} B keeps val {best['metric']} within --max-loss "
                    f"{self.max_loss:.1%} of the full model's {full:.4f}: the best, {best['method']}, reaches "
                    f"{best['val_metric']:.4f} ({best['loss']:.1%} loss)",
                    best_method=best["method"], best_loss=best["loss"], budget_bytes=ctx.budget_bytes,
                    candidates=[{k: v for k, v in c.items() if k not in ("_result", "config")} for c in candidates])
            minimums = [c for c in candidates if c.get("minimum_bytes") is not None]
            if minimums and not measured:
                need = min(minimums, key=lambda c: c["minimum_bytes"])
                parts = need.get("minimum_parts")
                raise BudgetTooSmallError(
                    f"no method auto tried fits the budget of {ctx.budget_bytes:,} B; the smallest model any of them "
                    f"can build is {need['minimum_bytes']:,} B ({need['method']}"
                    + (f": {itemise_bytes(parts)}" if parts else "") + "); raise the budget",
                    minimum_bytes=need["minimum_bytes"], parts=parts)
            reasons = "; ".join(f"{c['method']}: {c.get('message', c['outcome'])}" for c in candidates)
            raise BadInputError(f"auto found no candidate to choose at {ctx.budget_bytes:,} B ({reasons[:400]})")
        best = max(ok, key=lambda c: c["val_metric"])  # the first of equals: the run order
        tied = [c for c in ok if c is not best and relative_loss(best["val_metric"], c["val_metric"]) <= self.tie_tolerance]
        faster = [c for c in tied if c.get("p50_ms") is not None and best.get("p50_ms") is not None
                  and c["p50_ms"] < TIE_SPEEDUP * best["p50_ms"]]
        if faster:  # a near-tie goes to a clearly faster artefact (module docstring)
            fastest = min(faster, key=lambda c: c["p50_ms"])
            fastest["chosen_by"] = (f"near-tie with {best['method']} (val within {self.tie_tolerance:.1%}), "
                                    f"p50 {fastest['p50_ms']:.3f} vs {best['p50_ms']:.3f} ms")
            best = fastest
        result: SearchResult = best["_result"]
        for c in measured:
            c.pop("_result")
        for c in candidates:
            c["chosen"] = c is best
        result.config = make_config("AutoConfig", {"chosen": best["method"], "config": result.config,
                                                   "candidates": [c["method"] for c in candidates]})
        result.trace = [{"auto": candidates, "probe": {k: v for k, v in probe.items() if k != "full_val"},
                         "full_val": probe["full_val"]}, *result.trace]
        result.candidates = candidates
        result.timings = {**result.timings, "auto_total_s": time.perf_counter() - started}
        return result
