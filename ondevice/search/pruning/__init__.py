"""Whole-model pruning searchers (embeddings, DNN and interaction weights together)."""

from ondevice.search.pruning.deeplight import DeepLightSearcher

__all__ = ["DeepLightSearcher"]
