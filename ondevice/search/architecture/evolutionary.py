"""Latency- and byte-aware architecture search over BlockNet DAGs (AutoCTR-style evolution).

AutoCTR (Song et al., "Towards Automated Neural Interaction Discovery for Click-Through Rate
Prediction", KDD 2020; survey §7) evolves DAGs of virtual blocks (FM, MLP, dot product) with a
multi-objective evolutionary search: survivors by a score of age, performance and complexity
(survey Eq. (39)), parents drawn by rank (survey Eq. (40)), mutations guided by a learning-to-rank
model. Here the genotype is ``{"embed_dim": d, "blocks": [...]}`` (:mod:`ondevice.models.blocknet`,
which adds the DCN cross block), evolved by :func:`ondevice.search.evolution.regularized_evolution`
with ``fitness = val AUC − cost_weight · bytes / budget`` for a feasible candidate and
``−1 − violation`` for one over the byte budget or the p99 target (rejected before training).
The best feasible genotype is retrained from scratch on the full training split
(:func:`ondevice.search.retrain.fit_ctr`). Everything random comes from ``seed``.

Deviations from the paper:

* Cost is measured, not estimated: each candidate is exported and timed by the ``measure``
  callable the pipeline passes (``ondevice.pipeline.measure.measure_cost``: exact bytes, p99 at
  the profile's threads and batch, on *this* host, a proxy for an arm64 profile).
* Survivors are the ``population`` youngest (ageing) and parents the best of a ``tournament``
  sample, instead of Eq. (39)'s top-p score and Eq. (40)'s rank probability: one fitness, and
  latency only gates feasibility, so fitness is deterministic given the same latency verdicts.
* No learning-to-rank surrogate (GBDT + LambdaRank): each candidate is trained briefly
  (``search_rows``, ``search_epochs``, one torch seed) and scored on validation; repeated
  genotypes reuse their evaluation. Each of the seven mutation operators is drawn
  ∝ ``(1 + w_o)/(2 + n_o)``, its smoothed rate of children fitter than their parent.
* The embedding dim is part of the genotype and the initial population (FM, DeepFM, DCN, then
  random DAGs) is repaired to the byte budget, so a byte budget is reachable.

Measured: ``benchmarks/results/architecture_search.md``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ondevice.budget import format_bytes
from ondevice.errors import BadInputError, BudgetTooSmallError
from ondevice.models import BlockNet, CTRModel, build_model
from ondevice.models.blocknet import (
    BLOCK_TYPES,
    CROSS_LAYERS,
    MLP_WIDTHS,
    SPARSE_TYPES,
    check_blocks,
)
from ondevice.search.byte_accountant import ByteAccountant, itemise_bytes
from ondevice.search.evolution import regularized_evolution
from ondevice.search.retrain import fit_ctr

__all__ = ["MUTATIONS", "ArchitectureSearchResult", "Candidate", "Constraints", "EvolutionaryArchitectureSearch",
           "MeasureCost", "build_candidate", "mutate_genotype", "random_genotype", "violation"]

#: ``measure(model, constraints, *, runs, warmup, repeats, seed) -> {"file_bytes", "param_bytes",
#: "p50_ms", "p99_ms"}``: a candidate's exported bytes and latency (``ondevice.pipeline.measure.measure_cost``).
MeasureCost = Callable[..., dict[str, float]]
MUTATIONS = ("type", "width", "edge", "field", "add_block", "drop_block", "embed_dim")
GRAPH_BYTES_ESTIMATE = 6000  # ONNX graph bytes of a small BlockNet, for the cheap pre-repair only


@dataclass(frozen=True)
class Constraints:
    """What the artefact must meet: file bytes, p99 at (batch_size, threads), and where from."""

    budget_bytes: int | None = None
    p99_ms: float | None = None
    threads: int = 1
    batch_size: int = 1
    profile: str | None = None
    arch: str | None = None  # the profile's CPU architecture; None: this host's

    def latency_note(self, host: str) -> str:
        """How the p99 was measured, on this ``host`` architecture (``x86_64``, ``arm64``)."""
        if self.arch and self.arch != host:
            return (f"p99 measured on this {host} host with the profile's {self.threads} thread(s) and batch "
                    f"{self.batch_size}: a proxy for the {self.arch} target, not a measurement on it")
        return f"p99 measured on this {host} host with {self.threads} thread(s) and batch {self.batch_size}"


@dataclass
class Candidate:
    """One evaluated genotype (a row of ``search.json``)."""

    id: int
    genotype: dict[str, Any]
    born: int
    parent: int | None
    mutation: str | None
    file_bytes: int
    param_bytes: int
    p50_ms: float
    p99_ms: float
    feasible: bool
    val_auc: float | None = None
    fitness: float = -np.inf
    seconds: float = 0.0
    age: int = 0
    reused: bool = False  # a re-discovered genotype: measurements copied from its first evaluation


@dataclass
class ArchitectureSearchResult:
    best: Candidate
    candidates: list[Candidate]
    evaluations: int
    seconds: float
    mutation_stats: dict[str, dict[str, int]]
    history: list[dict[str, Any]] = field(default_factory=list)


def genotype_key(genotype: dict[str, Any]) -> str:
    return json.dumps(genotype, sort_keys=True)


# ---------------------------------------------------------------------- cost
def build_candidate(genotype: dict[str, Any], vocab_sizes: Sequence[int], seed: int) -> BlockNet:
    """A fresh BlockNet for ``genotype`` (torch seeded, so the same genotype starts the same)."""
    torch.manual_seed(seed)
    return build_model("blocknet", vocab_sizes, embed_dim=genotype["embed_dim"],  # type: ignore[return-value]
                       blocks=genotype["blocks"])


def _measured_parts(model: CTRModel, cost: dict[str, Any]) -> dict[str, int]:
    """The exported file's bytes of ``model``, itemised as every "too small" message is
    (``ByteAccountant.minimum_parts``): measured, so the graph is the file minus the parameters
    and there is no margin."""
    parts = ByteAccountant(graph_overhead_bytes=0, margin_bytes=0).minimum_parts(model)
    parts["ONNX graph"] = int(cost["file_bytes"]) - sum(parts.values())  # the parts add up to the file
    return parts


def violation(cost: dict[str, float], constraints: Constraints) -> float:
    """How far past the constraints (0 when it meets both): max relative overshoot."""
    over = 0.0
    if constraints.budget_bytes is not None:
        over = max(over, cost["file_bytes"] / constraints.budget_bytes - 1.0)
    if constraints.p99_ms is not None:
        over = max(over, cost["p99_ms"] / constraints.p99_ms - 1.0)
    return over


# ---------------------------------------------------------------------- genotypes
def _random_block(i: int, num_fields: int, rng: np.random.Generator, mlp_widths: Sequence[int]) -> dict[str, Any]:
    kind = str(rng.choice(BLOCK_TYPES))
    fields = [f for f in range(num_fields) if rng.random() < 0.5]
    inputs = [j for j in range(i) if rng.random() < 0.4]
    block: dict[str, Any] = {"type": kind, "fields": fields, "inputs": inputs}
    if kind == "mlp":
        block["width"] = int(rng.choice(mlp_widths))
    if kind == "cross":
        block["layers"] = int(rng.choice(CROSS_LAYERS))
    return block


def _repair(blocks: list[dict[str, Any]], num_fields: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Give every block the inputs it needs (random extra fields), then canonicalise."""
    for b in blocks:
        need = 2 if b["type"] in SPARSE_TYPES else 1
        free = [f for f in range(num_fields) if f not in b["fields"]]
        rng.shuffle(free)
        while len(b["fields"]) + len(b["inputs"]) < need and free:
            b["fields"].append(int(free.pop()))
    return check_blocks(blocks, num_fields)


def random_genotype(num_fields: int, rng: np.random.Generator, *, max_blocks: int = 4,
                    embed_dims: Sequence[int] = (4, 8, 16), mlp_widths: Sequence[int] = MLP_WIDTHS) -> dict[str, Any]:
    """A random valid DAG of 1..max_blocks blocks and an embedding dim from the menu."""
    n = int(rng.integers(1, max_blocks + 1))
    blocks = [_random_block(i, num_fields, rng, mlp_widths) for i in range(n)]
    return {"embed_dim": int(rng.choice(embed_dims)), "blocks": _repair(blocks, num_fields, rng)}


def _step(menu: Sequence[int], value: int, rng: np.random.Generator) -> int:
    """The menu entry one step above or below ``value`` (nearest entry if it is off the menu)."""
    i = int(np.argmin([abs(m - value) for m in menu]))
    j = min(max(i + (1 if rng.random() < 0.5 else -1), 0), len(menu) - 1)
    return int(menu[j if j != i or len(menu) == 1 else (i - 1 if i else i + 1)])


def mutate_genotype(parent: dict[str, Any], op: str, num_fields: int, rng: np.random.Generator, *,
                    max_blocks: int = 4, embed_dims: Sequence[int] = (4, 8, 16),
                    mlp_widths: Sequence[int] = MLP_WIDTHS) -> dict[str, Any]:
    """A valid child of ``parent`` changed by operator ``op`` (one of ``MUTATIONS``); parent untouched."""
    g = copy.deepcopy(parent)
    blocks: list[dict[str, Any]] = g["blocks"]
    i = int(rng.integers(len(blocks)))
    if op == "type":
        kind = str(rng.choice([t for t in BLOCK_TYPES if t != blocks[i]["type"]]))
        blocks[i] = {"type": kind, "fields": blocks[i]["fields"], "inputs": blocks[i]["inputs"]}
        if kind == "mlp":
            blocks[i]["width"] = int(rng.choice(mlp_widths))
        if kind == "cross":
            blocks[i]["layers"] = int(rng.choice(CROSS_LAYERS))
    elif op == "width":
        sized = [k for k, b in enumerate(blocks) if b["type"] in ("mlp", "cross")]
        if not sized:
            return mutate_genotype(parent, "type", num_fields, rng, max_blocks=max_blocks, embed_dims=embed_dims,
                                   mlp_widths=mlp_widths)
        b = blocks[int(rng.choice(sized))]
        if b["type"] == "mlp":
            b["width"] = _step(mlp_widths, b["width"], rng)
        else:
            b["layers"] = _step(CROSS_LAYERS, b["layers"], rng)
    elif op == "edge":
        if len(blocks) < 2:
            return mutate_genotype(parent, "add_block", num_fields, rng, max_blocks=max_blocks,
                                   embed_dims=embed_dims, mlp_widths=mlp_widths)
        i = int(rng.integers(1, len(blocks)))
        j = int(rng.integers(i))
        ins = blocks[i]["inputs"]
        blocks[i]["inputs"] = [k for k in ins if k != j] if j in ins else sorted([*ins, j])
    elif op == "field":
        f = int(rng.integers(num_fields))
        fs = blocks[i]["fields"]
        blocks[i]["fields"] = [k for k in fs if k != f] if f in fs else sorted([*fs, f])
    elif op == "add_block" and len(blocks) < max_blocks:
        blocks.append(_random_block(len(blocks), num_fields, rng, mlp_widths))
    elif op in ("add_block", "drop_block") and len(blocks) > 1:
        del blocks[i]
        for b in blocks[i:]:
            b["inputs"] = [k - (k > i) for k in b["inputs"] if k != i]
    elif op == "embed_dim" and len(embed_dims) > 1:
        g["embed_dim"] = _step(embed_dims, g["embed_dim"], rng)
    elif op not in MUTATIONS:
        raise BadInputError(f"unknown mutation {op!r}; choose one of {', '.join(MUTATIONS)}")
    g["blocks"] = _repair(blocks, num_fields, rng)
    return g


def reference_genotypes(num_fields: int, embed_dim: int) -> list[dict[str, Any]]:
    """Hand-designed starting points: FM, a one-hidden-layer DeepFM, a DCN (our choice; AutoCTR starts random)."""
    every = list(range(num_fields))
    return [
        {"embed_dim": embed_dim, "blocks": check_blocks([{"type": "fm", "fields": every}], num_fields)},
        {"embed_dim": embed_dim, "blocks": check_blocks([{"type": "fm", "fields": every},
                                                         {"type": "mlp", "fields": every, "width": 64}], num_fields)},
        {"embed_dim": embed_dim, "blocks": check_blocks([{"type": "cross", "fields": every, "layers": 2},
                                                         {"type": "mlp", "fields": every, "width": 64}], num_fields)},
    ]


# ---------------------------------------------------------------------- data
@dataclass
class _Split:
    ids: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


class _Subsample:
    """The train/val splits cut to seeded random subsets (what ``fit_ctr`` reads of a dataset)."""

    def __init__(self, data: Any, train_rows: int | None, val_rows: int | None, seed: int) -> None:
        rng = np.random.default_rng([seed, 4099])
        self._splits = {}
        for name, rows in (("train", train_rows), ("val", val_rows)):
            s = data.split(name)
            keep = np.arange(len(s)) if rows is None or rows >= len(s) else np.sort(rng.choice(len(s), rows, replace=False))
            self._splits[name] = _Split(np.asarray(s.ids[keep], dtype=np.int64), np.asarray(s.labels[keep], dtype=np.float32))

    def split(self, name: str) -> _Split:
        return self._splits[name]


# ---------------------------------------------------------------------- the search
class EvolutionaryArchitectureSearch:
    """Multi-objective regularised evolution over BlockNet genotypes (module docstring).

    Parameters: ``population``, ``cycles``, ``tournament`` of the evolution; ``max_blocks``,
    ``embed_dims``, ``mlp_widths`` of the search space; ``search_rows`` / ``search_val_rows``
    (subsample sizes, ``None`` = whole split), ``search_epochs``, ``lr``, ``batch_size`` of
    each candidate's short training; ``cost_weight`` (AUC points per budget-fraction of
    bytes); ``latency_runs`` / ``latency_warmup`` per candidate (p99 of the timed calls, best of
    ``latency_repeats`` rounds); ``time_limit`` (seconds, no new candidate after it); ``seed``.

    Initial population: FM, a one-hidden-layer DeepFM and a DCN over all fields (while
    ``population`` leaves room for one random genotype), then random DAGs; each is pre-repaired
    to the byte budget by stepping its embedding dim down (fp32 estimate).
    """

    def __init__(self, *, population: int = 8, cycles: int = 16, tournament: int = 3, max_blocks: int = 4,
                 embed_dims: Sequence[int] = (4, 8, 16), mlp_widths: Sequence[int] = MLP_WIDTHS,
                 search_rows: int | None = 100_000, search_val_rows: int | None = 50_000, search_epochs: int = 1,
                 lr: float = 3e-3, batch_size: int = 1024, cost_weight: float = 0.01, latency_runs: int = 200,
                 latency_warmup: int = 20, latency_repeats: int = 3, time_limit: float | None = None,
                 seed: int = 0) -> None:
        self.population = population
        self.cycles = cycles
        self.tournament = tournament
        self.max_blocks = max_blocks
        self.embed_dims = [int(d) for d in embed_dims]
        self.mlp_widths = [int(w) for w in mlp_widths]
        self.search_rows = search_rows
        self.search_val_rows = search_val_rows
        self.search_epochs = search_epochs
        self.lr = lr
        self.batch_size = batch_size
        self.cost_weight = cost_weight
        self.latency_runs = latency_runs
        self.latency_warmup = latency_warmup
        self.latency_repeats = latency_repeats
        self.time_limit = time_limit
        self.seed = seed

    def get_params(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def _check(self, num_fields: int) -> None:
        if num_fields < 2:
            raise BadInputError(f"architecture search needs at least 2 fields, the data has {num_fields}")
        if self.population < 1 or self.cycles < 0 or not 1 <= self.tournament <= self.population:
            raise BadInputError(f"--population must be >= 1, --cycles >= 0 and 1 <= tournament <= population; "
                                f"got {self.population}, {self.cycles}, {self.tournament}")
        if self.max_blocks < 1 or not self.embed_dims or min(self.embed_dims) < 1 or not self.mlp_widths:
            raise BadInputError("max_blocks, embed_dims and mlp_widths must be >= 1 and non-empty")
        if self.search_epochs < 1:
            raise BadInputError(f"search epochs must be >= 1, got {self.search_epochs}")

    # ------------------------------------------------------------------ search
    def search(self, data: Any, constraints: Constraints, *, measure: MeasureCost) -> ArchitectureSearchResult:
        """Evolve genotypes on ``data``'s train/val splits; the best feasible one (never reads test).

        ``measure``: exact file bytes and latency of a candidate (:data:`MeasureCost`), supplied
        by the pipeline (``ondevice.pipeline.measure.measure_cost``): this package never exports.
        """
        vocab = list(data.schema.vocab_sizes)
        f = len(vocab)
        self._check(f)
        sub = _Subsample(data, self.search_rows, self.search_val_rows, self.seed)
        self._check_smallest(vocab, constraints, measure)
        space = {"max_blocks": self.max_blocks, "embed_dims": self.embed_dims, "mlp_widths": self.mlp_widths}
        memo: dict[str, Candidate] = {}
        log: list[Candidate] = []
        stats = {op: {"tries": 0, "wins": 0} for op in MUTATIONS}
        pending: dict[str, Any] = {}
        refs = reference_genotypes(f, max(self.embed_dims))

        def fits(g: dict[str, Any]) -> dict[str, Any]:
            """Cheap pre-repair: step the embedding dim down while the fp32 estimate is over budget."""
            if constraints.budget_bytes is None:
                return g
            while True:
                est = 4 * sum(p.numel() for p in build_model("blocknet", vocab, embed_dim=g["embed_dim"],
                                                               blocks=g["blocks"]).parameters())
                smaller = [d for d in self.embed_dims if d < g["embed_dim"]]
                if est + GRAPH_BYTES_ESTIMATE <= constraints.budget_bytes or not smaller:
                    return g
                g = {**g, "embed_dim": max(smaller)}

        def init(rng: np.random.Generator) -> dict[str, Any]:
            pending.clear()
            k = sum(c.parent is None for c in log)
            g = refs[k] if k < len(refs) and k < self.population - 1 else random_genotype(f, rng, **space)
            return fits(g)

        def mutate(parent: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
            weights = np.array([(1 + stats[o]["wins"]) / (2 + stats[o]["tries"]) for o in MUTATIONS])
            op = str(rng.choice(MUTATIONS, p=weights / weights.sum()))
            child = fits(mutate_genotype(parent, op, f, rng, **space))
            pending.update(op=op, parent=memo[genotype_key(parent)])
            return child

        def fitness(g: dict[str, Any]) -> float:
            key = genotype_key(g)
            parent: Candidate | None = pending.get("parent")
            op = pending.get("op")
            if key in memo:  # re-discovered: a new individual, the earlier measurements
                cand = dataclasses.replace(memo[key], id=len(log), born=len(log), mutation=op, reused=True,
                                           parent=parent.id if parent else None, seconds=0.0)
            else:
                cand = memo[key] = self._evaluate(g, len(log), parent, op, vocab, sub, constraints, measure)
            log.append(cand)
            if parent is not None and op is not None:
                stats[op]["tries"] += 1
                stats[op]["wins"] += int(cand.fitness > parent.fitness)
            pending.clear()
            return cand.fitness

        evo = regularized_evolution(init=init, mutate=mutate, fitness=fitness, population=self.population,
                                    cycles=self.cycles, tournament=self.tournament, seed=self.seed,
                                    time_limit=self.time_limit)
        for c in log:
            c.age = len(log) - 1 - c.born
        feasible = [c for c in log if c.feasible]
        if not feasible:
            raise self._none_feasible(log, constraints, vocab)
        best = max(feasible, key=lambda c: (c.fitness, -c.id))
        return ArchitectureSearchResult(best=best, candidates=log, evaluations=evo.evaluations, seconds=evo.seconds,
                                        mutation_stats=stats, history=evo.history)

    def _evaluate(self, g: dict[str, Any], index: int, parent: Candidate | None, op: str | None,
                  vocab: list[int], sub: _Subsample, constraints: Constraints, measure: MeasureCost) -> Candidate:
        started = time.perf_counter()
        model = build_candidate(g, vocab, self.seed)
        cost = measure(model, constraints, runs=self.latency_runs, warmup=self.latency_warmup,
                            repeats=self.latency_repeats, seed=self.seed)
        over = violation(cost, constraints)
        cand = Candidate(id=index, genotype=g, born=index, parent=parent.id if parent else None, mutation=op,
                         file_bytes=int(cost["file_bytes"]), param_bytes=int(cost["param_bytes"]),
                         p50_ms=cost["p50_ms"], p99_ms=cost["p99_ms"], feasible=over <= 0.0)
        if cand.feasible:  # only feasible candidates are trained (AutoCTR rejects the others)
            fit = fit_ctr(model, sub, epochs=self.search_epochs, lr=self.lr, batch_size=self.batch_size,  # type: ignore[arg-type]
                          seed=self.seed, patience=self.search_epochs)
            cand.val_auc = float(fit.val["auc"])
            rel = cost["file_bytes"] / constraints.budget_bytes if constraints.budget_bytes else 0.0
            cand.fitness = cand.val_auc - self.cost_weight * rel
        else:
            cand.fitness = -1.0 - over
        cand.seconds = time.perf_counter() - started
        return cand

    def _check_smallest(self, vocab: list[int], constraints: Constraints, measure: MeasureCost) -> None:
        """Fail fast when even an FM on the smallest embedding dim is over the byte budget."""
        if constraints.budget_bytes is None:
            return
        g = reference_genotypes(len(vocab), min(self.embed_dims))[0]
        model = build_candidate(g, vocab, self.seed)
        cost = measure(model, constraints, runs=1, warmup=0, repeats=1)
        if cost["file_bytes"] > constraints.budget_bytes:
            parts = _measured_parts(model, cost)
            raise BudgetTooSmallError(
                f"budget {format_bytes(constraints.budget_bytes)} is below the smallest architecture the search can "
                f"build, FM at embedding dim {min(self.embed_dims)}: {format_bytes(int(cost['file_bytes']))} = "
                f"{itemise_bytes(parts)}; raise --budget", minimum_bytes=int(cost["file_bytes"]), parts=parts)

    def _none_feasible(self, log: list[Candidate], constraints: Constraints, vocab: list[int]) -> BudgetTooSmallError:
        smallest = min(log, key=lambda c: c.file_bytes)
        fastest = min(log, key=lambda c: c.p99_ms)
        want = []
        if constraints.budget_bytes is not None:
            want.append(f"≤ {format_bytes(constraints.budget_bytes)}")
        if constraints.p99_ms is not None:
            want.append(f"p99 ≤ {constraints.p99_ms:g} ms")
        model = build_candidate(smallest.genotype, vocab, self.seed)
        parts = _measured_parts(model, {"file_bytes": smallest.file_bytes, "param_bytes": smallest.param_bytes})
        return BudgetTooSmallError(
            f"no architecture met {' and '.join(want)} in {len(log)} candidates (smallest "
            f"{format_bytes(smallest.file_bytes)} = {itemise_bytes(parts)}; fastest p99 {fastest.p99_ms:.4f} ms at "
            f"batch {constraints.batch_size}, {constraints.threads} thread(s)); raise --budget/--latency-p99 or search "
            "longer", minimum_bytes=smallest.file_bytes, parts=parts)
