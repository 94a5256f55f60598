"""Searchers: budgeted compression methods behind ``ondevice compress --method`` (DESIGN §7).

>>> from ondevice.search import make_searcher
>>> make_searcher("sseds+int8", epochs=3).get_params()["dtype"]
'int8'
"""

from ondevice.search.auto import AutoSearcher
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
from ondevice.search.features import AdaFSSearcher, AutoFieldSearcher
from ondevice.search.interaction import AutoFISSearcher, OptInterSearcher
from ondevice.search.pruning import DeepLightSearcher

__all__ = [
    "SEARCHERS",
    "AdaFSSearcher",
    "AutoFieldSearcher",
    "AutoFISSearcher",
    "AutoSearcher",
    "ByteAccountant",
    "DeepLightSearcher",
    "FP16Searcher",
    "HashSearcher",
    "Int8Searcher",
    "MDESearcher",
    "OptInterSearcher",
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
