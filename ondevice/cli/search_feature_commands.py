"""``ondevice search features``: feature selection (AutoField, AdaFS), written as a new run folder."""

from __future__ import annotations

from pathlib import Path

import click

from ondevice.cli.search_commands import search_group


@search_group.command("features")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="the new run folder")
@click.option("--budget", default=None, help="max bytes of the exported model: 50KB = 50,000 B, 50KiB = 51,200 B")
@click.option("--keep", type=click.IntRange(min=1), default=None, help="keep the N best fields (no byte limit)")
@click.option("--method", default="autofield", show_default=True, help="feature-selection method: autofield | adafs")
@click.option("--epochs", type=click.IntRange(min=0), default=None, help="retraining epochs (default: the method's)")
@click.option("--search-epochs", type=click.IntRange(min=1), default=None, help="controller search epochs")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--signal-level", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="level of the ranking's signal check (default 0.1; 0 = deploy without it)")
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="encoded dataset (default: the one recorded in RUN_DIR/train.json)")
@click.option("--mlp", "mlp", type=click.Choice(["auto", "fp32", "int8"]), default="auto", show_default=True,
              help="dense (MLP) layers: int8 or fp32; auto keeps fp32 when the smallest model fits with it (as "
                   "`compress`: both reach the same smallest model)")
@click.option("--force", is_flag=True, help="replace an existing --out folder")
def features_cmd(run_dir: Path, out: Path, budget: str | None, keep: int | None, method: str, epochs: int | None,
                 search_epochs: int | None, seed: int, signal_level: float | None, data_dir: Path | None,
                 mlp: str, force: bool) -> None:
    """Learn which fields RUN_DIR's CTR model needs; keep the best that fit --budget (or --keep N).

    \b
    A dropped field leaves the model, its table and the schema: the app sends only the
    kept fields. OUT is a run folder for `ondevice compress` / `ondevice export`.
    Exit codes: 0 ok; 2 bad input (incl. a budget below one field's model, or a ranking whose kept
    fields do not matter more on validation than the dropped ones); 3 over budget.
    """
    from ondevice.budget import parse_budget
    from ondevice.pipeline.search_runs import search_features, signal_text

    s = search_features(run_dir, out, budget_bytes=parse_budget(budget) if budget is not None else None, keep=keep, method=method, epochs=epochs,
                        search_epochs=search_epochs, seed=seed, data_dir=data_dir, force=force,
                        signal_level=signal_level, mlp=mlp)
    click.echo(f"{s['method']}: kept {len(s['fields_kept'])} of {len(s['fields_kept']) + len(s['fields_dropped'])} fields "
               f"({', '.join(s['fields_kept'])}), {s['file_bytes']:,} B (full {s['full_file_bytes']:,} B), "
               f"val AUC {s['val_before']['auc']:.4f} -> {s['val']['auc']:.4f}; {signal_text(s['signal_check'], 'signal check off (--signal-level 0)')} -> {out}")
