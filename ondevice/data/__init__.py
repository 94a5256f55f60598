"""Data: raw formats -> encoded, memory-mapped datasets; synthetic data with known truth."""

from ondevice.data.dataset import SPLITS, EncodedDataset, Split
from ondevice.data.formats import FORMATS
from ondevice.data.generate import generate_ctr, generate_topk, synthetic_ctr_dataset
from ondevice.data.preparation import prepare

__all__ = ["FORMATS", "SPLITS", "EncodedDataset", "Split", "generate_ctr", "generate_topk", "prepare",
           "synthetic_ctr_dataset"]
