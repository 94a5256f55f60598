"""Data: raw formats -> encoded, memory-mapped datasets; synthetic data with known truth."""

from ondevice.data.dataset import SPLITS, EncodedDataset, Split

__all__ = ["SPLITS", "EncodedDataset", "Split"]
