"""DistributedDataParallel setup: the process's rank, and the model wrapped for DDP.

When started by ``torchrun`` (``WORLD_SIZE > 1``) the process group is initialised (gloo on
CPU, nccl on CUDA) and the model is wrapped in ``DistributedDataParallel`` (with SyncBatchNorm
on CUDA, one set of BatchNorm statistics over the global batch). A single process gets
``DistInfo()`` (rank 0 of 1) and its model unwrapped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "wrap_distributed"]


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> DistInfo:
    """This process's rank and world size; initialises the process group under ``torchrun``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def wrap_distributed(model: torch.nn.Module, device: torch.device, dist_info: DistInfo) -> torch.nn.Module:
    """``model`` itself, or under ``torchrun`` its DistributedDataParallel wrapper (SyncBatchNorm on CUDA)."""
    if not dist_info.enabled:
        return model
    train_model: torch.nn.Module = model
    if device.type == "cuda":  # one set of BatchNorm statistics over the global batch
        train_model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return torch.nn.parallel.DistributedDataParallel(train_model, device_ids=[device.index] if device.type == "cuda" else None)
