"""What the exported graph computes: thin ``nn.Module`` wrappers traced by the exporter.

Each wrapper fixes one task's device contract (input and output names, dtypes and shapes,
dynamic batch axis); the model and its embedding layers provide the computation, so a
compressed embedding layer lowers itself through its own ``forward``.

* CTR models: ``ids`` int64 ``[batch, fields]`` -> ``probability`` float32 ``[batch]``
  (sigmoid of the logit). Ids outside a field's vocabulary, negative ones included, hit the
  field's OOV row inside the graph (``EmbeddingLayer.forward`` maps them).
* Top-K models (BPR-MF): ``user_vector`` float32 ``[batch, dim]`` (the user table stays on
  the server; the app receives its user's vector, see the manifest's ``topk.user_vector``) and
  ``exclude_items`` int64 ``[batch, S]`` (items the user has already seen, ``-1``-padded; pass
  an empty ``[batch, 0]`` array to exclude nothing) -> ``item_ids`` int64 ``[batch, k]`` and
  ``scores`` float32 ``[batch, k]``, best first. An excluded item's score is set to ``-inf``
  before the TopK (ScatterElements), so it is never returned; ids ``<= 0`` or ``>= num_items``
  in ``exclude_items`` are ignored (padding). When fewer than ``k`` items remain, the missing
  slots are id ``-1`` with score ``-inf``. The id 0 (OOV row) is never recommended.

  ``exclude_items`` is a *required* input: ONNX has no optional-with-default input that every
  runtime honours (an initializer listed as a graph input is overridable in onnxruntime but
  its default cannot have the dynamic batch axis), and a second graph without it would double
  the item table the app carries. An id list is what an app keeps anyway (a padded ``[1, S]``
  array of its user's history), and costs ``8·S`` bytes per call against ``4·N`` for a mask.

  Item vectors (``[D, N]``, the OOV item's column set to ``-inf`` with the excluded ones) come
  from the item embedding layer's own forward over ids ``0 .. num_items-1`` or, for sparse
  storage, its ``full_table`` decode (O(nnz), written transposed), computed from a trace-only int64
  input ``table_seed`` (= 0) so the exporter cannot fold the table into the file.
  ``onnx_export.bind_table_seed`` then makes it an initializer 0 (``.onnx``: onnxruntime folds
  the decode once at session creation, every call is MatMul + TopK; the file keeps the
  compressed table, resident memory holds the decoded fp32 ``[D, N]`` table) or
  ``Shape(user_vector)[0]·0`` (``.ort``: its converter applies the folding offline and
  would store the table dense, so the table is decoded per call). RULE's elastic subsets are
  never rebuilt into a zero-padded ``[D, N]`` table: folded at load, the table holds only the
  dims some item uses (``used_dims``) and is scored against ``user_vector[:, used_dims]`` (one
  MatMul); decoded per call, each stored subset table is scored against its own dims
  (``item_scores``), so a call decodes the stored values and nothing more.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ondevice.embedding.elastic import select_dims
from ondevice.models import BPRMF, CTRModel, RecModel

CTR_INPUT, CTR_OUTPUT = "ids", "probability"
TOPK_INPUT, TOPK_EXCLUDE, TOPK_IDS, TOPK_SCORES = "user_vector", "exclude_items", "item_ids", "scores"
#: The trace-only input the item table is computed from (bound to a constant 0 after export).
TABLE_SEED = "table_seed"
DEFAULT_TOP_K = 20


class CTRExport(nn.Module):
    """``ids [B, F] int64 -> probability [B] float32``."""

    def __init__(self, model: CTRModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(ids))


class TopKExport(nn.Module):
    """``(user_vector [B, D] float32, exclude_items [B, S] int64) -> (item_ids [B, k] int64, scores [B, k] float32)``."""

    def __init__(self, model: BPRMF, k: int) -> None:
        super().__init__()
        self.item_embedding = model.item_embedding
        self.num_items = int(model.num_items)
        self.k = int(k)
        used = self.item_embedding.used_dims() if hasattr(self.item_embedding, "used_dims") else None
        #: the dims any item vector uses, when fewer than D (RULE's elastic table): scored alone
        self.used_dims: list[int] | None = used if used is not None and len(used) < self.item_embedding.dim else None
        #: the item table is folded once at session creation (``.onnx``) or decoded per call
        #: (``.ort``); ``export_onnx`` sets it before tracing
        self.table_at_load = True

    def item_table(self, seed: torch.Tensor) -> torch.Tensor:
        """Every item's vector, transposed: ``[D, N]`` (column 0: the OOV item), computed from the int64 scalar ``seed`` (= 0);
        ``[len(used_dims), N]`` when the table leaves some dims zero for every item."""
        if self.used_dims is not None:
            return self.item_embedding.used_table(seed)
        if hasattr(self.item_embedding, "full_table"):  # sparse storage: O(nnz) decode, written transposed
            return self.item_embedding.full_table(seed, transposed=True)
        item_ids = torch.arange(seed, seed + self.num_items, dtype=torch.int64).unsqueeze(1)  # [N, 1]
        return self.item_embedding(item_ids).squeeze(1).t()

    def _scored(self, user_vector: torch.Tensor, table_seed: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Every item's score ``[B, N]`` before any exclusion, and each item id's column ``[N]``
        when the columns are not the item ids (None when they are)."""
        seed = torch.zeros((), dtype=torch.int64) if table_seed is None else table_seed.reshape(())
        if not self.table_at_load and hasattr(self.item_embedding, "item_scores"):
            return self.item_embedding.item_scores(user_vector, seed)  # per call: the stored tables as they are
        if self.used_dims is not None:  # the other dims are zero in every item vector
            user_vector = select_dims(user_vector, self.used_dims)
        return user_vector @ self.item_table(seed), None

    def scores(self, user_vector: torch.Tensor, table_seed: torch.Tensor | None = None) -> torch.Tensor:
        """Every item's score ``[B, N]`` (column = item id), before any exclusion."""
        scores, column = self._scored(user_vector, table_seed)
        return scores if column is None else scores[:, column]

    def forward(self, user_vector: torch.Tensor, exclude_items: torch.Tensor | None = None,
                table_seed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if exclude_items is None:
            exclude_items = torch.zeros((user_vector.shape[0], 0), dtype=torch.int64)
        scores, column = self._scored(user_vector, table_seed)  # [B, N]
        # Column 0 (the OOV item), the excluded ids and the ignored ones (padding, out of range: mapped to 0) -> -inf.
        valid = (exclude_items > 0) & (exclude_items < self.num_items)
        oov = torch.zeros_like(user_vector[:, :1], dtype=torch.int64)  # [B, 1]
        banned = torch.cat([oov, torch.where(valid, exclude_items, 0)], dim=1)
        if column is not None:  # item ids -> their columns
            banned = column[banned]
        scores = scores.scatter(1, banned, float("-inf"))
        top_scores, top_idx = torch.topk(scores, self.k, dim=1)  # [B, k]
        if column is not None:  # columns -> item ids: O(N) per call instead of reordering [B, N] scores
            item_of_column = torch.zeros_like(column).scatter(0, column, torch.arange(column.shape[0], dtype=torch.int64))
            top_idx = item_of_column[top_idx]
        return torch.where(top_scores == float("-inf"), -1, top_idx), top_scores


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
            "inputs": [{"name": TOPK_INPUT, "dtype": "float32", "shape": ["batch", d]},
                       {"name": TOPK_EXCLUDE, "dtype": "int64", "shape": ["batch", "seen"], "kind": "exclude_items",
                        "padding": -1}],
            "outputs": [
                {"name": TOPK_IDS, "dtype": "int64", "shape": ["batch", k], "kind": "topk_ids"},
                {"name": TOPK_SCORES, "dtype": "float32", "shape": ["batch", k], "kind": "topk_scores"},
            ],
            "topk": {"k": k, "num_items": model.num_items, "ids_output": TOPK_IDS, "scores_output": TOPK_SCORES,
                     "excludes_oov_item": True, "exclude_input": TOPK_EXCLUDE, "table_seed": TABLE_SEED},
        }
        return TopKExport(model, k).eval(), io
    raise TypeError(f"no export contract for model {type(model).__name__}; supported: CTR models and BPRMF")
