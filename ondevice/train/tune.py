"""``ondevice tune``: a time-boxed hyper-parameter search on validation (Optuna TPE).

Hyper-parameter optimisation is the first AutoML step the survey lists for recommenders
(Zheng et al., "AutoML for Deep Recommender Systems: A Survey", Sec. 1-2): the embedding,
interaction and architecture searches that follow all start from a trained model, and a weak
one makes every later comparison easy. ``tune`` searches the training knobs of one model:

* CTR models: ``lr`` (log 1e-4..1e-2), ``weight_decay`` (0, 1e-6, 1e-5, 1e-4), ``dropout``
  (0..0.5), ``batch_norm``, ``embed_dim`` (8, 16, 32), ``batch_size`` (512..4096); FM has no
  MLP, so no dropout or BatchNorm.
* BPR-MF: ``lr`` (log 1e-3..3e-2), ``l2`` (log 1e-5..1e-1), ``embed_dim`` (32, 64, 128),
  ``batch_size`` (1024..4096).

``fixed`` holds any of them at a value (``--fix embed_dim=16``). Trial 0 is the model's
default config, so the result is never worse on validation than ``ondevice train``.
Each trial is an ordinary ``train`` run (early stopping on validation) in
``OUT.tune/trials/trial-NNN``; Optuna's median pruner stops a trial whose validation metric
after an epoch is below the median of earlier trials at that epoch. The study lives in an
append-only journal file (``OUT.tune/study.journal``), so ``--resume`` continues a stopped
search: finished trials are kept, a trial that was running is marked failed and not reused.

Selection is on validation only: the table shows validation metrics, and the best trial's run
folder (its ``train.json`` holds the test metrics the trainer read once for that run) is copied
to ``OUT`` as an ordinary run folder that ``compress`` and ``export`` take.

Time box: a new trial starts only when the elapsed time plus the slowest finished trial still
fits ``time_limit_s``, so the search ends within the limit unless a single trial is slower
than every one before it.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ondevice.data import EncodedDataset
from ondevice.errors import BadInputError, OutputExistsError
from ondevice.io import (
    atomic_output_dir,
    atomic_write_json,
    atomic_write_text,
    check_writable_parent,
)
from ondevice.outputs import check_out_vs_inputs
from ondevice.train.config import CTR_MODELS, TOPK_MODELS, TrainConfig
from ondevice.train.trainer import TrainResult, train

__all__ = ["TUNABLE", "TuneResult", "search_space", "tune"]

# name -> (kind, choices or (low, high)); "log" floats are sampled on a log scale
_CTR_SPACE: dict[str, tuple[str, Any]] = {
    "lr": ("log", (1e-4, 1e-2)),
    "weight_decay": ("choice", (0.0, 1e-6, 1e-5, 1e-4)),
    "dropout": ("step", (0.0, 0.5, 0.1)),
    "batch_norm": ("choice", (True, False)),
    "embed_dim": ("choice", (8, 16, 32)),
    "batch_size": ("choice", (512, 1024, 2048, 4096)),
}
_TOPK_SPACE: dict[str, tuple[str, Any]] = {
    "lr": ("log", (1e-3, 3e-2)),
    "l2": ("log", (1e-5, 1e-1)),
    "embed_dim": ("choice", (32, 64, 128)),
    "batch_size": ("choice", (1024, 2048, 4096)),
}
TUNABLE = sorted(set(_CTR_SPACE) | set(_TOPK_SPACE))


def search_space(model: str, fixed: dict[str, Any] | None = None) -> dict[str, tuple[str, Any]]:
    """The knobs ``tune`` samples for ``model`` (module docstring), minus the ``fixed`` ones."""
    if model not in CTR_MODELS + TOPK_MODELS:
        raise BadInputError(f"unknown model {model!r}; choose one of: {', '.join(CTR_MODELS + TOPK_MODELS)}")
    space = dict(_TOPK_SPACE if model in TOPK_MODELS else _CTR_SPACE)
    if model == "fm":  # no MLP
        space.pop("dropout")
        space.pop("batch_norm")
    for name in fixed or {}:
        space.pop(name, None)
    return space


@dataclass
class TuneResult:
    run_dir: Path
    best_trial: int
    best_params: dict[str, Any]
    val: dict[str, float]
    test: dict[str, float]
    trials: list[dict[str, Any]]
    seconds: float


def _suggest(trial: Any, space: dict[str, tuple[str, Any]]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name, (kind, arg) in space.items():
        if kind == "log":
            params[name] = trial.suggest_float(name, arg[0], arg[1], log=True)
        elif kind == "step":
            params[name] = round(trial.suggest_float(name, arg[0], arg[1], step=arg[2]), 10)
        else:
            params[name] = trial.suggest_categorical(name, list(arg))
    return params


def _open_study(journal: Path, seed: int) -> Any:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(journal)))
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)
    # no pruning in a trial's first 5 epochs: a low-lr run starts slowly (BPR-MF's validation
    # Recall@20 barely moves in its first epochs) and would be cut before it shows its worth
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=5)
    study = optuna.create_study(study_name="ondevice-tune", storage=storage, direction="maximize",
                                sampler=sampler, pruner=pruner, load_if_exists=True)
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        # a trial that was running when the search stopped: failed, its folder removed
        storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
    return study


def _trial_rows(study: Any, metric: str) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"trial": t.number, "state": t.state.name.lower(), "params": dict(t.params),
                     f"val_{metric}": t.user_attrs.get("val", t.value), "best_epoch": t.user_attrs.get("best_epoch"),
                     "seconds": t.user_attrs.get("seconds")})
    return rows


def _table(rows: list[dict[str, Any]], metric: str, best: int | None) -> str:
    names = sorted({k for r in rows for k in r["params"]})
    head = ["trial", *names, f"val {metric}", "epochs", "seconds", "state"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"{r['trial']}{' (best)' if r['trial'] == best else ''}"]
        cells += [_fmt(r["params"].get(n)) for n in names]
        value = r[f"val_{metric}"]
        cells += [f"{value:.4f}" if value is not None else "", str(r["best_epoch"] or ""),
                  f"{r['seconds']:.0f}" if r["seconds"] is not None else "", r["state"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.2g}" if v and (abs(v) < 1e-3 or abs(v) >= 1e4) else f"{v:.3g}"
    return "" if v is None else str(v)


def tune(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    model: str = "deepfm",
    time_limit_s: float = 1800.0,
    max_trials: int | None = None,
    fixed: dict[str, Any] | None = None,
    seed: int = 0,
    resume: bool = False,
    force: bool = False,
    quiet: bool = False,
    echo: Callable[[str], None] = print,
) -> TuneResult:
    """Search ``model``'s training knobs on ``data_dir``'s validation split (module docstring).

    ``fixed``: TrainConfig fields held at a value (also ``epochs``, ``threads``, ...).
    """
    out_dir = Path(out_dir)
    work = out_dir.with_name(out_dir.name + ".tune")
    fixed = dict(fixed or {})
    if "model" in fixed:
        raise BadInputError("--fix model=...: the model is --model; --fix holds training knobs")
    unknown = sorted(set(fixed) - set(TrainConfig.__dataclass_fields__))
    if unknown:
        raise BadInputError(f"unknown --fix key(s) {', '.join(unknown)}; tunable: {', '.join(TUNABLE)} "
                            "(any train option such as epochs or threads may be fixed too)")
    if time_limit_s <= 0 or not math.isfinite(time_limit_s):
        raise BadInputError(f"--time-limit must be > 0, got {time_limit_s}")
    if max_trials is not None and max_trials < 1:
        raise BadInputError(f"--trials must be >= 1, got {max_trials}")
    space = search_space(model, fixed)
    data = EncodedDataset(data_dir)
    expected_task = "topk" if model in TOPK_MODELS else "ctr"
    if data.task != expected_task:
        raise BadInputError(f"model {model!r} is a {expected_task} model but {data_dir} holds {data.task} data")
    check_out_vs_inputs(out_dir, [data_dir])
    check_out_vs_inputs(work, [data_dir])
    if out_dir.exists() and not force:
        raise OutputExistsError(f"{out_dir} already exists; pass --force to replace it")
    if work.exists() and not (resume or force):
        raise OutputExistsError(f"{work} holds an earlier search; pass --resume to continue it or --force to start over")
    if work.exists() and any(work.iterdir()) and not (work / "study.journal").is_file():
        raise OutputExistsError(f"{work} exists but is not an ondevice tune folder (no study.journal); "
                                "choose another --out or remove it yourself")
    check_writable_parent(out_dir)
    if force and not resume:
        shutil.rmtree(work, ignore_errors=True)
    (work / "trials").mkdir(parents=True, exist_ok=True)

    study = _open_study(work / "study.journal", seed)
    metric = "auc" if expected_task == "ctr" else "recall@20"
    if not study.trials:  # trial 0: the model's defaults
        default = asdict(TrainConfig(model=model, **fixed))
        study.enqueue_trial({k: default[k] for k in space})
    started = time.perf_counter()
    slowest = max((t.user_attrs.get("seconds", 0.0) for t in study.trials), default=0.0)
    n_done = sum(t.state.is_finished() for t in study.trials)

    import optuna

    while max_trials is None or n_done < max_trials:
        elapsed = time.perf_counter() - started
        if elapsed + slowest > time_limit_s:
            if n_done == 0:
                echo(f"tune: no trial fits --time-limit {time_limit_s:.0f} s; running one anyway")
            else:
                break
        trial = study.ask()
        params = _suggest(trial, space)
        run = work / "trials" / f"trial-{trial.number:03d}"
        config = TrainConfig(**{"model": model, "seed": seed, **fixed, **params})
        shutil.rmtree(run, ignore_errors=True)
        shutil.rmtree(run.with_name(run.name + ".partial"), ignore_errors=True)

        def on_epoch(epoch: int, value: float, trial: Any = trial) -> bool:
            trial.report(value, epoch)
            return trial.should_prune()

        t0 = time.perf_counter()
        try:
            result: TrainResult = train(data_dir, run, config, quiet=quiet, on_epoch=on_epoch)
        except BaseException:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        seconds = time.perf_counter() - t0
        slowest = max(slowest, seconds)
        value = float(result.val[metric])
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("seconds", seconds)
        trial.set_user_attr("val", value)
        pruned = trial.should_prune()
        state = optuna.trial.TrialState.PRUNED if pruned else optuna.trial.TrialState.COMPLETE
        study.tell(trial, value if not pruned else None, state=state)
        n_done += 1
        best = study.best_trial
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in params.items())
        echo(f"trial {trial.number}: {shown} -> val {metric} {value:.4f}{' (pruned)' if pruned else ''} "
             f"in {seconds:.0f} s; best {best.value:.4f} (trial {best.number}); "
             f"{time.perf_counter() - started:.0f}/{time_limit_s:.0f} s")

    best = study.best_trial
    rows = _trial_rows(study, metric)
    best_run = work / "trials" / f"trial-{best.number:03d}"
    summary = {"model": model, "data_dir": str(Path(data_dir).resolve()), "metric": f"val {metric}",
               "selected_on": f"val {metric}", "best_trial": best.number, "best_params": dict(best.params),
               "fixed": fixed, "time_limit_s": time_limit_s, "seed": seed,
               "seconds_this_session": time.perf_counter() - started, "trials": rows}
    table = _table(rows, metric, best.number)
    atomic_write_json(work / "tune.json", summary)
    atomic_write_text(work / "tune.md", f"# ondevice tune: {model}\n\n{table}")
    with atomic_output_dir(out_dir, kind="tune", inputs=[data_dir], force=force) as tmp:
        for f in best_run.iterdir():
            shutil.copy2(f, tmp / f.name)
        atomic_write_json(tmp / "tune.json", summary)
        atomic_write_text(tmp / "tune.md", f"# ondevice tune: {model}\n\n{table}")
    train_json = _read_train_json(out_dir)
    return TuneResult(run_dir=out_dir, best_trial=best.number, best_params=dict(best.params),
                      val=train_json.get("val", {}), test=train_json.get("test", {}), trials=rows,
                      seconds=time.perf_counter() - started)


def _read_train_json(run: Path) -> dict[str, Any]:
    from ondevice.io import read_json

    return read_json(run / "train.json", what="train.json")
