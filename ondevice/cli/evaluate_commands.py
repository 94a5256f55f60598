"""``ondevice evaluate``: an artefact's metrics on a data split, through onnxruntime."""

from __future__ import annotations

from pathlib import Path

import click

from ondevice.cli import cli


@cli.command("evaluate")
@click.argument("artefact", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="encoded dataset the artefact's model was trained on")
@click.option("--split", type=click.Choice(["test", "val", "train"]), default="test", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="onnxruntime intra-op threads")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="also write the metrics to this JSON file")
def evaluate_cmd(artefact: Path, data_dir: Path, split: str, threads: int, json_out: Path | None) -> None:
    """Run ARTEFACT/model.onnx on a split with onnxruntime: AUC/logloss (CTR) or Recall/NDCG@K (top-K,
    full ranking, training items excluded; validation items too for the test split)."""
    from ondevice.evaluate import evaluate_artefact
    from ondevice.io import atomic_write_json

    r = evaluate_artefact(artefact, data_dir, split=split, threads=threads)
    if r["metric"] == "auc":
        click.echo(f"{artefact} on {split} ({r['rows']:,} rows, onnxruntime): AUC {r['auc']:.4f}, logloss {r['logloss']:.4f}")
    else:
        k = r["metric"].split("@")[1]
        click.echo(f"{artefact} on {split} ({r['users']:,} users, onnxruntime, seen items excluded): "
                   f"Recall@{k} {r[r['metric']]:.4f}, NDCG@{k} {r['ndcg@' + k]:.4f}")
    if json_out is not None:
        atomic_write_json(json_out, r)
