"""Embedding searchers: one module per method (PEP, SSEDS, MDE, frequency filtering) plus the baselines."""

from ondevice.search.embedding.baselines import (
    FP16Searcher,
    HashSearcher,
    Int8Searcher,
    UniformSearcher,
)
from ondevice.search.embedding.frequency import FrequencySearcher
from ondevice.search.embedding.mde import MDESearcher
from ondevice.search.embedding.pep import PEPEmbedding, PEPSearcher
from ondevice.search.embedding.quantize import quantize_layer
from ondevice.search.embedding.rule import RULESearcher
from ondevice.search.embedding.sseds import SSEDSSearcher

__all__ = ["FP16Searcher", "FrequencySearcher", "HashSearcher", "Int8Searcher", "MDESearcher", "PEPEmbedding", "PEPSearcher",
           "RULESearcher", "SSEDSSearcher", "UniformSearcher", "quantize_layer"]
