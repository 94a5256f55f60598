"""``ondevice search architecture``: AutoCTR-style search under a byte budget and a p99 target."""

from __future__ import annotations

from pathlib import Path

import click

from ondevice.cli.search_commands import search_group


@search_group.command("architecture")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="run folder to write")
@click.option("--budget", default=None, help="max artefact bytes: 2MB = 2,000,000 B, 2MiB = 2,097,152 B "
                                             "[default: the profile's memory_budget]")
@click.option("--latency-p99", "latency_p99", default=None,
              help="p99 target, e.g. 1ms or 500us [default: the profile's p99_latency_ms]")
@click.option("--device-profile", "profile", default=None,
              help="device profile name or .toml path: budget, p99 target, threads and batch (else 1 thread, batch 1)")
@click.option("--population", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--cycles", type=click.IntRange(min=0), default=16, show_default=True, help="mutations after the population")
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True, help="epochs of the final retraining")
@click.option("--search-rows", type=click.IntRange(min=1), default=100_000, show_default=True,
              help="training rows each candidate sees (seeded subsample, one epoch)")
@click.option("--time-limit", "time_limit", default=None, help="no new candidate after this, e.g. 600, 90s, 10m")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="replace an existing --out folder")
def architecture_cmd(data_dir: Path, out: Path, budget: str | None, latency_p99: str | None, profile: str | None,
                     population: int, cycles: int, epochs: int, search_rows: int, time_limit: str | None, seed: int,
                     force: bool) -> None:
    """Search a BlockNet DAG (FM, MLP, dot, cross blocks) on DATA_DIR meeting --budget and --latency-p99.

    Candidates are exported and timed with onnxruntime at the profile's threads and batch on
    this host (a proxy when the profile is another architecture), trained briefly, and
    selected on validation AUC; the best feasible one is retrained and written to --out
    (model.pt, train.json, search.json) for `ondevice compress` / `ondevice export`.
    Exit 2 when no candidate meets both constraints.
    """
    from ondevice.budget import parse_budget
    from ondevice.pipeline.options import parse_duration
    from ondevice.pipeline.search_runs import search_architecture
    from ondevice.search.architecture import EvolutionaryArchitectureSearch

    if budget is None and latency_p99 is None and profile is None:
        raise click.UsageError("give --budget, --latency-p99 or --device-profile (the constraints to meet)")
    searcher = EvolutionaryArchitectureSearch(
        population=population, cycles=cycles, tournament=min(3, population), search_rows=search_rows, seed=seed,
        time_limit=parse_duration(time_limit) if time_limit is not None else None)
    budget_bytes = parse_budget(budget) if budget is not None else None  # parsed once, here
    r = search_architecture(data_dir, out, budget_bytes=budget_bytes, latency_p99=latency_p99, profile=profile,
                            epochs=epochs, force=force, searcher=searcher)
    blocks = " + ".join(b["type"] + (f"({b['width']})" if "width" in b else "") for b in r["genotype"]["blocks"])
    click.echo(f"architecture: embed dim {r['genotype']['embed_dim']}, {blocks} "
               f"({r['candidates_evaluated']} candidates in {r['search_seconds']:.1f} s)")
    click.echo(f"artefact {r['file_bytes']:,} B, p50 {r['p50_ms']:.4f} ms, p99 {r['p99_ms']:.4f} ms "
               f"(search p99 {r['search_p99_ms']:.4f} ms); {r['latency_note']}")
    test = f", test AUC {r['test']['auc']:.4f}" if r["test"] else ""
    click.echo(f"val AUC {r['val']['auc']:.4f}{test} -> {out}")
