"""Architecture search (issue 6): AutoCTR-style evolution of BlockNet DAGs under byte and latency targets.

>>> from ondevice.search.architecture import EvolutionaryArchitectureSearch, Constraints  # doctest: +SKIP
"""

from ondevice.search.architecture.evolutionary import (
    MUTATIONS,
    ArchitectureSearchResult,
    Candidate,
    Constraints,
    EvolutionaryArchitectureSearch,
    build_candidate,
    measure_cost,
    mutate_genotype,
    random_genotype,
)
from ondevice.search.architecture.run import parse_latency, search_architecture

__all__ = [
    "MUTATIONS",
    "ArchitectureSearchResult",
    "Candidate",
    "Constraints",
    "EvolutionaryArchitectureSearch",
    "build_candidate",
    "measure_cost",
    "mutate_genotype",
    "parse_latency",
    "random_genotype",
    "search_architecture",
]
