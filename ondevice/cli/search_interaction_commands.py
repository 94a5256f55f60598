"""``ondevice search interactions``: AutoFIS field-pair selection, written as a new run folder."""

from __future__ import annotations

from pathlib import Path

import click

from ondevice.cli.search_commands import search_group


def _c_value(_ctx: click.Context, _param: click.Parameter, value: str) -> float | str:
    if value in ("auto", "paper"):
        return value
    try:
        c = float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not 'auto', 'paper' or a number like 5e-4") from None
    if c < 0:
        raise click.BadParameter(f"{value!r} must be >= 0")
    return c


@search_group.command("interactions")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="the new run folder")
@click.option("--search-epochs", type=click.IntRange(min=1), default=3, show_default=True, help="search-stage epochs")
@click.option("--epochs", type=click.IntRange(min=0), default=5, show_default=True, help="retraining epochs")
@click.option("--c", "c", default="auto", show_default=True, callback=_c_value,
              help="gRDA threshold scale: auto (paper's zeroing time rescaled to this run), paper "
                   "(deepfm 5e-4, fm 5e-3) or a number")
@click.option("--mu", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="gRDA exponent (default: the paper's, deepfm 0.8, fm 0.6)")
@click.option("--grda-lr", type=click.FloatRange(0, min_open=True), default=1.0, show_default=True)
@click.option("--zero-at", type=click.FloatRange(0, 1, min_open=True), default=0.3, show_default=True,
              help="with --c auto: share of the search after which a gate the loss does not push is 0")
@click.option("--max-pairs", type=click.IntRange(min=0), default=None, help="keep at most N pairs (largest |alpha|)")
@click.option("--warm-start", is_flag=True, help="search from the pretrained weights (the paper: from scratch)")
@click.option("--centred/--no-centred", default=None,
              help="pairs of centred embeddings in the search, so no gate carries a main effect "
                   "(default: on; off with --c paper)")
@click.option("--test-level", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="family-wise level of the held-out test of the kept pairs (default 0.1; 0 with --c paper: off)")
@click.option("--budget", default=None, help="max bytes of the exported model: 50KB = 50,000 B, 50KiB = 51,200 B")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=1e-3, show_default=True, help="Adam learning rate")
@click.option("--batch-size", type=click.IntRange(min=1), default=1024, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="encoded dataset (default: the one recorded in RUN_DIR/train.json)")
@click.option("--mlp", "mlp", type=click.Choice(["auto", "fp32", "int8"]), default="auto", show_default=True,
              help="dense (MLP) layers: int8 or fp32; auto keeps fp32 when the smallest model fits with it (as "
                   "`compress`: both reach the same smallest model)")
@click.option("--force", is_flag=True, help="replace an existing --out folder")
def interactions_cmd(run_dir: Path, out: Path, search_epochs: int, epochs: int, c: float | str, mu: float | None,
                     grda_lr: float, zero_at: float, max_pairs: int | None, warm_start: bool, centred: bool | None,
                     test_level: float | None, budget: str | None,
                     lr: float, batch_size: int, seed: int, data_dir: Path | None, mlp: str, force: bool) -> None:
    """Select the field pairs of RUN_DIR's FM/DeepFM/DeepFwFM with AutoFIS (KDD'20), retrain.

    \b
    Search: a gate per pair (of centred embeddings) after a BatchNorm, gRDA on the gates,
    Adam on the rest; the surviving pairs must pass a held-out test on validation; then a
    fresh model computing only the kept pairs. OUT is a run folder (model.pt, train.json,
    search.json) for `ondevice compress` / `ondevice export`.
    Exit codes: 0 ok; 2 bad input (incl. a budget below the model without pairs, or gates
    none of which holds up on validation).
    """
    from ondevice.budget import parse_budget
    from ondevice.pipeline.search_runs import search_interactions, signal_text
    from ondevice.search.interaction import AutoFISSearcher

    searcher = AutoFISSearcher(search_epochs=search_epochs, c=c, mu=mu, grda_lr=grda_lr, zero_at=zero_at,
                               max_pairs=max_pairs, warm_start=warm_start, epochs=epochs, lr=lr,
                               batch_size=batch_size, seed=seed, centred=centred, test_level=test_level)
    s = search_interactions(run_dir, out, searcher, data_dir=data_dir, force=force, mlp=mlp,
                            budget_bytes=None if budget is None else parse_budget(budget))
    click.echo(f"autofis: kept {s['kept_pairs']} of {s['candidate_pairs']} pairs, val AUC {s['val_auc_before']:.4f} -> "
               f"{s['val_auc_after']:.4f}, {s['seconds']:.1f} s; {signal_text(s['signal_check'], 'no gate survived gRDA, no pair to test')} -> {out}")
    for warning in s.get("warnings") or []:
        click.echo(f"warning: {warning}", err=True)
