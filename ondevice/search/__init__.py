"""Searchers: budgeted compression methods behind ``ondevice compress --method`` (DESIGN §7).

>>> from ondevice.search import make_searcher
>>> make_searcher("sseds+int8", epochs=3).get_params()["dtype"]
'int8'
"""

from ondevice.search.base import (
    SEARCHERS,
    ByteAccountant,
    RetrainingSearcher,
    SearchContext,
    Searcher,
    SearchResult,
    make_searcher,
    method_names,
    register_searcher,
)
from ondevice.search.embedding import (
    FP16Searcher,
    HashSearcher,
    Int8Searcher,
    MDESearcher,
    PEPSearcher,
    RULESearcher,
    SSEDSSearcher,
    UniformSearcher,
    quantize_layer,
)
from ondevice.search.pruning import DeepLightSearcher

__all__ = [
    "SEARCHERS",
    "ByteAccountant",
    "DeepLightSearcher",
    "FP16Searcher",
    "HashSearcher",
    "Int8Searcher",
    "MDESearcher",
    "PEPSearcher",
    "RULESearcher",
    "RetrainingSearcher",
    "SearchContext",
    "SSEDSSearcher",
    "SearchResult",
    "Searcher",
    "UniformSearcher",
    "make_searcher",
    "method_names",
    "quantize_layer",
    "register_searcher",
]
