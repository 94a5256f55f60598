"""Architecture search (issue 6): AutoCTR-style evolution of BlockNet DAGs under byte and latency targets.

The run folder of ``ondevice search architecture`` is written by
``ondevice.pipeline.search_runs.search_architecture`` (it supplies the measurement).

>>> from ondevice.search.architecture import EvolutionaryArchitectureSearch, Constraints  # doctest: +SKIP
"""

from ondevice.search.architecture.constraints import parse_latency, resolve_constraints
from ondevice.search.architecture.evolutionary import (
    MUTATIONS,
    ArchitectureSearchResult,
    Candidate,
    Constraints,
    EvolutionaryArchitectureSearch,
    MeasureCost,
    build_candidate,
    mutate_genotype,
    random_genotype,
)

__all__ = [
    "MUTATIONS",
    "ArchitectureSearchResult",
    "Candidate",
    "Constraints",
    "EvolutionaryArchitectureSearch",
    "MeasureCost",
    "build_candidate",
    "mutate_genotype",
    "parse_latency",
    "random_genotype",
    "resolve_constraints",
]
