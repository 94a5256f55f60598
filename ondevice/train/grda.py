"""gRDA — generalized regularized dual averaging (Chao & Cheng, "A generalization of
regularized dual averaging and its dynamics", 2019), the optimiser AutoFIS trains its
gates with (Liu et al., KDD'20, survey Eq. 28-29; methods.md §5).

Per parameter ``w`` with learning rate γ, tuning constants ``c`` and ``μ``::

    v_0 = w_0                                        (accumulator starts at the weights)
    v_t = v_{t-1} − γ·g_t                            (dual averaging of the gradients)
    ℓ_t = ℓ_{t-1} + c·γ^{0.5+μ}·(t^μ − (t−1)^μ)      (threshold, accumulated as increments)
    w_t = sign(v_t)·max(|v_t| − ℓ_t, 0)              (soft threshold: exact zeros)

With a constant γ, ``ℓ_t = c·γ^{0.5+μ}·t^μ``; accumulating increments lets ℓ follow a
learning-rate schedule (the AutoFIS TF optimiser and the later ``grda_pytorch.py`` of the
gRDA authors do the same; the earlier PyTorch version started the accumulator at
U(−0.1, 0.1) and recomputed ℓ_t per step, which we do not follow).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["GRDA", "grda_threshold"]


def grda_threshold(c: float, mu: float, lr: float, t: int) -> float:
    """ℓ_t = c·γ^{0.5+μ}·t^μ for a constant learning rate γ."""
    return float(c) * float(lr) ** (0.5 + float(mu)) * float(t) ** float(mu)


class GRDA(torch.optim.Optimizer):
    """gRDA (module docstring): dual averaging with a growing soft threshold, exact zeros.

    Parameters
    ----------
    params : parameters (dense gradients only).
    lr : γ (AutoFIS: 1.0).
    c : threshold scale (AutoFIS: 5e-4 for DeepFM, 5e-3 for FM).
    mu : threshold growth exponent μ (AutoFIS: 0.8 for DeepFM, 0.6 for FM).
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], lr: float = 1.0,
                 c: float = 5e-4, mu: float = 0.8) -> None:
        if lr <= 0:
            raise ValueError(f"GRDA lr must be > 0, got {lr}")
        if c < 0:
            raise ValueError(f"GRDA c must be >= 0, got {c}")
        if not 0 < mu < 1:  # μ = 0: t^0 − (t−1)^0 = 0 from the first step on, the threshold never grows
            raise ValueError(f"GRDA mu must be in (0, 1), got {mu}")
        super().__init__(params, {"lr": float(lr), "c": float(c), "mu": float(mu)})

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, c, mu = group["lr"], group["c"], group["mu"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("GRDA does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["accumulator"] = p.detach().clone()  # v_0 = w_0
                    state["l1_accumulation"] = 0.0
                t = state["step"] + 1
                state["step"] = t
                state["l1_accumulation"] += c * lr ** (0.5 + mu) * (t ** mu - (t - 1) ** mu)
                v = state["accumulator"]
                v.add_(p.grad, alpha=-lr)
                p.copy_(v.sign() * (v.abs() - state["l1_accumulation"]).clamp_(min=0))
        return loss
