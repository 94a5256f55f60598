"""The searcher contract, for every registered ``--method`` (``method_names()``, compositions included).

On a small generated dataset of the method's task (CTR: conftest's planted data and a tiny
DeepFM, DeepLight: a DeepFwFM, the structure it prunes; top-K only: a tiny BPR-MF), through the
pipeline's fit loop (``search_fitting``) as ``compress`` runs it:

* the result fits its budget (the measured file and the exported artefact's one budget check),
* it exports and its artefact verifies against PyTorch (golden and fresh inputs, onnxruntime),
* the same settings and seed give byte-identical ``model.onnx`` and identical validation
  metrics twice in one process (the global torch RNG disturbed in between).

A method added to the registry is picked up here without a line of test code: give it a task
and, if its defaults are slow, a fast setting in ``FAST``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import ondevice.pipeline  # noqa: F401 - registers ``auto``
from ondevice.data import EncodedDataset
from ondevice.export import export_artefact, verify_artefact
from ondevice.pipeline.fitting import search_fitting
from ondevice.pipeline.measure import measure_file_bytes
from ondevice.search import SEARCHERS, make_searcher, method_names
from ondevice.train import TrainConfig, load_checkpoint, train
from ondevice.train.checkpoint import Checkpoint
from tests.conftest import CALIBRATED, make_ctr
from tests.fast_searchers import FAST as SEARCHER_FAST
from tests.topk_runs import pretrained_topk_run

# tests/fast_searchers.py keeps each method to a second or two; auto gets two candidates and
# tie_tolerance 0: the choice never depends on timing (module docstring of auto)
FAST: dict[str, dict] = {
    **SEARCHER_FAST,
    "auto": {"methods": ["int8", "uniform"], "candidate_params": {"uniform": {"epochs": 1, "batch_size": 256}},
             "tie_tolerance": 0.0, "latency_runs": 5},
}
# Budget as a fraction of the full model's file: quantisation-only and feature-selection methods
# need most of it; interaction searchers add pairs, so their budget is above the full model.
RATIO = {"autofis": 1.5, "optinter": 1.5, "fp16": 0.9, "int8": 0.9, "adafs": 0.9, "autofield": 0.9, "auto": 0.9}
# Each method runs on the task it compresses; methods of both tasks on CTR (their top-K path: test_reproducible).
# Over 2 s here (--durations, 2 cores shared): adafs 4.0 s, rule 3.0 s; the 26 methods take 30 s in all.
SLOW = {"adafs", "rule"}


def _task(method: str) -> str:
    base = method.partition("+")[0]
    if base == "deeplight":
        return "fwfm"
    return "ctr" if "ctr" in SEARCHERS[base].tasks else "topk"


def _params(method: str) -> dict:
    return FAST.get(method.partition("+")[0], {})


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny trained run per task, built on first use."""
    built: dict[str, Path] = {}

    class Runs(dict):
        def __missing__(self, task: str) -> Path:
            root = tmp_path_factory.mktemp(f"contract_{task}")
            if task == "topk":
                built[task] = pretrained_topk_run(root, epochs=2)
            else:
                cfg = (TrainConfig(model="deepfwfm", embed_dim=16, mlp_dims=[64, 32], epochs=2, batch_size=256, lr=5e-3,
                                   patience=2) if task == "fwfm" else
                       TrainConfig(model="deepfm", embed_dim=16, mlp_dims=[16], epochs=3, batch_size=256, lr=5e-3,
                                   patience=2, **CALIBRATED))
                train(make_ctr(root / "data"), root / "run", cfg, quiet=True)
                built[task] = root / "run"
            self[task] = built[task]
            return built[task]

    return Runs()


def _method_params() -> list:
    return [pytest.param(m, marks=pytest.mark.slow) if m in SLOW else m for m in method_names()]


@pytest.mark.parametrize("method", _method_params())
def test_every_method_fits_exports_verifies_and_reproduces(runs, method: str, tmp_path: Path) -> None:
    run = runs[_task(method)]
    ckpt = load_checkpoint(run)
    data = EncodedDataset(json.loads((run / "train.json").read_text())["data_dir"])
    full_file, full_params = measure_file_bytes(ckpt.model)
    budget = int(full_file * RATIO.get(method.partition("+")[0], 0.5))
    seen = []
    for attempt in range(2):
        torch.rand(17 * attempt)  # another global RNG state before the second run
        searcher = make_searcher(method, **_params(method))
        result, file_bytes, _ = search_fitting(searcher, ckpt, data, budget, full_file - full_params, mlp="auto")
        assert file_bytes <= budget, f"{method}: {file_bytes:,} B over the budget of {budget:,} B"
        art = tmp_path / f"art{attempt}"
        out = Checkpoint(model=result.model, schema=result.schema or ckpt.schema, train_config=ckpt.train_config,
                         metrics={}, path=ckpt.path)
        manifest = export_artefact(out, art, budget_bytes=budget, check_mobile=False, inputs="ids")
        assert manifest["budget"]["fits"] and manifest["files"]["model.onnx"]["bytes"] == file_bytes
        assert manifest["export_validation"]["passed"]
        seen.append(((art / "model.onnx").read_bytes(), result.val))
    assert verify_artefact(tmp_path / "art0", seed=1)["passed"]
    assert seen[0][1] == seen[1][1], f"{method}: validation metrics differ between two seeded runs"
    assert seen[0][0] == seen[1][0], f"{method}: model.onnx differs between two seeded runs"
