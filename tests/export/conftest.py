"""Fixtures for the export tests: tiny run folders made with ``save_checkpoint`` (no trainer needed)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ondevice.cli import _register_commands, cli
from ondevice.models import build_model
from ondevice.schema import Field, Schema
from ondevice.train.checkpoint import save_checkpoint

CTR_MODELS = ("fm", "deepfm", "widedeep", "deepfwfm", "dcn")
VOCAB = [30, 20, 50, 7, 400]


def make_run(path: Path, name: str, *, vocab: list[int] | None = None, dim: int = 8,
             mlp_dims: tuple[int, ...] = (32, 16), seed: int = 0) -> Path:
    """A run folder (``model.pt`` + ``schema.json``) holding a freshly initialised model."""
    torch.manual_seed(seed)
    if name == "bprmf":
        vocab = vocab or [40, 300]
        schema = Schema(task="topk", fields=[Field("user", vocab[0], encoding="identity", role="user"),
                                             Field("item", vocab[1], encoding="identity", role="item")])
        model = build_model("bprmf", vocab, embed_dim=dim)
    else:
        vocab = vocab or VOCAB
        schema = Schema(task="ctr", fields=[Field(f"f{i}", v, encoding="identity") for i, v in enumerate(vocab)])
        kwargs = {} if name == "fm" else {"mlp_dims": list(mlp_dims)}
        model = build_model(name, vocab, embed_dim=dim, **kwargs)
        with torch.no_grad():  # non-zero first-order weights so the linear path is exercised
            if model.linear is not None:
                model.linear.weight.normal_(std=0.1)
    path.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path / "model.pt", model, schema, metrics={"val": {"auc": 0.5}})
    schema.save(path / "schema.json")
    return path


@pytest.fixture(scope="session")
def cli_runner() -> Callable[..., object]:
    _register_commands()
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)

    return invoke


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``exported(model_name)`` -> an artefact folder (exported once per session)."""
    from ondevice.export import export_artefact

    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            root = tmp_path_factory.mktemp(name)
            run = make_run(root / "run", name)
            export_artefact(run, root / "art", inputs="ids")
            cache[name] = root / "art"
        return cache[name]

    return get
