"""``compress --resume``: what a finished (target, method) leaves in ``OUT.partial/_resume/``.

Each finished (target, method) records its summary rows, failures and errors (the error's
class, message and details) there, written last and atomically, so an interrupted run skips
it; :data:`RESUME_LABELS` names each recorded setting in a refusal (``ondevice.outputs``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ondevice.errors import BadInputError, BrokenPromiseError, OndeviceError
from ondevice.io import atomic_write_json
from ondevice.outputs import crash_point

__all__ = ["RESUME_LABELS", "error_from_json", "error_to_json", "file_sha256", "keep_entry", "resume_options"]


def resume_options(out_dir: str | Path, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``compress`` arguments the interrupted run into ``out_dir`` was started with, ``given``
    on top (``compress(resume=True)`` then refuses any that changes the result)."""
    from ondevice.outputs import partial_options

    options = partial_options(out_dir, "compress")
    return {**options, **(given or {})}


#: How a ``--resume`` refusal names each recorded setting.
RESUME_LABELS = {
    "targets": "the targets (--budget/--device-profile/--fleet: label, bytes, profile)", "methods": "--method",
    "epochs": "--epochs", "seed": "--seed", "method_options": "--method-option", "mlp": "--mlp",
    "max_loss": "--max-loss (floor, given)", "allow_input_change": "--allow-input-change",
    "time_limit_s": "--time-limit (s)", "latency_p99_ms": "--latency-p99", "profile_runs": "--profile-runs",
    "plot": "plot", "evaluate_test": "evaluate_test", "fleet": "--fleet", "model_sha256": "the run's model.pt (sha256)",
    "data_schema": "the data's schema fingerprint", "data_rows": "the data's rows per split",
    "data_content_sha256": "the data's content hash",
}


def file_sha256(path: Path | None) -> str | None:
    if path is None:
        return None
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def keep_entry(record: Path, runs: list[dict[str, Any]], failures: list[dict[str, Any]], errors: list[OndeviceError],
                before: tuple[int, int, int]) -> None:
    """Record what one (target, method) added, so ``--resume`` skips it (written last, atomically)."""
    atomic_write_json(record, {"runs": runs[before[0]:], "failures": failures[before[1]:],
                               "errors": [error_to_json(e) for e in errors[before[2]:]]})
    crash_point("compress.entry.done")


def error_to_json(err: OndeviceError) -> dict[str, Any]:
    attrs = {k: v for k, v in vars(err).items() if v is None or isinstance(v, str | int | float)}
    return {"class": type(err).__name__, "message": str(err), "exit_code": err.exit_code, "attrs": attrs}


def error_from_json(d: dict[str, Any]) -> OndeviceError:
    """The error a finished entry of an interrupted run raised (same class, message and details)."""
    from ondevice import errors as errors_mod

    cls = getattr(errors_mod, d["class"], None)
    if not (isinstance(cls, type) and issubclass(cls, OndeviceError)):
        cls = BrokenPromiseError if d.get("exit_code") == BrokenPromiseError.exit_code else BadInputError
    err = cls(d["message"])
    err.__dict__.update(d.get("attrs") or {})
    return err

