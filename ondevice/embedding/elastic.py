"""Elastic item embeddings of blocks (RULE's storage): train once, deploy any block subset.

Chen et al., "Learning Elastic Embeddings for Customizing On-Device Recommenders", KDD 2021
(survey §5.3); the search over configurations is :mod:`ondevice.search.embedding.rule`. An item
vector ``e_i ∈ R^D`` is ``n_b`` blocks ``b_{i,1..n_b}`` of ``d_b = D / n_b`` dims. Items sorted
by training popularity (ties by id) form ``n_g`` near-equal groups, group 0 the most popular.
A **configuration** gives each group ``g`` a non-empty block subset ``S_g``, a point in a space of
``(2^{n_b} − 1)^{n_g}`` (survey §5.3). The score, trained and exported alike (label (1) is ours,
the survey numbers no RULE equation)::

    s(u, i | S) = Σ_{k ∈ S_g(i)} ⟨u_k, b_{i,k}⟩                                  (1)

with ``u_k`` the k-th ``d_b``-dim slice of the user's vector; all blocks = plain BPR-MF.
:class:`ElasticBlockEmbedding` is the training form (full table, ``set_config(mask)``);
:class:`ElasticSubsetEmbedding` the deployable one, storing only the chosen (group, block)
values; its exact bytes are :func:`config_bytes`.

Deviations from PEEL's code (``RuiqiZheng08/PEEL``, the authors' group; RULE's is not public):

* Per-block user slices instead of tiling each block to the user dimension: tiled, the model is
  a ``d_b``-dim MF whose item vector is the *sum* of its blocks, so extra blocks buy no rank.
* No ``n_b/|S|`` rescale: it multiplies the noise of few-block items, which then flood the top-K;
  measured on MovieLens-1M it scored far below the plain rule (an experiment no benchmark file
  records). The cost is a mild bias towards items that kept more blocks, the popular ones.

Measured: ``benchmarks/results/rule_ml1m.md``, ``benchmarks/results/rule_cds.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ondevice.embedding.base import EmbeddingLayer, register_embedding
from ondevice.embedding.quantized import RowTable, check_table_dtype, table_bytes
from ondevice.errors import BadInputError

__all__ = [
    "ElasticBlockEmbedding",
    "ElasticSubsetEmbedding",
    "config_bytes",
    "config_mask",
    "popularity_groups",
]


def popularity_groups(counts: Sequence[int] | np.ndarray, n_groups: int) -> tuple[np.ndarray, list[int]]:
    """Group of every id ``[N]`` and the group sizes, by descending count (ties: smaller id first).

    Groups are contiguous slices of the popularity order, sizes as equal as possible (the
    first ``N mod n_g`` groups get one more item); group 0 holds the most popular items.
    """
    counts = np.asarray(counts)
    n = len(counts)
    if n_groups < 1:
        raise BadInputError(f"n_groups must be >= 1, got {n_groups}")
    n_groups = min(int(n_groups), n)
    order = np.lexsort((np.arange(n), -counts))  # most popular first
    sizes = [n // n_groups + (1 if g < n % n_groups else 0) for g in range(n_groups)]
    group = np.empty(n, dtype=np.int64)
    group[order] = np.repeat(np.arange(n_groups), sizes)
    return group, sizes


def config_mask(blocks: Sequence[Sequence[int]], n_blocks: int) -> np.ndarray:
    """``[[block, ...] per group]`` -> boolean ``[n_g, n_b]``; every subset must be non-empty."""
    mask = np.zeros((len(blocks), n_blocks), dtype=bool)
    for g, bs in enumerate(blocks):
        bs = [int(b) for b in bs]
        if not bs or min(bs) < 0 or max(bs) >= n_blocks:
            raise BadInputError(f"group {g}: blocks {bs} must be a non-empty subset of 0..{n_blocks - 1}")
        mask[g, bs] = True
    return mask


def _position_dtype(n: int) -> torch.dtype:
    """int16 up to 65,535 items (rows ≥ 32,768 stored two's-complement, see ``_positions_wrap``), else int32.

    (uint16 would say it directly, but the ONNX exporter rejects uint16 tensors.)"""
    return torch.int16 if n <= 2**16 - 1 else torch.int32


def _positions_wrap(n: int) -> bool:
    """Rows ≥ 32,768 are stored as ``row − 65,536`` in the int16 position vector."""
    return 2**15 - 1 < n <= 2**16 - 1


def _decode_positions(stored: torch.Tensor, n: int) -> torch.Tensor:
    """Stored positions -> int64 rows (Cast, and Less + Where to undo the int16 wrap)."""
    rows = stored.to(torch.int64)
    if _positions_wrap(n):
        rows = torch.where(rows < 0, rows + 2**16, rows)
    return rows


def _classes(mask: np.ndarray) -> list[tuple[tuple[int, ...], list[int]]]:
    """Distinct subsets ``(blocks, groups using them)``, in order of first use."""
    out: dict[tuple[int, ...], list[int]] = {}
    for g, row in enumerate(mask):
        out.setdefault(tuple(int(k) for k in np.flatnonzero(row)), []).append(g)
    return list(out.items())


def config_bytes(group_sizes: Sequence[int], mask: np.ndarray, dim: int, dtype: str = "float32") -> int:
    """Exact stored bytes of :class:`ElasticSubsetEmbedding` for ``mask``.

    With ``c`` over the *distinct* subsets of the configuration, ``R_c`` the items in the groups
    using subset ``c`` and ``s_c = |c|``::

        Σ_c table_bytes(R_c, s_c · d_b, dtype)      values (+ int8: one fp16 scale per row)
        + N · (2 if N ≤ 65535 else 4)               position of each item id (int16, wrapped
                                                    above 32767; int32 beyond 65535)
        + Σ_{c : s_c < n_b} 8 · n_b                 int64 block index of partial subsets
        + 8                                         int64 vocabulary size (OOV mapping)

    (``table_bytes``: ``4·r·c`` fp32, ``2·r·c`` fp16, ``r·c + 2·r`` int8.) Without the index
    terms this is RULE's accounting, Σ_(g,k) (items in g) × d_b × bytes per value.
    """
    n_b = mask.shape[1]
    d_b = dim // n_b
    n = int(sum(group_sizes))
    total = n * torch.empty(0, dtype=_position_dtype(n)).element_size() + 8
    for blocks, groups in _classes(mask):
        rows = sum(int(group_sizes[g]) for g in groups)
        total += table_bytes(rows, len(blocks) * d_b, dtype)
        if len(blocks) < n_b:
            total += 8 * n_b
    return total


def _check_blocks(dim: int, n_blocks: int) -> int:
    if n_blocks < 1 or dim % n_blocks:
        raise BadInputError(f"embedding dim {dim} must be a multiple of n_blocks {n_blocks}; "
                            f"pick n_blocks among {[b for b in range(1, dim + 1) if dim % b == 0]}")
    return dim // n_blocks


def _check_groups(vocab_sizes: Sequence[int], group_sizes: Sequence[int]) -> list[int]:
    sizes = [int(s) for s in group_sizes]
    if len(vocab_sizes) != 1:
        raise BadInputError(f"elastic item embeddings hold one field (the item); got {len(vocab_sizes)} fields")
    if not sizes or min(sizes) < 1 or sum(sizes) != int(vocab_sizes[0]):
        raise BadInputError(f"group_sizes must be positive and sum to the {vocab_sizes[0]} items; got {sizes}")
    return sizes


@register_embedding
class ElasticBlockEmbedding(EmbeddingLayer):
    """Training form: the full item table in ``n_b`` blocks, scored by rule (1) of the module docstring.

    Its :meth:`to_deployable` is a dense table of the active configuration's effective vectors
    (no saving); compression uses :class:`ElasticSubsetEmbedding`.

    ``item_group`` (int64 ``[N]``, a buffer) is the popularity group of every id; build it
    with :func:`popularity_groups` or :meth:`from_dense`. ``set_config(mask)`` selects the
    block subsets ``forward`` uses (``None`` = all blocks, plain MF).
    """

    type_name = "elastic_blocks"

    def __init__(self, vocab_sizes: Sequence[int], dim: int, *, n_blocks: int = 16, group_sizes: Sequence[int],
                 sparse: bool = True, init_std: float = 0.1) -> None:
        super().__init__(vocab_sizes, dim)
        self.n_blocks = int(n_blocks)
        self.block_dim = _check_blocks(self.dim, self.n_blocks)
        self.group_sizes = _check_groups(self.vocab_sizes, group_sizes)
        self.sparse = bool(sparse)
        self.init_std = float(init_std)
        n = self.vocab_sizes[0]
        self.weight = nn.Parameter(torch.randn(n, self.dim) * self.init_std)
        self.register_buffer("item_group", torch.from_numpy(np.repeat(np.arange(len(self.group_sizes)), self.group_sizes)))
        self._scale: torch.Tensor | None = None  # [n_g, D] per-dim factor of the active config
        self._training_only = False
        self.active_mask: np.ndarray | None = None

    @property
    def n_groups(self) -> int:
        return len(self.group_sizes)

    @classmethod
    def from_dense(cls, layer: EmbeddingLayer, counts: Sequence[int] | np.ndarray, *, n_blocks: int = 16,
                   n_groups: int = 20, sparse: bool = True) -> ElasticBlockEmbedding:
        """Blocks initialised from ``layer``'s table; groups from per-id training ``counts``."""
        group, sizes = popularity_groups(counts, n_groups)
        new = cls(layer.vocab_sizes, layer.dim, n_blocks=n_blocks, group_sizes=sizes, sparse=sparse)
        with torch.no_grad():
            new.weight.copy_(layer.dense_weight())
            new.item_group.copy_(torch.from_numpy(group))
        return new

    def set_config(self, mask: np.ndarray | torch.Tensor | None, *, training_only: bool = False) -> ElasticBlockEmbedding:
        """Score with the block subsets of boolean ``mask [n_g, n_b]`` (``None``: all blocks).

        ``training_only``: apply the mask in training mode only (evaluation in ``eval()``
        mode then sees all blocks), as RULE's per-batch sampled configurations.
        """
        self._training_only = bool(training_only)
        if mask is None:
            self._scale, self.active_mask = None, None
            return self
        m = torch.as_tensor(np.asarray(mask, dtype=bool))
        if tuple(m.shape) != (self.n_groups, self.n_blocks) or not bool(m.any(dim=1).all()):
            raise BadInputError(f"config mask must be boolean [{self.n_groups}, {self.n_blocks}] with a block in every group")
        factor = m.float()  # 1 on the kept blocks, 0 elsewhere (rule (1))
        self._scale = factor.repeat_interleave(self.block_dim, dim=1).to(self.weight.device)
        self.active_mask = m.numpy().copy()
        return self

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        if self.sparse and self.training and torch.is_grad_enabled():
            e = nn.functional.embedding(ids, self.weight, sparse=True)
        else:
            e = self.weight[ids]
        if self._scale is None or (self._training_only and not self.training):
            return e
        return e * self._scale[self.item_group[ids]]

    def block_scores(self, user: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Per-block partial scores ``⟨u_k, b_{i,k}⟩``: ``user [B, D]``, ``items [B]`` -> ``[B, n_b]``."""
        e = self.weight[items] if not (self.sparse and self.training) else nn.functional.embedding(items, self.weight, sparse=True)
        prod = (user * e).view(len(items), self.n_blocks, self.block_dim)
        return prod.sum(dim=-1)

    def to_deployable(self) -> EmbeddingLayer:
        """A dense table of the active configuration's effective vectors (no compression)."""
        from ondevice.embedding.dense import DenseEmbedding

        dense = DenseEmbedding(self.vocab_sizes, self.dim, sparse=False)
        with torch.no_grad():
            dense.weight.copy_(self.dense_weight())
        return dense

    def deploy(self, mask: np.ndarray, *, dtype: str = "float32") -> ElasticSubsetEmbedding:
        """The compact deployable layer of configuration ``mask`` (``[n_g, n_b]`` booleans)."""
        return ElasticSubsetEmbedding.from_elastic(self, mask, dtype=dtype)

    def spec(self) -> dict[str, Any]:
        return {"type": self.type_name, "vocab_sizes": list(self.vocab_sizes), "dim": self.dim,
                "n_blocks": self.n_blocks, "group_sizes": list(self.group_sizes), "sparse": self.sparse,
                "init_std": self.init_std}

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.weight] if self.sparse else []

    def extra_repr(self) -> str:
        return (f"items={self.vocab_sizes[0]}, dim={self.dim}, n_blocks={self.n_blocks}, n_groups={self.n_groups}, "
                f"config={'all blocks' if self.active_mask is None else int(self.active_mask.sum())} pairs")


def select_dims(x: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """``x[:, dims]``: a ``Slice`` when ``dims`` is a prefix (``x`` itself when it is every dim), else a ``Gather``."""
    dims = list(dims)
    if dims == list(range(len(dims))):
        return x if len(dims) == x.shape[1] else x[:, : len(dims)]
    return x[:, torch.tensor(dims, dtype=torch.int64)]


@register_embedding
class ElasticSubsetEmbedding(EmbeddingLayer):
    """Deployable elastic item table: only the chosen (group, block) values are stored (module docstring).

    ``blocks[g]`` lists the blocks group ``g`` keeps; ``group_sizes[g]`` its item count. The
    ``position`` buffer maps an item id to its row in the concatenation of the per-subset
    tables (rows in popularity-group order). Groups with equal subsets share one table, so the
    graph has a handful of nodes per distinct subset. Bytes: :func:`config_bytes`.

    ONNX lowering (no Cast on an initializer: the exporter would fold it back to fp32)::

        per subset c:  Range(0, R_c)  [from the batch size, so nothing is constant-folded]
                       -> Gather(values_c) [-> Cast, Gather(scale_c), Cast, Mul for int8]
                       -> Reshape [R_c, s_c, d_b] -> Concat(zero block) -> Gather(block index)
                       -> Reshape [R_c, D]
        Concat over subsets -> Gather(position[id] -> Cast int64) -> [batch, 1, D]

    Every stored item vector is rebuilt once per call; a top-K artefact scores all items anyway.
    """

    type_name = "elastic_subset"

    def __init__(self, vocab_sizes: Sequence[int], dim: int, *, n_blocks: int, group_sizes: Sequence[int],
                 blocks: Sequence[Sequence[int]], dtype: str = "float32") -> None:
        super().__init__(vocab_sizes, dim)
        self.n_blocks = int(n_blocks)
        self.block_dim = _check_blocks(self.dim, self.n_blocks)
        self.group_sizes = _check_groups(self.vocab_sizes, group_sizes)
        if len(blocks) != len(self.group_sizes):
            raise BadInputError(f"blocks must give one subset per group ({len(self.group_sizes)}); got {len(blocks)}")
        self.mask = config_mask(blocks, self.n_blocks)
        self.blocks: list[list[int]] = [[int(k) for k in np.flatnonzero(r)] for r in self.mask]
        self.dtype_name = check_table_dtype(dtype, owner="ElasticSubsetEmbedding")
        self._classes = _classes(self.mask)
        self._rows = [sum(self.group_sizes[g] for g in groups) for _, groups in self._classes]
        self.tables = nn.ModuleList(RowTable(r, len(bs) * self.block_dim, dtype) for (bs, _), r in zip(self._classes, self._rows, strict=True))
        n = self.vocab_sizes[0]
        self.register_buffer("position", torch.zeros(n, dtype=_position_dtype(n)))
        for c, (bs, _) in enumerate(self._classes):
            if len(bs) < self.n_blocks:
                index = torch.zeros(self.n_blocks, dtype=torch.int64)
                index[list(bs)] = torch.arange(1, len(bs) + 1)
                self.register_buffer(f"block_index{c}", index)  # 0 -> the zero block
        for p in self.parameters():
            p.requires_grad_(False)

    @classmethod
    @torch.no_grad()
    def from_elastic(cls, layer: ElasticBlockEmbedding, mask: np.ndarray, *, dtype: str = "float32") -> ElasticSubsetEmbedding:
        """Store configuration ``mask`` of a trained :class:`ElasticBlockEmbedding`."""
        mask = np.asarray(mask, dtype=bool)
        blocks = [[int(k) for k in np.flatnonzero(r)] for r in mask]
        new = cls(layer.vocab_sizes, layer.dim, n_blocks=layer.n_blocks, group_sizes=layer.group_sizes,
                  blocks=blocks, dtype=dtype)
        group = layer.item_group.cpu().numpy()
        w = layer.weight.detach().cpu().view(-1, layer.n_blocks, layer.block_dim)
        position = np.empty(len(group), dtype=np.int64)
        start = 0
        for c, (bs, groups) in enumerate(new._classes):
            ids = np.concatenate([np.flatnonzero(group == g) for g in groups])
            position[ids] = start + np.arange(len(ids))
            start += len(ids)
            values = w[torch.from_numpy(ids)][:, list(bs), :].reshape(len(ids), -1)
            new.tables[c].set_dense(values)
        if _positions_wrap(len(position)):
            position = np.where(position >= 2**15, position - 2**16, position)
        new.position.copy_(torch.from_numpy(position).to(new.position.dtype))
        return new

    @staticmethod
    def expected_bytes(group_sizes: Sequence[int], mask: np.ndarray, dim: int, dtype: str = "float32") -> int:
        """The docstring's byte formula (:func:`config_bytes`)."""
        return config_bytes(group_sizes, np.asarray(mask, dtype=bool), dim, dtype)

    def _all_rows(self, like: torch.Tensor, blocks: Sequence[int] | None = None) -> torch.Tensor:
        """Every stored item vector in table order, built from the stored blocks: ``[N, D]``, or
        ``[N, len(blocks)·d_b]`` with only ``blocks``' dims (a superset of every kept subset)."""
        zero = like.shape[0] * 0  # a traced 0: the Range below is not constant-folded away
        keep = tuple(range(self.n_blocks)) if blocks is None else tuple(blocks)
        parts = []
        for c, ((bs, _), rows) in enumerate(zip(self._classes, self._rows, strict=True)):
            v = self.tables[c].gather(torch.arange(zero, zero + rows, dtype=torch.int64))  # [R, s*d_b]
            if tuple(bs) != keep:
                index = getattr(self, f"block_index{c}")
                if blocks is not None:
                    index = index[torch.tensor(keep, dtype=torch.int64)]
                v = v.reshape(rows, len(bs), self.block_dim)
                v = torch.cat([v[:, :1] * 0.0, v], dim=1)[:, index]  # [R, |keep|, d_b]
                v = v.reshape(rows, len(keep) * self.block_dim)
            parts.append(v)
        return torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]

    def _used_blocks(self) -> list[int]:
        """The blocks some group keeps: every item vector is zero in the others."""
        return [int(k) for k in np.flatnonzero(self.mask.any(axis=0))]

    def _dims(self, blocks: Sequence[int]) -> list[int]:
        """The embedding dims of ``blocks``."""
        return [k * self.block_dim + j for k in blocks for j in range(self.block_dim)]

    def used_dims(self) -> list[int]:
        """The dims of the blocks some group keeps: every item vector is zero in the others."""
        return self._dims(self._used_blocks())

    def used_table(self, seed: torch.Tensor) -> torch.Tensor:
        """Every item's vector in :meth:`used_dims` only, transposed: ``[len(used_dims), N]``
        (column = item id), from the int64 scalar ``seed`` (= 0). A top-K artefact scores
        ``user_vector[:, used_dims]`` against it: the same dot products without the zero dims,
        and onnxruntime folds (and keeps resident) a table and intermediates that much smaller."""
        ids = torch.arange(seed, seed + self.vocab_sizes[0], dtype=torch.int64)
        rows = _decode_positions(self.position[ids], self.vocab_sizes[0])
        return self._all_rows(ids, self._used_blocks())[rows].t()  # ids' traced length: the decode is not folded into the file

    def item_scores(self, user: torch.Tensor, seed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``user [B, D]`` against every item, in table order: (scores ``[B, N]``, each item id's
        column ``[N]`` int64), from the int64 scalar ``seed`` (= 0).

        Each distinct subset scores its own table against the user vector's dims of its blocks
        (``user[:, dims_c] @ T_cᵀ``): the stored values are never padded to ``D`` nor rebuilt into
        one ``[N, D]`` table, so a top-K artefact's decode is the stored values in fp32 and nothing
        more, what a graph that decodes per call (``.ort``) should do; the caller maps columns to
        item ids after its top-K rather than reordering ``[B, N]`` scores. A graph that folds its
        table once at load scores :meth:`used_table` instead (one MatMul).
        """
        ids = torch.arange(seed, seed + self.vocab_sizes[0], dtype=torch.int64)
        zero = ids.shape[0] * 0  # a traced 0: the tables' decode is not folded into the file
        parts = []
        for c, ((bs, _), rows) in enumerate(zip(self._classes, self._rows, strict=True)):
            v = self.tables[c].gather(torch.arange(zero, zero + rows, dtype=torch.int64))  # [R_c, s_c*d_b]
            parts.append(select_dims(user, self._dims(bs)) @ v.t())  # [B, R_c]
        in_table_order = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        return in_table_order, _decode_positions(self.position[ids], self.vocab_sizes[0])

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        rows = _decode_positions(self.position[ids], self.vocab_sizes[0])  # Gather(int16|int32) -> Cast [-> Where]
        return self._all_rows(ids)[rows]  # [B, 1, D]

    def dense_weight(self) -> torch.Tensor:
        with torch.no_grad():
            return self._all_rows(torch.zeros(1))[_decode_positions(self.position, self.vocab_sizes[0])].clone()

    def spec(self) -> dict[str, Any]:
        return {"type": self.type_name, "vocab_sizes": list(self.vocab_sizes), "dim": self.dim,
                "n_blocks": self.n_blocks, "group_sizes": list(self.group_sizes), "blocks": self.blocks,
                "dtype": self.dtype_name}

    def extra_repr(self) -> str:
        per_group = ",".join(str(len(b)) for b in self.blocks)
        return f"{super().extra_repr()}, n_blocks={self.n_blocks}, blocks per group=[{per_group}], dtype={self.dtype_name}"
