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
import json
import os
import shutil
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
    LatencyTargetError,
    OndeviceError,
    ParityError,
    QualityFloorError,
    RuntimeMemoryError,
)
from ondevice.io import atomic_write_json, atomic_write_text, safe_child
from ondevice.models import BPRMF, RecModel
from ondevice.outputs import RESUME_DIR, check_output, crash_point, resumable_output_dir
from ondevice.pipeline.auto import DEFAULT_MAX_LOSS, relative_loss
from ondevice.pipeline.fitting import search_fitting
from ondevice.pipeline.fleet import (
    fleet_arm64_parity,
    fleet_profiles_in,
    fleet_report,
    latency_at_profile,
    render_fleet_markdown,
    required_operators_of,
)
from ondevice.pipeline.measure import host_arch, measure_file_bytes
from ondevice.pipeline.options import parse_max_loss
from ondevice.pipeline.progress import log
from ondevice.pipeline.resume import RESUME_LABELS, error_from_json, file_sha256, keep_entry
from ondevice.pipeline.summary import metric_label, plot_summary, render_summary_markdown
from ondevice.pipeline.wall_plan import TEST_MAX_USERS, WallPlan, split_size
from ondevice.search import make_searcher
from ondevice.search.base import check_method_options, method_params
from ondevice.search.fixed_parts import MLP_OPTIONS
from ondevice.search.retrain import topk_metric_name, val_metrics
from ondevice.train.checkpoint import Checkpoint, load_checkpoint, run_data
from ondevice.train.progress import progress_bar

__all__ = ["compress"]


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



def _for_target(searcher, dev: DeviceProfile | None, latency_p99_ms: float | None, time_limit_s: float | None,
                full_val: dict[str, Any] | None = None):
    """A fresh searcher for one target; ``auto`` gets the target's latency goal and its search time.

    A device profile's p99 target is given to ``auto`` only on a machine of the profile's
    architecture (elsewhere it cannot be judged, as in ``profile``); ``latency_p99_ms`` is the
    target of plain budgets at batch 1, one thread. ``time_limit_s``: the search's own limit
    (``WallPlan.search_limit``: the target's window minus the export, verify, profile and test
    evaluation that follow).
    """
    if searcher.name != "auto":
        return searcher.clone()
    over: dict[str, Any] = {}
    if time_limit_s is not None:
        over["time_limit_s"] = time_limit_s
    if full_val is not None:  # auto's probe reuses the full model's validation pass instead of repeating it
        over["full_val"] = full_val
    if dev is not None:
        over.update(latency_batch=dev.batch_size, latency_threads=dev.threads)
        if host_arch() == dev.arch:
            over["latency_p99_ms"] = dev.p99_latency_ms
    elif latency_p99_ms is not None:
        over.update(latency_p99_ms=latency_p99_ms, latency_batch=1, latency_threads=1)
    return searcher.clone(**over)


def _full_test(model: RecModel, data: EncodedDataset, k: int, max_users: int | None = None,
               seed: int = 0) -> dict[str, Any]:
    """The full model's test metrics (PyTorch; the reference row of the summary); ``max_users``: top-K
    on the same seeded user sample as the artefacts (``evaluate.sample_users``)."""
    from ondevice.evaluate import sample_users
    from ondevice.search.retrain import topk_pairs
    from ondevice.train import evaluate_ctr, evaluate_topk

    model = copy.deepcopy(model).eval()
    if isinstance(model, BPRMF):
        excluded = [topk_pairs(data, "train")] + ([topk_pairs(data, "val")] if data.has_split("val") else [])
        pairs, in_split = sample_users(topk_pairs(data, "test"), max_users, seed)
        out: dict[str, Any] = evaluate_topk(model, pairs, excluded, k=k)
        return {**out, "users_in_split": in_split}
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
) -> dict[str, Any]:
    """Compress the run at ``run_dir`` for every budget/device × method; returns the summary.

    ``searcher_params`` maps a method name to extra searcher settings (e.g.
    ``{"pep": {"threshold_init": -4}}``); ``epochs``/``seed`` go to every searcher that takes them.
    ``fleet``: a folder of device profiles (``*.toml``); every one becomes a target and
    ``fleet.json``/``fleet.md`` report the fleet (module docstring). ``time_limit_s``: the
    ``auto`` method's wall-clock limit per budget (its candidates are in the summary).
    ``mlp``: how CTR models' dense layers are stored, ``auto`` | ``fp32`` | ``int8``
    (``search.fixed_parts``); ``.ort`` targets get ``fp32`` (onnxruntime's converter folds int8
    weights back to fp32, so the file would not shrink).
    ``max_loss``: quality floor, relative validation-metric loss vs the full model (``0.02``,
    ``"2%"``); ``"default"``: :data:`~ondevice.pipeline.auto.DEFAULT_MAX_LOSS` for ``auto`` and no
    floor for a named method; ``None``/``"off"``: none. A run beyond it fails (exit 3); auto never
    chooses such a candidate. ``allow_input_change``: let ``auto`` try methods that change the
    artefact's inputs (feature selection). ``latency_p99_ms``: a p99 target (batch 1, one
    thread) for plain budgets; device profiles bring their own (judged on their architecture).
    ``evaluate_test``: after every choice, evaluate each artefact's ``model.onnx`` once on the
    test split with onnxruntime (``ondevice.evaluate``).
    ``resume``: continue the interrupted run in ``OUT.partial`` (module docstring, "Resume").
    """
    call_started = time.monotonic()  # --time-limit counts from here (pipeline.wall_plan)
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
        "evaluate_test": evaluate_test, "fleet": fleet is not None, "model_sha256": file_sha256(ckpt.path),
        "data_schema": identity["schema_fingerprint"], "data_rows": identity["rows"],
        "data_content_sha256": identity["content_sha256"],
    }
    options = {"budgets": [str(b) for b in budgets], "device_profiles": [p.name if isinstance(p, DeviceProfile) else str(p)
                                                                        for p in device_profiles],
               "fleet": str(fleet) if fleet is not None else None, "methods": list(methods), "epochs": epochs,
               "seed": seed, "data_dir": str(data_dir) if data_dir is not None else None, "searcher_params": extra,
               "profile_runs": profile_runs, "time_limit_s": time_limit_s, "mlp": mlp, "max_loss": max_loss,
               "allow_input_change": allow_input_change, "latency_p99_ms": latency_p99_ms}

    from ondevice.evaluate import evaluate_artefact
    from ondevice.export import export_artefact, profile_artefact, verify_artefact

    started = time.time()
    t_export = time.perf_counter()
    full_file, full_params = measure_file_bytes(ckpt.model)
    export_cost_s = time.perf_counter() - t_export
    overhead = full_file - full_params
    k = int(ckpt.train_config.get("k", 20) or 20)
    full_metric = topk_metric_name(k) if isinstance(ckpt.model, BPRMF) else "auc"
    t_val = time.perf_counter()
    full_val = val_metrics(copy.deepcopy(ckpt.model), data, k=k)
    val_s = time.perf_counter() - t_val
    log(quiet, f"full model: {format_bytes(full_file)}, val {metric_label(full_metric)} {full_val[full_metric]:.4f}")
    # auto's candidates validate at k = 20 (search.retrain.val_metrics): share the pass only when it is the same.
    probe_val = {"metrics": full_val, "seconds": val_s} if k == 20 else None
    test_users = None  # top-K under a limit: a seeded sample of the test users (pipeline.wall_plan)
    plan = WallPlan(None, call_started)
    if time_limit_s is not None:
        test_size = split_size(data, "test") if evaluate_test and data.has_split("test") else 0
        if isinstance(ckpt.model, BPRMF) and test_size > TEST_MAX_USERS:
            test_users, test_size = TEST_MAX_USERS, TEST_MAX_USERS
        plan = WallPlan.estimate(time_limit_s, started=call_started, export_s=export_cost_s, val_s=val_s,
                                 val_size=split_size(data, "val"), test_size=test_size)
    runs: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    errors: list[OndeviceError] = []
    with resumable_output_dir(out_dir, kind="compress", settings=settings, inputs=[run_dir, data.root], force=force,
                              resume=resume, labels=RESUME_LABELS, options=options) as tmp:
        kept = tmp / RESUME_DIR
        for target_index, (label, nbytes, dev, budget_arg) in enumerate(targets):
            for method, searcher in searchers.items():
                name = label if len(searchers) == 1 else f"{label}-{method}"
                folder = safe_child(tmp, name.replace("+", "_"))
                record = kept / f"{folder.name}.json"
                if record.is_file():  # finished by the interrupted run (--resume)
                    done = json.loads(record.read_text())
                    runs.extend(done["runs"])
                    failures.extend(done["failures"])
                    errors.extend(error_from_json(e) for e in done["errors"])
                    log(quiet, f"[{name}] kept from the interrupted run")
                    continue
                if os.path.lexists(folder):  # half-written when the interrupted run stopped
                    shutil.rmtree(folder)
                before = (len(runs), len(failures), len(errors))
                crash_point("compress.entry.start")
                log(quiet, f"[{name}] {method} at {format_bytes(nbytes)}: searching...")
                t0 = time.perf_counter()
                try:
                    # A named method's training draws a bar on a terminal (auto draws one per candidate itself).
                    with progress_bar(f"[{name}] {method}", enabled=False if quiet else None):
                        result, file_bytes, attempts = search_fitting(
                            _for_target(searcher, dev, latency_p99_ms, plan.search_limit(target_index), probe_val),
                            ckpt, data,
                            nbytes, overhead, work_dir=tmp / "_cache", mlp=_mlp_for(mlp, dev),
                            state_dir=kept / f"{folder.name}.auto")
                    search_s = time.perf_counter() - t0
                    metrics = {"val": result.val, "selected_on": f"val {result.metric}", "method": method,
                               "search": {"config": result.config, "params": result.params}}
                    out_ckpt = Checkpoint(model=result.model, schema=result.schema or ckpt.schema, train_config=ckpt.train_config,
                                          metrics=metrics, path=ckpt.path)
                    t1 = time.perf_counter()
                    manifest = export_artefact(out_ckpt, folder, budget=budget_arg, profile=dev)
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
                    log(quiet, f"[{name}] failed: {err}")
                    failures.append({"target": label, "method": method, "budget_bytes": nbytes,
                                     "error": type(err).__name__, "message": str(err), "exit_code": err.exit_code,
                                     **({"candidates": err.candidates} if getattr(err, "candidates", None) else {})})
                    errors.append(err)
                    keep_entry(record, runs, failures, errors, before)
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
                        log(False, f"[{name}] warning: {warning}")
                if floor is not None and (floor_given or method == "auto") and entry["loss"] is not None \
                        and entry["loss"] > floor:  # auto never chooses such a candidate; a named method may land here
                    entry["below_floor"] = True
                    err = QualityFloorError(f"{method} at {label} loses {entry['loss']:.1%} of the full model's val "
                                            f"{metric_label(result.metric)} ({result.val_metric:.4f} vs "
                                            f"{full_val[result.metric]:.4f}), beyond --max-loss {floor:.1%}",
                                            best_method=method, best_loss=entry["loss"], budget_bytes=nbytes)
                    failures.append({"target": label, "method": method, "budget_bytes": nbytes, "error": type(err).__name__,
                                     "message": str(err), "exit_code": err.exit_code})
                    errors.append(err)
                if result.candidates is not None:  # auto: every method it tried, the chosen one marked
                    entry["candidates"] = [{k: v for k, v in c.items() if k != "config"} for c in result.candidates]
                if fleet_profiles:
                    entry["verified"] = bool(verify.get("passed", True))
                    entry["latency"] = latency_at_profile(prof, dev)
                    tgt = (prof or {}).get("target")
                    if tgt and tgt.get("checked") and tgt.get("passed") is False:
                        err = LatencyTargetError(f"p99 {tgt['p99_ms']:.3f} ms at batch {tgt['batch']} x {tgt['threads']} "
                                                 f"threads is over the {tgt['profile']} target of {tgt['p99_target_ms']} ms")
                        failures.append({"target": label, "method": method, "budget_bytes": nbytes,
                                         "error": type(err).__name__, "message": str(err), "exit_code": err.exit_code})
                        errors.append(err)
                    entry["required_operators"] = required_operators_of(folder)
                    entry["runtime_memory"] = mem = (prof or {}).get("memory_target")
                    if mem and mem.get("passed") is False:
                        err = RuntimeMemoryError(f"a session adds {mem['runtime_bytes']:,} B of resident memory, over the "
                                                 f"{mem['profile']} memory_budget_runtime of {mem['budget_bytes']:,} B")
                        failures.append({"target": label, "method": method, "budget_bytes": nbytes,
                                         "error": type(err).__name__, "message": str(err), "exit_code": err.exit_code})
                        errors.append(err)
                    if dev is not None and dev.arch == "arm64":
                        entry["arm64_parity"] = parity = fleet_arm64_parity(folder, dev, seed, quiet, name)
                        if parity["passed"] is False:
                            err = ParityError(f"arm64 parity on emulated {parity['cpu']}: {parity['reason']}",
                                              max_abs_diff=parity["max_abs_diff"], tolerance=parity.get("atol"))
                            failures.append({"target": label, "method": method, "budget_bytes": nbytes,
                                             "error": type(err).__name__, "message": str(err), "exit_code": err.exit_code})
                            errors.append(err)
                runs.append(entry)
                keep_entry(record, runs, failures, errors, before)
                log(quiet, f"[{name}] {format_bytes(entry['file_bytes'])} <= {format_bytes(nbytes)}, "
                            f"val {metric_label(result.metric)} {result.val_metric:.4f} ({search_s:.1f}s)"
                            + (f"; {entry['inputs']['text']}" if (entry["inputs"] or {}).get("changed") else ""))
        full_test = None
        t_test = time.perf_counter()
        if evaluate_test and data.has_split("test"):  # read once, after every choice was made on validation
            full_test = _full_test(ckpt.model, data, k, test_users, seed)
            for entry in runs:
                entry["test"] = {**evaluate_artefact(tmp / entry["folder"], data, split="test", max_users=test_users,
                                                     seed=seed),
                                 "artefact": entry["folder"]}  # not the temporary path it was read from
                entry["test_metric"] = entry["test"].get(entry["metric"])
                log(quiet, f"[{entry['folder']}] test {metric_label(entry['metric'])} {entry['test_metric']:.4f} "
                            "(onnxruntime, model.onnx)")
        _explain_floor_failures(failures, errors, runs, floor)
        summary = {
            "format": "ondevice-compress-summary",
            "run_dir": str(run_dir), "data_dir": str(data.root),
            "full_model": {"file_bytes": full_file, "parameter_bytes": full_params, "graph_overhead_bytes": overhead,
                           "val": full_val, "metric": full_metric, "test": full_test},
            "methods": {m: s.get_params() for m, s in searchers.items()}, "mlp": mlp,
            "max_loss": floor, "max_loss_applies_to": "every run" if floor_given else "auto",
            "time_limit_s": time_limit_s, "wall_plan": plan.to_dict() if time_limit_s is not None else None,
            "timings": {"full_validation_s": val_s, "test_evaluation_s": time.perf_counter() - t_test},
            "test_users": {"sampled": test_users, "seed": seed} if test_users else None,
            "torch_threads": torch.get_num_threads(), "seed": seed,
            "runs": runs, "failures": failures, "seconds": time.time() - started,
        }
        summary["plot"] = plot_summary(summary, tmp / "summary.png") if plot and runs else None
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
