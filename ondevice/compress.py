"""``compress``: search -> retrain -> export -> verify -> profile, per budget × method.

For every byte budget (``--budget 2MB``) or device profile (its ``memory_budget``) and every
method (``--method sseds``, ``sseds+int8``...), the searcher builds and retrains a compressed
model that fits, ``export_artefact`` writes and checks it (file bytes <= budget, golden
parity), ``verify_artefact`` re-checks it on fresh inputs and ``profile_artefact`` measures it
with a small run count. Output, written atomically (temp folder + rename)::

    OUT/<budget-or-device>[-<method>]/   an artefact folder (manifest.json, model.onnx, ...)
                                         + search.json (searcher params, config, trace)
    OUT/summary.json, summary.md         every run: val metric, file bytes, timings, failures
    OUT/summary.png                      val metric vs artefact bytes (when matplotlib is there)
    OUT/fleet.json, fleet.md             with ``fleet=DIR``: one row per device profile of DIR
                                         (bytes, metric, p50/p99 at the profile's batch and
                                         threads against its target, pass/fail)
    RUN_DIR/_cache/rule/                 beside the run, not in OUT: RULE's elastic model, estimator
                                         and deployed configurations, reused by later calls

Top-K (BPR-MF) runs use the methods that support them (``rule``, ``uniform``, ``int8``,
``fp16``) and report validation Recall@K (the run's ``k``, full ranking excluding training
items); the artefact holds the item table only.

Fleet: a latency target is judged only when this machine has the profile's architecture
(an x86-64 host cannot judge an arm64 phone): elsewhere the report says "not measured on
target arch" and the row passes on bytes and parity alone; a judged miss is a failure.
Every arm64 profile's artefact is also run by the device runner on an emulated ARM core
(``qemu-aarch64 -cpu`` the profile's ``emulated_cpu``, default ``neoverse-n1``) and compared
with the x86 outputs (``ondevice.arm64``): a difference beyond the tolerance fails the row
(exit 3). Without ``ondevice arm64 setup`` the row says "not checked" (it does not fail, and
the report and log say so). Emulated timings are never reported as latency.

The folder suffix ``-<method>`` is added when more than one method runs. The full model's
validation metric and exported bytes are in the summary for reference. Searchers, and every
choice (``auto``'s included), see the train and validation splits only; after all choices,
each artefact's ``model.onnx`` is evaluated once on the test split with onnxruntime
(``ondevice.evaluate``) and reported in its own column.

Quality floor (``max_loss``): ``auto`` never chooses a candidate whose validation metric is
more than ``max_loss`` (default 2 %) below the full model's, relatively; when none is within
it, the run fails with exit 3 and one line naming the best candidate, its loss and the
smallest budget of this call at which the floor was met. A named ``--method`` is held to the
floor only when ``--max-loss`` is given. Inputs: ``summary.md``, the CLI and the manifest's
``input_contract`` say in words when an artefact takes other inputs than the full model.

Resume (``resume=True``, ``--resume``): the work goes to ``OUT.partial`` under the lock on
``OUT``; each finished (target, method) records its summary rows in ``OUT.partial/_resume/``
(its artefact folder is already in place), and ``auto`` records each finished candidate there
(its result with weights, and the probe that fixed the run order). A run that stops (SIGKILL,
Ctrl-C, an error) leaves ``OUT.partial``; ``--resume`` checks that the targets, methods, every
option that shapes the result, the run's ``model.pt`` (sha256) and the data (schema, rows,
content hash) are the ones recorded, refusing with one line naming the first difference, then
skips what was finished, redoes a half-written folder and continues. The searchers are seeded,
so the result equals an uninterrupted run's: the same ``model.onnx``, ``reference_model.pt``
and metrics (timings and the manifest's timestamps aside; ``tests/test_compress_resume.py``).
With ``--time-limit``, the time the interrupted run spent on an ``auto`` search counts against
the limit. A run without ``--resume`` refuses to discard ``OUT.partial`` unless ``--force``.

Every failure is listed in the summary; the output folder is kept for the runs that
succeeded and the call then raises the failure (one-line message, exit 2 for a budget
below what the method can build, 3 for a broken promise such as an artefact over budget).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ondevice.budget import DeviceProfile, format_bytes, load_profile, parse_budget
from ondevice.data import EncodedDataset
from ondevice.errors import (
    BadInputError,
    BrokenPromiseError,
    BudgetTooSmallError,
    LatencyTargetError,
    OndeviceError,
    ParityError,
    QualityFloorError,
    RuntimeMemoryError,
)
from ondevice.io import (
    atomic_write_json,
    atomic_write_text,
    safe_child,
)
from ondevice.models import BPRMF, RecModel
from ondevice.outputs import RESUME_DIR, check_output, crash_point, resumable_output_dir
from ondevice.search import ByteAccountant, make_searcher
from ondevice.search.auto import DEFAULT_MAX_LOSS, relative_loss
from ondevice.search.base import (
    FORMAT_MARGIN_BYTES,
    MLP_OPTIONS,
    SearchResult,
    check_method_options,
    method_params,
)
from ondevice.search.retrain import topk_metric_name, val_metrics
from ondevice.train.checkpoint import Checkpoint, load_checkpoint, run_data

__all__ = ["compress", "fleet_profiles_in", "parse_duration", "fleet_report", "measure_file_bytes", "render_fleet_markdown",
           "resume_options"]

MAX_FIT_RETRIES = 2


def measure_file_bytes(model: RecModel) -> tuple[int, int]:
    """(ONNX file bytes, parameter bytes) of ``model`` exported as ``export_artefact`` does."""
    from ondevice.export.lowering import export_module
    from ondevice.export.manifest import storage_report
    from ondevice.export.onnx_export import deployable_model, export_onnx

    deployed = deployable_model(model)
    module, io = export_module(deployed)
    if isinstance(deployed, BPRMF):  # top-K: the input is the user's vector
        example = torch.zeros(2, deployed.embed_dim)
    else:
        example = torch.zeros(2, deployed.embedding.num_fields, dtype=torch.int64)  # type: ignore[union-attr]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(module, io, example, path)
        return path.stat().st_size, int(storage_report(module)["parameter_bytes"])


ROUNDS = 3  # candidate_latency: rounds of timed calls; p99 is the median of the rounds' p99s


def candidate_latency(model: RecModel, *, batch: int = 1, threads: int = 1, runs: int = 50,
                      seed: int = 0) -> dict[str, float]:
    """onnxruntime p50/p99 (ms) of ``model`` exported as ``export_artefact`` does, on this machine.

    Inputs as the profiler draws them (valid ids / unit-scale user vectors); ``min(10, runs)``
    warm-up calls, then ``ROUNDS`` rounds of ``runs`` timed calls, in this process (``auto``
    compares candidates). p99 is the median of the rounds' p99s: one scheduler stall on a busy
    machine (seen: 4-12 ms next to a 0.02 ms p50) must not reject a candidate against a target.
    """
    import numpy as np

    from ondevice.export._runner import runner_module
    from ondevice.export.lowering import export_module
    from ondevice.export.onnx_export import deployable_model, export_onnx

    runner = runner_module()
    deployed = deployable_model(model)
    module, io = export_module(deployed)
    rng = np.random.default_rng([seed, batch])
    if isinstance(deployed, BPRMF):
        x = rng.normal(size=(batch, deployed.embed_dim)).astype(np.float32)
    else:
        vocab = np.asarray(deployed.embedding.vocab_sizes)  # type: ignore[union-attr]
        x = (rng.random((batch, len(vocab))) * vocab).astype(np.int64)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(module, io, torch.from_numpy(x[:2] if len(x) >= 2 else x), path)
        session = runner.make_session(path, threads)
        feeds = {io["inputs"][0]["name"]: x}
        rounds = [runner.time_calls(lambda: session.run(None, feeds), runs, min(10, runs) if r == 0 else 0)
                  for r in range(ROUNDS)]
    p99s = sorted(runner.latency_stats(samples, batch)["p99_ms"] for samples in rounds)
    stats = runner.latency_stats([t for samples in rounds for t in samples], batch)
    return {"p50_ms": stats["p50_ms"], "p99_ms": p99s[len(p99s) // 2], "batch": batch, "threads": threads,
            "runs": runs * ROUNDS}


def resume_options(out_dir: str | Path, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``compress`` arguments the interrupted run into ``out_dir`` was started with, ``given``
    on top (``compress(resume=True)`` then refuses any that changes the result)."""
    from ondevice.outputs import partial_options

    options = partial_options(out_dir, "compress")
    return {**options, **(given or {})}


def parse_max_loss(text: str | float | None) -> float | None:
    """``2%`` / ``0.02`` -> 0.02; ``off`` / ``none`` -> ``None`` (no quality floor)."""
    if text is None or isinstance(text, float | int) and not isinstance(text, bool):
        value = None if text is None else float(text)
    else:
        raw = str(text).strip().lower()
        if raw in ("off", "none"):
            return None
        try:
            value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
        except ValueError:
            value = float("nan")
    if value is not None and not 0 <= value < 1:
        raise BadInputError(f"cannot use --max-loss {text!r}: give a relative loss in [0, 1) such as 2% or 0.02, or off")
    return value


_DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_duration(text: str | float | int) -> float:
    """``600``, ``90s``, ``10m``, ``1.5h`` -> seconds (> 0); a one-line error otherwise."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        raw = str(text).strip().lower()
        num = raw.rstrip("abcdefghijklmnopqrstuvwxyz ")
        unit = raw[len(num):].strip()
        try:
            value = float(num)
        except ValueError:
            value, unit = float("nan"), "?"
    if unit not in _DURATION_UNITS or not (value > 0) or value == float("inf"):
        raise BadInputError(f"cannot read the duration {text!r}; use seconds or a unit: 600, 90s, 10m, 1.5h")
    return value * _DURATION_UNITS[unit]


def _log(quiet: bool, text: str) -> None:
    if not quiet:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


def _targets(budgets: Sequence[str | int], device_profiles: Sequence[str | Path | DeviceProfile]):
    out: list[tuple[str, int, DeviceProfile | None, str | int | None]] = []
    for b in budgets:
        out.append((str(b), parse_budget(b), None, b))
    for p in device_profiles:
        dev = p if isinstance(p, DeviceProfile) else load_profile(p)
        out.append((dev.name, dev.memory_budget, dev, None))
    labels = [t[0] for t in out]
    if len(set(labels)) != len(labels):
        raise BadInputError(f"budgets/profiles repeat a name ({', '.join(labels)}); give each once")
    return out


def _search_fitting(searcher, ckpt: Checkpoint, data: EncodedDataset, budget: int,
                    overhead: int, work_dir: Path | None = None,
                    mlp: str = "fp32", state_dir: Path | None = None) -> tuple[SearchResult, int, list[dict[str, Any]]]:
    """Search, then measure the exported bytes; tighten the margin and retry if over.

    ``state_dir``: where a delegating searcher (``auto``) keeps finished candidates, one
    sub-folder per margin tried (``compress --resume``).
    """
    margin, attempts = FORMAT_MARGIN_BYTES, []
    for attempt in range(MAX_FIT_RETRIES + 1):
        acc = ByteAccountant(graph_overhead_bytes=overhead, margin_bytes=margin)
        state = state_dir / f"margin-{margin}" if state_dir is not None and searcher.delegates else None
        result = searcher.search(ckpt, data, budget, accountant=acc, work_dir=work_dir, mlp=mlp, state_dir=state)
        file_bytes, _ = measure_file_bytes(result.model)
        attempts.append({"attempt": attempt, "margin_bytes": margin, "file_bytes": file_bytes})
        if file_bytes <= budget:
            return result, file_bytes, attempts
        margin += file_bytes - budget + 1024
    return result, file_bytes, attempts  # export_artefact will refuse it (exit 3)


def _for_target(searcher, dev: DeviceProfile | None, latency_p99_ms: float | None, time_limit_s: float | None,
                reserve_s: float):
    """A fresh searcher for one target; ``auto`` gets the target's latency goal and its search time.

    A device profile's p99 target is given to ``auto`` only on a machine of the profile's
    architecture (elsewhere it cannot be judged, as in ``profile``); ``latency_p99_ms`` is the
    target of plain budgets at batch 1, one thread. The search time is the limit minus
    ``reserve_s`` for the export, verify, profile and test evaluation that follow.
    """
    if searcher.name != "auto":
        return searcher.clone()
    over: dict[str, Any] = {}
    if time_limit_s is not None:
        over["time_limit_s"] = max(time_limit_s - reserve_s, 0.5 * time_limit_s)
    if dev is not None:
        import platform

        from ondevice.export._runner import runner_module

        over.update(latency_batch=dev.batch_size, latency_threads=dev.threads)
        if runner_module().normalise_arch(platform.machine()) == dev.arch:
            over["latency_p99_ms"] = dev.p99_latency_ms
    elif latency_p99_ms is not None:
        over.update(latency_p99_ms=latency_p99_ms, latency_batch=1, latency_threads=1)
    return searcher.clone(**over)


def _full_test(model: RecModel, data: EncodedDataset, k: int) -> dict[str, float]:
    """The full model's test metrics (PyTorch; the reference row of the summary)."""
    from ondevice.search.retrain import topk_pairs
    from ondevice.train import evaluate_ctr, evaluate_topk

    model = copy.deepcopy(model).eval()
    if isinstance(model, BPRMF):
        excluded = [topk_pairs(data, "train")] + ([topk_pairs(data, "val")] if data.has_split("val") else [])
        return evaluate_topk(model, topk_pairs(data, "test"), excluded, k=k)
    s = data.split("test")
    return evaluate_ctr(model, s.ids, s.labels)


def _explain_floor_failures(failures: list[dict[str, Any]], errors: list[OndeviceError], runs: list[dict[str, Any]],
                            floor: float | None) -> None:
    """Add to each quality-floor failure the smallest budget of this run at which the floor was met."""
    met = sorted((r["budget_bytes"], r["target"], r["method"]) for r in runs
                 if not r.get("below_floor") and r.get("loss") is not None and floor is not None and r["loss"] <= floor)
    for i, err in enumerate(errors):
        if not isinstance(err, QualityFloorError):
            continue
        if met:
            nbytes, target, method = met[0]
            tail = f"; the floor was met at {target} ({nbytes:,} B, {method})"
        else:
            tail = "; no budget of this run met it: raise the budget or --max-loss"
        new = QualityFloorError(str(err) + tail, best_method=err.best_method, best_loss=err.best_loss,
                                budget_bytes=err.budget_bytes)
        for f in failures:
            if f["message"] == str(err):
                f["message"] = str(new)
        errors[i] = new


def _mlp_for(mlp: str, dev: DeviceProfile | None) -> str:
    """The ``--mlp`` option for one target: ``.ort`` targets store fp32 dense layers."""
    if dev is None or dev.runtime_format != "ort":
        return mlp
    if mlp == "int8":
        raise BadInputError(f"--mlp int8 cannot shrink the .ort artefact of {dev.name} (onnxruntime's converter folds "
                            "the int8 weights back to fp32); use --mlp auto or fp32, or an onnx-format profile")
    return "fp32"


def _params_of(method: str, options: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A method's settings from per-method options; ``auto`` also hands the other methods'
    options to its candidates (``candidate_params``), unless it was given its own."""
    params = method_params(options, method)
    others = {k: v for k, v in options.items() if k != "auto"}
    if method == "auto" and others and "candidate_params" not in params:
        params["candidate_params"] = others
    return params


def compress(
    run_dir: str | Path,
    *,
    budgets: Sequence[str | int] = (),
    device_profiles: Sequence[str | Path | DeviceProfile] = (),
    methods: Sequence[str] = ("auto",),
    out_dir: str | Path,
    force: bool = False,
    epochs: int | None = None,
    seed: int = 0,
    data_dir: str | Path | None = None,
    searcher_params: dict[str, dict[str, Any]] | None = None,
    profile_runs: int = 20,
    profile: bool = True,
    plot: bool = True,
    quiet: bool = False,
    fleet: str | Path | None = None,
    time_limit_s: float | None = None,
    mlp: str = "auto",
    max_loss: float | str | None = "default",
    allow_input_change: bool = False,
    latency_p99_ms: float | None = None,
    evaluate_test: bool = True,
    resume: bool = False,
    inputs: str | None = None,
) -> dict[str, Any]:
    """Compress the run at ``run_dir`` for every budget/device × method; returns the summary.

    ``searcher_params`` maps a method name to extra searcher settings (e.g.
    ``{"pep": {"threshold_init": -4}}``); ``epochs``/``seed`` go to every searcher that takes them.
    ``fleet``: a folder of device profiles (``*.toml``); every one becomes a target and
    ``fleet.json``/``fleet.md`` report the fleet (module docstring). ``time_limit_s``: the
    ``auto`` method's wall-clock limit per budget (its candidates are in the summary).
    ``mlp``: how CTR models' dense layers are stored, ``auto`` | ``fp32`` | ``int8``
    (``search.base``); ``.ort`` targets get ``fp32`` (onnxruntime's converter folds int8
    weights back to fp32, so the file would not shrink).
    ``max_loss``: quality floor, relative validation-metric loss vs the full model (``0.02``,
    ``"2%"``); ``"default"``: :data:`~ondevice.search.auto.DEFAULT_MAX_LOSS` for ``auto`` and no
    floor for a named method; ``None``/``"off"``: none. A run beyond it fails (exit 3); auto never
    chooses such a candidate. ``allow_input_change``: let ``auto`` try methods that change the
    artefact's inputs (feature selection). ``latency_p99_ms``: a p99 target (batch 1, one
    thread) for plain budgets; device profiles bring their own (judged on their architecture).
    ``evaluate_test``: after every choice, evaluate each artefact's ``model.onnx`` once on the
    test split with onnxruntime (``ondevice.evaluate``).
    ``resume``: continue the interrupted run in ``OUT.partial`` (module docstring, "Resume").
    ``inputs``: the artefacts' inputs (``export_artefact``; default raw for CTR): a raw artefact
    carries its vocabulary, whose bytes are reserved from each budget before the search.
    """
    run_dir = Path(run_dir)
    fleet_profiles: list[DeviceProfile] = []
    if fleet is not None:
        fleet_profiles = fleet_profiles_in(fleet)
    targets = _targets(budgets, [*device_profiles, *fleet_profiles])
    if not targets:
        raise BadInputError("give at least one --budget (e.g. 2MB) or --device-profile")
    if not methods:
        raise BadInputError("give at least one --method")
    if len(set(methods)) != len(methods):
        raise BadInputError(f"--method repeats a name: {', '.join(methods)}")
    extra = searcher_params or {}
    if mlp not in MLP_OPTIONS:
        raise BadInputError(f"--mlp must be one of {', '.join(MLP_OPTIONS)}; got {mlp!r}")
    if time_limit_s is not None and "auto" not in methods:
        raise BadInputError("--time-limit applies to --method auto only; drop it or add --method auto")
    floor_given = max_loss != "default"
    floor = parse_max_loss(max_loss) if floor_given else DEFAULT_MAX_LOSS
    shared = {"epochs": epochs, "seed": seed, "time_limit_s": time_limit_s, "max_loss": floor,
              "allow_input_change": allow_input_change, "progress": not quiet}
    check_method_options(extra)
    searchers = {m: make_searcher(m, shared=shared, **_params_of(m, extra)) for m in methods}
    if "auto" in searchers and floor is None:  # make_searcher drops None settings: --max-loss off must reach auto
        searchers["auto"] = searchers["auto"].clone(max_loss=None)
    if profile_runs < 1:
        raise BadInputError(f"profile runs must be >= 1, got {profile_runs}")
    out_dir = Path(out_dir)
    check_output(out_dir, kind="compress", inputs=[run_dir, data_dir], force=force or resume)
    ckpt = load_checkpoint(run_dir)
    data = run_data(run_dir, data_dir)
    if data.schema.fingerprint() != ckpt.schema.fingerprint():
        raise BadInputError(f"the data in {data.root} is not the data {run_dir} was trained on (schema fingerprint differs)")
    identity = data.identity()
    settings = {  # what shapes the result: --resume continues only with the same (module docstring)
        "targets": [[t[0], t[1], t[2].to_dict() if t[2] is not None else None] for t in targets],
        "methods": list(methods), "epochs": epochs, "seed": seed, "method_options": extra, "mlp": mlp,
        "max_loss": [floor, floor_given], "allow_input_change": allow_input_change, "time_limit_s": time_limit_s,
        "latency_p99_ms": latency_p99_ms, "profile_runs": profile_runs if profile else None, "plot": plot,
        "evaluate_test": evaluate_test, "fleet": fleet is not None, "model_sha256": _file_sha256(ckpt.path),
        "data_schema": identity["schema_fingerprint"], "data_rows": identity["rows"],
        "data_content_sha256": identity["content_sha256"], "inputs": inputs,
    }
    options = {"budgets": [str(b) for b in budgets], "device_profiles": [p.name if isinstance(p, DeviceProfile) else str(p)
                                                                        for p in device_profiles],
               "fleet": str(fleet) if fleet is not None else None, "methods": list(methods), "epochs": epochs,
               "seed": seed, "data_dir": str(data_dir) if data_dir is not None else None, "searcher_params": extra,
               "profile_runs": profile_runs, "time_limit_s": time_limit_s, "mlp": mlp, "max_loss": max_loss,
               "allow_input_change": allow_input_change, "latency_p99_ms": latency_p99_ms, "inputs": inputs}

    from ondevice.evaluate import evaluate_artefact
    from ondevice.export import export_artefact, profile_artefact, verify_artefact
    from ondevice.export.onnx_export import resolve_inputs
    from ondevice.export.raw import raw_encoder_bytes, with_vocabulary

    started = time.time()
    t_export = time.perf_counter()
    full_file, full_params = measure_file_bytes(ckpt.model)
    export_cost_s = time.perf_counter() - t_export
    overhead = full_file - full_params
    reserve = raw_encoder_bytes(ckpt.schema) if resolve_inputs(inputs, ckpt.model) == "raw" else 0  # vocabulary in the file
    k = int(ckpt.train_config.get("k", 20) or 20)
    full_metric = topk_metric_name(k) if isinstance(ckpt.model, BPRMF) else "auc"
    full_val = val_metrics(copy.deepcopy(ckpt.model), data, k=k)
    _log(quiet, f"full model: {format_bytes(full_file)}, val {_label(full_metric)} {full_val[full_metric]:.4f}")
    reserve_s = 0.0 if time_limit_s is None else min(0.25 * time_limit_s, 3 * export_cost_s + 4.0)
    runs: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    errors: list[OndeviceError] = []
    with resumable_output_dir(out_dir, kind="compress", settings=settings, inputs=[run_dir, data.root], force=force,
                              resume=resume, labels=_RESUME_LABELS, options=options) as tmp:
        kept = tmp / RESUME_DIR
        for label, nbytes, dev, budget_arg in targets:
            for method, searcher in searchers.items():
                name = label if len(searchers) == 1 else f"{label}-{method}"
                folder = safe_child(tmp, name.replace("+", "_"))
                record = kept / f"{folder.name}.json"
                if record.is_file():  # finished by the interrupted run (--resume)
                    done = json.loads(record.read_text())
                    runs.extend(done["runs"])
                    failures.extend(done["failures"])
                    errors.extend(_error_from_json(e) for e in done["errors"])
                    _log(quiet, f"[{name}] kept from the interrupted run")
                    continue
                if os.path.lexists(folder):  # half-written when the interrupted run stopped
                    shutil.rmtree(folder)
                before = (len(runs), len(failures), len(errors))
                crash_point("compress.entry.start")
                _log(quiet, f"[{name}] {method} at {format_bytes(nbytes)}: searching...")
                t0 = time.perf_counter()
                try:
                    try:
                        result, file_bytes, attempts = _search_fitting(
                            _for_target(searcher, dev, latency_p99_ms, time_limit_s, reserve_s), ckpt, data,
                            max(nbytes - reserve, 1), overhead, work_dir=tmp / "_cache", mlp=_mlp_for(mlp, dev),
                            state_dir=kept / f"{folder.name}.auto")
                    except BudgetTooSmallError as err:  # the minimum then includes the vocabulary the artefact ships
                        raise with_vocabulary(err, nbytes, reserve) if reserve else err from None
                    search_s = time.perf_counter() - t0
                    metrics = {"val": result.val, "selected_on": f"val {result.metric}", "method": method,
                               "search": {"config": result.config, "params": result.params}}
                    out_ckpt = Checkpoint(model=result.model, schema=result.schema or ckpt.schema, train_config=ckpt.train_config,
                                          metrics=metrics, path=ckpt.path)
                    t1 = time.perf_counter()
                    manifest = export_artefact(out_ckpt, folder, budget=budget_arg, profile=dev, inputs=inputs)
                    export_s = time.perf_counter() - t1
                    crash_point("compress.entry.exported")
                    verify = verify_artefact(folder, seed=seed)
                    prof = None
                    if profile:
                        prof = profile_artefact(folder, batches=(1, 256), threads=(1,), runs=profile_runs,
                                                warmup=min(10, profile_runs), seed=seed, torch_baseline=False, plot=False,
                                                enforce_target=not fleet_profiles)
                    atomic_write_json(folder / "search.json", {**result.to_dict(), "fit_attempts": attempts})
                except OndeviceError as err:
                    _log(quiet, f"[{name}] failed: {err}")
                    failures.append({"target": label, "method": method, "budget_bytes": nbytes,
                                     "error": type(err).__name__, "message": str(err), "exit_code": err.exit_code})
                    errors.append(err)
                    _keep_entry(record, runs, failures, errors, before)
                    continue
                b1 = next((r["onnxruntime"] for r in (prof or {}).get("results", []) if r["batch"] == 1), None)
                entry = {
                    "target": label, "device_profile": dev.name if dev else None, "budget_bytes": nbytes,
                    "method": method, "folder": folder.name, "file_bytes": manifest["files"]["model.onnx"]["bytes"],
                    "fits": manifest["budget"]["fits"], "val": result.val, "metric": result.metric,
                    "val_metric": result.val_metric, "config": result.config,
                    "timings": {**result.timings, "search_and_retrain_s": search_s, "export_s": export_s},
                    "verify_max_abs_diff": verify["max_abs_diff"], "p50_ms_batch1": b1["p50_ms"] if b1 else None,
                    "p99_ms_batch1": b1["p99_ms"] if b1 else None,
                    "loss": relative_loss(float(full_val[result.metric]), result.val_metric)
                    if result.metric in full_val else None,
                    "inputs": manifest.get("input_contract"), "wall_s": time.perf_counter() - t0,
                }
                if result.warnings:
                    entry["warnings"] = list(result.warnings)
                    for warning in result.warnings:
                        _log(False, f"[{name}] warning: {warning}")
                if floor is not None and (floor_given or method == "auto") and entry["loss"] is not None \
                        and entry["loss"] > floor:  # auto never chooses such a candidate; a named method may land here
                    entry["below_floor"] = True
                    err = QualityFloorError(f"{method} at {label} loses {entry['loss']:.1%} of the full model's val "
                                            f"{_label(result.metric)} ({result.val_metric:.4f} vs "
                                            f"{full_val[result.metric]:.4f}), beyond --max-loss {floor:.1%}",
                                            best_method=method, best_loss=entry["loss"], budget_bytes=nbytes)
                    failures.append({"target": label, "method": method, "budget_bytes": nbytes, "error": type(err).__name__,
                                     "message": str(err), "exit_code": err.exit_code})
                    errors.append(err)
                if result.candidates is not None:  # auto: every method it tried, the chosen one marked
                    entry["candidates"] = [{k: v for k, v in c.items() if k != "config"} for c in result.candidates]
                if fleet_profiles:
                    entry["verified"] = bool(verify.get("passed", True))
                    entry["latency"] = _latency_at_profile(prof, dev)
                    tgt = (prof or {}).get("target")
                    if tgt and tgt.get("checked") and tgt.get("passed") is False:
                        err = LatencyTargetError(f"p99 {tgt['p99_ms']:.3f} ms at batch {tgt['batch']} x {tgt['threads']} "
                                                 f"threads is over the {tgt['profile']} target of {tgt['p99_target_ms']} ms")
                        failures.append({"target": label, "method": method, "budget_bytes": nbytes,
                                         "error": type(err).__name__, "message": str(err), "exit_code": err.exit_code})
                        errors.append(err)
                    entry["required_operators"] = _required_operators_of(folder)
                    entry["runtime_memory"] = mem = (prof or {}).get("memory_target")
                    if mem and mem.get("passed") is False:
                        err = RuntimeMemoryError(f"a session adds {mem['runtime_bytes']:,} B of resident memory, over the "
                                                 f"{mem['profile']} memory_budget_runtime of {mem['budget_bytes']:,} B")
                        failures.append({"target": label, "method": method, "budget_bytes": nbytes,
                                         "error": type(err).__name__, "message": str(err), "exit_code": err.exit_code})
                        errors.append(err)
                    if dev is not None and dev.arch == "arm64":
                        entry["arm64_parity"] = parity = _fleet_arm64_parity(folder, dev, seed, quiet, name)
                        if parity["passed"] is False:
                            err = ParityError(f"arm64 parity on emulated {parity['cpu']}: {parity['reason']}",
                                              max_abs_diff=parity["max_abs_diff"], tolerance=parity.get("atol"))
                            failures.append({"target": label, "method": method, "budget_bytes": nbytes,
                                             "error": type(err).__name__, "message": str(err), "exit_code": err.exit_code})
                            errors.append(err)
                runs.append(entry)
                _keep_entry(record, runs, failures, errors, before)
                _log(quiet, f"[{name}] {format_bytes(entry['file_bytes'])} <= {format_bytes(nbytes)}, "
                            f"val {_label(result.metric)} {result.val_metric:.4f} ({search_s:.1f}s)"
                            + (f"; {entry['inputs']['text']}" if (entry["inputs"] or {}).get("changed") else ""))
        full_test = None
        if evaluate_test and data.has_split("test"):  # read once, after every choice was made on validation
            full_test = _full_test(ckpt.model, data, k)
            for entry in runs:
                entry["test"] = {**evaluate_artefact(tmp / entry["folder"], data, split="test"),
                                 "artefact": entry["folder"]}  # not the temporary path it was read from
                entry["test_metric"] = entry["test"].get(entry["metric"])
                _log(quiet, f"[{entry['folder']}] test {_label(entry['metric'])} {entry['test_metric']:.4f} "
                            "(onnxruntime, model.onnx)")
        _explain_floor_failures(failures, errors, runs, floor)
        summary = {
            "format": "ondevice-compress-summary",
            "run_dir": str(run_dir), "data_dir": str(data.root),
            "full_model": {"file_bytes": full_file, "parameter_bytes": full_params, "graph_overhead_bytes": overhead,
                           "val": full_val, "metric": full_metric, "test": full_test},
            "methods": {m: s.get_params() for m, s in searchers.items()}, "mlp": mlp,
            "max_loss": floor, "max_loss_applies_to": "every run" if floor_given else "auto",
            "time_limit_s": time_limit_s, "torch_threads": torch.get_num_threads(), "seed": seed,
            "runs": runs, "failures": failures, "seconds": time.time() - started,
        }
        summary["plot"] = _plot(summary, tmp / "summary.png") if plot and runs else None
        atomic_write_json(tmp / "summary.json", summary)
        atomic_write_text(tmp / "summary.md", render_summary_markdown(summary))
        if fleet_profiles:
            report = fleet_report(summary, fleet_profiles, fleet)
            summary["fleet"] = report
            atomic_write_json(tmp / "fleet.json", report)
            atomic_write_text(tmp / "fleet.md", render_fleet_markdown(report))
        crash_point("compress.summary")
    if errors:
        if len(errors) == 1:
            raise errors[0]
        msg = (f"{len(errors)} of {len(targets) * len(searchers)} runs failed (first: {errors[0]}); "
               f"see {out_dir / 'summary.md'}")
        if any(isinstance(e, BrokenPromiseError) for e in errors):
            raise BrokenPromiseError(msg)
        raise BadInputError(msg)
    return summary


#: How a ``--resume`` refusal names each recorded setting.
_RESUME_LABELS = {
    "targets": "the targets (--budget/--device-profile/--fleet: label, bytes, profile)", "methods": "--method",
    "epochs": "--epochs", "seed": "--seed", "method_options": "--method-option", "mlp": "--mlp",
    "max_loss": "--max-loss (floor, given)", "allow_input_change": "--allow-input-change",
    "time_limit_s": "--time-limit (s)", "latency_p99_ms": "--latency-p99", "profile_runs": "--profile-runs",
    "plot": "plot", "evaluate_test": "evaluate_test", "fleet": "--fleet", "model_sha256": "the run's model.pt (sha256)",
    "data_schema": "the data's schema fingerprint", "data_rows": "the data's rows per split",
    "data_content_sha256": "the data's content hash",
}


def _file_sha256(path: Path | None) -> str | None:
    if path is None:
        return None
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _keep_entry(record: Path, runs: list[dict[str, Any]], failures: list[dict[str, Any]], errors: list[OndeviceError],
                before: tuple[int, int, int]) -> None:
    """Record what one (target, method) added, so ``--resume`` skips it (written last, atomically)."""
    atomic_write_json(record, {"runs": runs[before[0]:], "failures": failures[before[1]:],
                               "errors": [_error_to_json(e) for e in errors[before[2]:]]})
    crash_point("compress.entry.done")


def _error_to_json(err: OndeviceError) -> dict[str, Any]:
    attrs = {k: v for k, v in vars(err).items() if v is None or isinstance(v, str | int | float)}
    return {"class": type(err).__name__, "message": str(err), "exit_code": err.exit_code, "attrs": attrs}


def _error_from_json(d: dict[str, Any]) -> OndeviceError:
    """The error a finished entry of an interrupted run raised (same class, message and details)."""
    from ondevice import errors as errors_mod

    cls = getattr(errors_mod, d["class"], None)
    if not (isinstance(cls, type) and issubclass(cls, OndeviceError)):
        cls = BrokenPromiseError if d.get("exit_code") == BrokenPromiseError.exit_code else BadInputError
    err = cls(d["message"])
    err.__dict__.update(d.get("attrs") or {})
    return err


def _label(metric: str) -> str:
    """``auc`` -> ``AUC`` (the CTR wording), ``recall@20`` stays."""
    return "AUC" if metric == "auc" else metric


def _stored_as(config: dict[str, Any]) -> str:
    """How the parts no method compresses were stored: ``MLP int8/2 200-200; first-order fp16``."""
    data = config.get("_data") or {}
    if "chosen" in data:  # auto: the chosen method's config
        data = (data.get("config") or {}).get("_data") or {}
    parts = []
    mlp = data.get("mlp")
    if mlp:
        parts.append(f"MLP {mlp}" + (f" {'-'.join(map(str, data['mlp_dims']))}" if data.get("mlp_dims") else ""))
    if data.get("first_order"):
        parts.append(f"first-order {data['first_order']}")
    return "; ".join(parts) or "—"


def _fmt(v: float | None, spec: str = ".4f") -> str:
    return "—" if v is None else format(v, spec)


def render_summary_markdown(s: dict[str, Any]) -> str:
    full = s["full_model"]
    metric = full.get("metric", "auc")
    label = _label(metric)
    full_test = (full.get("test") or {}).get(metric)
    floor = s.get("max_loss")
    floor_text = ("no quality floor" if floor is None else
                  f"quality floor: at most {floor:.1%} relative val loss vs the full model "
                  f"({'every run' if s.get('max_loss_applies_to') == 'every run' else 'auto'})")
    lines = [
        "# ondevice compress",
        "",
        f"Run `{s['run_dir']}`. Full model: {full['file_bytes']:,} B, val {label} {full['val'][metric]:.4f}"
        + (f", test {label} {full_test:.4f} (PyTorch)" if full_test is not None else "") + f"; {floor_text}. "
        "Every choice is made on the validation split; the test column is read once afterwards, by running each "
        "artefact's model.onnx with onnxruntime (`ondevice evaluate`).",
        "",
        f"| target | method | budget B | file B | × smaller | val {label} | loss vs full | test {label} | stored as | "
        "search+retrain s | p50 / p99 ms (b=1) | inputs | folder |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|---|",
    ]
    for r in s["runs"]:
        lat = f"{_fmt(r['p50_ms_batch1'], '.3f')} / {_fmt(r.get('p99_ms_batch1'), '.3f')}"
        loss = "—" if r.get("loss") is None else f"{-r['loss']:+.2%}" + (" **below floor**" if r.get("below_floor") else "")
        inputs = r.get("inputs") or {}
        in_cell = (f"**changed**: {len(inputs['fields'])} of {len(inputs['parent_fields'])} fields"
                   if inputs.get("changed") else "unchanged")
        lines.append(f"| {r['target']} | {r['method']} | {r['budget_bytes']:,} | {r['file_bytes']:,} | "
                     f"{full['file_bytes'] / r['file_bytes']:.1f} | {r['val_metric']:.4f} | {loss} | "
                     f"{_fmt(r.get('test_metric'))} | {_stored_as(r.get('config') or {})} | "
                     f"{r['timings']['search_and_retrain_s']:.1f} | {lat} | {in_cell} | `{r['folder']}` |")
    changed = [r for r in s["runs"] if (r.get("inputs") or {}).get("changed")]
    if changed:
        lines += ["", "## Input changes", ""]
        lines += [f"- `{r['folder']}`: {r['inputs']['text']}" for r in changed]
    for r in (x for x in s["runs"] if x.get("candidates")):
        lines += ["", f"## auto at {r['target']}: candidates", "",
                  f"| method | outcome | file B | val {label} | loss vs full | p99 ms | expected s | seconds | chosen |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---|"]
        for c in r["candidates"]:
            fb = f"{c['file_bytes']:,}" if c.get("file_bytes") is not None else "—"
            loss = "—" if c.get("loss") is None else f"{-c['loss']:+.2%}"
            p99 = "—" if c.get("p99_ms") is None else f"{c['p99_ms']:.3f} (b={c['latency_batch']}, t={c['latency_threads']})"
            outcome = c["outcome"] + (" (stopped at the time limit)" if c.get("stopped_at_limit") else "")
            chosen = ("**yes**" + (f" ({c['chosen_by']})" if c.get("chosen_by") else "")) if c.get("chosen") else ""
            lines.append(f"| {c['method']} | {outcome} | {fb} | {_fmt(c.get('val_metric'))} | {loss} | {p99} | "
                         f"{_fmt(c.get('expected_s'), '.1f')} | {_fmt(c.get('seconds'), '.1f')} | {chosen} |")
    warned = [(r, w) for r in s["runs"] for w in r.get("warnings", [])]
    if warned:
        lines += ["", "## Warnings", ""]
        lines += [f"- {r['target']} / {r['method']}: {w}" for r, w in warned]
    if s["failures"]:
        lines += ["", "## Failures", ""]
        lines += [f"- {f['target']} / {f['method']}: {f['error']}: {f['message']}" for f in s["failures"]]
    return "\n".join(lines) + "\n"


def _plot(s: dict[str, Any], path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in sorted({r["method"] for r in s["runs"]}):
        pts = sorted((r["file_bytes"], r["val_metric"]) for r in s["runs"] if r["method"] == method)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
    full = s["full_model"]
    metric = full.get("metric", "auc")
    tried = [(c["file_bytes"], c["val_metric"]) for r in s["runs"] for c in r.get("candidates") or []
             if c.get("file_bytes") is not None and c.get("val_metric") is not None]
    if tried:  # auto's candidates (the chosen ones are the auto line's points, circled)
        ax.scatter([p[0] for p in tried], [p[1] for p in tried], s=14, color="grey", alpha=0.6, label="auto: candidates")
        chosen = [(r["file_bytes"], r["val_metric"]) for r in s["runs"] if r.get("candidates")]
        ax.scatter([p[0] for p in chosen], [p[1] for p in chosen], s=160, facecolors="none", edgecolors="red",
                   linewidths=1.5, label="auto: chosen")
    ax.scatter([full["file_bytes"]], [full["val"][metric]], marker="*", s=120, color="black", label="full model")
    ax.set_xscale("log")
    ax.set_xlabel("artefact bytes (model.onnx)")
    ax.set_ylabel(f"validation {_label(metric)}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path.name


def load_summary(out_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(out_dir) / "summary.json").read_text())


# ---------------------------------------------------------------------- fleet
def fleet_profiles_in(folder: str | Path) -> list[DeviceProfile]:
    """Every device profile (``*.toml``) in ``folder``, sorted by file name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInputError(f"--fleet {folder} is not a folder; pass a folder of device profiles such as budgets/")
    files = sorted(folder.glob("*.toml"))
    if not files:
        raise BadInputError(f"--fleet {folder} holds no *.toml device profiles; see budgets/README.md for the schema")
    return [load_profile(f) for f in files]


def _latency_at_profile(prof: dict[str, Any] | None, dev: DeviceProfile | None) -> dict[str, Any] | None:
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


def _fleet_arm64_parity(folder: Path, dev: DeviceProfile, seed: int, quiet: bool, name: str) -> dict[str, Any]:
    """arm64 parity of one fleet artefact on the profile's emulated core (``passed`` None: not checked)."""
    from ondevice.arm64.parity import arm64_parity
    from ondevice.arm64.setup import find_env, stamp_is_current, wanted_versions

    cpu = dev.emulated_cpu or FLEET_DEFAULT_CPU
    env, why = find_env()
    if env is not None and not stamp_is_current(env.stamp, wanted_versions()):  # e.g. onnxruntime upgraded since
        env, why = None, f"the arm64 environment in {env.cache} was built for other onnxruntime/numpy versions"
    if env is None:
        _log(quiet, f"[{name}] arm64 parity: not checked ({why})")
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
    _log(quiet, f"[{name}] arm64 parity on emulated {cpu}: {'pass' if r['passed'] else 'FAIL'}"
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
            ok = (bool(r["fits"]) and bool(r.get("verified", True)) and lat.get("verdict") != "fail"
                  and (parity or {}).get("passed") is not False and (mem or {}).get("passed") is not False)
            rows.append({"device": dev.name, "arch": dev.arch, "method": r["method"], "budget_bytes": dev.memory_budget,
                         "file_bytes": r["file_bytes"], "fits": r["fits"], "verified": r.get("verified", True),
                         "metric": r["metric"], "val_metric": r["val_metric"], "latency": lat, "folder": r["folder"],
                         "arm64_parity": parity, "runtime_memory": mem, "required_operators": r.get("required_operators"),
                         "status": "pass" if ok else "fail"})
        for f in (x for x in summary["failures"] if x["target"] == dev.name):
            if any(row["device"] == dev.name and row["method"] == f["method"] for row in rows):
                continue  # the artefact exists; its row already says fail (latency)
            rows.append({"device": dev.name, "arch": dev.arch, "method": f["method"], "budget_bytes": dev.memory_budget,
                         "file_bytes": None, "fits": False, "verified": False, "metric": None, "val_metric": None,
                         "latency": {}, "folder": None, "arm64_parity": None, "status": "fail",
                         "error": f"{f['error']}: {f['message']}"})
    unchecked = [r["device"] for r in rows if (r["arm64_parity"] or {}).get("checked") is False]
    return {"format": "ondevice-fleet", "profiles_folder": str(folder), "run_dir": summary["run_dir"],
            "full_model": summary["full_model"], "rows": rows,
            "passed": all(r["status"] == "pass" for r in rows) and bool(rows),
            "arm64_parity_not_checked": unchecked,
            "rule": "pass = model file <= the profile's budget, golden parity verified, the runtime memory a session "
                    "adds <= the profile's memory_budget_runtime (when set), the p99 target met "
                    "where it could be judged (only on a machine of the profile's architecture), and for arm64 "
                    "profiles the outputs on the emulated core within the tolerance of x86 where emulation is set up"}


def _required_operators_of(folder: Path) -> str | None:
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
        f"val {_label(metric)} {full['val'][metric]:.4f}. Latency is ORT on this host at each profile's batch and "
        "threads; a target is judged only on the profile's architecture. arm64 parity: max |arm - x86| of the "
        "device runner's outputs on an emulated ARM core (qemu; emulated time is not latency).",
        "",
        f"| device | arch | method | budget B | file B | val {_label(metric)} | p50 ms | p99 ms | p99 target ms | latency | arm64 parity | status | folder |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|---|---|---|",
    ]
    fmt = lambda v, d=3: "—" if v is None else f"{v:.{d}f}"  # noqa: E731
    for r in report["rows"]:
        lat = r["latency"] or {}
        file_b = f"{r['file_bytes']:,}" if r["file_bytes"] is not None else "—"
        status = "**PASS**" if r["status"] == "pass" else "**FAIL**"
        lines.append(f"| {r['device']} | {r['arch']} | {r['method']} | {r['budget_bytes']:,} | {file_b} | "
                     f"{fmt(r['val_metric'], 4)} | {fmt(lat.get('p50_ms'))} | {fmt(lat.get('p99_ms'))} | "
                     f"{fmt(lat.get('p99_target_ms'), 1)} (b={lat.get('batch', '—')}, t={lat.get('threads', '—')}) | "
                     f"{lat.get('verdict', '—')} | {_parity_cell(r.get('arm64_parity'))} | {status} | "
                     f"{'`' + r['folder'] + '`' if r['folder'] else r.get('error', '')} |")
    lines += ["", f"Fleet: **{'PASS' if report['passed'] else 'FAIL'}** ({report['rule']})."]
    if report.get("arm64_parity_not_checked"):
        lines += ["", f"arm64 parity: **not checked** for {', '.join(report['arm64_parity_not_checked'])}: no emulation "
                      "environment here; run `ondevice arm64 setup` and compress again (these rows pass on host parity alone)."]
    return "\n".join(lines) + "\n"
