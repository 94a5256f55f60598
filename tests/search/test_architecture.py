"""Architecture search (AutoCTR-style): BlockNet round trip and export parity, genotype
mutation, the latency/byte-constrained search, its errors and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ondevice.cli import _register_commands, cli
from ondevice.data import EncodedDataset
from ondevice.errors import BadInputError, BudgetTooSmallError
from ondevice.export._runner import runner_module
from ondevice.export.lowering import export_module
from ondevice.export.onnx_export import export_onnx
from ondevice.models import BlockNet, model_from_description
from ondevice.models.blocknet import check_blocks
from ondevice.pipeline.measure import measure_cost, measure_file_bytes
from ondevice.search.architecture import (
    MUTATIONS,
    Constraints,
    EvolutionaryArchitectureSearch,
    build_candidate,
    mutate_genotype,
    parse_latency,
    random_genotype,
)
from ondevice.train.checkpoint import load_checkpoint, save_checkpoint
from tests.conftest import make_ctr

_register_commands()
VOCAB = [50, 30, 20, 80, 10]


@pytest.fixture(scope="module")
def ctr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_ctr(tmp_path_factory.mktemp("arch") / "data", rows=3000)


def _genotypes(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [random_genotype(len(VOCAB), rng, max_blocks=5) for _ in range(n)]


def tiny_searcher(**kw) -> EvolutionaryArchitectureSearch:
    settings = dict(population=3, cycles=3, tournament=2, search_rows=1500, search_val_rows=None, batch_size=256,
                    latency_runs=60, latency_warmup=5, latency_repeats=2)
    return EvolutionaryArchitectureSearch(**{**settings, **kw})


# ---------------------------------------------------------------------- model
def test_genotype_model_round_trip_through_checkpoint(tmp_path: Path, ctr: Path) -> None:
    schema = EncodedDataset(ctr).schema
    x = torch.randint(0, 20, (16, len(VOCAB)))
    for i, g in enumerate(_genotypes(6)):
        model = build_candidate(g, VOCAB, seed=i)
        assert model.config()["blocks"] == g["blocks"] and model.embed_dim == g["embed_dim"]
        rebuilt = model_from_description(json.loads(json.dumps(model.describe())))  # JSON-able
        rebuilt.load_state_dict(model.state_dict())
        save_checkpoint(tmp_path / f"m{i}.pt", model, schema)
        loaded = load_checkpoint(tmp_path / f"m{i}.pt").model
        model.eval()
        with torch.no_grad():
            assert torch.equal(rebuilt.eval()(x), model(x)) and torch.equal(loaded(x), model(x))


def test_fm_block_equals_fm_second_order() -> None:
    from ondevice.models.fm import fm_second_order

    model = build_candidate({"embed_dim": 4, "blocks": check_blocks([{"type": "fm", "fields": [0, 1, 2, 3, 4]}], 5)},
                            VOCAB, seed=0).eval()
    with torch.no_grad():
        model.head.weight.fill_(1.0)
        model.head.bias.zero_()
        x = torch.randint(0, 10, (8, 5))
        want = model.first_order(x) + fm_second_order(model.embedding(x))
        assert torch.allclose(model(x), want, atol=1e-6)


def test_bad_blocks_are_one_line_errors() -> None:
    for blocks, msg in [([{"type": "gru", "fields": [0]}], "not one of"), ([{"type": "dot", "fields": [1]}], "2 or more"),
                        ([{"type": "mlp", "fields": [0], "inputs": [0]}], "earlier blocks"),
                        ([{"type": "mlp", "fields": [9]}], "outside")]:
        with pytest.raises(BadInputError, match=msg) as err:
            check_blocks(blocks, 5)
        assert "\n" not in str(err.value)


def test_random_dags_export_with_ort_parity() -> None:
    runner = runner_module()
    manifest = {"task": "ctr", "vocab_sizes": VOCAB, "inputs": [{"name": "ids"}]}
    for i, g in enumerate(_genotypes(5, seed=1)):
        model = build_candidate(g, VOCAB, seed=i).eval()
        module, io = export_module(model)
        path = Path(__import__("tempfile").mkdtemp()) / "model.onnx"
        export_onnx(module, io, torch.zeros(2, 5, dtype=torch.int64), path)
        session = runner.make_session(path, 1)
        for batch in (1, 64):
            ids = runner.make_inputs(manifest, batch, seed=i)["ids"]  # OOV and negative ids included
            got = session.run(["probability"], {"ids": ids})[0]
            with torch.no_grad():
                want = module(torch.from_numpy(ids)).numpy()
            assert got.shape == (batch,) and np.max(np.abs(got - want)) <= 1e-5, g


def test_blocknet_through_export_artefact(tmp_path: Path, ctr: Path) -> None:
    from ondevice.export import export_artefact

    schema = EncodedDataset(ctr).schema
    model = build_candidate(_genotypes(1, seed=3)[0], list(schema.vocab_sizes), seed=0)
    save_checkpoint(tmp_path / "model.pt", model, schema)
    manifest = export_artefact(tmp_path / "model.pt", tmp_path / "art", budget_bytes=1_000_000, check_mobile=False)
    check = manifest["export_validation"]
    assert manifest["budget"]["fits"] and check["passed"] and check["atol"] <= 1e-5
    assert all(c["passed"] for c in check["cases"])


# ---------------------------------------------------------------------- genotypes
def test_mutation_keeps_genotypes_valid() -> None:
    rng = np.random.default_rng(0)
    parents = _genotypes(20, seed=2)
    changed = 0
    for step in range(400):
        parent = parents[step % len(parents)]
        snapshot = json.dumps(parent)
        child = mutate_genotype(parent, MUTATIONS[step % len(MUTATIONS)], len(VOCAB), rng, max_blocks=5)
        assert json.dumps(parent) == snapshot  # the parent is untouched
        assert check_blocks(child["blocks"], len(VOCAB)) == child["blocks"] and child["embed_dim"] in (4, 8, 16)
        assert 1 <= len(child["blocks"]) <= 5
        changed += child != parent
        if step % 40 == 0:
            assert build_candidate(child, VOCAB, seed=0)(torch.randint(0, 9, (3, 5))).shape == (3,)
    assert changed > 300


# ---------------------------------------------------------------------- search
def test_search_meets_tight_latency_and_byte_budget(ctr: Path) -> None:
    """Target between an FM's p99 and a wide MLP's median at batch 64, so the MLP misses it by
    compute alone (p99s are best-of-5 rounds of 200 calls against a shared host's ~4 ms spikes)."""
    data = EncodedDataset(ctr)
    vocab = list(data.schema.vocab_sizes)
    c64 = Constraints(threads=1, batch_size=64)
    every = list(range(len(vocab)))
    fm = {"embed_dim": 16, "blocks": check_blocks([{"type": "fm", "fields": every}], 5)}
    big = {"embed_dim": 16, "blocks": check_blocks([{"type": "mlp", "fields": every, "width": 512},
                                                    {"type": "mlp", "inputs": [0], "width": 512}], 5)}
    p99_fm = measure_cost(build_candidate(fm, vocab, 0), c64, runs=200, warmup=10, repeats=5)["p99_ms"]
    p50_big = measure_cost(build_candidate(big, vocab, 0), c64, runs=100, warmup=10, repeats=1)["p50_ms"]
    if p50_big < 1.3 * p99_fm:  # the tail of an FM already reaches a wide MLP's median: no target separates them
        pytest.skip(f"host too loaded for a binding latency target (FM p99 {p99_fm:.3f} ms, MLP p50 {p50_big:.3f} ms)")
    target, budget = (p99_fm * p50_big) ** 0.5, 2_000_000
    constraints = Constraints(budget_bytes=budget, p99_ms=target, threads=1, batch_size=64)
    searcher = tiny_searcher(population=4, cycles=4, embed_dims=(16,), mlp_widths=(512,), max_blocks=2,
                             latency_runs=200, latency_repeats=5)
    result = searcher.search(data, constraints, measure=measure_cost)
    best = result.best
    assert best.feasible and best.p99_ms <= target and best.file_bytes <= budget and best.val_auc > 0.5
    # The target binds by construction (the wide MLP's median is above it); whether this short
    # search happened to draw a candidate that slow is chance, so it is not asserted.
    assert all(c.val_auc is None for c in result.candidates if not c.feasible)  # rejected before training
    model = build_candidate(best.genotype, vocab, searcher.seed)
    assert measure_file_bytes(model)[0] == best.file_bytes  # exact artefact bytes


def test_search_is_deterministic_by_seed_without_latency_target(ctr: Path) -> None:
    data = EncodedDataset(ctr)
    runs = [tiny_searcher(seed=5, latency_runs=5, latency_repeats=1).search(data, Constraints(budget_bytes=40_000), measure=measure_cost)
            for _ in range(2)]
    key = [[(c.genotype, c.val_auc, c.file_bytes) for c in r.candidates] for r in runs]
    assert key[0] == key[1] and runs[0].best.genotype == runs[1].best.genotype


def test_infeasible_constraints_are_one_line_errors(ctr: Path) -> None:
    data = EncodedDataset(ctr)
    with pytest.raises(BudgetTooSmallError, match="below the smallest architecture") as err:
        tiny_searcher().search(data, Constraints(budget_bytes=2_000), measure=measure_cost)
    assert "\n" not in str(err.value)
    with pytest.raises(BudgetTooSmallError, match=r"no architecture met .*p99 ≤ 1e-06 ms.*fastest p99") as err:
        tiny_searcher(population=2, cycles=1, tournament=1).search(data, Constraints(p99_ms=1e-6), measure=measure_cost)
    assert "\n" not in str(err.value)


def test_parse_latency() -> None:
    assert parse_latency("1ms") == 1.0 and parse_latency("500us") == 0.5 and parse_latency("0.002s") == 2.0
    for bad in ("fast", "1 parsec", "0ms", "-1ms"):
        with pytest.raises(BadInputError, match="latency"):
            parse_latency(bad)


# ---------------------------------------------------------------------- CLI
def _cli(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_cli_search_then_compress_and_export(tmp_path: Path, ctr: Path) -> None:
    run = tmp_path / "run"
    r = _cli("search", "architecture", str(ctr), "--out", str(run), "--budget", "40kB", "--latency-p99", "50ms",
             "--population", "2", "--cycles", "1", "--epochs", "2", "--search-rows", "1500")
    assert r.exit_code == 0, r.output
    assert "architecture: embed dim" in r.output and "p99" in r.output
    info = json.loads((run / "search.json").read_text())
    assert len(info["candidates"]) == 3 and info["result"]["file_bytes"] <= 40_000
    assert {"genotype", "val_auc", "file_bytes", "p99_ms", "feasible", "age"} <= set(info["candidates"][0])
    assert json.loads((run / "train.json").read_text())["config"]["model"] == "blocknet"
    assert isinstance(load_checkpoint(run).model, BlockNet)
    r = _cli("export", str(run), "--out", str(tmp_path / "art"), "--budget", "40kB")
    assert r.exit_code == 0, r.output
    r = _cli("compress", str(run), "--budget", "30kB", "--method", "int8", "--epochs", "1", "--profile-runs", "5",
             "--out", str(tmp_path / "small"))
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("args, message", [
    (["--budget", "40kB", "--latency-p99", "1 parsec"], "error: latency '1 parsec' is not a duration"),
    (["--budget", "2kB"], "error: budget 2,000 B (2.00 kB) is below the smallest architecture"),
    (["--latency-p99", "1ns"], "error: latency '1ns' is not a duration"),
])
def test_cli_bad_input_is_one_line_exit_2(tmp_path: Path, ctr: Path, args: list[str], message: str) -> None:
    r = CliRunner().invoke(cli, ["search", "architecture", str(ctr), "--out", str(tmp_path / "run"),
                                 "--population", "2", "--cycles", "0", *args])
    assert r.exit_code == 2 and message in r.output and len(r.output.strip().splitlines()) == 1, r.output
