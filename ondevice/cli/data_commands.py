"""Data commands: ``prepare`` (raw files -> encoded dataset) and ``generate`` (synthetic data)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from ondevice.cli import cli
from ondevice.errors import BadInputError


def _key_values(items: tuple[str, ...], what: str) -> dict[str, Any]:
    """``("a=1", "b=x")`` -> ``{"a": 1, "b": "x"}`` (values parsed as JSON when they can be)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BadInputError(f"{what} {item!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


class _Progress:
    """``read 1,200,000 rows (310K rows/s)`` on one stderr line, a few times a second."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet or not sys.stderr.isatty()
        self.t0 = time.perf_counter()
        self.last = 0.0

    def __call__(self, stage: str, rows: int) -> None:
        now = time.perf_counter()
        if self.quiet or now - self.last < 0.25:
            return
        self.last = now
        rate = rows / max(now - self.t0, 1e-9)
        click.echo(f"\r{stage} {rows:,} rows ({rate / 1e3:.0f}K rows/s)   ", err=True, nl=False)

    def done(self) -> None:
        if not self.quiet:
            click.echo("\r" + " " * 60 + "\r", err=True, nl=False)


@cli.command("prepare")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--format", "fmt", required=True, help="criteo | avazu | libfm | movielens | implicit | csv")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Output dataset folder.")
@click.option("--min-count", default=1, show_default=True, type=click.IntRange(min=1),
              help="Values rarer than this in the training split map to the OOV id 0.")
@click.option("--hash", "hashes", multiple=True, metavar="FIELD=N", help="Hash FIELD into N buckets (repeatable).")
@click.option("--split", type=click.Choice(["random", "given", "leave-last-out"]), default="random", show_default=True,
              help="random: seeded 80/10/10; given: INPUTS are train [val] test; leave-last-out (top-K, rows in "
                   "time order): each user's last interaction -> test, second-last -> val (users with < 3 stay in train).")
@click.option("--drop-duplicates", is_flag=True,
              help="Top-K: drop rows repeating an earlier (user, item) pair (they are always counted in prepare.json).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--val-fraction", default=0.1, show_default=True, type=float)
@click.option("--test-fraction", default=0.1, show_default=True, type=float)
@click.option("--chunk-rows", default=None, type=click.IntRange(min=1), help="Rows per chunk (memory bound).")
@click.option("--spec", type=click.Path(path_type=Path), help="Spec file (JSON/TOML) for --format csv.")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Format option, e.g. drop_ratings=3 (movielens), names=a,b (libfm).")
@click.option("--force", is_flag=True, help="Replace an existing --out folder.")
@click.option("--quiet", is_flag=True, help="No progress line.")
def prepare_command(inputs: tuple[Path, ...], fmt: str, out: Path, min_count: int, hashes: tuple[str, ...],
                    split: str, seed: int, val_fraction: float, test_fraction: float, chunk_rows: int | None,
                    spec: Path | None, options: tuple[str, ...], force: bool, quiet: bool,
                    drop_duplicates: bool) -> None:
    """Encode raw INPUTS into an encoded dataset folder (schema.json, prepare.json, splits)."""
    from ondevice.data.preparation import DEFAULT_CHUNK_ROWS, prepare

    hash_buckets = {}
    for key, value in _key_values(hashes, "--hash").items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise BadInputError(f"--hash {key}={value!r}: the number of buckets must be a whole number, e.g. {key}=100000")
        hash_buckets[key] = value
    format_options = _key_values(options, "--option")
    if spec is not None:
        format_options["spec"] = str(spec)
    progress = _Progress(quiet)
    try:
        info = prepare(list(inputs), out, format=fmt, min_count=min_count, hash_buckets=hash_buckets, split=split,
                       seed=seed, val_fraction=val_fraction, test_fraction=test_fraction,
                       chunk_rows=chunk_rows or DEFAULT_CHUNK_ROWS, force=force, progress=progress,
                       format_options=format_options, drop_duplicates=drop_duplicates)
    finally:
        progress.done()
    rows = info["rows"]
    for warning in info["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    click.echo(
        f"prepared {info['total_rows']:,} rows ({info['task']}, {len(info['fields'])} fields) -> {out}\n"
        f"  train {rows['train']:,} / val {rows['val']:,} / test {rows['test']:,}; "
        f"{info['rows_per_s'] / 1e3:.0f}K rows/s, {info['elapsed_s']:.1f} s, peak RSS {info['peak_rss_mb']:.0f} MB"
    )
    dup, llo = info.get("duplicates"), info.get("leave_last_out")
    if dup is not None:
        click.echo(f"  duplicate (user, item) rows: {dup['rows']:,}" + (" (dropped)" if dup["dropped"] and dup["rows"] else ""))
    if llo is not None:
        click.echo(f"  leave-last-out: {llo['held_out_users']:,} of {llo['users']:,} users give their last interaction "
                   f"to test and the second-last to val; {llo['train_only_users']:,} with < {llo['min_interactions']} "
                   "interactions stay in train")


@cli.command("generate")
@click.option("--task", type=click.Choice(["ctr", "topk"]), default="ctr", show_default=True)
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="ctr: the data file (.gz compresses); topk: a folder for train.txt/test.txt.")
@click.option("--rows", default=100_000, show_default=True, type=click.IntRange(min=1), help="ctr: rows.")
@click.option("--format", "fmt", type=click.Choice(["criteo", "libfm"]), default="criteo", show_default=True)
@click.option("--fields", type=click.IntRange(min=1), default=None, help="libfm: categorical fields (default 10).")
@click.option("--vocab", type=click.IntRange(min=2), default=None, help="ctr: values per field (default 4..100K).")
@click.option("--truth", type=click.Path(path_type=Path), default=None, help="ctr: truth JSON (default OUT.truth.json).")
@click.option("--latent-dim", type=click.IntRange(min=0), default=0, show_default=True,
              help="ctr: plant an FM term of this rank among --latent-fields fields (0: none)")
@click.option("--latent-fields", type=click.IntRange(min=2), default=6, show_default=True,
              help="ctr: fields that take part in the planted FM term")
@click.option("--users", default=1000, show_default=True, type=click.IntRange(min=1), help="topk: users.")
@click.option("--items", default=2000, show_default=True, type=click.IntRange(min=2), help="topk: items.")
@click.option("--mean-items", default=20.0, show_default=True, type=float, help="topk: mean items per user.")
@click.option("--seed", default=0, show_default=True, type=int)
def generate_command(task: str, out: Path, rows: int, fmt: str, fields: int | None, vocab: int | None,
                     truth: Path | None, latent_dim: int, latent_fields: int, users: int, items: int,
                     mean_items: float, seed: int) -> None:
    """Write synthetic data with a known planted structure, in a real raw format."""
    from ondevice.data.generate import generate_ctr, generate_topk

    t0 = time.perf_counter()
    if task == "ctr":
        info = generate_ctr(out, rows, fields=fields, vocab=vocab, seed=seed, format=fmt, truth_path=truth,
                            latent_dim=latent_dim, latent_fields=latent_fields)
        imp = ", ".join(f["field"] for f in info["important_fields"])
        pairs = ", ".join("×".join(p["fields"]) for p in info["interactions"])
        lat = info.get("latent_interactions")
        latent = f"; rank-{lat['dim']} FM term among {', '.join(lat['fields'])}" if lat else ""
        click.echo(f"wrote {rows:,} {fmt} rows to {out} in {time.perf_counter() - t0:.1f} s; "
                   f"positive rate {info['positive_rate']:.3f}; important: {imp}; pairs: {pairs}{latent}")
        click.echo(f"  next: ondevice prepare {out} --format {fmt} --out DATA_DIR")
    else:
        info = generate_topk(out, users=users, items=items, mean_items=mean_items, seed=seed)
        click.echo(f"wrote {info['train_interactions']:,} train + {info['test_interactions']:,} test interactions "
                   f"to {out} in {time.perf_counter() - t0:.1f} s")
        click.echo(f"  next: ondevice prepare {out}/train.txt {out}/test.txt --format implicit --split given --out DATA_DIR")
