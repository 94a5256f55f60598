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
from dataclasses import dataclass, field
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
from ondevice.pipeline.measure import (
    host_arch,
    measure_file_bytes,
    onnx_file_bytes,
    ort_encoder_bytes,
    ort_file_bytes,
    scaled_vocabulary_cost,
    vocabulary_cost,
)
from ondevice.pipeline.options import parse_max_loss
from ondevice.pipeline.progress import log
from ondevice.pipeline.resume import RESUME_LABELS, error_from_json, file_sha256, keep_entry
from ondevice.pipeline.summary import metric_label, plot_summary, render_summary_markdown
from ondevice.pipeline.wall_plan import TEST_MAX_USERS, WallPlan, split_size
from ondevice.search import make_searcher
from ondevice.search.base import SearchResult, check_method_options, method_params
from ondevice.search.byte_accountant import VocabularyCost
from ondevice.search.fixed_parts import MLP_OPTIONS
from ondevice.search.retrain import topk_metric_name, val_metrics
from ondevice.train.checkpoint import Checkpoint, load_checkpoint, run_data
from ondevice.train.progress import progress_bar

__all__ = ["compress"]

#: One target: (label, budget bytes, device profile or None, how the user gave the budget).
Target = tuple[str, int, DeviceProfile | None, str]


def _targets(budgets: Sequence[str | int],
             device_profiles: Sequence[str | Path | DeviceProfile]) -> list[Target]:
    """(label, bytes, profile, source) of every target: each budget is parsed here, once, and
    travels as an int to the one check after the final export (``source`` names it there)."""
    out: list[Target] = []
    for b in budgets:
        out.append((str(b), parse_budget(b), None, f"--budget {b}"))
    for p in device_profiles:
        dev = p if isinstance(p, DeviceProfile) else load_profile(p)
        out.append((dev.name, dev.memory_budget, dev, f"device profile {dev.name}"))
    labels = [t[0] for t in out]
    if len(set(labels)) != len(labels):
        raise BadInputError(f"budgets/profiles repeat a name ({', '.join(labels)}); give each once")
    return out



def _for_target(searcher, dev: DeviceProfile | None, latency_p99_ms: float | None, time_limit_s: float | None,
                full_val: dict[str, Any] | None = None, raw_vocabulary: VocabularyCost | None = None):
    """A fresh searcher for one target; ``auto`` gets the target's latency goal and its search time.

    A device profile's p99 target is given to ``auto`` only on a machine of the profile's
    architecture (elsewhere it cannot be judged, as in ``profile``); ``latency_p99_ms`` is the
    target of plain budgets at batch 1, one thread. ``time_limit_s``: the search's own limit
    (``WallPlan.search_limit``: the target's window minus the export, verify, profile and test
    evaluation that follow). ``full_val``: the full model's validation pass, reused by auto's probe.
    ``raw_vocabulary``: the raw encoder, for auto's raw ``frequency`` candidate at a target whose
    other candidates take ids (``_inputs_for``).
    """
    if searcher.name != "auto":
        return searcher.clone()
    over: dict[str, Any] = {}
    if time_limit_s is not None:
        over["time_limit_s"] = time_limit_s
    if full_val is not None:  # auto's probe reuses the full model's validation pass instead of repeating it
        over["full_val"] = full_val
    if raw_vocabulary is not None:
        over["raw_vocabulary"] = raw_vocabulary
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
    inputs: str | None = None,
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
    ``inputs``: the artefacts' inputs (``export_artefact``; default raw for CTR): a raw artefact
    carries its vocabulary, whose bytes are reserved from each budget before the search; a method
    that drops keys (``frequency``) counts them per kept id instead (``_inputs_for``).
    """
    call_started = time.monotonic()  # --time-limit counts from here (pipeline.wall_plan)
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    fleet_profiles = fleet_profiles_in(fleet) if fleet is not None else []
    targets = _targets(budgets, [*device_profiles, *fleet_profiles])
    extra = searcher_params or {}
    floor_given = max_loss != "default"
    searchers, floor = _make_searchers(targets, methods, extra, mlp=mlp, time_limit_s=time_limit_s,
                                       max_loss=max_loss, floor_given=floor_given, epochs=epochs, seed=seed,
                                       allow_input_change=allow_input_change, quiet=quiet)
    if profile_runs < 1:
        raise BadInputError(f"profile runs must be >= 1, got {profile_runs}")
    check_output(out_dir, kind="compress", inputs=[run_dir, data_dir], force=force or resume)
    ckpt, data = _load_run(run_dir, data_dir)
    settings = _resume_settings(ckpt, data, targets, methods, extra, floor, floor_given, epochs=epochs, seed=seed,
                                mlp=mlp, allow_input_change=allow_input_change, time_limit_s=time_limit_s,
                                latency_p99_ms=latency_p99_ms, profile_runs=profile_runs if profile else None,
                                plot=plot, evaluate_test=evaluate_test, fleet=fleet is not None,
                                inputs=inputs)
    options = {"budgets": [str(b) for b in budgets], "device_profiles": [p.name if isinstance(p, DeviceProfile) else str(p)
                                                                        for p in device_profiles],
               "fleet": str(fleet) if fleet is not None else None, "methods": list(methods), "epochs": epochs,
               "seed": seed, "data_dir": str(data_dir) if data_dir is not None else None, "searcher_params": extra,
               "profile_runs": profile_runs, "time_limit_s": time_limit_s, "mlp": mlp, "max_loss": max_loss,
               "allow_input_change": allow_input_change, "latency_p99_ms": latency_p99_ms, "inputs": inputs}
    started = time.time()
    full = _full_model_reference(ckpt, data, quiet)
    plan, test_users = _wall_plan(full, data, time_limit_s, call_started, evaluate_test)
    tally = _Tally()
    with resumable_output_dir(out_dir, kind="compress", settings=settings, inputs=[run_dir, data.root], force=force,
                              resume=resume, labels=RESUME_LABELS, options=options) as tmp:
        job = _Job(ckpt=ckpt, data=data, tmp=tmp, full=full, seed=seed, mlp=mlp, floor=floor, floor_given=floor_given,
                   profile=profile, profile_runs=profile_runs, fleet_profiles=fleet_profiles, quiet=quiet,
                   latency_p99_ms=latency_p99_ms, time_limit_s=time_limit_s, plan=plan, test_users=test_users,
                   inputs=inputs, vocabulary_reserve=_vocabulary_reserve(ckpt, inputs))
        for index, target in enumerate(targets):
            for method, searcher in searchers.items():
                _compress_one(job, tally, target, method, searcher, several=len(searchers) > 1, index=index)
        t_test = time.perf_counter()
        full_test = _evaluate_on_test(job, tally.runs) if evaluate_test and data.has_split("test") else None
        job.timings = {"full_validation_s": full.val_s, "test_evaluation_s": time.perf_counter() - t_test}
        _explain_floor_failures(tally.failures, tally.errors, tally.runs, floor)
        summary = _write_summary(job, tally, run_dir, searchers, full_test, started, plot=plot, fleet=fleet)
    _raise_failures(tally.errors, len(targets) * len(searchers), out_dir)
    return summary


@dataclass
class _FullModel:
    """The full model's reference: exported bytes (the graph's own bytes for the accountant), val metric."""

    file_bytes: int
    parameter_bytes: int
    export_cost_s: float
    k: int
    metric: str
    val: dict[str, float]
    val_s: float = 0.0  # seconds of the validation pass (pipeline.wall_plan's estimates)

    @property
    def probe_val(self) -> dict[str, Any] | None:
        """The pass for auto's probe (``{"metrics", "seconds"}``): only at k = 20, the k auto's candidates
        validate at (``search.retrain.val_metrics``)."""
        return {"metrics": self.val, "seconds": self.val_s} if self.k == 20 else None

    @property
    def overhead(self) -> int:
        return self.file_bytes - self.parameter_bytes


@dataclass
class _Job:
    """What one ``compress`` call fixed before its first search; shared by every (target, method)."""

    ckpt: Checkpoint
    data: EncodedDataset
    tmp: Path  # the output folder being written (``OUT.partial``)
    full: _FullModel
    seed: int
    mlp: str
    floor: float | None
    floor_given: bool
    profile: bool
    profile_runs: int
    fleet_profiles: list[DeviceProfile]
    quiet: bool
    latency_p99_ms: float | None
    time_limit_s: float | None
    plan: WallPlan  # each target's window under --time-limit (pipeline.wall_plan)
    test_users: int | None  # top-K under a limit: the seeded test-user sample's size (None: every user)
    inputs: str | None  # the artefacts' inputs (None: the exporter's default for the model)
    vocabulary_reserve: int  # bytes a raw artefact's encoder adds to the file (0 when the artefacts take ids)
    timings: dict[str, float] = field(default_factory=dict)
    _vocabulary: VocabularyCost | None = field(default=None, repr=False)
    _ort_encoder: int | None = field(default=None, repr=False)

    def vocabulary(self, ort: bool = False) -> VocabularyCost:
        """The raw encoder per kept id (``measure.vocabulary_cost``), for methods that drop keys and
        auto's raw candidate: computed once, when a target first needs it (0.5 s on 103K ids);
        ``ort``: its bytes in an ``.ort`` file (scaled by :meth:`reserve`'s measured ratio)."""
        if self._vocabulary is None:
            self._vocabulary = vocabulary_cost(self.ckpt.schema)
        if not ort:
            return self._vocabulary
        return scaled_vocabulary_cost(self._vocabulary, self.reserve(ort=True) / self.vocabulary_reserve)

    def reserve(self, ort: bool = False) -> int:
        """Bytes a raw artefact's encoder adds to the model file: ``.onnx`` or, for a profile that
        ships ``.ort`` (2-3x larger tables), measured once by converting the encoder alone."""
        if not ort or not self.vocabulary_reserve:
            return self.vocabulary_reserve
        if self._ort_encoder is None:
            self._ort_encoder = max(ort_encoder_bytes(self.ckpt.schema), self.vocabulary_reserve)
        return self._ort_encoder


@dataclass
class _Tally:
    """What the (target, method) runs produced: summary rows, failure rows, and the errors to raise."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    errors: list[OndeviceError] = field(default_factory=list)

    def fail(self, label: str, method: str, nbytes: int, err: OndeviceError) -> None:
        self.failures.append({"target": label, "method": method, "budget_bytes": nbytes, "error": type(err).__name__,
                              "message": str(err), "exit_code": err.exit_code,
                              **({"candidates": err.candidates} if getattr(err, "candidates", None) else {})})
        self.errors.append(err)

    def mark(self) -> tuple[int, int, int]:
        return len(self.runs), len(self.failures), len(self.errors)


def _make_searchers(targets: list[Any], methods: Sequence[str], extra: dict[str, dict[str, Any]], *, mlp: str,
                    time_limit_s: float | None, max_loss: float | str | None, floor_given: bool, epochs: int | None,
                    seed: int, allow_input_change: bool, quiet: bool) -> tuple[dict[str, Any], float | None]:
    """Check the call's options (one-line errors) and build one configured searcher per method; and the floor."""
    if not targets:
        raise BadInputError("give at least one --budget (e.g. 2MB) or --device-profile")
    if not methods:
        raise BadInputError("give at least one --method")
    if len(set(methods)) != len(methods):
        raise BadInputError(f"--method repeats a name: {', '.join(methods)}")
    if mlp not in MLP_OPTIONS:
        raise BadInputError(f"--mlp must be one of {', '.join(MLP_OPTIONS)}; got {mlp!r}")
    if time_limit_s is not None and "auto" not in methods:
        raise BadInputError("--time-limit applies to --method auto only; drop it or add --method auto")
    floor = parse_max_loss(max_loss) if floor_given else DEFAULT_MAX_LOSS
    shared = {"epochs": epochs, "seed": seed, "time_limit_s": time_limit_s, "max_loss": floor,
              "allow_input_change": allow_input_change, "progress": not quiet}
    check_method_options(extra)
    searchers = {m: make_searcher(m, shared=shared, **_params_of(m, extra)) for m in methods}
    if "auto" in searchers and floor is None:  # make_searcher drops None settings: --max-loss off must reach auto
        searchers["auto"] = searchers["auto"].clone(max_loss=None)
    return searchers, floor


def _load_run(run_dir: Path, data_dir: str | Path | None) -> tuple[Checkpoint, EncodedDataset]:
    """The run's checkpoint and the data it was trained on (same schema fingerprint, or a one-line error)."""
    ckpt = load_checkpoint(run_dir)
    data = run_data(run_dir, data_dir)
    if data.schema.fingerprint() != ckpt.schema.fingerprint():
        raise BadInputError(f"the data in {data.root} is not the data {run_dir} was trained on (schema fingerprint differs)")
    return ckpt, data


def _resume_settings(ckpt: Checkpoint, data: EncodedDataset, targets: list[Any], methods: Sequence[str],
                     extra: dict[str, dict[str, Any]], floor: float | None, floor_given: bool,
                     **given: Any) -> dict[str, Any]:
    """What shapes the result: ``--resume`` continues only with the same (module docstring, "Resume")."""
    identity = data.identity()
    return {
        "targets": [[t[0], t[1], t[2].to_dict() if t[2] is not None else None] for t in targets],
        "methods": list(methods), "epochs": given["epochs"], "seed": given["seed"], "method_options": extra,
        "mlp": given["mlp"], "max_loss": [floor, floor_given], "allow_input_change": given["allow_input_change"],
        "time_limit_s": given["time_limit_s"], "latency_p99_ms": given["latency_p99_ms"],
        "profile_runs": given["profile_runs"], "plot": given["plot"], "evaluate_test": given["evaluate_test"],
        "fleet": given["fleet"], "model_sha256": file_sha256(ckpt.path),
        "data_schema": identity["schema_fingerprint"], "data_rows": identity["rows"],
        "data_content_sha256": identity["content_sha256"], "inputs": given["inputs"],
    }


def _full_model_reference(ckpt: Checkpoint, data: EncodedDataset, quiet: bool) -> _FullModel:
    """Export the full model once (its file bytes, the graph's own bytes, the cost of an export) and
    read its validation metric: the reference every row's bytes and loss are compared with."""
    t_export = time.perf_counter()
    file_bytes, parameter_bytes = measure_file_bytes(ckpt.model)
    export_cost_s = time.perf_counter() - t_export
    k = int(ckpt.train_config.get("k", 20) or 20)
    metric = topk_metric_name(k) if isinstance(ckpt.model, BPRMF) else "auc"
    t_val = time.perf_counter()
    val = val_metrics(copy.deepcopy(ckpt.model), data, k=k)
    val_s = time.perf_counter() - t_val
    log(quiet, f"full model: {format_bytes(file_bytes)}, val {metric_label(metric)} {val[metric]:.4f}")
    return _FullModel(file_bytes=file_bytes, parameter_bytes=parameter_bytes, export_cost_s=export_cost_s, k=k,
                      metric=metric, val=val, val_s=val_s)


def _wall_plan(full: _FullModel, data: EncodedDataset, time_limit_s: float | None, call_started: float,
               evaluate_test: bool) -> tuple[WallPlan, int | None]:
    """The call's ``WallPlan`` and, for a top-K test split above ``TEST_MAX_USERS`` users under a
    limit, the size of the seeded user sample its test evaluation reads (``pipeline.wall_plan``)."""
    if time_limit_s is None:
        return WallPlan(None, call_started), None
    test_users = None
    test_size = split_size(data, "test") if evaluate_test and data.has_split("test") else 0
    if data.task == "topk" and test_size > TEST_MAX_USERS:
        test_users = test_size = TEST_MAX_USERS
    plan = WallPlan.estimate(time_limit_s, started=call_started, export_s=full.export_cost_s, val_s=full.val_s,
                             val_size=split_size(data, "val"), test_size=test_size)
    return plan, test_users


def _vocabulary_reserve(ckpt: Checkpoint, inputs: str | None) -> int:
    """Bytes a raw artefact's encoder adds to the model file (vocabulary tables, nodes, constants;
    an upper bound, ``export.raw.raw_encoder_bytes``): reserved from every budget before the search,
    so the searchers fit the id model into the rest. 0 for id artefacts."""
    from ondevice.export.onnx_export import resolve_inputs
    from ondevice.export.raw import raw_encoder_bytes

    return raw_encoder_bytes(ckpt.schema) if resolve_inputs(inputs, ckpt.model) == "raw" else 0


#: With the default ``inputs``, a target takes raw inputs only when the raw encoder (vocabulary
#: tables) needs at most this share of its budget; above it the artefact takes ids and says so.
RAW_VOCABULARY_SHARE = 0.5


def _inputs_for(job: _Job, nbytes: int, searcher: Any = None,
                ort: bool = False) -> tuple[str | None, int, str | None, VocabularyCost | None]:
    """(inputs, bytes reserved for the raw encoder, warning, vocabulary cost) for a target of ``nbytes``.

    ``--inputs raw`` always reserves the encoder's bytes (a budget below them fails, naming them);
    the default takes raw inputs while the encoder needs at most :data:`RAW_VOCABULARY_SHARE` of
    the budget, and ids (the app encodes with ``schema.json``) above that, with a warning line.
    A method that drops keys (``prunes_vocabulary``: ``frequency``) keeps raw inputs at any share:
    nothing is reserved and its accountant counts the encoder with the ids it keeps. ``ort``: the
    target ships ``.ort``, whose encoder is measured in that format (:meth:`_Job.reserve`).
    """
    reserve = job.reserve(ort)
    if reserve and getattr(searcher, "prunes_vocabulary", False):
        return "raw", 0, None, job.vocabulary(ort)  # sized for raw: never re-exported with ids (the remap would not fit)
    if reserve == 0 or job.inputs == "raw" or reserve <= RAW_VOCABULARY_SHARE * nbytes:
        return job.inputs, reserve, None, None
    return "ids", 0, (f"raw-feature inputs need {reserve:,} B of vocabulary and encoder, over "
                      f"{RAW_VOCABULARY_SHARE:.0%} of the {nbytes:,} B budget: this artefact takes encoded ids "
                      "(the app encodes with schema.json); pass --inputs raw to insist, or --method frequency, "
                      "which drops the rare ids' keys with their rows"), None


def _compress_one(job: _Job, tally: _Tally, target: Target, method: str,
                  searcher: Any, *, several: bool, index: int = 0) -> None:
    """One (target, method): fit the budget, export and check the artefact, add its row (or its failure)."""
    label, nbytes, dev, _ = target
    name = label if not several else f"{label}-{method}"
    folder = safe_child(job.tmp, name.replace("+", "_"))
    record = job.tmp / RESUME_DIR / f"{folder.name}.json"
    if record.is_file():  # finished by the interrupted run (--resume)
        done = json.loads(record.read_text())
        tally.runs.extend(done["runs"])
        tally.failures.extend(done["failures"])
        tally.errors.extend(error_from_json(e) for e in done["errors"])
        log(job.quiet, f"[{name}] kept from the interrupted run")
        return
    if os.path.lexists(folder):  # half-written when the interrupted run stopped
        shutil.rmtree(folder)
    before = tally.mark()
    crash_point("compress.entry.start")
    log(job.quiet, f"[{name}] {method} at {format_bytes(nbytes)}: searching...")
    t0 = time.perf_counter()
    try:
        ort = dev is not None and dev.runtime_format == "ort"
        inputs, reserve, inputs_note, vocabulary = _inputs_for(job, nbytes, searcher, ort)
        raw_for_auto = job.vocabulary(ort) if searcher.name == "auto" and inputs_note else None
        # A named method's training draws a bar on a terminal (auto draws one per candidate itself).
        with progress_bar(f"[{name}] {method}", enabled=False if job.quiet else None):
            result, attempts = _fit_budget(job, searcher, target, folder, reserve, index, vocabulary, raw_for_auto)
        if result.inputs == "raw":  # auto chose its raw frequency candidate: raw after all
            inputs, inputs_note = "raw", None
        elif raw_for_auto is not None and inputs_note:  # it tried one: say how it did, not "try frequency"
            raw = next((c for c in result.candidates or [] if c.get("inputs") == "raw"), None)
            tried = ("did not run" if raw is None else raw["outcome"]
                     + (f", val {raw['val_metric']:.4f}" if raw.get("val_metric") is not None else ""))
            inputs_note = (inputs_note.split("; pass --inputs raw")[0]
                           + f", so the app ships more than the budget; auto's raw frequency candidate: {tried}")
        if inputs_note:
            result.warnings.append(inputs_note)
        search_s = time.perf_counter() - t0
        manifest, verify, prof, export_s = _export_and_check(job, result, method, target, folder, inputs)
        atomic_write_json(folder / "search.json", {**result.to_dict(), "fit_attempts": attempts})
    except OndeviceError as err:
        log(job.quiet, f"[{name}] failed: {err}")
        tally.fail(label, method, nbytes, err)
        keep_entry(record, tally.runs, tally.failures, tally.errors, before)
        return
    entry = _row(job, result, method, target, folder, manifest, verify, prof,
                 {**result.timings, "search_and_retrain_s": search_s, "export_s": export_s}, t0)
    entry["raw_encoder_reserve"] = reserve
    if result.warnings:
        entry["warnings"] = list(result.warnings)
        for warning in result.warnings:
            log(False, f"[{name}] warning: {warning}")
    log(job.quiet, f"[{name}] {format_bytes(entry['file_bytes'])} <= {format_bytes(nbytes)}, "
                   f"val {metric_label(result.metric)} {result.val_metric:.4f} ({search_s:.1f}s)"
                   + (f"; {entry['inputs']['text']}" if (entry["inputs"] or {}).get("changed") else ""))
    _check_floor(job, tally, entry, result, method, target)
    if result.candidates is not None:  # auto: every method it tried, the chosen one marked
        entry["candidates"] = [{k: v for k, v in c.items() if k != "config"} for c in result.candidates]
    if job.fleet_profiles:
        _check_fleet_row(job, tally, entry, method, target, folder, verify, prof, name)
    tally.runs.append(entry)
    keep_entry(record, tally.runs, tally.failures, tally.errors, before)


def _fit_budget(job: _Job, searcher: Any, target: Target, folder: Path, reserve: int, index: int = 0,
                vocabulary: VocabularyCost | None = None,
                raw_for_auto: VocabularyCost | None = None) -> tuple[SearchResult, list[dict[str, Any]]]:
    """Search within the target's bytes through the fit-and-retry loop (``pipeline.fitting``);
    ``vocabulary``: the raw encoder, counted by the searcher's accountant (nothing reserved);
    ``raw_for_auto``: the raw encoder for auto's raw ``frequency`` candidate."""
    from ondevice.export.raw import with_vocabulary

    _, nbytes, dev, _ = target
    if reserve >= nbytes:
        raise BudgetTooSmallError(f"{nbytes:,} B is below the raw-feature artefact's vocabulary and encoder alone "
                                  f"({reserve:,} B); raise the budget, or use --inputs ids (the app then ships "
                                  "schema.json)", minimum_bytes=reserve, parts={"vocabulary and encoder": reserve})
    try:
        result, _, attempts = search_fitting(
            _for_target(searcher, dev, job.latency_p99_ms, job.plan.search_limit(index), job.full.probe_val,
                        raw_for_auto),
            job.ckpt, job.data, nbytes - reserve, job.full.overhead, work_dir=job.tmp / "_cache",
            mlp=_mlp_for(job.mlp, dev), state_dir=job.tmp / RESUME_DIR / f"{folder.name}.auto",
            measure=ort_file_bytes if dev is not None and dev.runtime_format == "ort" else onnx_file_bytes,
            vocabulary=vocabulary)
    except BudgetTooSmallError as err:  # the minimum then includes the vocabulary the artefact ships
        raise (with_vocabulary(err, nbytes, reserve) if reserve else err) from None
    return result, attempts


def _export_and_check(job: _Job, result: SearchResult, method: str, target: Target,
                      folder: Path, inputs: str | None) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None, float]:
    """Export the result (the one budget check), re-verify it on fresh inputs, profile it:
    (manifest, verify report, profile report or None, export seconds)."""
    from ondevice.export import export_artefact, verify_artefact

    _, nbytes, dev, source = target
    metrics = {"val": result.val, "selected_on": f"val {result.metric}", "method": method,
               "search": {"config": result.config, "params": result.params}}
    out_ckpt = Checkpoint(model=result.model, schema=result.schema or job.ckpt.schema,
                          train_config=job.ckpt.train_config, metrics=metrics, path=job.ckpt.path)
    t1 = time.perf_counter()
    manifest = export_artefact(out_ckpt, folder, budget_bytes=nbytes, budget_source=source, profile=dev,
                               inputs=inputs)
    export_s = time.perf_counter() - t1
    crash_point("compress.entry.exported")
    verify = verify_artefact(folder, seed=job.seed)
    # The default inputs are raw only while the vocabulary's hash maps fit the device's runtime memory.
    may_take_ids = inputs is None and manifest.get("input_encoding") == "raw"
    prof = _profile(job, folder)
    mem = (prof or {}).get("memory_target") or {}
    if may_take_ids and mem.get("passed") is False:
        t1 = time.perf_counter()
        manifest = export_artefact(out_ckpt, folder, budget_bytes=nbytes, budget_source=source, profile=dev,
                                   inputs="ids", force=True)
        export_s += time.perf_counter() - t1
        verify = verify_artefact(folder, seed=job.seed)
        prof = _profile(job, folder)
        after = ((prof or {}).get("memory_target") or {}).get("runtime_bytes")
        result.warnings.append(
            f"raw-feature inputs made a session add {mem['runtime_bytes']:,} B of resident memory (onnxruntime holds "
            f"the vocabulary as hash maps), over the {mem['profile']} memory_budget_runtime of {mem['budget_bytes']:,} B: "
            f"this artefact takes encoded ids{f' ({after:,} B)' if after is not None else ''}, the app encodes with "
            "schema.json; pass --inputs raw to insist")
    if prof is not None and not job.fleet_profiles:  # one device profile: a miss stops this target
        from ondevice.export.profile import enforce_targets

        enforce_targets(prof)
    return manifest, verify, prof, export_s


def _profile(job: _Job, folder: Path) -> dict[str, Any] | None:
    """The artefact's latency and memory at batch 1 and 256 (and its profile's), or None without ``job.profile``."""
    from ondevice.export import profile_artefact

    if not job.profile:
        return None
    return profile_artefact(folder, batches=(1, 256), threads=(1,), runs=job.profile_runs,
                            warmup=min(10, job.profile_runs), seed=job.seed, torch_baseline=False, plot=False,
                            enforce_target=False)


def _row(job: _Job, result: SearchResult, method: str, target: Target,
         folder: Path, manifest: dict[str, Any], verify: dict[str, Any], prof: dict[str, Any] | None,
         timings: dict[str, float], t0: float) -> dict[str, Any]:
    """The summary row of one artefact: bytes, fit, val metric and loss vs full, timings, p50/p99 at batch 1."""
    label, nbytes, dev, _ = target
    full_val = job.full.val
    b1 = next((r["onnxruntime"] for r in (prof or {}).get("results", []) if r["batch"] == 1), None)
    return {
        "target": label, "device_profile": dev.name if dev else None, "budget_bytes": nbytes,
        "method": method, "folder": folder.name, "file_bytes": max(f["bytes"] for f in manifest["files"].values()),  # model.ort where shipped
        "fits": manifest["budget"]["fits"], "val": result.val, "metric": result.metric,
        "val_metric": result.val_metric, "config": result.config, "timings": timings,
        "verify_max_abs_diff": verify["max_abs_diff"], "p50_ms_batch1": b1["p50_ms"] if b1 else None,
        "p99_ms_batch1": b1["p99_ms"] if b1 else None,
        "loss": relative_loss(float(full_val[result.metric]), result.val_metric) if result.metric in full_val else None,
        "inputs": manifest.get("input_contract"), "wall_s": time.perf_counter() - t0,
    }


def _check_floor(job: _Job, tally: _Tally, entry: dict[str, Any], result: SearchResult, method: str,
                 target: Target) -> None:
    """Mark a row below the quality floor and record its failure (auto never chooses such a
    candidate; a named method is held to the floor only when ``--max-loss`` was given)."""
    label, nbytes, _, _ = target
    floor = job.floor
    if floor is None or not (job.floor_given or method == "auto") or entry["loss"] is None or entry["loss"] <= floor:
        return
    entry["below_floor"] = True
    tally.fail(label, method, nbytes, QualityFloorError(
        f"{method} at {label} loses {entry['loss']:.1%} of the full model's val {metric_label(result.metric)} "
        f"({result.val_metric:.4f} vs {job.full.val[result.metric]:.4f}), beyond --max-loss {floor:.1%}",
        best_method=method, best_loss=entry["loss"], budget_bytes=nbytes))


def _check_fleet_row(job: _Job, tally: _Tally, entry: dict[str, Any], method: str,
                     target: Target, folder: Path, verify: dict[str, Any],
                     prof: dict[str, Any] | None, name: str) -> None:
    """``--fleet``: the row's latency at the profile, operators, runtime memory and arm64 parity; each miss a failure."""
    label, nbytes, dev, _ = target

    def miss(err: OndeviceError) -> None:  # said where it happens, not only in the final count
        log(job.quiet, f"[{name}] failed: {err}")
        tally.fail(label, method, nbytes, err)

    entry["verified"] = bool(verify.get("passed", True))
    entry["latency"] = latency_at_profile(prof, dev)
    tgt = (prof or {}).get("target")
    if tgt and tgt.get("checked") and tgt.get("passed") is False:
        miss(LatencyTargetError(
            f"p99 {tgt['p99_ms']:.3f} ms at batch {tgt['batch']} x {tgt['threads']} threads is over the "
            f"{tgt['profile']} target of {tgt['p99_target_ms']} ms"))
    entry["required_operators"] = required_operators_of(folder)
    entry["runtime_memory"] = mem = (prof or {}).get("memory_target")
    if mem and mem.get("passed") is False:
        miss(RuntimeMemoryError(
            f"a session adds {mem['runtime_bytes']:,} B of resident memory, over the {mem['profile']} "
            f"memory_budget_runtime of {mem['budget_bytes']:,} B"))
    if dev is not None and dev.arch == "arm64":
        entry["arm64_parity"] = parity = fleet_arm64_parity(folder, dev, job.seed, job.quiet, name)
        if parity["passed"] is False:
            miss(ParityError(
                f"arm64 parity on emulated {parity['cpu']}: {parity['reason']}",
                max_abs_diff=parity["max_abs_diff"], tolerance=parity.get("atol")))


def _evaluate_on_test(job: _Job, runs: list[dict[str, Any]]) -> dict[str, float]:
    """Read the test split once, after every choice was made on validation: the full model (PyTorch)
    and each artefact's ``model.onnx`` (onnxruntime); returns the full model's test metrics."""
    from ondevice.evaluate import evaluate_artefact

    full_test = _full_test(job.ckpt.model, job.data, job.full.k, job.test_users, job.seed)
    for entry in runs:
        entry["test"] = {**evaluate_artefact(job.tmp / entry["folder"], job.data, split="test",
                                             max_users=job.test_users, seed=job.seed),
                         "artefact": entry["folder"]}  # not the temporary path it was read from
        entry["test_metric"] = entry["test"].get(entry["metric"])
        log(job.quiet, f"[{entry['folder']}] test {metric_label(entry['metric'])} {entry['test_metric']:.4f} "
                       "(onnxruntime, model.onnx)")
    return full_test


def _write_summary(job: _Job, tally: _Tally, run_dir: Path, searchers: dict[str, Any], full_test: dict[str, float] | None,
                   started: float, *, plot: bool, fleet: str | Path | None) -> dict[str, Any]:
    """``summary.json`` / ``summary.md`` / ``summary.png`` (and ``fleet.json`` / ``fleet.md``); returns the summary."""
    full = job.full
    summary = {
        "format": "ondevice-compress-summary",
        "run_dir": str(run_dir), "data_dir": str(job.data.root),
        "full_model": {"file_bytes": full.file_bytes, "parameter_bytes": full.parameter_bytes,
                       "graph_overhead_bytes": full.overhead, "val": full.val, "metric": full.metric, "test": full_test},
        "methods": {m: s.get_params() for m, s in searchers.items()}, "mlp": job.mlp,
        "max_loss": job.floor, "max_loss_applies_to": "every run" if job.floor_given else "auto",
        "time_limit_s": job.time_limit_s, "wall_plan": job.plan.to_dict() if job.time_limit_s is not None else None,
        "test_users": {"sampled": job.test_users, "seed": job.seed} if job.test_users else None,
        "timings": job.timings, "torch_threads": torch.get_num_threads(), "seed": job.seed,
        "runs": tally.runs, "failures": tally.failures, "seconds": time.time() - started,
    }
    summary["plot"] = plot_summary(summary, job.tmp / "summary.png") if plot and tally.runs else None
    atomic_write_json(job.tmp / "summary.json", summary)
    atomic_write_text(job.tmp / "summary.md", render_summary_markdown(summary))
    if job.fleet_profiles:
        report = fleet_report(summary, job.fleet_profiles, fleet)
        summary["fleet"] = report
        atomic_write_json(job.tmp / "fleet.json", report)
        atomic_write_text(job.tmp / "fleet.md", render_fleet_markdown(report))
    crash_point("compress.summary")
    return summary


def _raise_failures(errors: list[OndeviceError], total: int, out_dir: Path) -> None:
    """Raise the run's failure: the one error, or one line counting them (exit 3 if any broke a promise)."""
    if not errors:
        return
    if len(errors) == 1:
        raise errors[0]
    msg = f"{len(errors)} of {total} runs failed (first: {errors[0]}); see {out_dir / 'summary.md'}"
    if any(isinstance(e, BrokenPromiseError) for e in errors):
        raise BrokenPromiseError(msg)
    raise BadInputError(msg)
