"""Factorization Machine (Rendle, ICDM'10); survey §3.1, Eq. (5).

Also home of the explicit field-pair interaction shared by FM, DeepFM and DeepFwFM
(:class:`PairInteraction`): a list of kept pairs ``(i, j)`` with one weight each,
``Σ_{(i,j) kept} w_ij <e_i, e_j>``. DeepFwFM uses it for its field-pair weights r_ij
(Pan et al., WWW'18); FM and DeepFM use it for AutoFIS gates α_ij (Liu et al., KDD'20,
survey Eq. 28 and 30). A pair that is not in the list is not computed and is not in the
exported graph. FM/DeepFM without a pair list keep the O(F·d) sum-square form.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ondevice.embedding import EmbeddingLayer
from ondevice.models.base import CTRModel, register_model

__all__ = ["FM", "PairInteraction", "all_pairs", "fm_second_order"]

#: AutoFIS's re-train gate initialisation (survey Eq. 30; the authors' code re-initialises α at 0.6).
GATE_INIT = 0.6


def fm_second_order(emb: torch.Tensor) -> torch.Tensor:
    """Σ_{i<j} <e_i, e_j> in O(F·d): ½ Σ_d [(Σ_i e_i)² − Σ_i e_i²]. ``[B,F,D] -> [B]``."""
    square_of_sum = emb.sum(dim=1).pow(2)
    sum_of_square = emb.pow(2).sum(dim=1)
    return 0.5 * (square_of_sum - sum_of_square).sum(dim=1)


def all_pairs(num_fields: int) -> list[list[int]]:
    """Every field pair ``[i, j]``, ``i < j``, in row-major upper-triangle order."""
    return [[i, j] for i in range(num_fields) for j in range(i + 1, num_fields)]


class PairInteraction:
    """Mixin for a ``CTRModel``: an explicit pair list with one weight per pair.

    Adds ``pairs`` (list of ``[i, j]``), the index buffers ``pair_left`` / ``pair_right``
    (exported as constants) and the parameter ``pair_weight`` ``[P]`` directly on the model,
    so state-dict keys stay ``pair_left``, ``pair_right``, ``pair_weight``. ``pair_norm``
    (``None`` outside AutoFIS's search stage) normalises the pair values before the weights;
    ``pair_centre`` (likewise) transforms the embeddings before they are paired.
    """

    pairs: list[list[int]]
    pair_left: torch.Tensor
    pair_right: torch.Tensor
    pair_weight: nn.Parameter

    def _init_pairs(self, pairs: Sequence[Sequence[int]] | None, num_fields: int,
                    init: str | float) -> None:
        """Register the pair list; ``init``: a constant, or ``"normal"`` for N(0, 1/F)."""
        pairs = all_pairs(num_fields) if pairs is None else [[int(i), int(j)] for i, j in pairs]
        for i, j in pairs:
            if not 0 <= i < j < num_fields:
                raise ValueError(f"pair {[i, j]} is not a field pair i < j of {num_fields} fields")
        self.pairs = pairs
        idx = torch.tensor(pairs, dtype=torch.int64).reshape(-1, 2)
        self.register_buffer("pair_left", idx[:, 0].clone())  # type: ignore[attr-defined]
        self.register_buffer("pair_right", idx[:, 1].clone())  # type: ignore[attr-defined]
        if init == "normal":
            weight = torch.randn(len(pairs)) / max(num_fields, 1) ** 0.5
        else:
            weight = torch.full((len(pairs),), float(init))
        self.pair_weight = nn.Parameter(weight)
        self.pair_norm: nn.Module | None = None
        self.pair_centre: nn.Module | None = None

    def pair_values(self, emb: torch.Tensor) -> torch.Tensor:
        """<e_i, e_j> for every kept pair (through ``pair_norm`` when set). ``[B,F,D] -> [B,P]``.

        ``pair_centre`` (``None`` outside AutoFIS's search) first maps ``e`` to the factors the
        pairs multiply. In training with more pairs than fields the values come from one
        batched Gram product ``E Eᵀ`` ``[B,F,F]`` and one gather of the kept entries (O(B·F²·D)
        work, O(B·F²) memory, against O(B·P·D) for gathering both factors of every pair: 741
        pairs of 16 dims is a 12M-float tensor per side at batch 1024). AutoFIS's search step on
        39 fields, 1 thread, CPU time (``benchmarks/results/autofis.md`` (d)): DeepFM 400³ 43.8 ms
        against 165 ms gathered (training step 38.5 ms: 1.14×); FM 11.0 ms against 134 ms (its
        sum-square training step, with no per-pair work at all, is 4.7 ms: 2.35×; FM's search takes
        the fused op, :func:`ondevice.search.interaction.autofis.fused_pair_sum`). The search stage's model
        (``pair_norm`` set, never exported) takes the Gram in evaluation too: its validation passes
        and held-out test gathered ``[8192, 741, 16]`` per side. Otherwise (few pairs, evaluation
        and export of every other model) the two gathers: the exported graph is unchanged.
        """
        if self.pair_centre is not None:
            emb = self.pair_centre(emb)
        num_fields = emb.shape[1]
        if (self.training or self.pair_norm is not None) and len(self.pairs) > num_fields:
            gram = torch.matmul(emb, emb.transpose(1, 2)).flatten(1)  # [B, F·F]
            values = gram.index_select(1, self.pair_left * num_fields + self.pair_right)  # [B, P]
        else:
            left = emb.index_select(1, self.pair_left)  # [B, P, D]
            right = emb.index_select(1, self.pair_right)
            values = (left * right).sum(dim=2)  # [B, P]
        return values if self.pair_norm is None else self.pair_norm(values)

    def pair_sum(self, emb: torch.Tensor) -> torch.Tensor:
        """Σ_{(i,j) kept} w_ij <e_i, e_j>. ``[B,F,D] -> [B]`` (zeros without pairs; callers that
        add other ``[B]`` terms skip the call so an empty list adds no node to the graph)."""
        if not self.pairs:
            return emb.new_zeros(emb.shape[0])
        return (self.pair_values(emb) * self.pair_weight).sum(dim=1)

    @torch.no_grad()
    def drop_pairs(self, keep: torch.Tensor):
        """Remove the pairs where ``keep`` (bool ``[P]``) is False: their terms leave the graph (in place)."""
        keep = keep.to(torch.bool).reshape(-1)
        if keep.numel() != len(self.pairs):
            raise ValueError(f"keep has {keep.numel()} entries for {len(self.pairs)} pairs")
        self.pairs = [p for p, k in zip(self.pairs, keep.tolist(), strict=True) if k]
        self.pair_left = self.pair_left[keep].clone()
        self.pair_right = self.pair_right[keep].clone()
        self.pair_weight = nn.Parameter(self.pair_weight.detach()[keep].clone())
        return self


@register_model
class FM(PairInteraction, CTRModel):
    """y = w0 + Σ_i w_i + Σ_{i<j} <v_i, v_j> over the active feature of every field.

    ``pairs``: ``None`` (all pairs, sum-square trick, no extra parameters) or an explicit
    list of kept pairs, each with a trainable gate initialised at 0.6 (AutoFIS, survey Eq. 30).
    """

    name = "fm"

    def __init__(self, embedding: EmbeddingLayer, linear: EmbeddingLayer | None = None, *,
                 pairs: Sequence[Sequence[int]] | None = None) -> None:
        super().__init__(embedding, linear)
        self.explicit_pairs = pairs is not None
        if self.explicit_pairs:
            self._init_pairs(pairs, self.num_fields, GATE_INIT)

    def second_order(self, emb: torch.Tensor) -> torch.Tensor:
        """All pairs by the sum-square trick, or the gated kept pairs. ``[B,F,D] -> [B]``."""
        return self.pair_sum(emb) if self.explicit_pairs else fm_second_order(emb)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.first_order(ids) + self.second_order(self.embedding(ids))

    def config(self) -> dict[str, Any]:
        return {"pairs": self.pairs} if self.explicit_pairs else {}
