"""Sparse embedding rows (partially pruned tables: PEP, DeepLight) in a CSR layout.

PEP (Liu et al., "Learnable Embedding Sizes for Recommender Systems", ICLR 2021, Eq. 5:
``V̂ = sign(V)·ReLU(|V| − g(s))``) and DeepLight (Deng et al., WSDM 2021, magnitude pruning)
leave an unstructured sparse table; its bytes shrink only if the stored form drops the zeros
(Hetu's PEP serving switches to CSR for the same reason). Three layouts evaluate with plain
ONNX ops (no custom ops, no variable-length gathers); with ``R = Σ vocab_f`` rows, ``K`` the
largest non-zero count of a row, ``s_v`` 4 (fp32) or 2 (fp16), ``s_c`` 1 (uint8 columns) or
2 (int16 when ``D > 256``):

* ``csr`` (default): ``row_ptr`` int32 ``[R+1]``, ``cols``, ``values``; a lookup reads the
  ``K``-wide window from ``row_ptr[r]``, zeroes positions past ``row_ptr[r+1]`` and
  scatter-adds the values into their columns (exact):
  ``bytes = 4·(R+1) + nnz·(s_v + s_c) + 8·K + 16·F``.
* ``bcsr``: ``csr`` with blocked row pointers, ``row_ptr[r] = base[r // b] + off[r]``
  (:func:`bcsr_plan` picks the block ``b`` and offset dtype from the row counts):
  ``bytes = 4·ceil((R+1)/b) + s_o·(R+1) + nnz·(s_v + s_c) + 8·K + 16·F``.
* ``ell``: every row padded to ``K`` entries: ``bytes = R·K·(s_v + s_c) + 16·F``; it pays for
  the fullest row everywhere, so it wins only for evenly filled rows (N:M-style masks).

``MaskedEmbedding.to_deployable`` compares the exact bytes of these, the dense table and row
pruning, and keeps the smallest. fp32 values stay trainable (the sparsity pattern is fixed);
fp16 values are frozen. Top-K artefacts decode the whole item table from a constant, once at
session creation (:meth:`SparseEmbedding.full_table`).

Deviations: a per-row bitmap layout would be smaller at low sparsity but needs BitwiseAnd
(opset 18) or a Div/Sub chain per column, so it is not offered.

Measured: ``benchmarks/results/sparse_formats.md`` (storage and file bytes of each layout at
70/90/97 % zeros, ONNX Runtime parity) and ``benchmarks/results/topk_sparse_latency.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ondevice.embedding.base import EmbeddingLayer, field_offsets, register_embedding
from ondevice.embedding.quantized import check_table_dtype
from ondevice.errors import BadInputError

SPARSE_LAYOUTS = ("csr", "bcsr", "ell")
# Blocked row pointers (``bcsr``): block sizes tried (powers of two, so a feasible size's
# halves are feasible too) and the per-row offset codings (dtype, largest offset).
BCSR_BLOCK_ROWS = tuple(2**i for i in range(16))
BCSR_OFFSET_DTYPES = {"uint8": (torch.uint8, 255), "int16": (torch.int16, 32767)}


def _col_dtype(dim: int) -> torch.dtype:
    return torch.uint8 if dim <= 256 else torch.int16


def row_pointers(row_nnz: torch.Tensor) -> torch.Tensor:
    """CSR row pointers ``[R+1]`` (int64) of per-row non-zero counts ``[R]``."""
    return torch.cat([torch.zeros(1, dtype=torch.int64), row_nnz.to(torch.int64).cumsum(0)])


def _largest_block_offset(ptr: torch.Tensor, b: int) -> int:
    """``max_r ptr[r] − ptr[b·(r // b)]``: pointers never decrease, so each block's largest
    offset is at its last row (``O(R / b)`` instead of ``O(R)``)."""
    starts, ends = ptr[::b], ptr[b - 1::b]
    if len(ends) < len(starts):  # a last, partial block
        ends = torch.cat([ends, ptr[-1:]])
    return int((ends - starts).max())


def bcsr_plan(row_nnz: torch.Tensor) -> tuple[int, str, int]:
    """The cheapest blocked row-pointer coding of ``row_nnz``: (block_rows, offset dtype, bytes).

    ``ptr[r] = base[r // b] + off[r]`` with ``base`` int32 ``[ceil((R+1)/b)]`` and ``off``
    uint8 or int16 ``[R+1]``: ``bytes = 4·ceil((R+1)/b) + s_o·(R+1)``. A block size is
    feasible when every offset fits the dtype; doubling ``b`` merges blocks, so offsets only
    grow and the scan over ``BCSR_BLOCK_ROWS`` stops once no dtype fits.
    """
    ptr = row_pointers(row_nnz)
    n = len(ptr)
    best: tuple[int, str, int] | None = None
    for b in BCSR_BLOCK_ROWS:
        widest = _largest_block_offset(ptr, b)
        fitting = [(name, dtype) for name, (dtype, max_off) in BCSR_OFFSET_DTYPES.items() if widest <= max_off]
        if not fitting:
            break
        for name, dtype in fitting:
            cost = 4 * -(-n // b) + torch.empty(0, dtype=dtype).element_size() * n
            if best is None or cost < best[2]:
                best = (b, name, cost)
        if b >= n:
            break
    if best is None:  # a single row holding more than 32767 non-zeros (dim > 32767 is refused)
        raise BadInputError("bcsr offsets do not fit int16; use layout='csr'")
    return best


def sparse_bytes(rows: int, dim: int, num_fields: int, nnz: int, max_row_nnz: int, *,
                 layout: str = "csr", dtype: str = "float32", pointer_bytes: int | None = None) -> int:
    """Exact stored bytes of a :class:`SparseEmbedding` (the module docstring's formulas)."""
    s_v = 4 if dtype == "float32" else 2
    s_c = torch.empty(0, dtype=_col_dtype(dim)).element_size()
    k = max(1, max_row_nnz)
    if layout == "csr":
        return 4 * (rows + 1) + max(1, nnz) * (s_v + s_c) + 8 * k + 16 * num_fields
    if layout == "bcsr":
        if pointer_bytes is None:
            raise BadInputError("bcsr bytes need the row-pointer bytes (bcsr_plan)")
        return pointer_bytes + max(1, nnz) * (s_v + s_c) + 8 * k + 16 * num_fields
    return rows * k * (s_v + s_c) + 16 * num_fields


@register_embedding
class SparseEmbedding(EmbeddingLayer):
    """A table whose zeros are not stored: CSR (default) or ELL layout (module docstring).

    ``nnz`` and ``max_row_nnz`` fix the buffer shapes (both in ``spec()``); build a filled
    layer with :meth:`from_dense`, which keeps exactly the non-zeros of a layer's table
    (optionally intersected with a mask). An all-zero table stores one explicit zero so no
    buffer is empty (``max(1, nnz)``, ``max(1, K)`` in the formulas).
    """

    type_name = "sparse"

    def __init__(
        self,
        vocab_sizes: Sequence[int],
        dim: int,
        *,
        nnz: int,
        max_row_nnz: int,
        layout: str = "csr",
        dtype: str = "float32",
        block_rows: int = 1,
        offset_dtype: str = "uint8",
    ) -> None:
        super().__init__(vocab_sizes, dim)
        if layout not in SPARSE_LAYOUTS:
            raise BadInputError(f"sparse layout must be one of {', '.join(SPARSE_LAYOUTS)}; got {layout!r}")
        if not 0 <= max_row_nnz <= self.dim:
            raise BadInputError(f"max_row_nnz must be in [0, {self.dim}]; got {max_row_nnz}")
        if not 0 <= nnz <= sum(self.vocab_sizes) * max_row_nnz:
            raise BadInputError(f"nnz={nnz} is impossible for {sum(self.vocab_sizes)} rows of at most "
                                f"{max_row_nnz} non-zeros")
        if self.dim > 32767:
            raise BadInputError(f"SparseEmbedding supports dim <= 32767; got {self.dim}")
        self.layout = layout
        self.dtype_name = check_table_dtype(dtype, allowed=("float32", "float16"), owner="SparseEmbedding")
        self.nnz, self.max_row_nnz = int(nnz), int(max_row_nnz)
        rows, k = sum(self.vocab_sizes), max(1, self.max_row_nnz)
        shape = (max(1, self.nnz),) if layout != "ell" else (rows, k)
        values = torch.zeros(shape)
        if dtype == "float32":
            self.values = nn.Parameter(values)
        else:
            self.register_buffer("values", values.to(torch.float16))
        self.register_buffer("cols", torch.zeros(shape, dtype=_col_dtype(self.dim)))
        self.register_buffer("offsets", torch.tensor(field_offsets(self.vocab_sizes), dtype=torch.int64))
        self.block_rows, self.offset_dtype = int(block_rows), offset_dtype
        if layout == "csr":
            self.register_buffer("row_ptr", torch.zeros(rows + 1, dtype=torch.int32))
        if layout == "bcsr":
            if offset_dtype not in BCSR_OFFSET_DTYPES or self.block_rows < 1:
                raise BadInputError(f"bcsr needs block_rows >= 1 and offset_dtype in {', '.join(BCSR_OFFSET_DTYPES)}; "
                                    f"got {block_rows}, {offset_dtype!r}")
            self.register_buffer("block_base", torch.zeros(-(-(rows + 1) // self.block_rows), dtype=torch.int32))
            self.register_buffer("row_off", torch.zeros(rows + 1, dtype=BCSR_OFFSET_DTYPES[offset_dtype][0]))
        if layout in ("csr", "bcsr"):
            self.register_buffer("window", torch.arange(k, dtype=torch.int64))

    # ------------------------------------------------------------------ building
    @classmethod
    def from_dense(
        cls,
        layer: EmbeddingLayer,
        mask: torch.Tensor | None = None,
        *,
        layout: str = "csr",
        dtype: str = "float32",
    ) -> SparseEmbedding:
        """Store the non-zeros of ``layer.dense_weight()`` (times ``mask`` if given)."""
        return cls.from_weight(layer.vocab_sizes, _masked(layer.dense_weight(), mask), layout=layout, dtype=dtype)

    @classmethod
    def from_weight(cls, vocab_sizes: Sequence[int], weight: torch.Tensor, *, layout: str = "csr",
                    dtype: str = "float32") -> SparseEmbedding:
        """Store the non-zeros of a concatenated fp32 table ``[Σ vocab, D]``."""
        w = weight.detach().to(torch.float32)
        if dtype == "float16":
            w = w.clamp(-65504.0, 65504.0).to(torch.float16).to(torch.float32)  # fp16 zeros drop too
        nz = w != 0
        counts = nz.sum(dim=1)
        blocked = {}
        if layout == "bcsr":
            b, offset_dtype, _ = bcsr_plan(counts)
            blocked = {"block_rows": b, "offset_dtype": offset_dtype}
        new = cls(vocab_sizes, w.shape[1], nnz=int(counts.sum()), max_row_nnz=int(counts.max()) if len(counts) else 0,
                  layout=layout, dtype=dtype, **blocked)
        store_dtype = new.values.dtype
        with torch.no_grad():
            if layout in ("csr", "bcsr"):
                r_idx, c_idx = nz.nonzero(as_tuple=True)  # row-major: columns ascending per row
                ptr = row_pointers(counts)
                if layout == "csr":
                    new.row_ptr.copy_(ptr.to(torch.int32))
                else:
                    b = new.block_rows
                    new.block_base.copy_(ptr[::b].to(torch.int32))
                    new.row_off.copy_((ptr - ptr[(torch.arange(len(ptr)) // b) * b]).to(new.row_off.dtype))
                if new.nnz:
                    new.values.copy_(w[r_idx, c_idx].to(store_dtype))
                    new.cols.copy_(c_idx.to(new.cols.dtype))
            else:
                slot = nz.cumsum(dim=1) - 1  # position of each non-zero inside its padded row
                r_idx, c_idx = nz.nonzero(as_tuple=True)
                s_idx = slot[r_idx, c_idx]
                new.values[r_idx, s_idx] = w[r_idx, c_idx].to(store_dtype)
                new.cols[r_idx, s_idx] = c_idx.to(new.cols.dtype)
        return new

    @staticmethod
    def expected_bytes(vocab_sizes: Sequence[int], dim: int, nnz: int, max_row_nnz: int, *,
                       layout: str = "csr", dtype: str = "float32", row_nnz: torch.Tensor | None = None) -> int:
        """The docstring's byte formula (an int64 vector equal to another is stored once).

        ``bcsr`` needs the per-row non-zero counts ``row_nnz`` (its block size depends on them).
        """
        pointer_bytes = None
        if layout == "bcsr":
            if row_nnz is None:
                raise BadInputError("SparseEmbedding.expected_bytes(layout='bcsr') needs row_nnz")
            pointer_bytes = bcsr_plan(row_nnz)[2]
        total = sparse_bytes(sum(vocab_sizes), dim, len(vocab_sizes), nnz, max_row_nnz, layout=layout, dtype=dtype,
                             pointer_bytes=pointer_bytes)
        if layout in ("csr", "bcsr"):  # window [0..K-1] equals the offsets only if every field but the last has 1 id
            window = torch.arange(max(1, max_row_nnz))
            if torch.equal(window, torch.tensor(field_offsets(vocab_sizes))):
                total -= 8 * len(window)
        return total

    # ------------------------------------------------------------------ protocol
    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """``[B, F, D]`` rows of ``ids``. In ONNX: Add (offsets); csr: Gather (row_ptr) ×2 (bcsr: Div,
        Gather ×2, Add, each ×2), Cast, Unsqueeze, Add (window), Less, Where ×2; Gather (values) +
        Cast, Gather (cols) + Cast; a ``[B, F, D]`` zero tensor and ScatterElements (add, opset 16+)."""
        flat = ids + self.offsets  # [B, F]
        if self.layout in ("csr", "bcsr"):
            start, end = self._row_pointer(flat), self._row_pointer(flat + 1)  # [B, F]
            pos = start.unsqueeze(-1) + self.window  # [B, F, K]
            valid = pos < end.unsqueeze(-1)
            pos = torch.where(valid, pos, 0)
            values = torch.where(valid, self.values[pos].to(torch.float32), 0.0)  # [B, F, K]; padding -> 0
            cols = self.cols[pos].to(torch.int64)
        else:
            values = self.values[flat].to(torch.float32)  # [B, F, K]; padding stores value 0
            cols = self.cols[flat].to(torch.int64)
        # Padding adds 0.0 to some column: x + 0.0 == x, so the result is exact and identical in ORT.
        dense = torch.zeros_like(flat, dtype=torch.float32).unsqueeze(-1).repeat(1, 1, self.dim)  # [B, F, D]
        return dense.scatter_add(2, cols, values)  # [B, F, D]

    def full_table(self, zero: torch.Tensor, *, transposed: bool = False) -> torch.Tensor:
        """The whole fp32 table ``[Σ vocab, D]`` (``[D, Σ vocab]`` if ``transposed``) decoded from the stored form in O(nnz + rows).

        For consumers that need every row at once (the top-K artefact scores all items per
        call). ``lookup`` reads a ``K``-wide window per row, ``rows·K`` gathers and masks: on a
        40,000 × 64 item table at 85 % zeros that is 36 ms per call in onnxruntime against
        1.3 ms for the dense table (``benchmarks/topk_sparse_latency.py``). Here each non-zero's
        row comes from the pointers (a 1 at every row end, then a running sum) and the values are
        written once into a flat zero table at ``row·D + col`` (``col·R + row`` transposed): every
        index is distinct; the padding of ``ell`` rows (and the placeholder of an all-zero
        table) goes to one spare slot that is cut off. ``zero`` is an int64 0 derived from a
        graph input, so the exporter cannot constant-fold the decoded table into the file (it
        would store it dense); the top-K export then binds it to a constant so onnxruntime
        decodes once at session creation, where every intermediate here is held until the
        folding ends: hence no spare slot (and its Slice) when none is needed, and the
        transposed layout the top-K MatMul reads (no folded Transpose).
        """
        # Every tensor below depends on ``zero`` (Range/Expand/Gather of graph-input-derived
        # values): a constant arange, zeros or cast here would be folded into a large initializer.
        rows, dim = sum(self.vocab_sizes), self.dim
        z = zero.reshape(())
        spare = self.layout == "ell" or self.nnz == 0
        if self.layout == "ell":
            r = torch.arange(z, z + rows)  # [R]
            values = self.values[r].to(torch.float32)  # [R, K]; padding stores 0
            cols = self.cols[r].to(torch.int64)
            at = r.unsqueeze(1) + cols * rows if transposed else r.unsqueeze(1) * dim + cols
            flat = torch.where(values != 0, at, z + rows * dim).reshape(-1)
            values = values.reshape(-1)
        else:
            n = max(1, self.nnz)
            ends = self._row_pointer(torch.arange(z + 1, z + rows + 1))  # [R]: where each row stops
            marks = z.reshape(1).expand(n + 1).scatter_add(0, ends, torch.ones_like(ends))
            row_of = torch.cumsum(marks, 0)[:n]  # the row of every stored entry
            j = torch.arange(z, z + n)
            values = self.values[j].to(torch.float32)
            cols = self.cols[j].to(torch.int64)
            flat = row_of + cols * rows if transposed else row_of * dim + cols
            if self.nnz == 0:  # the one placeholder entry (value 0) goes to the spare slot
                flat = flat * 0 + rows * dim
        table = z.to(torch.float32).reshape(1).expand(rows * dim + int(spare)).scatter(0, flat, values)
        if spare:
            table = table[: rows * dim]
        return table.reshape(dim, rows) if transposed else table.reshape(rows, dim)

    def _row_pointer(self, rows: torch.Tensor) -> torch.Tensor:
        """CSR pointer of each row in ``rows`` (int64): stored (``csr``) or base + offset (``bcsr``)."""
        if self.layout == "csr":
            return self.row_ptr[rows].to(torch.int64)
        return self.block_base[rows // self.block_rows].to(torch.int64) + self.row_off[rows].to(torch.int64)

    def spec(self) -> dict[str, Any]:
        out = {"type": self.type_name, "vocab_sizes": list(self.vocab_sizes), "dim": self.dim,
               "nnz": self.nnz, "max_row_nnz": self.max_row_nnz, "layout": self.layout,
               "dtype": self.dtype_name}
        if self.layout == "bcsr":
            out.update(block_rows=self.block_rows, offset_dtype=self.offset_dtype)
        return out

    def extra_repr(self) -> str:
        blocked = f", block_rows={self.block_rows}, offsets={self.offset_dtype}" if self.layout == "bcsr" else ""
        return (f"{super().extra_repr()}, layout={self.layout}, nnz={self.nnz:,}, "
                f"max_row_nnz={self.max_row_nnz}, dtype={self.dtype_name}{blocked}")


def _masked(weight: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return weight
    if tuple(mask.shape) != tuple(weight.shape):
        raise BadInputError(f"mask shape {tuple(mask.shape)} != table shape {tuple(weight.shape)}")
    return weight * mask.to(weight.dtype)
