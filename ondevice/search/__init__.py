"""Searchers: budgeted compression methods behind ``ondevice compress --method`` (DESIGN §7).

``auto`` (try the methods, keep the best) runs the others and measures exported files, so it
lives in :mod:`ondevice.pipeline.auto`; importing ``ondevice.pipeline`` registers it here.

>>> from ondevice.search import make_searcher
>>> make_searcher("sseds+int8", epochs=3).get_params()["dtype"]
'int8'
"""

from ondevice.search.base import (
    SEARCHERS,
    RetrainingSearcher,
    SearchContext,
    Searcher,
    SearchResult,
    make_searcher,
    method_names,
    register_searcher,
)
from ondevice.search.byte_accountant import ByteAccountant
from ondevice.search.embedding import (
    FP16Searcher,
    FrequencySearcher,
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
    "ByteAccountant",
    "DeepLightSearcher",
    "FP16Searcher",
    "FrequencySearcher",
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
