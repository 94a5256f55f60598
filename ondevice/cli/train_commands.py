"""Training commands: ``ondevice train`` and ``ondevice quickstart``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ondevice.cli import cli


def _int_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    dims: list[int] = []
    try:
        for part in (p.strip() for p in value.split(",") if p.strip()):
            width, x, repeat = part.partition("x")  # "400x3" = 400,400,400
            count = int(repeat) if x else 1
            if count < 1:
                raise click.BadParameter(f"the repeat count in {part!r} must be >= 1; got {value!r}")
            dims.extend([int(width)] * count)
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers such as 400,400,400 (or 400x3); got {value!r}") from None
    if any(d < 1 for d in dims):
        raise click.BadParameter(f"layer widths must be >= 1; got {value!r}")
    return dims


#: ``train`` options whose TrainConfig field has another name.
_CONFIG_FIELDS = {"max_steps": "max_steps_per_epoch", "dense_embeddings": "sparse_embeddings"}


def _given_options(ctx: click.Context, config) -> dict:  # noqa: ANN001 - TrainConfig, imported lazily
    """The TrainConfig fields whose option was given on the command line (or by environment)."""
    given = {}
    for name in ctx.params:
        source = ctx.get_parameter_source(name)
        fld = _CONFIG_FIELDS.get(name, name)
        if source in (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT) and hasattr(config, fld):
            given[fld] = getattr(config, fld)
    return given


@cli.command()
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Run folder to write.")
@click.option("--model", default="deepfm", show_default=True, help="fm | deepfm | widedeep | deepfwfm | dcn | bprmf")
@click.option("--embed-dim", type=int, help="Embedding dimension [16 CTR, 64 top-K].")
@click.option("--mlp", "mlp_dims", callback=_int_list, help="MLP widths, e.g. 400,400,400 [default].")
@click.option("--dropout", type=float, help="MLP dropout [0.2 CTR].")
@click.option("--batch-norm/--no-batch-norm", default=None, help="BatchNorm in the MLP [on for CTR].")
@click.option("--lr", type=float, help="Adam learning rate [1e-3 CTR (FM: 1e-2), 3e-3 top-K].")
@click.option("--weight-decay", type=float, help="Adam's coupled L2 on every dense-trained parameter [1e-5 CTR, 0 top-K].")
@click.option("--l2", type=float, default=None, help="L2 on the batch's embedding rows [0 CTR, 1e-2 top-K].")
@click.option("--batch-size", type=int, help="Global batch size [1024 CTR, 2048 top-K].")
@click.option("--epochs", type=int, help="Most epochs; early stopping usually ends sooner [50 CTR, 100 top-K].")
@click.option("--patience", type=int, help="Early stopping: epochs without a better validation metric [5 CTR, 3 top-K].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu | cuda")
@click.option("--threads", type=int, help="torch intra-op threads (default: torch's choice).")
@click.option("--k", type=int, default=20, show_default=True, help="K of Recall@K / NDCG@K (top-K).")
@click.option("--eval-protocol", type=click.Choice(["full", "sampled"]), default="full", show_default=True,
              help="top-K: full ranking excluding training items, or 1 positive + 99 sampled negatives.")
@click.option("--max-steps", type=int, help="Cap on steps per epoch (smoke runs).")
@click.option("--dense-embeddings/--lazy-embeddings", default=None,
              help="Tables trained with dense Adam (coupled L2 on every row; what DDP uses) or lazy row-sparse Adam "
                   "[dense up to 4M table entries].")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its last.pt.")
@click.option("--force", is_flag=True, help="Replace an existing run folder.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train(data_dir: Path, out_dir: Path, model: str, embed_dim: int | None, mlp_dims: list[int] | None,
          dropout: float | None, batch_norm: bool | None, lr: float | None, weight_decay: float | None, l2: float | None,
          batch_size: int | None, epochs: int | None, patience: int | None, seed: int, device: str, threads: int | None, k: int, eval_protocol: str,
          max_steps: int | None, dense_embeddings: bool | None, resume: bool, force: bool, quiet: bool) -> None:
    """Train MODEL on a prepared DATA_DIR into the run folder --out.

    Early-stops on validation AUC (CTR) or Recall@K (top-K), keeps the best model as
    model.pt, evaluates the test split once with it, and writes train.json. Under
    `torchrun --nproc_per_node N -m ondevice train ...` it trains with DistributedDataParallel.
    """
    from ondevice.train import TrainConfig
    from ondevice.train import train as train_fn
    from ondevice.train.resume import resume_config

    config = TrainConfig(
        model=model,
        embed_dim=embed_dim,
        mlp_dims=mlp_dims if mlp_dims is not None else [400, 400, 400],
        dropout=dropout,
        batch_norm=batch_norm,
        lr=lr,
        weight_decay=weight_decay,
        l2=l2,
        batch_size=batch_size,
        epochs=epochs,
        patience=patience,
        seed=seed,
        device=device,
        threads=threads,
        k=k,
        eval_protocol=eval_protocol,
        max_steps_per_epoch=max_steps,
        sparse_embeddings="auto" if dense_embeddings is None else not dense_embeddings,
    )
    if resume:  # options not given on the command line come from the checkpoint; given ones are checked
        config = resume_config(out_dir, _given_options(click.get_current_context(), config))
    result = train_fn(data_dir, out_dir, config, resume=resume, force=force, quiet=quiet)
    if int(__import__("os").environ.get("RANK", "0")) == 0:
        summary = {"run_dir": str(result.run_dir), "best_epoch": result.best_epoch, "val": result.val, "test": result.test}
        if result.baselines:
            summary["baselines"] = result.baselines
        click.echo(json.dumps(summary, indent=2))
        for warning in result.warnings:
            click.echo(f"warning: {warning}", err=True)


@cli.command()
@click.option("--out", "out_dir", default="ondevice-quickstart", show_default=True, type=click.Path(path_type=Path),
              help="Folder for the data, run and artefact.")
@click.option("--rows", type=int, default=None, help="Synthetic rows to generate [300,000].")
@click.option("--epochs", type=int, default=3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing quickstart folder.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def quickstart(out_dir: Path, rows: int | None, epochs: int, seed: int, force: bool, quiet: bool) -> None:
    """Generate synthetic CTR data, train a DeepFM, compress it to a 4MB raw-feature artefact, verify and profile it."""
    from ondevice.quickstart import QUICKSTART_ROWS, run_quickstart

    run_quickstart(out_dir, rows=rows or QUICKSTART_ROWS, epochs=epochs, seed=seed, force=force, quiet=quiet,
                   echo=click.echo)


@cli.command()
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Run folder for the best trial (the search itself lives in OUT.tune/).")
@click.option("--model", default="deepfm", show_default=True, help="fm | deepfm | widedeep | deepfwfm | dcn | bprmf")
@click.option("--time-limit", default="30m", show_default=True,
              help="Wall-clock box: no trial starts that would not fit (e.g. 90s, 30m, 2h).")
@click.option("--trials", "max_trials", type=click.IntRange(min=1), help="At most this many trials in total.")
@click.option("--fix", "fixed", multiple=True, metavar="KEY=VALUE",
              help="Hold a knob (or any train option) at a value, e.g. --fix embed_dim=16 --fix epochs=20.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue the search in OUT.tune/.")
@click.option("--force", is_flag=True, help="Replace OUT and start the search over.")
@click.option("--quiet", is_flag=True, help="No per-trial progress lines.")
def tune(data_dir: Path, out_dir: Path, model: str, time_limit: str, max_trials: int | None, fixed: tuple[str, ...],
         seed: int, resume: bool, force: bool, quiet: bool) -> None:
    """Search MODEL's training knobs (lr, weight decay / L2, dropout, dim, batch size) on validation.

    Optuna's TPE sampler with median pruning; trial 0 is the default config. Prints one line
    per trial, writes the trial table to OUT/tune.md, and copies the best trial's run folder
    to OUT (an ordinary run folder for compress/export).
    """
    from ondevice.cli.data_commands import _key_values
    from ondevice.pipeline.options import parse_duration
    from ondevice.train.tune import tune as tune_fn

    result = tune_fn(data_dir, out_dir, model=model, time_limit_s=parse_duration(time_limit), max_trials=max_trials,
                     fixed=_key_values(fixed, "--fix"), seed=seed, resume=resume, force=force, quiet=True,
                     echo=(lambda line: None) if quiet else (lambda line: click.echo(line, err=True)))
    click.echo(json.dumps({"run_dir": str(result.run_dir), "best_trial": result.best_trial,
                           "best_params": result.best_params, "val": result.val, "test": result.test,
                           "trials": len(result.trials), "table": str(result.run_dir / "tune.md")}, indent=2))
