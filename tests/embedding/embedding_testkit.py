"""Helpers for the embedding storage-format tests (ONNX export with the project convention)."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from ondevice.embedding import DenseEmbedding, EmbeddingLayer

OPSET = 17


def export_onnx(module: nn.Module, ids: torch.Tensor, path: Path) -> Path:
    """``torch.onnx.export`` exactly as the exporter does: int64 ids, dynamic batch, one file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is "legacy"
        torch.onnx.export(module.eval(), (ids,), str(path), input_names=["ids"], output_names=["out"],
                          dynamic_axes={"ids": {0: "batch"}, "out": {0: "batch"}},
                          opset_version=OPSET, dynamo=False)
    assert not Path(f"{path}.data").exists(), "export must be a single file"
    return path


def initializer_bytes(path: Path) -> int:
    """Raw bytes of every initializer in an ONNX file."""
    model = onnx.load(str(path))
    return sum(onnx.numpy_helper.to_array(t).nbytes for t in model.graph.initializer)


def random_ids(vocab_sizes: tuple[int, ...], batch: int, *, seed: int = 0) -> torch.Tensor:
    """Ids per field in ``[-3, vocab + 5)``: in-range, OOV (>= vocab) and negative ids."""
    g = torch.Generator().manual_seed(seed)
    cols = [torch.randint(-3, v + 5, (batch,), generator=g) for v in vocab_sizes]
    ids = torch.stack(cols, dim=1)
    ids[0] = -1  # always at least one negative row ...
    ids[1] = torch.tensor(vocab_sizes)  # ... and one exactly-at-vocab (first OOV) row
    ids[2] = torch.tensor(vocab_sizes) - 1  # ... and the last valid id
    return ids


class LayerOnly(nn.Module):
    """Thin wrapper exporting one embedding layer: ``ids [B, F] -> [B, F, D]``."""

    def __init__(self, layer: EmbeddingLayer) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.layer(ids)


def sparse_dense_layer(vocab_sizes: tuple[int, ...], dim: int, *, zero_share: float, zero_rows: float,
                       seed: int = 0) -> DenseEmbedding:
    """A DenseEmbedding with ``zero_share`` of its entries and ``zero_rows`` of its rows zeroed."""
    g = torch.Generator().manual_seed(seed)
    layer = DenseEmbedding(vocab_sizes, dim)
    w = torch.randn(sum(vocab_sizes), dim, generator=g) * 0.1
    w[torch.rand(w.shape, generator=g) < zero_share] = 0
    w[torch.rand(w.shape[0], generator=g) < zero_rows] = 0
    with torch.no_grad():
        layer.weight.copy_(w)
    return layer
