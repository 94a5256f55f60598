"""``ondevice search optinter``: per-pair memorize / factorize / none (OptInter), written as a new run folder."""

from __future__ import annotations

from pathlib import Path

import click

from ondevice.cli.search_commands import search_group


@search_group.command("optinter")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="the new run folder")
@click.option("--budget", default=None, help="max bytes of the exported model: 2MB = 2,000,000 B, 2MiB = 2,097,152 B")
@click.option("--search-epochs", type=click.IntRange(min=1), default=2, show_default=True, help="supernet search epochs")
@click.option("--epochs", type=click.IntRange(min=0), default=5, show_default=True, help="retraining epochs")
@click.option("--alpha-lr", type=click.FloatRange(0, min_open=True), default=1e-3, show_default=True,
              help="Adam learning rate of the architecture weights alpha (paper 1e-3)")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=1e-3, show_default=True, help="Adam learning rate")
@click.option("--batch-size", type=click.IntRange(min=1), default=1024, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="the prepared data (default: the one RUN_DIR/train.json names)")
@click.option("--mlp", "mlp", type=click.Choice(["auto", "fp32", "int8"]), default="auto", show_default=True,
              help="dense (MLP) layers: int8 or fp32; auto keeps fp32 when the smallest model fits with it (as "
                   "`compress`: both reach the same smallest model)")
@click.option("--selection", type=click.Choice(["screened", "paper"]), default="screened", show_default=True,
              help="which pairs alpha searches: screened (those a held-out interaction screen passes, so main "
                   "effects are not taken for pairs) or paper (every pair, the paper's method)")
@click.option("--force", is_flag=True, help="replace an existing --out folder")
def optinter_cmd(run_dir: Path, out: Path, budget: str | None, search_epochs: int, epochs: int, alpha_lr: float,
                 lr: float, batch_size: int, seed: int, data_dir: Path | None, mlp: str, selection: str,
                 force: bool) -> None:
    """Choose memorized / factorized / no interaction per field pair of RUN_DIR's model (OptInter, ICDE'22).

    \b
    Search: with --selection screened (default) a held-out interaction screen first
    picks the pairs worth searching (the others are none); a supernet mixes the three
    candidates per searched pair by an annealed softmax; each pair takes its argmax, downgraded (smallest margin first) until the exported
    bytes fit --budget; the chosen model is retrained. OUT is a run folder (model.pt,
    train.json, search.json) for `ondevice compress` / `ondevice export`.
    Exit codes: 0 ok; 2 bad input (incl. a budget below the model without pair terms, or
    a screen none of whose pairs holds up on validation).
    """
    from ondevice.budget import parse_budget
    from ondevice.io import read_json
    from ondevice.pipeline.search_runs import search_interactions, signal_text
    from ondevice.search.interaction import OptInterSearcher

    searcher = OptInterSearcher(search_epochs=search_epochs, alpha_lr=alpha_lr, epochs=epochs,
                                lr=lr, batch_size=batch_size, seed=seed, selection=selection)
    s = search_interactions(run_dir, out, searcher, data_dir=data_dir, force=force, mlp=mlp,
                            budget_bytes=None if budget is None else parse_budget(budget))
    trace = read_json(out / "search.json", what="search.json")["trace"]
    choice = next(t for t in trace if "counts" in t)
    counts = choice["counts"]
    searched = next(t["searched_pairs"] for t in trace if "searched_pairs" in t)
    click.echo(f"optinter: {counts['memorized']} memorized, {counts['factorized']} factorized, {counts['none']} none "
               f"of {s['candidate_pairs']} pairs ({searched} searched, {selection}), {choice['bytes']:,} B, val AUC "
               f"{s['val_auc_before']:.4f} -> {s['val_auc_after']:.4f}, {s['seconds']:.1f} s; "
               f"{signal_text(s['signal_check'])} -> {out}")
