"""``TrainConfig``: every knob of a training run, and the defaults each model starts from.

``CTR_DEFAULTS`` hold for every CTR model, ``MODEL_DEFAULTS`` the per-model departures (FM's
learning rate, BPR-MF's whole setting); knobs left ``None`` take them when the config is
built. The resolved config is stored in ``train.json`` and in every checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from ondevice.errors import BadInputError

__all__ = ["CTR_DEFAULTS", "CTR_MODELS", "MODEL_DEFAULTS", "TOPK_MODELS", "TrainConfig"]

CTR_MODELS = ("fm", "deepfm", "widedeep", "deepfwfm", "dcn")
TOPK_MODELS = ("bprmf",)




# The defaults of every CTR model (the original PEP code's DeepFM setting): BatchNorm + dropout
# 0.2 in the MLP, Adam lr 1e-3 with coupled L2 (weight_decay 1e-5) on every parameter, early
# stopping, patience 5. On issue 12's Frappe rows DeepFM reaches test AUC 0.9531 with them, and
# every CTR model is within 0.001 val AUC of the best of 5 `tune` trials
# (benchmarks/results/original_protocol.md).
CTR_DEFAULTS: dict[str, Any] = {"embed_dim": 16, "dropout": 0.2, "batch_norm": True, "lr": 1e-3,
                                "weight_decay": 1e-5, "l2": 0.0, "batch_size": 1024, "patience": 5, "epochs": 50}
# Per-model departures (BPR-MF: benchmarks/topk_defaults.py).
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    # FM has no MLP, only tables: lr 1e-2 (val AUC 0.9534 on Frappe, best of its 5 tune trials
    # in benchmarks/results/original_protocol.md)
    "fm": {"lr": 1e-2},
    # BPR-MF: L2 1e-2 on the batch's rows (on Amazon Sports, ~7 interactions per user, 1e-4 and
    # 1e-3 end below popularity: val Recall@20 0.0266 / 0.0264 vs 0.0656,
    # benchmarks/results/topk_defaults_sports_l2/); sparse data converges slowly, hence 100 epochs
    "bprmf": {"embed_dim": 64, "dropout": 0.0, "batch_norm": False, "lr": 3e-3, "weight_decay": 0.0,
              "l2": 1e-2, "batch_size": 2048, "patience": 3, "epochs": 100},
}


@dataclass
class TrainConfig:
    """Every knob of a training run (stored in ``train.json`` and the checkpoint).

    Knobs left ``None`` take the model's default (``CTR_DEFAULTS``, ``MODEL_DEFAULTS``) when
    the config is built, so ``TrainConfig(model="bprmf")`` is BPR-MF's default run.
    """

    model: str = "deepfm"
    embed_dim: int = None  # type: ignore[assignment]  # resolved in __post_init__
    mlp_dims: list[int] = field(default_factory=lambda: [400, 400, 400])
    dropout: float = None  # type: ignore[assignment]
    batch_norm: bool = None  # type: ignore[assignment]
    cross_layers: int = 3
    lr: float = None  # type: ignore[assignment]
    embedding_lr: float | None = None
    weight_decay: float = None  # type: ignore[assignment]
    l2: float = None  # type: ignore[assignment]
    batch_size: int = None  # type: ignore[assignment]
    epochs: int = None  # type: ignore[assignment]
    patience: int = None  # type: ignore[assignment]
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    k: int = 20
    eval_protocol: str = "full"  # top-K: "full" ranking or "sampled" (1 positive + N negatives)
    eval_negatives: int = 99
    eval_batch_size: int = 16384
    max_steps_per_epoch: int | None = None  # for smoke tests and quick benchmarks
    # lazy (row-sparse) Adam on tables: True | False (dense Adam, coupled L2 on every row) |
    # "auto" (dense up to DENSE_TABLE_ENTRIES table entries); forced off under DDP
    sparse_embeddings: bool | str = "auto"

    def __post_init__(self) -> None:
        for name, value in {**CTR_DEFAULTS, **MODEL_DEFAULTS.get(self.model, {})}.items():
            if getattr(self, name) is None:
                setattr(self, name, value)

    def validate(self) -> None:
        if self.model not in CTR_MODELS + TOPK_MODELS:
            raise BadInputError(f"unknown model {self.model!r}; choose one of: {', '.join(CTR_MODELS + TOPK_MODELS)}")
        for name in ("embed_dim", "batch_size", "epochs", "k"):
            if getattr(self, name) < 1:
                raise BadInputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not math.isfinite(self.lr) or self.lr <= 0:
            raise BadInputError(f"--lr must be a finite number > 0, got {self.lr}")
        for name in ("weight_decay", "l2"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise BadInputError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:  # also refuses nan
            raise BadInputError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.embedding_lr is not None and not (math.isfinite(self.embedding_lr) and self.embedding_lr > 0):
            raise BadInputError(f"embedding_lr must be a finite number > 0, got {self.embedding_lr}")
        if any(int(d) < 1 for d in self.mlp_dims) or (not self.mlp_dims and self.model in ("deepfm", "widedeep", "deepfwfm", "dcn")):
            raise BadInputError(f"--mlp widths must be >= 1, got {self.mlp_dims}")
        for name in ("patience", "threads", "max_steps_per_epoch", "cross_layers", "eval_negatives", "eval_batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise BadInputError(f"--{name.replace('_per_epoch', '').replace('_', '-')} must be >= 1, got {value}")
        if self.sparse_embeddings not in (True, False, "auto"):
            raise BadInputError(f"sparse_embeddings must be true, false or 'auto', got {self.sparse_embeddings!r}")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise BadInputError(f"--device must be cpu or cuda, got {self.device!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise BadInputError("--device cuda requested but no CUDA GPU is available; use --device cpu")
        if self.eval_protocol not in ("full", "sampled"):
            raise BadInputError(f"--eval-protocol must be 'full' or 'sampled', got {self.eval_protocol!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
