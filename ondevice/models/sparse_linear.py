"""A Linear layer whose zero weights are not stored, and dead-neuron removal for MLPs.

Unstructured pruning (DeepLight, Deng et al., WSDM'21: 90 % of every DNN weight) saves
bytes only if the stored format drops the zeros. :class:`SparseLinear` stores the non-zeros
of ``W [out, in]`` in row-major order as *delta-coded COO*:

``values`` fp32 ``[n]`` and ``deltas`` uint8 or int16 ``[n]``, where the flat position
``p_k = row_k·in + col_k`` of the k-th stored entry is ``Σ_{j≤k} deltas_j`` (``deltas_0 = p_0``,
then the gaps). A gap larger than the dtype's maximum ``M`` (255 or 32767) is bridged by
filler entries (value 0, delta ``M``), so ``n = nnz + fillers``. Exact stored bytes::

    bytes = n·(4 + s_d) + 4·out        (s_d = 1 for uint8, 2 for int16; + the bias)

``from_linear`` builds both index dtypes and keeps the smaller (uint8 wins unless the
fillers of long gaps cost more than the second byte). At 90 % sparsity that is ≈ 5 bytes
per kept weight (0.5 B per dense entry) against 4 B per entry dense; a linearised int32
COO index would cost 8 B per kept weight, ONNX ``sparse_initializer`` with the spec's
int64 indices 12 B (``benchmarks/deeplight.py`` measures both).

Lowering (ONNX opset 17, plain ops, no custom kernels): ``Range`` over the stored entries,
``Gather`` (deltas) + ``Cast`` + ``CumSum`` → flat positions, ``ScatterElements`` of the
values into a zero vector of ``out·in``, ``Reshape`` and ``Gemm``. Every one of those nodes
hangs off the batch size (``x.shape[0]·0``), as in ``lowering.TopKExport``: otherwise the
exporter's constant folding would fold the expansion back into a dense initializer and the
file would not shrink. The dense weight is rebuilt on every call — cheap next to the MatMul
at batch 256, visible at batch 1 — so unstructured sparsity shrinks the file, **not** the
latency (the paper's 46× came from a C++ sparse-matrix kernel). Latency drops when whole
neurons go: :func:`remove_dead_neurons` deletes them from the MLP (structured).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ondevice.errors import BadInputError

__all__ = ["DELTA_DTYPES", "SparseLinear", "delta_code", "remove_dead_neurons", "sparse_linear_bytes",
           "sparsify_mlp_"]

DELTA_DTYPES = {"uint8": (torch.uint8, 255), "int16": (torch.int16, 32767)}


def delta_code(positions: torch.Tensor, max_delta: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ascending flat positions ``[nnz]`` -> (``deltas`` int64 ``[n]``, ``is_real`` bool ``[n]``).

    ``deltas`` sums back to the positions (``cumsum``); gaps above ``max_delta`` get filler
    entries. ``n = nnz + Σ_k (ceil(gap_k / max_delta) − 1)`` with ``gap_0 = p_0 + 1`` counted
    as ``p_0`` (the first delta may be 0).
    """
    pos = positions.to(torch.int64)
    if pos.numel() == 0:
        return torch.zeros(1, dtype=torch.int64), torch.zeros(1, dtype=torch.bool)  # one stored zero at position 0
    gaps = torch.cat([pos[:1], pos[1:] - pos[:-1]])
    fillers = torch.where(gaps > max_delta, (gaps - 1) // max_delta, torch.zeros_like(gaps))
    deltas: list[torch.Tensor] = []
    real: list[torch.Tensor] = []
    if int(fillers.sum()) == 0:
        return gaps, torch.ones_like(gaps, dtype=torch.bool)
    for g, f in zip(gaps.tolist(), fillers.tolist(), strict=True):
        if f:
            deltas.append(torch.full((f,), max_delta, dtype=torch.int64))
            real.append(torch.zeros(f, dtype=torch.bool))
            g -= f * max_delta
        deltas.append(torch.tensor([g], dtype=torch.int64))
        real.append(torch.ones(1, dtype=torch.bool))
    return torch.cat(deltas), torch.cat(real)


def sparse_linear_bytes(stored: int, out_features: int, delta_dtype: str) -> int:
    """Exact stored bytes of a :class:`SparseLinear` (module docstring)."""
    s_d = torch.empty(0, dtype=DELTA_DTYPES[delta_dtype][0]).element_size()
    return max(1, stored) * (4 + s_d) + 4 * out_features


class SparseLinear(nn.Module):
    """``y = x Wᵀ + b`` with ``W``'s non-zeros stored delta-coded (module docstring).

    ``stored`` (entries incl. fillers) and ``delta_dtype`` fix the buffer shapes; they are
    in :meth:`spec`, so a checkpoint rebuilds the empty layer and ``load_state_dict`` fills
    it. The stored sparsity pattern is fixed; ``values`` and ``bias`` stay trainable.
    """

    def __init__(self, in_features: int, out_features: int, *, stored: int, delta_dtype: str = "uint8") -> None:
        super().__init__()
        if delta_dtype not in DELTA_DTYPES:
            raise BadInputError(f"SparseLinear delta_dtype must be one of {', '.join(DELTA_DTYPES)}; got {delta_dtype!r}")
        if not 1 <= stored <= max(1, in_features * out_features):
            raise BadInputError(f"SparseLinear stored={stored} is impossible for a {out_features}x{in_features} weight")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.stored, self.delta_dtype = int(stored), delta_dtype
        self.values = nn.Parameter(torch.zeros(self.stored))
        self.register_buffer("deltas", torch.zeros(self.stored, dtype=DELTA_DTYPES[delta_dtype][0]))
        self.bias = nn.Parameter(torch.zeros(self.out_features))

    @classmethod
    def from_linear(cls, linear: nn.Linear, delta_dtype: str | None = None) -> SparseLinear:
        """Store ``linear``'s non-zero weights; ``delta_dtype=None`` picks the smaller coding."""
        w = linear.weight.detach().to(torch.float32)
        flat = w.flatten()
        pos = (flat != 0).nonzero(as_tuple=True)[0]  # ascending = row-major
        options = [delta_dtype] if delta_dtype else list(DELTA_DTYPES)
        coded = {d: delta_code(pos, DELTA_DTYPES[d][1]) for d in options}
        best = min(options, key=lambda d: sparse_linear_bytes(len(coded[d][0]), w.shape[0], d))
        deltas, real = coded[best]
        new = cls(w.shape[1], w.shape[0], stored=len(deltas), delta_dtype=best)
        values = torch.zeros(len(deltas))
        values[real] = flat[pos]
        with torch.no_grad():
            new.values.copy_(values)
            new.deltas.copy_(deltas.to(new.deltas.dtype))
            if linear.bias is not None:
                new.bias.copy_(linear.bias.detach())
        return new

    def dense_weight(self) -> torch.Tensor:
        """``W`` as dense fp32 ``[out, in]`` (detached)."""
        with torch.no_grad():
            return self._expand(0).detach()

    def _expand(self, zero: Any) -> torch.Tensor:
        # ``zero`` is 0 computed from the batch size: every node below depends on it, so the
        # exporter cannot fold the expansion back into a dense initializer.
        idx = torch.arange(zero, zero + self.stored, dtype=torch.int64)  # [n] (Range)
        pos = self.deltas[idx].to(torch.int64).cumsum(0)  # [n] flat positions
        base = (pos[:1] * 0).to(torch.float32).expand(self.out_features * self.in_features)  # [out·in] zeros
        flat = base.scatter(0, pos, self.values)  # [out·in]
        return flat.reshape(self.out_features, self.in_features)  # [out, in]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self._expand(x.shape[0] * 0), self.bias)  # [B, out]

    def to_linear(self) -> nn.Linear:
        """The same layer as a dense ``nn.Linear`` (zeros stored)."""
        lin = nn.Linear(self.in_features, self.out_features)
        with torch.no_grad():
            lin.weight.copy_(self.dense_weight())
            lin.bias.copy_(self.bias.detach())
        return lin

    def storage_bytes(self) -> int:
        return sparse_linear_bytes(self.stored, self.out_features, self.delta_dtype)

    def nnz(self) -> int:
        return int((self.values.detach() != 0).sum())

    def spec(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features, "stored": self.stored,
                "delta_dtype": self.delta_dtype}

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, nnz={self.nnz():,}/{self.in_features * self.out_features:,}, "
                f"stored={self.stored:,} ({self.delta_dtype} deltas), storage_bytes={self.storage_bytes():,}")


def linear_layers(mlp: nn.Sequential) -> list[int]:
    """Indices of the Linear / SparseLinear layers of an ``MLP`` in order."""
    return [i for i, m in enumerate(mlp) if isinstance(m, nn.Linear | SparseLinear)]


def sparsify_mlp_(mlp: nn.Sequential, specs: Sequence[dict[str, Any] | None]) -> nn.Sequential:
    """Replace the i-th Linear of ``mlp`` by an empty ``SparseLinear(**specs[i])`` where not None (in place)."""
    idx = linear_layers(mlp)
    if len(specs) != len(idx):
        raise BadInputError(f"sparse MLP spec lists {len(specs)} layers, the MLP has {len(idx)} Linear layers")
    for i, spec in zip(idx, specs, strict=True):
        if spec is not None:
            lin = mlp[i]
            if (spec["in_features"], spec["out_features"]) != (lin.in_features, lin.out_features):
                raise BadInputError(f"sparse MLP spec {spec} does not match layer {i} ({lin.out_features}x{lin.in_features})")
            mlp[i] = SparseLinear(**spec)
    return mlp


@torch.no_grad()
def remove_dead_neurons(mlp: nn.Sequential) -> tuple[nn.Sequential, list[int]]:
    """Delete hidden neurons that cannot change the output; returns (new MLP, hidden widths).

    ``mlp`` is ``Linear → ReLU [→ Dropout] … → Linear`` of dense ``nn.Linear`` layers (no
    batch norm). Hidden neuron ``j`` of layer ``i`` is removed when

    * its outgoing column ``W_{i+1}[:, j]`` is all zero (its output is never read), or
    * its incoming row ``W_i[j, :]`` is all zero and ``b_j ≤ 0`` (it always outputs
      ``ReLU(b_j) = 0``).

    Both removals drop exact-zero terms only. (A dead row with ``b_j > 0`` outputs the
    constant ``ReLU(b_j)``; it is kept, since folding it into the next bias would change the
    rounding.) Removing a neuron deletes its row and bias in layer ``i`` and its column in
    layer ``i+1``, which may kill neurons upstream, so the sweep repeats until nothing changes.
    """
    if any(isinstance(m, nn.BatchNorm1d | SparseLinear) for m in mlp):
        raise BadInputError("remove_dead_neurons needs dense Linear/ReLU layers without batch norm")
    mlp = nn.Sequential(*[m for m in mlp])  # same modules, new container
    idx = linear_layers(mlp)
    changed = True
    while changed:
        changed = False
        for a, b in zip(idx[:-1], idx[1:], strict=True):
            la, lb = mlp[a], mlp[b]
            dead_out = (lb.weight == 0).all(dim=0)  # [h]
            dead_in = (la.weight == 0).all(dim=1) & (la.bias <= 0)  # [h]
            keep = ~(dead_out | dead_in)
            if bool(keep.all()):
                continue
            if not bool(keep.any()):
                keep[0] = True  # keep one neuron so every layer has a shape (it outputs a constant)
                if bool(keep.all()):
                    continue
            na = nn.Linear(la.in_features, int(keep.sum()))
            na.weight.copy_(la.weight[keep])
            na.bias.copy_(la.bias[keep])
            nb = nn.Linear(int(keep.sum()), lb.out_features)
            nb.weight.copy_(lb.weight[:, keep])
            nb.bias.copy_(lb.bias)
            mlp[a], mlp[b] = na, nb
            changed = True
    widths = [mlp[i].out_features for i in idx[:-1]]
    return mlp, widths
