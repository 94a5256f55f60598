"""``--resume``: the config of an interrupted run, and the checks that it continues on the same data."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from ondevice.data import EncodedDataset
from ondevice.errors import BadInputError, CheckpointError, SchemaMismatchError
from ondevice.schema import Schema
from ondevice.train.checkpoint import load_raw
from ondevice.train.config import TrainConfig

__all__ = ["RESUME_FREE_OPTIONS", "check_resume", "config_for_run", "resume_config"]

RESUME_FREE_OPTIONS = ("epochs", "device", "threads", "eval_batch_size")


def check_resume(state: dict[str, Any], data: EncodedDataset, config: TrainConfig, path: Path) -> None:
    """Refuse to resume ``state`` (a ``last.pt`` payload) on other data or with other run-shaping options.

    Compares every ``TrainConfig`` field except ``RESUME_FREE_OPTIONS`` with the checkpoint's,
    then the dataset's schema fingerprint, split row counts and content hash
    (``EncodedDataset.identity``) with the ones recorded at the start of the run.
    """
    saved = state.get("train_config")
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path} records no training config; start without --resume")
    for key, value in asdict(config).items():
        if key in RESUME_FREE_OPTIONS or key not in saved:
            continue
        if saved[key] != value and not (isinstance(value, list) and list(saved[key] or []) == value):
            raise BadInputError(f"--resume: {path} was trained with {key}={saved[key]!r}, this run asks for {value!r}; "
                                "drop the option to keep the checkpoint's value, or start a new run")
    schema = state.get("schema")
    recorded = None
    if isinstance(schema, dict):
        try:
            recorded = Schema.from_dict(schema, source=str(path)).fingerprint()
        except BadInputError:
            recorded = None
    ident = (state.get("extra") or {}).get("data_identity") if isinstance(state.get("extra"), dict) else None
    current = data.identity()
    if recorded is not None and recorded != current["schema_fingerprint"]:
        raise SchemaMismatchError(f"--resume: {data.root} has schema {current['schema_fingerprint']}, the checkpoint "
                                  f"{path} was trained on schema {recorded}; resume with the same data")
    if isinstance(ident, dict):
        for split, n in (ident.get("rows") or {}).items():
            if current["rows"].get(split) != n:
                raise SchemaMismatchError(f"--resume: {data.root} has {current['rows'].get(split)} {split} rows, the "
                                          f"checkpoint {path} was trained on {n}; resume with the same data")
        if ident.get("content_sha256") not in (None, current["content_sha256"]):
            raise SchemaMismatchError(f"--resume: the content of {data.root} differs from the data the checkpoint {path} "
                                      "was trained on (same schema and rows); resume with the same data")


def resume_config(out_dir: str | Path, given: dict[str, Any] | None = None) -> TrainConfig:
    """The config of the run being resumed, with the options ``given`` on the command line on top
    (``check_resume`` then refuses any run-shaping one that differs)."""
    config = config_for_run(out_dir)
    for key, value in (given or {}).items():
        setattr(config, key, value)
    return config


def config_for_run(out_dir: str | Path, *, epochs: int | None = None) -> TrainConfig:
    """The config an interrupted run was started with (``--resume``), optionally with more epochs."""
    out_dir = Path(out_dir)
    partial = out_dir.with_name(out_dir.name + ".partial")
    src = partial if (partial / "last.pt").is_file() else out_dir
    if not (src / "last.pt").is_file():
        raise CheckpointError(f"nothing to resume: neither {partial}/last.pt nor {out_dir}/last.pt exists; start without --resume")
    config = TrainConfig.from_dict(load_raw(src / "last.pt")["train_config"])
    if epochs is not None:
        config.epochs = epochs
    return config
