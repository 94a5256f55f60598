"""Deep & Cross Network (Wang et al., ADKDD'17), the DCN-style cross model.

Cross layer (DCN's cross network): x_{l+1} = x_0 · (x_lᵀ w_l) + b_l + x_l, on x_0 = concat(e_1..e_F);
a parallel MLP; the two outputs are concatenated and mapped to the logit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ondevice.embedding import EmbeddingLayer
from ondevice.models.base import MLP, CTRModel, register_model


class CrossNetwork(nn.Module):
    def __init__(self, in_dim: int, num_layers: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(num_layers, in_dim) / in_dim**0.5)
        self.b = nn.Parameter(torch.zeros(num_layers, in_dim))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in range(self.w.shape[0]):
            x = x0 * (x @ self.w[layer]).unsqueeze(1) + self.b[layer] + x
        return x


@register_model
class DCN(CTRModel):
    """logit = Linear([CrossNet(x0); MLP(x0)])."""

    name = "dcn"
    uses_linear = False

    def __init__(
        self,
        embedding: EmbeddingLayer,
        linear: EmbeddingLayer | None = None,
        *,
        mlp_dims: Sequence[int] = (400, 400),
        cross_layers: int = 3,
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__(embedding, linear)
        self.mlp_dims = [int(h) for h in mlp_dims]
        self.cross_layers = int(cross_layers)
        self.dropout = float(dropout)
        self.batch_norm = bool(batch_norm)
        in_dim = self.num_fields * self.embed_dim
        self.cross = CrossNetwork(in_dim, self.cross_layers)
        self.mlp = MLP(in_dim, self.mlp_dims, dropout=dropout, batch_norm=batch_norm, out_dim=None)
        self.head = nn.Linear(in_dim + self.mlp.out_features, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x0 = self.embedding(ids).flatten(1)
        z = torch.cat([self.cross(x0), self.mlp(x0)], dim=1)
        return self.first_order(ids) + self.head(z).squeeze(1)

    def config(self) -> dict[str, Any]:
        return {"mlp_dims": self.mlp_dims, "cross_layers": self.cross_layers, "dropout": self.dropout,
                "batch_norm": self.batch_norm}
