"""Checkpoints: data, never code.

A checkpoint is a ``torch.save`` of plain containers and tensors, loaded with
``torch.load(..., weights_only=True)``: a hostile file cannot run code. It holds the model
description (``RecModel.describe()``), the state dict, the schema, the training config
and metrics, and (for ``last.pt``) the optimiser and RNG state needed to resume.

Files in a run folder::

    RUN_DIR/model.pt     best model on validation (what export/compress read)
    RUN_DIR/last.pt      state after the latest epoch (what --resume reads)
    RUN_DIR/schema.json  the dataset schema, for apps and later stages
    RUN_DIR/train.json   config, per-epoch history, validation and test metrics
"""

from __future__ import annotations

import io
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ondevice.data import EncodedDataset
from ondevice.errors import BadInputError, CheckpointError
from ondevice.io import atomic_write_bytes, read_json
from ondevice.models import RecModel, model_from_description
from ondevice.schema import Schema

CHECKPOINT_FORMAT = "ondevice-checkpoint"
CHECKPOINT_VERSION = 1


@dataclass
class Checkpoint:
    model: RecModel
    schema: Schema
    train_config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def save_checkpoint(
    path: str | Path,
    model: RecModel,
    schema: Schema,
    *,
    train_config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Atomically write a checkpoint (temp file + rename)."""
    payload = _unshared({
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": model.describe(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "schema": schema.to_dict(),
        "train_config": train_config or {},
        "metrics": metrics or {},
        "extra": extra or {},
    })
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def _unshared(obj: Any) -> Any:
    """A copy of the containers and strings in ``obj`` in which no object appears twice.

    Pickle writes an object seen before as a back-reference, so two equal payloads whose
    strings or dicts happen to be shared differently (a resumed run's metrics come from the
    loaded checkpoint, a straight run's from the trainer) would give different bytes.
    Copying every container and string makes the bytes a function of the values only.
    Tensors are kept as they are (pickled by storage).
    """
    if isinstance(obj, dict):
        return {_unshared(k): _unshared(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unshared(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_unshared(v) for v in obj)
    if isinstance(obj, str) and len(obj) > 1:
        return (obj + " ")[:-1]  # a new str object with the same value
    return obj


def load_checkpoint(path: str | Path, *, map_location: str = "cpu") -> Checkpoint:
    """Load and rebuild a checkpoint; one-line ``CheckpointError`` for anything wrong."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}; train a model first (`ondevice train`)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({first[:160]}); re-run training") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an ondevice checkpoint; pass the model.pt of an `ondevice train` run")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {payload.get('version')} != supported {CHECKPOINT_VERSION}; re-train with this version"
        )
    from ondevice.validation import CHECKPOINT_SCHEMA, validate

    validate(payload, CHECKPOINT_SCHEMA, str(path), CheckpointError)
    schema = Schema.from_dict(payload["schema"], source=str(path))
    try:
        model = model_from_description(payload["model"])
    except BadInputError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(f"{path}: the model description is malformed ({type(err).__name__}: {str(err)[:120]}); "
                              "re-run training") from None
    try:
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(f"{path}: weights do not fit the described model ({str(err).splitlines()[0][:160]})") from None
    model.eval()
    return Checkpoint(
        model=model,
        schema=schema,
        train_config=payload.get("train_config", {}),
        metrics=payload.get("metrics", {}),
        extra=payload.get("extra", {}),
        path=path,
    )


def load_raw(path: str | Path) -> dict[str, Any]:
    """The raw payload (used by --resume for optimiser/RNG state), structure-checked."""
    try:
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a corrupt file
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(err).__name__}); start without --resume") from None
    from ondevice.validation import CHECKPOINT_SCHEMA, validate

    return validate(payload, CHECKPOINT_SCHEMA, str(path), CheckpointError)


def run_data(run_dir: str | Path, data_dir: str | Path | None = None) -> EncodedDataset:
    """The dataset ``run_dir`` was trained on: ``data_dir``, else the folder its ``train.json``
    records. A feature-selection run (``train.json`` lists ``fields_kept``) reads only those
    fields, through ``EncodedDataset.select_fields``. One-line ``BadInputError`` otherwise.
    """
    run_dir = Path(run_dir)
    info_path = run_dir / "train.json"
    info = read_json(info_path, what="train.json") if info_path.is_file() else {}
    if data_dir is None:
        if not info_path.is_file():
            raise BadInputError(f"{run_dir} has no train.json naming its data; pass --data DATA_DIR")
        data_dir = info.get("data_dir")
        if not data_dir or not Path(data_dir).is_dir():
            raise BadInputError(f"the data folder {data_dir!r} recorded in {info_path} is gone; pass --data DATA_DIR")
    data = EncodedDataset(data_dir)
    kept = info.get("fields_kept")
    return data.select_fields(data.schema.field_positions(kept)) if kept else data
