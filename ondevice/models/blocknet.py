"""BlockNet: a CTR model whose interaction part is a small DAG of blocks (AutoCTR, KDD'20).

AutoCTR (Song et al., "Towards Automated Neural Interaction Discovery for Click-Through
Rate Prediction", KDD'20; survey §7) abstracts FM, MLP and dot-product layers into
*virtual blocks* wired as a DAG. Every block reads

* **sparse inputs**: field vectors ``e_f`` of the shared embedding (``fields``), ``[B, k, D]``;
* **dense inputs**: the flattened field vectors and the outputs of earlier blocks (``inputs``).

Dense block outputs feed FM / dot-product blocks as extra ``D``-dim vectors through a linear
projection (AutoCTR's dense-to-sparse conversion). Block types (``config["blocks"][i]["type"]``):

* ``fm``: NFM bi-interaction ½[(Σ_i e_i)² − Σ_i e_i²] in O(k·D) (Rendle'10's linear-time form before
  the final sum), ``[B, k, D] -> [B, D]``; a unit head over it is the FM second-order term;
* ``mlp``: ``Linear -> ReLU`` of ``width`` over the dense input, ``[B, n] -> [B, width]``;
* ``dot``: pairwise inner products <e_i, e_j>, i < j, ``[B, k, D] -> [B, k(k−1)/2]``;
* ``cross``: ``layers`` DCN cross layers (Wang et al. ADKDD'17) on the dense input,
  ``[B, n] -> [B, n]``.

logit = w0 + Σ_f w_f (first order, when ``linear`` is kept) + Linear(concat of the *leaf*
blocks' outputs, i.e. those no later block reads). The DAG is fixed at construction: the
forward has no control flow that depends on data, so it exports through the normal lowering.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ondevice.embedding import EmbeddingLayer
from ondevice.errors import BadInputError
from ondevice.models.base import MLP, CTRModel, register_model
from ondevice.models.dcn import CrossNetwork

__all__ = ["BLOCK_TYPES", "CROSS_LAYERS", "MLP_WIDTHS", "BlockNet", "check_blocks"]

BLOCK_TYPES = ("fm", "mlp", "dot", "cross")
MLP_WIDTHS = (16, 32, 64, 128, 256)  # the width menu of MLP blocks
CROSS_LAYERS = (1, 2, 3)  # the depth menu of cross blocks
SPARSE_TYPES = ("fm", "dot")  # blocks that read vectors [B, k, D]; the others read [B, n]


def check_blocks(blocks: Sequence[dict[str, Any]], num_fields: int) -> list[dict[str, Any]]:
    """The canonical form of a block list; one-line ``BadInputError`` naming the bad block."""
    if not blocks:
        raise BadInputError("blocknet needs at least one block; e.g. [{'type': 'fm', 'fields': [0, 1]}]")
    out: list[dict[str, Any]] = []
    for i, raw in enumerate(blocks):
        kind = raw.get("type")
        if kind not in BLOCK_TYPES:
            raise BadInputError(f"block {i}: type {kind!r} is not one of {', '.join(BLOCK_TYPES)}")
        extra = {"mlp": {"width"}, "cross": {"layers"}}.get(kind, set())
        unknown = sorted(set(raw) - {"type", "fields", "inputs"} - extra)
        if unknown:
            raise BadInputError(f"block {i} ({kind}): unknown key(s) {', '.join(unknown)}")
        fields = sorted({int(f) for f in raw.get("fields", [])})
        inputs = sorted({int(j) for j in raw.get("inputs", [])})
        if any(not 0 <= f < num_fields for f in fields):
            raise BadInputError(f"block {i}: fields {fields} outside 0..{num_fields - 1}")
        if any(not 0 <= j < i for j in inputs):
            raise BadInputError(f"block {i}: inputs {inputs} must name earlier blocks (0..{i - 1})")
        vectors = len(fields) + len(inputs)
        if vectors < (2 if kind in SPARSE_TYPES else 1):
            raise BadInputError(f"block {i} ({kind}) reads {vectors} input(s); it needs "
                                f"{'2 or more' if kind in SPARSE_TYPES else 'at least 1'}")
        block: dict[str, Any] = {"type": kind, "fields": fields, "inputs": inputs}
        if kind == "mlp":
            block["width"] = int(raw.get("width", 64))
            if block["width"] < 1:
                raise BadInputError(f"block {i} (mlp): width must be >= 1, got {block['width']}")
        if kind == "cross":
            block["layers"] = int(raw.get("layers", 1))
            if block["layers"] < 1:
                raise BadInputError(f"block {i} (cross): layers must be >= 1, got {block['layers']}")
        out.append(block)
    return out


def leaf_blocks(blocks: Sequence[dict[str, Any]]) -> list[int]:
    """Indices of the blocks no later block reads: their outputs make the logit."""
    used = {j for b in blocks for j in b["inputs"]}
    return [i for i in range(len(blocks)) if i not in used]


class FieldSelect(nn.Module):
    """``[B, F, D] -> [B, k, D]``: the block's fields (identity when it reads all of them)."""

    def __init__(self, fields: Sequence[int], num_fields: int) -> None:
        super().__init__()
        self.all = list(fields) == list(range(num_fields))
        self.register_buffer("index", torch.tensor(list(fields), dtype=torch.int64), persistent=False)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return emb if self.all else emb.index_select(1, self.index)


class FMBlock(nn.Module):
    """Bi-interaction ½[(Σ e)² − Σ e²]: ``[B, k, D] -> [B, D]``."""

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return 0.5 * (s.sum(dim=1).pow(2) - s.pow(2).sum(dim=1))


class DotBlock(nn.Module):
    """Inner products of every pair i < j: ``[B, k, D] -> [B, k(k−1)/2]``."""

    def __init__(self, k: int) -> None:
        super().__init__()
        rows, cols = torch.triu_indices(k, k, offset=1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return (s.index_select(1, self.rows) * s.index_select(1, self.cols)).sum(dim=2)


class Block(nn.Module):
    """One DAG node: gathers its sparse/dense inputs, then applies its interaction."""

    def __init__(self, spec: dict[str, Any], num_fields: int, dim: int, in_dims: Sequence[int]) -> None:
        super().__init__()
        self.kind = spec["type"]
        self.inputs = list(spec["inputs"])
        self.select = FieldSelect(spec["fields"], num_fields)
        self.has_fields = bool(spec["fields"])
        k, n = len(spec["fields"]), len(spec["fields"]) * dim
        if self.kind in SPARSE_TYPES:  # earlier outputs become D-dim vectors
            self.project = nn.ModuleList(nn.Linear(in_dims[j], dim) for j in self.inputs)
            k += len(self.inputs)
            self.op: nn.Module = FMBlock() if self.kind == "fm" else DotBlock(k)
            self.out_dim = dim if self.kind == "fm" else k * (k - 1) // 2
        else:
            n += sum(in_dims[j] for j in self.inputs)
            if self.kind == "mlp":
                self.op = MLP(n, [spec["width"]], out_dim=None)
                self.out_dim = spec["width"]
            else:
                self.op = CrossNetwork(n, spec["layers"])
                self.out_dim = n

    def forward(self, emb: torch.Tensor, outs: list[torch.Tensor]) -> torch.Tensor:
        if self.kind in SPARSE_TYPES:
            parts = [self.select(emb)] if self.has_fields else []
            parts += [p(outs[j]).unsqueeze(1) for p, j in zip(self.project, self.inputs, strict=True)]
            return self.op(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])  # [B, k, D] in
        parts = [self.select(emb).flatten(1)] if self.has_fields else []
        parts += [outs[j] for j in self.inputs]
        return self.op(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])  # [B, n] in


@register_model
class BlockNet(CTRModel):
    """logit = w0 + Σ w_f + Linear(concat(leaf block outputs)) over a DAG of blocks."""

    name = "blocknet"

    def __init__(self, embedding: EmbeddingLayer, linear: EmbeddingLayer | None = None, *,
                 blocks: Sequence[dict[str, Any]] = ({"type": "fm", "fields": [], "inputs": []},)) -> None:
        super().__init__(embedding, linear)
        specs = [dict(b) for b in blocks]
        for b in specs:  # the default (and an empty field list on an fm/dot block) means all fields
            if not b.get("fields") and not b.get("inputs"):
                b["fields"] = list(range(self.num_fields))
        self.blocks_spec = check_blocks(specs, self.num_fields)
        self.blocks = nn.ModuleList()
        dims: list[int] = []
        for spec in self.blocks_spec:
            block = Block(spec, self.num_fields, self.embed_dim, dims)
            self.blocks.append(block)
            dims.append(block.out_dim)
        self.leaves = leaf_blocks(self.blocks_spec)
        self.head = nn.Linear(sum(dims[i] for i in self.leaves), 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        emb = self.embedding(ids)  # [B, F, D]
        outs: list[torch.Tensor] = []
        for block in self.blocks:
            outs.append(block(emb, outs))
        z = torch.cat([outs[i] for i in self.leaves], dim=1) if len(self.leaves) > 1 else outs[self.leaves[0]]
        return self.first_order(ids) + self.head(z).squeeze(1)

    def config(self) -> dict[str, Any]:
        return {"blocks": [dict(b) for b in self.blocks_spec]}
