"""Data: raw formats -> encoded, memory-mapped datasets; synthetic data with known truth.

``prepare``, ``generate_ctr``, ``generate_topk``, ``synthetic_ctr_dataset`` and ``FORMATS``
are imported lazily (they pull in pyarrow), so ``import ondevice.data`` stays cheap for
code that only reads an encoded dataset.
"""

from __future__ import annotations

from typing import Any

from ondevice.data.dataset import SPLITS, EncodedDataset, Split

_LAZY = {
    "prepare": "ondevice.data.prepare",
    "generate_ctr": "ondevice.data.generate",
    "generate_topk": "ondevice.data.generate",
    "synthetic_ctr_dataset": "ondevice.data.generate",
    "FORMATS": "ondevice.data.formats",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ondevice.data' has no attribute {name!r}")


__all__ = ["FORMATS", "SPLITS", "EncodedDataset", "Split", "generate_ctr", "generate_topk", "prepare",
           "synthetic_ctr_dataset"]
