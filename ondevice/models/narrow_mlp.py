"""A narrower MLP from a trained one: structured magnitude pruning of hidden neurons.

When even an int8 MLP does not fit a budget (a Frappe-size DeepFM's 400-400-400 MLP is
0.37 MB in int8), ``--mlp auto`` keeps a fraction ``width`` of every hidden layer's neurons
and the searcher's retraining adapts the rest of the model to it. Neuron ``j`` of hidden
layer ``i`` (``W_i [h_i, in]``, next layer ``W_{i+1} [out, h_i]``) is ranked by

    score_j = ‖W_i[j, :]‖₂ · ‖W_{i+1}[:, j]‖₂

(how much signal can pass through it; the product form of the magnitude criteria used for
structured pruning, e.g. Li et al., "Pruning Filters for Efficient ConvNets", ICLR'17, which
ranks by the L1 norm of the incoming weights alone). The top ``max(1, round(width·h_i))``
neurons keep their trained weights (warm start): rows of ``W_i``, ``b_i`` and batch-norm
statistics, columns of ``W_{i+1}``. Unlike :func:`ondevice.models.sparse_linear.remove_dead_neurons`
this changes the function; the retraining that follows is what makes it usable, so only
retraining searchers are offered narrower MLPs.
"""

from __future__ import annotations

import torch
from torch import nn

from ondevice.models.base import MLP, RecModel

__all__ = ["can_narrow", "narrow_mlp_", "neuron_scores"]


def can_narrow(model: RecModel) -> bool:
    """True for models with an ``MLP`` of dense layers ending in one output (DeepFM, DeepFwFM...)."""
    mlp = getattr(model, "mlp", None)
    return (isinstance(mlp, MLP) and hasattr(model, "mlp_dims") and mlp.out_features == 1
            and all(type(m) in (nn.Linear, nn.ReLU, nn.Dropout, nn.BatchNorm1d) for m in mlp)
            and len(model.mlp_dims) > 0)


def neuron_scores(w_in: torch.Tensor, w_out: torch.Tensor) -> torch.Tensor:
    """``‖W_in[j, :]‖₂ · ‖W_out[:, j]‖₂`` for each hidden neuron ``j``."""
    return w_in.norm(dim=1) * w_out.norm(dim=0)


@torch.no_grad()
def narrow_mlp_(model: RecModel, width: float) -> list[int]:
    """Keep ``width`` of every hidden layer's neurons of ``model.mlp`` (in place); returns the new dims."""
    if not 0 < width <= 1:
        raise ValueError(f"width must be in (0, 1], got {width}")
    if not can_narrow(model):
        raise ValueError(f"{type(model).__name__} has no narrowable MLP")
    layers = list(model.mlp)
    linear_idx = [i for i, m in enumerate(layers) if isinstance(m, nn.Linear)]
    dims: list[int] = []
    for a, b in zip(linear_idx[:-1], linear_idx[1:], strict=True):
        la, lb = layers[a], layers[b]
        h = la.out_features
        k = max(1, round(width * h))
        keep = torch.sort(torch.topk(neuron_scores(la.weight, lb.weight), k).indices).values
        na = nn.Linear(la.in_features, k)
        na.weight.copy_(la.weight[keep])
        na.bias.copy_(la.bias[keep])
        nb = nn.Linear(k, lb.out_features)
        nb.weight.copy_(lb.weight[:, keep])
        nb.bias.copy_(lb.bias)
        layers[a], layers[b] = na.train(la.training), nb.train(lb.training)
        for i in range(a + 1, b):  # batch norm between them: its per-neuron statistics
            if isinstance(layers[i], nn.BatchNorm1d):
                bn = layers[i]
                nbn = nn.BatchNorm1d(k, eps=bn.eps, momentum=bn.momentum)
                nbn.weight.copy_(bn.weight[keep])
                nbn.bias.copy_(bn.bias[keep])
                nbn.running_mean.copy_(bn.running_mean[keep])
                nbn.running_var.copy_(bn.running_var[keep])
                nbn.num_batches_tracked.copy_(bn.num_batches_tracked)
                layers[i] = nbn.train(bn.training)
        dims.append(k)
    for i, layer in enumerate(layers):
        model.mlp[i] = layer
    model.mlp_dims = dims
    return dims
