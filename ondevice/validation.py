"""One validator for every JSON-like document ondevice reads from outside.

The validator is the device runner's ``check_json`` (a small JSON Schema subset: type,
properties, required, additionalProperties, items, enum, minimum/maximum, pattern, anyOf), so
host and device judge a document alike; the manifest's schema lives in the runner
(``MANIFEST_SCHEMA``, the device checks it too), the host-only ones here: checkpoint
metadata, the CSV spec and the device results ``report`` reads. Each error is one line naming
the document and the key, raised as the caller's ``OndeviceError`` subclass.
"""

from __future__ import annotations

from typing import Any

from ondevice.device_runner import runner_module
from ondevice.errors import BadInputError

_INT = {"type": "integer"}
_STR = {"type": "string"}
_OBJ = {"type": "object"}
_NUM = {"type": "number"}

#: ``torch.load`` payload of ``model.pt`` / ``last.pt`` (tensors are not JSON: only their containers).
CHECKPOINT_SCHEMA: dict[str, Any] = {"type": "object", "required": ["format", "version", "model", "state_dict", "schema"],
                                     "properties": {
    "format": {"enum": ["ondevice-checkpoint"]}, "version": _INT,
    "model": {"type": "object", "required": ["model"], "properties": {"model": _STR, "config": _OBJ, "embeddings": _OBJ}},
    "state_dict": _OBJ, "schema": {"type": "object", "required": ["fields", "task"], "properties": {
        "fields": {"type": "array", "items": _OBJ}, "task": _STR, "version": _INT}},
    "train_config": _OBJ, "metrics": _OBJ, "extra": _OBJ}}

#: ``--spec`` of ``prepare --format csv`` (``ondevice.data.formats.generic_csv``).
_COLS = {"type": "array", "items": _STR}
SPEC_SCHEMA: dict[str, Any] = {"type": "object", "properties": {
    "delimiter": _STR, "header": {"type": "boolean"}, "columns": _COLS, "quoting": {"type": "boolean"},
    "label": _STR, "label_threshold": _NUM, "categorical": _COLS, "user": _STR, "item": _STR,
    "numeric": {"type": "object", "additionalProperties": {"anyOf": [_STR, {"type": "object", "required": ["edges"],
                "properties": {"edges": {"type": "array", "items": _NUM}}}]}},
    "hash_buckets": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 1, "maximum": 2**31 - 2}},
    "block_bytes": {"type": "integer", "minimum": 1024, "maximum": 1 << 31}}}

#: What ``python runner.py ART --json FILE`` writes and ``report --device-result`` reads.
DEVICE_RESULT_SCHEMA: dict[str, Any] = {"type": "object", "required": ["format", "artefact", "device"], "properties": {
    "format": {"enum": ["ondevice-device-result"]}, "created_unix": _NUM,
    "artefact": {"type": "object", "required": ["model_file", "sha256"], "properties": {"model_file": _STR, "sha256": _STR}},
    "device": {"type": "object", "properties": {"hostname": {"anyOf": [_STR, {"type": "null"}]}, "machine": _STR}},
    "golden": {"type": "object", "properties": {"passed": {"type": "boolean"}}},
    "latency": {"type": "array", "items": {"type": "object", "properties": {
        "batch": _INT, "threads": _INT, "p50_ms": _NUM, "p99_ms": _NUM}}},
    "target": {"anyOf": [{"type": "null"}, _OBJ]}, "ok": {"type": "boolean"}}}


def validate(doc: Any, schema: dict[str, Any], where: str, error: type[BadInputError] = BadInputError) -> Any:
    """Return ``doc`` if it follows ``schema``; else raise ``error`` with the runner's one-line message."""
    runner = runner_module()
    try:
        runner.check_json(doc, schema, where)
    except runner.RunnerError as err:
        raise error(str(err)) from None
    return doc
