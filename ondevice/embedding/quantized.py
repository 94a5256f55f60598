"""Row-wise int8 and fp16 embedding tables (post-training quantization).

Symmetric per-row linear quantization, the scheme FBGEMM/TorchRec use for embedding tables
(Guan et al., "Post-Training 4-bit Quantization on Embedding Tables", arXiv:1911.02079, 2019),
i.e. the affine map ``r = S·(q − Z)`` of Jacob et al. (CVPR 2018) with zero point ``Z = 0``::

    s_r   = fp16_round_up(max_j |V_rj| / 127)                      (per-row scale, fp16)
    Q_rj  = clamp(round(V_rj / s_r), -127, 127)                    (int8)
    V̂_rj  = float32(Q_rj) * float32(s_r)

fp16 tables are a plain cast. Bytes per ``rows × cols`` table: fp32 ``4·rows·cols``, fp16
``2·rows·cols``, int8 ``rows·cols + 2·rows`` (:func:`table_bytes`). :class:`RowTable` is the
storage brick the other formats reuse (``dtype=`` of hashed, mixed-dimension and row-pruned
tables); its docstring gives the ONNX lowering, :meth:`QuantizedEmbedding.max_abs_error_bound`
the error bound.

Deviations from the paper:

* No zero point and an fp16 scale only: 2 bytes of metadata per row (FBGEMM stores an fp16
  scale and bias, 4 bytes) and a three-op lowering.
* The scale is rounded *up* to the next fp16 value, so no element is clipped and the bound holds
  exactly; ``Q·s`` is exact in fp32, so PyTorch and ONNX Runtime agree bit for bit.
* fp16 and int8 tables are frozen buffers (post-training: the rest of the model may still train).

Measured: ``benchmarks/results/compress_quality_*.md`` (``int8``, ``fp16`` rows),
``benchmarks/results/arm64_parity.md`` (device parity of quantized artefacts).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ondevice.embedding.base import EmbeddingLayer, field_offsets, register_embedding
from ondevice.errors import BadInputError

TABLE_DTYPES: tuple[str, ...] = ("float32", "float16", "int8")
INT8_MAX = 127


def check_table_dtype(dtype: str, *, allowed: Sequence[str] = TABLE_DTYPES, owner: str = "table") -> str:
    """Validate a storage dtype name; the error lists the allowed values."""
    if dtype not in allowed:
        raise BadInputError(f"{owner} dtype must be one of {', '.join(allowed)}; got {dtype!r}")
    return dtype


def table_bytes(rows: int, cols: int, dtype: str) -> int:
    """Exact stored bytes of a ``rows x cols`` :class:`RowTable` (scales included)."""
    check_table_dtype(dtype)
    if dtype == "float32":
        return rows * cols * 4
    if dtype == "float16":
        return rows * cols * 2
    return rows * cols + rows * 2  # int8 values + one fp16 scale per row


def _fp16_round_up(x: torch.Tensor) -> torch.Tensor:
    """Smallest fp16 value >= ``x`` (``x >= 0``, fp32), so scales never clip."""
    h = x.clamp(max=65504.0).to(torch.float16)
    low = (h.to(torch.float32) < x) & (h < 65504.0)  # never bump past the fp16 maximum
    bumped = (h.view(torch.int16) + 1).view(torch.float16)  # next fp16 up (positive values)
    return torch.where(low, bumped, h)


def quantize_rows_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric row-wise int8: ``weight`` fp32 ``[R, C]`` -> (int8 ``[R, C]``, fp16 ``[R]``)."""
    w = weight.detach().to(torch.float32)
    amax = w.abs().amax(dim=1) if w.shape[1] > 0 else torch.zeros(w.shape[0])
    scale = _fp16_round_up(amax / INT8_MAX)
    safe = torch.where(scale > 0, scale.to(torch.float32), torch.ones_like(amax))
    q = torch.round(w / safe.unsqueeze(1)).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale


class RowTable(nn.Module):
    """A ``[rows, cols]`` table stored as fp32, fp16, or int8 with an fp16 scale per row.

    ``gather(idx)`` returns fp32 rows ``[*idx.shape, cols]``. fp32 is a trainable
    ``nn.Parameter`` (row-sparse gradients with ``sparse=True``); fp16/int8 are frozen
    buffers filled with :meth:`set_dense`. State-dict keys: ``weight`` (+ ``scale`` for int8).
    Bytes: :func:`table_bytes`.

    ONNX lowering (gather first, cast after: a Cast on an initializer would be constant-folded
    back into an fp32 table by the exporter and the bytes would be lost)::

        int8 : Gather(Q:int8, idx) -> Cast(float) ; Gather(s:fp16 [R, 1], idx) -> Cast(float)
               -> Mul
        fp16 : Gather(V:fp16, idx) -> Cast(float)
    """

    def __init__(self, rows: int, cols: int, dtype: str = "float32", *, sparse: bool = False,
                 init_std: float = 1e-2) -> None:
        super().__init__()
        self.rows, self.cols = int(rows), int(cols)
        self.dtype_name = check_table_dtype(dtype)
        self.sparse = bool(sparse)
        if dtype == "float32":
            self.weight = nn.Parameter(torch.zeros(self.rows, self.cols))
            if self.weight.numel() > 0:
                nn.init.normal_(self.weight, std=init_std)
        elif dtype == "float16":
            self.register_buffer("weight", torch.zeros(self.rows, self.cols, dtype=torch.float16))
        else:
            self.register_buffer("weight", torch.zeros(self.rows, self.cols, dtype=torch.int8))
            # [rows, 1]: Gather yields [..., 1], which broadcasts over the row with no Unsqueeze node.
            self.register_buffer("scale", torch.zeros(self.rows, 1, dtype=torch.float16))

    @property
    def trainable(self) -> bool:
        return self.dtype_name == "float32"

    def nbytes(self) -> int:
        return table_bytes(self.rows, self.cols, self.dtype_name)

    def gather(self, idx: torch.Tensor) -> torch.Tensor:
        """fp32 rows for int64 ``idx`` (already in ``[0, rows)``): ``[*idx.shape, cols]``."""
        if self.dtype_name == "float32":
            if self.sparse and self.training and torch.is_grad_enabled():
                return nn.functional.embedding(idx, self.weight, sparse=True)
            return self.weight[idx]
        rows = self.weight[idx].to(torch.float32)  # Gather(int8|fp16) -> Cast
        if self.dtype_name == "float16":
            return rows
        return rows * self.scale[idx].to(torch.float32)  # [..., C] * [..., 1]

    @torch.no_grad()
    def set_dense(self, weight: torch.Tensor) -> RowTable:
        """Store the fp32 ``weight`` ``[rows, cols]`` in this table's dtype."""
        if tuple(weight.shape) != (self.rows, self.cols):
            raise BadInputError(f"table is {self.rows}x{self.cols}, got a weight of shape {tuple(weight.shape)}")
        w = weight.detach().to(torch.float32)
        if self.dtype_name == "float32":
            self.weight.copy_(w)
        elif self.dtype_name == "float16":
            self.weight.copy_(w.clamp(-65504.0, 65504.0).to(torch.float16))
        else:
            q, s = quantize_rows_int8(w)
            self.weight.copy_(q)
            self.scale.copy_(s.unsqueeze(1))
        return self

    @torch.no_grad()
    def dense(self) -> torch.Tensor:
        """The stored table dequantized to fp32 ``[rows, cols]``."""
        if self.rows == 0:
            return torch.zeros(0, self.cols)
        return self.gather(torch.arange(self.rows)).detach().clone()

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.weight] if self.trainable and self.sparse else []

    def extra_repr(self) -> str:
        return f"{self.rows}x{self.cols}, dtype={self.dtype_name}, bytes={self.nbytes():,}"


@register_embedding
class QuantizedEmbedding(EmbeddingLayer):
    """All fields' tables in one row-wise int8 (fp16 scale per row) or fp16 table.

    The concatenated-table layout of ``DenseEmbedding`` with quantized rows: see the module
    docstring for the method (row-wise symmetric int8, FBGEMM/TorchRec; Guan et al. 2019),
    :meth:`max_abs_error_bound` for its error bound and :class:`RowTable` for the ONNX lowering.
    Frozen: it holds no trainable parameters (post-training quantization).

    Storage, with ``R = sum(vocab_sizes)``, ``F = fields``, ``D = dim``:

    * int8: ``R*D`` (values) ``+ 2*R`` (fp16 scales) ``+ 16*F`` (int64 vocab sizes, offsets)
    * fp16: ``2*R*D + 16*F``

    Build it from any layer with ``QuantizedEmbedding.from_dense(layer, dtype="int8")``.
    """

    type_name = "quantized"

    def __init__(self, vocab_sizes: Sequence[int], dim: int, *, dtype: str = "int8") -> None:
        super().__init__(vocab_sizes, dim)
        self.dtype_name = check_table_dtype(dtype, allowed=("int8", "float16"), owner="QuantizedEmbedding")
        self.table = RowTable(sum(self.vocab_sizes), self.dim, dtype)
        self.register_buffer("offsets", torch.tensor(field_offsets(self.vocab_sizes), dtype=torch.int64))

    @classmethod
    def from_dense(cls, layer: EmbeddingLayer, *, dtype: str = "int8") -> QuantizedEmbedding:
        """Quantize the effective table of any embedding layer (its ``dense_weight()``)."""
        new = cls(layer.vocab_sizes, layer.dim, dtype=dtype)
        new.table.set_dense(layer.dense_weight())
        return new

    @staticmethod
    def expected_bytes(vocab_sizes: Sequence[int], dim: int, dtype: str = "int8") -> int:
        """:func:`table_bytes` of the concatenated table + int64 vocabulary sizes and offsets."""
        return table_bytes(sum(vocab_sizes), dim, dtype) + 16 * len(vocab_sizes)

    @staticmethod
    def max_abs_error_bound(weight: torch.Tensor, dtype: str = "int8") -> torch.Tensor:
        """Per-row bound on ``|V - V̂|`` for an fp32 table ``[R, C]``::

            |V_rj - V̂_rj| <= s_r / 2 <= (1 + 2^-10) * max_j |V_rj| / 254 + 2^-25   (int8)
            |V_rj - V̂_rj| <= 2^-11 * |V_rj|  (fp16 round-to-nearest; |V| <= 65504, subnormals aside)

        (``2^-25``: half the spacing of fp16 subnormals, which matters only for rows with
        ``max |V| < 127 * 2^-14``.) The int8 scale is rounded up, so nothing is clipped.
        """
        amax = weight.detach().abs().amax(dim=1)
        if dtype == "int8":
            return _fp16_round_up(amax / INT8_MAX).to(torch.float32) / 2
        return amax * 2.0**-11

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table.gather(ids + self.offsets)  # [B, F] -> [B, F, D]

    def spec(self) -> dict[str, Any]:
        return {"type": self.type_name, "vocab_sizes": list(self.vocab_sizes), "dim": self.dim,
                "dtype": self.dtype_name}

    def dense_weight(self) -> torch.Tensor:
        return self.table.dense()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dtype={self.dtype_name}"
