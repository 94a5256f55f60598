"""What the exported graph computes: thin ``nn.Module`` wrappers traced by the exporter.

Each wrapper fixes one task's device contract (input and output names, dtypes and shapes,
dynamic batch axis); the model and its embedding layers provide the computation, so a
compressed embedding layer lowers itself through its own ``forward``.

* CTR models: ``ids`` int64 ``[batch, fields]`` -> ``probability`` float32 ``[batch]``
  (sigmoid of the logit). Ids outside a field's vocabulary, negative ones included, hit the
  field's OOV row inside the graph (``EmbeddingLayer.forward`` maps them).
* Top-K models (BPR-MF): ``user_vector`` float32 ``[batch, dim]`` (the user table stays on
  the server; the app receives its user's vector) -> ``item_ids`` int64 ``[batch, k]`` and
  ``scores`` float32 ``[batch, k]``, best first. Item vectors come from the item embedding
  layer's own forward over ids ``1 .. num_items-1`` (id 0 is the OOV row and is never
  recommended), or, for sparse storage, from its ``full_table`` decode (O(nnz) instead of a
  window gather per row: 36 -> a few ms at batch 1 on 40,000 items), then MatMul + TopK.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ondevice.models import BPRMF, CTRModel, RecModel

CTR_INPUT, CTR_OUTPUT = "ids", "probability"
TOPK_INPUT, TOPK_IDS, TOPK_SCORES = "user_vector", "item_ids", "scores"
DEFAULT_TOP_K = 20


class CTRExport(nn.Module):
    """``ids [B, F] int64 -> probability [B] float32``."""

    def __init__(self, model: CTRModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(ids))


class TopKExport(nn.Module):
    """``user_vector [B, D] float32 -> (item_ids [B, k] int64, scores [B, k] float32)``."""

    def __init__(self, model: BPRMF, k: int) -> None:
        super().__init__()
        self.item_embedding = model.item_embedding
        self.num_items = int(model.num_items)
        self.k = int(k)

    def forward(self, user_vector: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The item ids are built from the batch size (always >= 1, multiplied by 0) so the
        # exporter cannot constant-fold the table: a compressed item layer stays compressed
        # in the file (and in device memory), and no int64 arange of num_items is stored.
        start = user_vector.shape[0] * 0 + 1
        if hasattr(self.item_embedding, "full_table"):  # sparse storage: decode the table once per call, O(nnz)
            zero = torch.ones_like(user_vector[:, 0], dtype=torch.int64).sum() * 0  # a 0 the exporter cannot fold
            items = self.item_embedding.full_table(zero)[1:]  # [N-1, D]
        else:
            item_ids = torch.arange(start, start + self.num_items - 1, dtype=torch.int64).unsqueeze(1)  # [N-1, 1]
            items = self.item_embedding(item_ids).squeeze(1)  # [N-1, D]
        scores = user_vector @ items.t()  # [B, N-1]
        top_scores, top_idx = torch.topk(scores, self.k, dim=1)  # [B, k]
        return top_idx + 1, top_scores


def export_module(model: RecModel, *, k: int = DEFAULT_TOP_K) -> tuple[nn.Module, dict[str, Any]]:
    """The wrapper to trace for ``model`` and its I/O description (for the manifest)."""
    if isinstance(model, CTRModel):
        f = model.num_fields
        io = {
            "task": "ctr",
            "inputs": [{"name": CTR_INPUT, "dtype": "int64", "shape": ["batch", f]}],
            "outputs": [{"name": CTR_OUTPUT, "dtype": "float32", "shape": ["batch"], "kind": "probability"}],
        }
        return CTRExport(model).eval(), io
    if isinstance(model, BPRMF):
        if model.num_items < 2:
            raise ValueError("top-K export needs at least one item besides the OOV row")
        k = min(int(k), model.num_items - 1)
        d = model.embed_dim
        io = {
            "task": "topk",
            "inputs": [{"name": TOPK_INPUT, "dtype": "float32", "shape": ["batch", d]}],
            "outputs": [
                {"name": TOPK_IDS, "dtype": "int64", "shape": ["batch", k], "kind": "topk_ids"},
                {"name": TOPK_SCORES, "dtype": "float32", "shape": ["batch", k], "kind": "topk_scores"},
            ],
            "topk": {"k": k, "num_items": model.num_items, "ids_output": TOPK_IDS, "scores_output": TOPK_SCORES,
                     "excludes_oov_item": True},
        }
        return TopKExport(model, k).eval(), io
    raise TypeError(f"no export contract for model {type(model).__name__}; supported: CTR models and BPRMF")
