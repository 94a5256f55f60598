"""Same data, settings and seed -> byte-identical ONNX file and identical metrics, for every method.

Each result also survives ``SearchResult.save``/``load`` (what ``auto`` keeps for ``compress
--resume``) with the same exported bytes and the same JSON record.

Each registered method runs twice in this process with the global torch RNG disturbed in
between (as another searcher or a discarded model would leave it), and the exported bytes
and validation metrics are compared exactly. One thread (tests/conftest.py): multi-thread
reductions may differ run to run (README, "Reproducibility").
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import pytest
import torch

from ondevice.data import EncodedDataset
from ondevice.models import BPRMF
from ondevice.search import SEARCHERS, make_searcher
from ondevice.search.base import SearchResult
from ondevice.train import TrainConfig, load_checkpoint, train
from tests.conftest import make_ctr
from tests.fast_searchers import FAST
from tests.topk_runs import pretrained_topk_run

CTR = sorted(n for n, c in SEARCHERS.items() if n != "auto" and "ctr" in c.tasks and n != "deeplight")
TOPK = sorted(n for n, c in SEARCHERS.items() if n != "auto" and "topk" in c.tasks)


def _onnx_sha(model) -> str:
    from ondevice.export.lowering import export_module
    from ondevice.export.onnx_export import deployable_model, export_onnx

    deployed = deployable_model(model)
    module, io = export_module(deployed)
    example = (torch.zeros(2, deployed.embed_dim) if isinstance(deployed, BPRMF)
               else torch.zeros(2, deployed.embedding.num_fields, dtype=torch.int64))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(module, io, example, path)
        return hashlib.sha256(path.read_bytes()).hexdigest()


def _twice(run: Path, method: str, budget_ratio: float) -> list[tuple[str, dict]]:
    from ondevice.pipeline.measure import measure_file_bytes

    ckpt = load_checkpoint(run)
    data = EncodedDataset(json.loads((run / "train.json").read_text())["data_dir"])
    budget = int(measure_file_bytes(ckpt.model)[0] * budget_ratio)
    out = []
    for disturb in (0, 17):
        torch.rand(disturb)  # a different global RNG state before the second run
        result = make_searcher(method, **FAST.get(method, {})).search(ckpt, data, budget, mlp="auto")
        out.append((_onnx_sha(result.model), result.val))
    with tempfile.TemporaryDirectory() as tmp:  # what auto keeps for compress --resume exports the same bytes
        result.save(Path(tmp) / "result.pt")
        loaded = SearchResult.load(Path(tmp) / "result.pt")
    assert (_onnx_sha(loaded.model), loaded.val) == out[-1]
    assert json.dumps(loaded.to_dict(), sort_keys=True) == json.dumps(result.to_dict(), sort_keys=True, default=float)
    return out


@pytest.mark.parametrize("method", CTR)
def test_ctr_method_is_reproducible(trained_run: Path, method: str) -> None:
    ratio = {"autofis": 1.5, "optinter": 1.5, "fp16": 0.9, "int8": 0.9, "adafs": 0.9, "autofield": 0.9}.get(method, 0.5)
    (a_sha, a_val), (b_sha, b_val) = _twice(trained_run, method, ratio)
    assert a_val == b_val
    assert a_sha == b_sha


@pytest.fixture(scope="module")
def fwfm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repro_fwfm")
    cfg = TrainConfig(model="deepfwfm", embed_dim=16, mlp_dims=[64, 32], epochs=2, batch_size=256, lr=5e-3, patience=2)
    train(make_ctr(root / "data"), root / "run", cfg, quiet=True)
    return root / "run"


def test_deeplight_is_reproducible(fwfm_run: Path) -> None:
    (a_sha, a_val), (b_sha, b_val) = _twice(fwfm_run, "deeplight", 0.5)
    assert a_val == b_val and a_sha == b_sha


@pytest.fixture(scope="module")
def topk_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pretrained_topk_run(tmp_path_factory.mktemp("repro_topk"), epochs=2)


@pytest.mark.parametrize("method", TOPK)
def test_topk_method_is_reproducible(topk_run: Path, method: str) -> None:
    (a_sha, a_val), (b_sha, b_val) = _twice(topk_run, method, 0.9 if method in ("int8", "fp16") else 0.5)
    assert a_val == b_val and a_sha == b_sha
