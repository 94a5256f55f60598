"""Epoch order and CTR batches, shared by the trainer and the searchers.

Epoch ``e`` visits the rows in ``numpy.random.default_rng([seed, e]).permutation(n)``; a
training split that fits in memory is copied once into int64 tensors and batches are gathered
with ``index_select`` (the hot path of ``benchmarks/train_throughput.py``). Under DDP each
rank takes its disjoint share of every global batch. A single process never yields a one-row
batch when the split has more rows than that: a lone last row joins the batch before it
(BatchNorm cannot train on one row, and ``n % batch_size == 1`` is an ordinary split size).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from ondevice.train.distributed import DistInfo

__all__ = ["ctr_batch_count", "epoch_order", "in_memory_ctr", "iter_ctr_batches"]

_IN_MEMORY_LIMIT = 1 << 30  # bytes of ids a split may take before we stream it in blocks


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """Row order for one epoch: a full permutation, deterministic in (seed, epoch)."""
    rng = np.random.default_rng([seed, epoch])
    return rng.permutation(n)


def ctr_batch_count(rows: int, batch_size: int, world: int = 1) -> int:
    """Batches :func:`iter_ctr_batches` yields for ``rows`` rows: DDP drops the partial last batch;
    one process keeps it, folding a lone last row into the batch before it."""
    if world > 1:
        return rows // batch_size
    n = math.ceil(rows / batch_size)
    return n - 1 if n > 1 and rows % batch_size == 1 else n


def iter_ctr_batches(
    ids: np.ndarray,
    labels: np.ndarray,
    order: np.ndarray,
    batch_size: int,
    dist_info: DistInfo,
    device: torch.device,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield this rank's share of each global batch (``batch_size`` rows over all ranks)."""
    world, rank = dist_info.world_size, dist_info.rank
    n_batches = ctr_batch_count(len(order), batch_size, world)
    per_rank = batch_size // world
    in_memory = isinstance(ids, torch.Tensor)
    for b in range(n_batches):
        end = len(order) if world == 1 and b == n_batches - 1 else (b + 1) * batch_size
        rows = order[b * batch_size : end]
        if world > 1:
            rows = rows[rank * per_rank : (rank + 1) * per_rank]
        rows = np.sort(rows)  # sequential access into the memmap (and the same row order in memory)
        if in_memory:  # one gather from the int64 copy: no per-batch dtype conversion
            index = torch.from_numpy(rows)
            x, y = ids.index_select(0, index), labels.index_select(0, index)
        else:
            x = torch.from_numpy(np.asarray(ids[rows], dtype=np.int64))
            y = torch.from_numpy(np.asarray(labels[rows], dtype=np.float32))
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def in_memory_ctr(split: Any) -> tuple[Any, Any]:
    """The split as (int64 ids, float32 labels) tensors when it fits, else the memmaps."""
    if split.ids.nbytes * 2 < _IN_MEMORY_LIMIT:
        ids = torch.from_numpy(np.ascontiguousarray(split.ids, dtype=np.int64))
        labels = torch.from_numpy(np.array(split.labels, dtype=np.float32))
        return ids, labels
    return split.ids, split.labels
