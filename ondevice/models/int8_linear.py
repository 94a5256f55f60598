"""Dense layers stored in int8: weight-only post-training quantization of the MLP.

A Frappe-size DeepFM (MLP 400-400-400) keeps 86 % of its bytes in the MLP, so no embedding
method alone reaches ¼ of its file. :class:`Int8Linear` stores ``W [out, in]`` as int8 with
one fp32 scale per output row (symmetric, round to nearest)::

    s_o = max_i |W_oi| / 127   (s_o = 1 for an all-zero row),   q_oi = round(W_oi / s_o)
    y   = x · (q ⊙ s)ᵀ + b

``bytes = out·in + 4·out (scales) + 4·out (bias)``: a 4× smaller weight. The computation is
fp32 (weight-only quantization, as GPTQ/AWQ-style weight compression and ORT's
``MatMulNBits`` do), so the device result equals the PyTorch model that uses the same
dequantized weights; the quantization error itself shows in the validation metric, which
``compress`` reads on the quantized model.

Lowering. The exporter folds ``Cast(q)·s`` into an fp32 initializer;
:func:`ondevice.export.onnx_export.store_int8_weights` puts the int8 tensor and its scales
back (``Cast`` + ``Mul`` nodes in front of the Gemm). ONNX Runtime constant-folds those two
nodes when the session is created, so the file is small and the run is the fp32 Gemm:
batch-1 latency does not change (measured in ``benchmarks/latency_mlp_bound.py``, which also
times ORT's dynamic int8 ``MatMulInteger`` path for comparison). ``DequantizeLinear`` was not
used: ORT leaves a weight-only ``DequantizeLinear`` unfolded by default (it is kept for QDQ
fusion), so it would dequantize the weights on every call.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ondevice.embedding import EmbeddingLayer

__all__ = ["Int8Linear", "int8_linear_bytes", "quantize_dense_layers_", "quantizable_linears"]

def int8_linear_bytes(in_features: int, out_features: int) -> int:
    """Exact stored bytes of an :class:`Int8Linear` (weight, scales, bias)."""
    return out_features * in_features + 8 * out_features


class Int8Linear(nn.Module):
    """``y = x·(q ⊙ s)ᵀ + b`` with ``q`` int8 ``[out, in]`` and ``s`` fp32 ``[out]`` (module docstring).

    ``q`` and ``s`` are frozen buffers; ``bias`` stays a parameter (fine-tuning may move it).
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.register_buffer("weight_q", torch.zeros(self.out_features, self.in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(self.out_features))
        self.bias = nn.Parameter(torch.zeros(self.out_features))

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        w = linear.weight.detach().to(torch.float32)
        new = cls(w.shape[1], w.shape[0])
        amax = w.abs().amax(dim=1)
        scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
        new.weight_q.copy_(torch.round(w / scale.unsqueeze(1)).clamp(-127, 127).to(torch.int8))
        new.scale.copy_(scale)
        if linear.bias is not None:
            new.bias.copy_(linear.bias.detach())
        return new

    def dequantized_weight(self) -> torch.Tensor:
        """``q ⊙ s`` as fp32 ``[out, in]`` — exactly what the device's folded Cast·Mul computes."""
        return self.weight_q.to(torch.float32) * self.scale.unsqueeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized_weight(), self.bias)

    def storage_bytes(self) -> int:
        return int8_linear_bytes(self.in_features, self.out_features)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, int8 weight, storage_bytes={self.storage_bytes():,}"


def quantizable_linears(model: nn.Module) -> list[str]:
    """Names of the dense ``nn.Linear`` layers outside embedding layers (what ``--mlp int8`` stores in int8)."""
    skip: list[str] = []
    out: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, EmbeddingLayer):
            skip.append(f"{name}.")
        elif type(module) is nn.Linear and not any(name.startswith(p) for p in skip):
            out.append(name)
    return out


def quantize_dense_layers_(model: nn.Module, names: Sequence[str] | None = None) -> list[str]:
    """Replace the quantizable ``nn.Linear`` layers of ``model`` (or those ``names``) by
    their :class:`Int8Linear` (in place); returns the names replaced."""
    names = quantizable_linears(model) if names is None else list(names)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Int8Linear.from_linear(getattr(parent, child)))
    return names
