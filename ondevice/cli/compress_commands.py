"""``ondevice compress``: budgeted compression, one artefact per budget/device × method."""

from __future__ import annotations

from pathlib import Path

import click

from ondevice.cli import cli

#: ``compress`` options -> the library argument each one sets.
_LIBRARY_KEYS = {"budgets": "budgets", "profiles": "device_profiles", "fleet": "fleet", "methods": "methods",
                 "epochs": "epochs", "seed": "seed", "data_dir": "data_dir", "profile_runs": "profile_runs",
                 "time_limit": "time_limit_s", "max_loss": "max_loss", "allow_input_change": "allow_input_change",
                 "latency_p99": "latency_p99_ms", "mlp": "mlp", "method_options": "searcher_params",
                 "inputs": "inputs"}


@cli.command("compress")
@click.argument("run_dir", type=click.Path(exists=True, path_type=Path))
@click.option("--budget", "budgets", multiple=True,
              help="max bytes of the artefact, repeatable: 2MB = 2,000,000 B, 2MiB = 2,097,152 B")
@click.option("--device-profile", "profiles", multiple=True,
              help="device profile name or .toml path, repeatable (its memory_budget is the budget)")
@click.option("--fleet", "fleet", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="folder of device profiles (e.g. budgets/): one artefact per profile + fleet.json/fleet.md")
@click.option("--method", "methods", multiple=True,
              help="auto | pep | sseds | mde | uniform | hash | int8 | fp16 | sseds+int8 | mde+int8 | uniform+int8 | "
                   "hash+int8 (+fp16 variants) | deeplight | autofield | adafs | autofis | optinter; top-K models: auto | rule | uniform | int8 | fp16 | "
                   "rule+int8; repeatable; default auto (the best applicable method that fits, by val metric)")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="output folder")
@click.option("--epochs", type=click.IntRange(min=0), default=None, help="retraining epochs (default: each method's)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="encoded dataset (default: the one recorded in RUN_DIR/train.json)")
@click.option("--profile-runs", type=click.IntRange(min=1), default=20, show_default=True,
              help="timed calls per latency measurement")
@click.option("--time-limit", "time_limit", default=None,
              help="auto: wall-clock limit per budget, e.g. 600 (seconds), 90s, 10m (default: none); candidates run "
                   "cheapest first and the one running at the limit is stopped (its best weights still count)")
@click.option("--max-loss", "max_loss", default=None,
              help="quality floor: largest relative val-metric loss vs the full model, e.g. 2% or 0.02, or off "
                   "(default: 2% for auto, which never chooses a candidate beyond it; none for a named method); "
                   "exit 3 when no artefact meets it")
@click.option("--allow-input-change", is_flag=True,
              help="auto: also try feature selection (autofield, adafs), whose artefacts take fewer input fields")
@click.option("--latency-p99", "latency_p99", type=click.FloatRange(min=0, min_open=True), default=None,
              help="auto: p99 target in ms at batch 1, one thread, for --budget targets (device profiles bring theirs)")
@click.option("--mlp", "mlp", type=click.Choice(["auto", "fp32", "int8"]), default="auto", show_default=True,
              help="dense (MLP) layers: int8 weights with per-row scales (4x smaller, fp32 compute) or fp32; auto "
                   "keeps fp32 when the method's smallest model fits with it (.ort artefacts: fp32 only)")
@click.option("--method-option", "method_options", multiple=True, metavar="METHOD.KEY=VALUE",
              help="a searcher setting, repeatable, e.g. pep.target_sparsity=0.9, pep.search_epochs=40, "
                   "deeplight.dnn_sparsity=0.95 (values are JSON; `ondevice methods` lists every setting); "
                   "pep.* also applies to pep+fp16, and auto passes them to its candidates")
@click.option("--inputs", "inputs", type=click.Choice(["ids", "raw"]), default=None,
              help="raw: artefacts take raw field values, the vocabulary inside the model file and inside the budget; "
                   "ids: int64 ids encoded with schema.json. Default: raw for CTR unless the vocabulary would take "
                   "over half a budget (then ids, with a warning); top-K always takes the user's vector")
@click.option("--force", is_flag=True, help="replace an existing --out folder")
@click.option("--resume", is_flag=True,
              help="continue the interrupted run in OUT.partial (finished budgets/methods and auto's finished candidates "
                   "are kept); options not given come from that run, given ones must match it")
def compress_cmd(run_dir: Path, budgets: tuple[str, ...], profiles: tuple[str, ...], fleet: Path | None,
                 methods: tuple[str, ...], out: Path, epochs: int | None, seed: int, data_dir: Path | None,
                 profile_runs: int, time_limit: str | None, max_loss: str | None, allow_input_change: bool,
                 latency_p99: float | None, mlp: str, method_options: tuple[str, ...], inputs: str | None, force: bool,
                 resume: bool) -> None:
    """Search, retrain, export, verify and profile RUN_DIR's model for each budget × method.

    \b
    Exit codes: 0 every artefact fits, verified and is within the quality floor; 2 bad input
    (incl. a budget below the smallest model a method can build: the message states that
    minimum); 3 a broken promise (an artefact over budget, failed parity, missed latency
    target, no candidate within --max-loss). Failures are listed in OUT/summary.md;
    successful runs are kept. A killed run leaves OUT.partial: `--resume` continues it.
    """
    from ondevice.cli.data_commands import _key_values
    from ondevice.errors import BadInputError
    from ondevice.pipeline.compress import compress
    from ondevice.pipeline.options import parse_duration
    from ondevice.pipeline.resume import resume_options

    searcher_params: dict[str, dict] = {}
    for key, value in _key_values(method_options, "--method-option").items():
        method, dot, setting = key.partition(".")
        if not dot or not method or not setting:
            raise BadInputError(f"--method-option {key}={value}: expected METHOD.KEY=VALUE, e.g. pep.threshold_lr=0.01")
        searcher_params.setdefault(method, {})[setting] = value

    kwargs = dict(budgets=budgets, device_profiles=profiles, methods=methods or ("auto",), epochs=epochs, seed=seed,
                  data_dir=data_dir, profile_runs=profile_runs, fleet=fleet,
                  time_limit_s=parse_duration(time_limit) if time_limit is not None else None, mlp=mlp,
                  max_loss=max_loss if max_loss is not None else "default", allow_input_change=allow_input_change,
                  latency_p99_ms=latency_p99, searcher_params=searcher_params, inputs=inputs)
    if resume:  # options not given on the command line come from the interrupted run
        ctx = click.get_current_context()
        given = {key: kwargs[key] for name, key in _LIBRARY_KEYS.items()
                 if ctx.get_parameter_source(name) in (click.core.ParameterSource.COMMANDLINE,
                                                       click.core.ParameterSource.ENVIRONMENT)}
        kwargs = resume_options(out, given)
    s = compress(run_dir, out_dir=out, force=force, resume=resume, **kwargs)
    full = s["full_model"]
    label = "AUC" if full["metric"] == "auc" else full["metric"]
    click.echo(f"full model: {full['file_bytes']:,} B, val {label} {full['val'][full['metric']]:.4f}")
    for r in s["runs"]:
        chosen = next((c["method"] for c in r.get("candidates") or [] if c.get("chosen")), None)
        via = f" (chose {chosen} of {len(r['candidates'])} candidates)" if chosen else ""
        test = f", test {label} {r['test_metric']:.4f}" if r.get("test_metric") is not None else ""
        click.echo(f"{r['target']} {r['method']}{via}: {r['file_bytes']:,} B <= {r['budget_bytes']:,} B, "
                   f"val {label} {r['val_metric']:.4f}{test} -> {out / r['folder']}")
        if (r.get("inputs") or {}).get("changed"):
            click.echo(f"  {r['inputs']['text']}")
    click.echo(f"summary: {out / 'summary.md'}")
    if fleet is not None:
        click.echo(f"fleet: {out / 'fleet.md'}")


@cli.command("methods")
@click.argument("names", nargs=-1)
def methods_cmd(names: tuple[str, ...]) -> None:
    """List the compression methods and every setting `--method-option` can set, with defaults.

    NAMES restricts the list (e.g. `ondevice methods pep deeplight`).
    """
    import ondevice.pipeline  # noqa: F401 - registers ``auto``
    from ondevice.search import SEARCHERS, make_searcher

    for name in names or sorted(SEARCHERS):
        searcher = make_searcher(name)
        doc = (type(searcher).__doc__ or "").strip().splitlines()[0]
        click.echo(f"{name} ({', '.join(type(searcher).tasks)}): {doc}")
        for key, value in searcher.get_params().items():
            click.echo(f"  {name}.{key} = {value!r}")
