"""A tiny pretrained DeepFM run on conftest's planted CTR data, trained once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from ondevice.train import TrainConfig, train
from tests.conftest import CALIBRATED, make_ctr


def pretrained_run(root: Path) -> Path:
    data = make_ctr(root / "data")
    cfg = TrainConfig(model="deepfm", embed_dim=16, mlp_dims=[16], epochs=6, batch_size=256, lr=5e-3, patience=2,
                      **CALIBRATED)
    train(data, root / "run", cfg, quiet=True)
    return root / "run"


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pretrained_run(tmp_path_factory.mktemp("pretrained"))
