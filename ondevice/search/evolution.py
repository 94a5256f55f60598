"""Regularised evolution (Real et al., "Regularized Evolution for Image Classifier
Architecture Search", AAAI'19, Algorithm 1), shared by every searcher that evolves
configurations (RULE's block subsets; architecture search reuses it).

Algorithm, with population ``P``, cycles ``C`` and tournament (sample) size ``S``::

    population <- P individuals from init(rng), each evaluated
    repeat C times:
        sample <- S individuals drawn uniformly without replacement from population
        parent <- the fittest of sample
        child  <- mutate(parent, rng)            (mutate repairs to the constraints itself)
        evaluate child; append it to population; remove the *oldest* individual
    return the fittest individual ever evaluated ("history" in the paper)

Ageing (removing the oldest, not the worst) is what makes it "regularised": a genotype
survives only by being re-discovered through its children, which favours configurations
whose neighbourhood is good, not one lucky evaluation. Fitness is maximised.
Everything random comes from ``numpy.random.default_rng(seed)``: same seed, same result.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

from ondevice.errors import BadInputError

__all__ = ["EvolutionResult", "regularized_evolution"]

T = TypeVar("T")


@dataclass
class EvolutionResult(Generic[T]):
    """The best individual ever evaluated, its fitness, and a per-cycle trace."""

    best: T
    best_fitness: float
    evaluations: int
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)


def regularized_evolution(
    *,
    init: Callable[[np.random.Generator], T],
    mutate: Callable[[T, np.random.Generator], T],
    fitness: Callable[[T], float],
    population: int = 20,
    cycles: int = 50,
    tournament: int = 5,
    seed: int = 0,
    trace_every: int = 1,
    time_limit: float | None = None,
) -> EvolutionResult[T]:
    """Maximise ``fitness`` over individuals made by ``init`` and ``mutate`` (module docstring).

    ``init(rng)`` and ``mutate(parent, rng)`` must return valid individuals (repaired to
    any constraint, e.g. a byte budget); ``mutate`` must not modify ``parent``. The trace
    holds, every ``trace_every`` cycles, the child's and the best-so-far fitness.
    ``time_limit`` (seconds): no new individual is started once it has passed (at least one
    is always evaluated); ``evaluations`` counts those that were.
    """
    if population < 1 or cycles < 0 or not 1 <= tournament <= population:
        raise BadInputError(f"evolution needs population >= 1, cycles >= 0 and 1 <= tournament <= population; "
                            f"got P={population}, C={cycles}, S={tournament}")
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    queue: collections.deque[tuple[T, float]] = collections.deque()
    best, best_fit = None, -np.inf

    def out_of_time() -> bool:
        return time_limit is not None and time.perf_counter() - started > time_limit

    for _ in range(population):
        if queue and out_of_time():
            break
        ind = init(rng)
        f = float(fitness(ind))
        queue.append((ind, f))
        if f > best_fit:
            best, best_fit = ind, f
    history: list[dict[str, Any]] = [{"cycle": 0, "best_fitness": best_fit}]
    evaluations = len(queue)
    for cycle in range(1, cycles + 1):
        if out_of_time():
            break
        picks = rng.choice(len(queue), size=min(tournament, len(queue)), replace=False)
        parent = max((queue[i] for i in picks), key=lambda p: p[1])[0]
        child = mutate(parent, rng)
        f = float(fitness(child))
        queue.append((child, f))
        queue.popleft()
        evaluations += 1
        if f > best_fit:
            best, best_fit = child, f
        if cycle % trace_every == 0 or cycle == cycles:
            history.append({"cycle": cycle, "child_fitness": f, "best_fitness": best_fit})
    assert best is not None
    return EvolutionResult(best=best, best_fitness=best_fit, evaluations=evaluations,
                           seconds=time.perf_counter() - started, history=history)
