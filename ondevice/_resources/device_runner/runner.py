#!/usr/bin/env python3
"""ondevice device runner: check and profile an artefact with only onnxruntime and numpy.

Copy the artefact folder to the device (phone via Termux, Raspberry Pi, ARM board), then::

    pip install onnxruntime numpy          # nothing else: no torch, no ondevice
    python runner.py ARTEFACT_DIR --json device.json [--batch 1 --batch 256] [--threads 1 --threads 2]
                     [--runs 1000] [--warmup 100] [--model-file model.ort]

What it does, in order:

1. checks every model file against the bytes and sha256 in ``manifest.json``;
2. runs the golden inputs (OOV and negative ids included) and compares with the PyTorch
   outputs stored at export time, within the manifest's tolerance;
3. for each batch x threads, in a fresh process (onnxruntime does not give memory back, so
   one process per measurement keeps RSS numbers honest): session creation time, first
   inference time, latency p50/p90/p99/p999/max over ``--runs`` timed calls after ``--warmup``
   untimed ones, throughput, and RSS / peak RSS before and after session creation and after
   the runs;
4. checks the p99 latency target of the artefact's device profile when one is set and the
   measured (batch, threads) pair matches it.

Then ``ondevice report ARTEFACT_DIR --device-result device.json`` on the host merges the JSON.

Parity mode (``--parity-inputs IN.npz --parity-out OUT.npz``, used by ``ondevice verify --arch
arm64`` under qemu-aarch64): check the files, run every input of ``IN.npz`` (one array per case)
through one 1-thread session and save the outputs as ``OUT.npz`` (keys ``case::output``); with
``--parity-alt-config KEY=VALUE`` a second session with those session config entries runs too
(keys ``alt::case::output``). One process, no subprocess (emulated binaries cannot exec others).

Exit codes: 0 ok, 2 bad or corrupt artefact / bad arguments, 3 golden outputs differ or the
latency target is missed.

onnxruntime session options (the same on host and device, see ``make_session``):
``intra_op_num_threads = threads`` (the only pool that runs kernels),
``inter_op_num_threads = 1`` and ``ORT_SEQUENTIAL`` (these graphs are a chain; a parallel
executor only adds scheduling), ``ORT_ENABLE_ALL`` graph optimisation (constant folding,
fusions, layout), and the CPU execution provider. Timed calls reuse one pre-built feed dict
and output-name list and run with the garbage collector paused, so the loop measures
``InferenceSession.run`` and nothing else.
"""

from __future__ import annotations

import argparse
import base64
import gc
import hashlib
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

RUNNER_VERSION = 1
EXIT_OK, EXIT_BAD_INPUT, EXIT_BROKEN_PROMISE = 0, 2, 3
PERCENTILES = {"p50_ms": 50.0, "p90_ms": 90.0, "p99_ms": 99.0, "p999_ms": 99.9}


class RunnerError(Exception):
    """A one-line error with an exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_BAD_INPUT) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# --------------------------------------------------------------------------- artefact
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- JSON schemas
# A small subset of JSON Schema (type, properties, required, additionalProperties as a
# schema for other keys, items, maxItems, enum, minimum, maximum, pattern, anyOf), checked by
# ``check_json``: the one validator of every JSON ondevice reads from outside (manifest here;
# checkpoint metadata, spec and device results in ``ondevice.validation``, which imports it).
_JSON_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def check_json(value: Any, schema: dict[str, Any], where: str) -> None:
    """Raise ``RunnerError`` naming the first place where ``value`` does not follow ``schema``."""
    if "anyOf" in schema:
        errors = []
        for option in schema["anyOf"]:
            try:
                check_json(value, option, where)
                return
            except RunnerError as err:
                errors.append(str(err))
        raise RunnerError(errors[-1] if errors else f"{where} matches no allowed form")
    kind = schema.get("type")
    if kind == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "number":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and abs(value) != float("inf")
    elif kind is not None:
        ok = isinstance(value, _JSON_TYPES[kind])
    else:
        ok = True
    if not ok:
        shown = repr(value) if isinstance(value, (int, float, str, bool)) or value is None else type(value).__name__
        raise RunnerError(f"{where} must be {'an' if kind in ('integer', 'object', 'array') else 'a'} {kind}, got {shown[:60]}")
    if "enum" in schema and value not in schema["enum"]:
        raise RunnerError(f"{where} must be one of {', '.join(map(repr, schema['enum']))}, got {str(value)[:60]!r}")
    if "minimum" in schema and value < schema["minimum"]:
        raise RunnerError(f"{where} must be >= {schema['minimum']}, got {value}")
    if "maximum" in schema and value > schema["maximum"]:
        raise RunnerError(f"{where} must be <= {schema['maximum']}, got {value}")
    if "pattern" in schema and not re.fullmatch(schema["pattern"], value):
        raise RunnerError(f"{where} is malformed ({value[:60]!r})")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", ()):
            if key not in value:
                raise RunnerError(f"{where} lacks {key!r}")
        for key, item in value.items():
            sub = props.get(key, schema.get("additionalProperties"))
            if sub is not None:
                check_json(item, sub, f"{where}.{key}")
    if isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise RunnerError(f"{where} has {len(value)} items, at most {schema['maxItems']} allowed")
        if "minItems" in schema and len(value) < schema["minItems"]:
            raise RunnerError(f"{where} has {len(value)} items, at least {schema['minItems']} needed")
        if "items" in schema:
            for i, item in enumerate(value):
                check_json(item, schema["items"], f"{where}[{i}]")


_INT = {"type": "integer"}
_NUM = {"type": "number"}
_STR = {"type": "string"}
#: At most this many numbers in one stored array (golden cases are a few thousand).
MAX_ARRAY_VALUES = 10_000_000
#: Arrays: numbers, or for float arrays the strings "NaN", "Infinity", "-Infinity" (JSON has no
#: non-finite numbers); dtype "string" holds text (raw-feature artefacts' categorical input).
_ARRAY = {"type": "object", "required": ["dtype", "shape", "data"], "properties": {
    "dtype": {"enum": ["int64", "int32", "float32", "float64", "string"]},
    "shape": {"type": "array", "maxItems": 8, "items": {"type": "integer", "minimum": 0, "maximum": MAX_ARRAY_VALUES}},
    "data": {"type": "array", "maxItems": MAX_ARRAY_VALUES, "items": {"anyOf": [_NUM, _STR]}}}}
_TENSOR_INFO = {"type": "object", "required": ["name"], "properties": {
    "name": _STR, "dtype": {"enum": ["int64", "int32", "float32", "float64", "string"]}}}
_RAW_COLUMN = {"type": "object", "required": ["name", "kind", "input", "index", "fields"], "properties": {
    "name": _STR, "kind": {"enum": ["string", "number", "hashed"]}, "input": _STR,
    "index": {"type": "integer", "minimum": 0}, "fields": {"type": "array", "items": _STR},
    "transform": {"anyOf": [_STR, {"type": "null"}]}}}
_RAW_INPUTS = {"anyOf": [{"type": "null"}, {"type": "object", "required": ["mode", "inputs", "columns"], "properties": {
    "mode": {"enum": ["raw"]}, "inputs": {"type": "array", "items": _TENSOR_INFO},
    "columns": {"type": "array", "maxItems": 100_000, "items": _RAW_COLUMN},
    "hashing": {"anyOf": [{"type": "null"}, {"type": "object", "required": ["fields"], "properties": {
        "in_graph": {"type": "boolean"}, "fields": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 1}},
        "reference": {"type": "array", "items": _STR}}}]},
    "libfm_aliases": {"anyOf": [{"type": "array", "items": _STR}, {"type": "null"}]}}}]}
MANIFEST_SCHEMA: dict[str, Any] = {"type": "object", "required": [
    "format", "task", "inputs", "outputs", "files", "tolerance", "golden", "schema"], "properties": {
    "format": {"enum": ["ondevice-artefact"]},
    "version": _INT,
    "task": {"enum": ["ctr", "topk"]},
    "runtime_format": {"anyOf": [{"enum": ["onnx", "ort"]}, {"type": "null"}]},
    "vocab_sizes": {"anyOf": [{"type": "null"}, {"type": "array", "maxItems": 100_000,
                                                   "items": {"type": "integer", "minimum": 1}}]},
    "inputs": {"type": "array", "minItems": 1, "items": _TENSOR_INFO},
    "outputs": {"type": "array", "minItems": 1, "items": _TENSOR_INFO},
    "files": {"type": "object", "additionalProperties": {"type": "object", "required": ["bytes", "sha256"], "properties": {
        "bytes": {"type": "integer", "minimum": 0}, "sha256": {"type": "string", "pattern": "[0-9a-f]{64}"}}}},
    "tolerance": {"type": "object", "required": ["atol"], "properties": {"atol": {"type": "number", "minimum": 0}}},
    "golden": {"type": "array", "items": {"type": "object", "required": ["name", "inputs", "outputs"], "properties": {
        "name": _STR, "inputs": {"type": "object", "additionalProperties": _ARRAY},
        "outputs": {"type": "object", "additionalProperties": _ARRAY}}}},
    "schema": {"type": "object", "properties": {"fingerprint": _STR}},
    "topk": {"anyOf": [{"type": "null"}, {"type": "object", "properties": {
        "k": {"type": "integer", "minimum": 1}, "num_items": {"type": "integer", "minimum": 1},
        "ids_output": _STR, "scores_output": _STR, "user_vector_std": _NUM, "exclude_input": _STR}}]},
    "device_profile": {"anyOf": [{"type": "null"}, {"type": "object", "properties": {
        "name": _STR, "arch": _STR, "batch_size": {"type": "integer", "minimum": 1},
        "threads": {"type": "integer", "minimum": 1}, "p99_latency_ms": {"anyOf": [_NUM, {"type": "null"}]},
        "memory_budget_runtime": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}]}}}]},
    "input_encoding": {"enum": ["ids", "raw"]},
    "raw_inputs": _RAW_INPUTS,
}}


def artefact_file(artefact_dir: str | Path, name: Any) -> Path:
    """``artefact_dir / name`` for a plain file name that stays inside the artefact folder.

    Refuses absolute paths, ``..``, separators and symlinks that lead out, without looking at
    (or reporting anything about) the file outside.
    """
    root = Path(artefact_dir).resolve()
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name
            or "\x00" in name or Path(name).is_absolute()):
        raise RunnerError(f"file name {str(name)[:80]!r} is not a plain file inside the artefact folder; re-export")
    path = root / name
    if path.resolve().parent != root:
        raise RunnerError(f"{name!r} leads outside the artefact folder (a symlink); copy the real file or re-export")
    return path


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def _fields(buf: memoryview):
    """(field number, wire type, value) of one protobuf message; value is an int or a memoryview."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = None, i + 8
        elif wire == 5:
            value, i = None, i + 4
        elif wire == 2:
            n, i = _varint(buf, i)
            if i + n > len(buf):
                raise ValueError("truncated field")
            value, i = buf[i:i + n], i + n
        else:
            raise ValueError(f"wire type {wire}")
        yield field, wire, value


# Where TensorProtos sit in an ONNX model: message -> {field: kind of the sub-message}.
_ONNX_WALK = {"model": {7: "graph", 25: "function"}, "function": {7: "node"},
              "graph": {1: "node", 5: "tensor", 15: "sparse"}, "node": {5: "attribute"},
              "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
              "sparse": {1: "tensor", 2: "tensor"}}


def uses_external_data(model_bytes: bytes) -> bool:
    """Whether any tensor of an ONNX model keeps its values in an external file.

    A minimal protobuf walk (no onnx package on devices): TensorProto field 13
    (``external_data``) or field 14 (``data_location``) = 1 (EXTERNAL). Raises ``RunnerError``
    when the bytes are not a well-formed protobuf.
    """
    def walk(buf: memoryview, kind: str, depth: int) -> bool:
        if depth > 64:
            raise ValueError("nesting too deep")
        for field, wire, value in _fields(buf):
            if kind == "tensor":
                if field == 13 or (field == 14 and value == 1):
                    return True
                continue
            sub = _ONNX_WALK[kind].get(field)
            if sub and wire == 2 and walk(value, sub, depth + 1):
                return True
        return False

    try:
        return walk(memoryview(model_bytes), "model", 0)
    except ValueError as err:
        raise RunnerError(f"the model file is not a well-formed ONNX protobuf ({err}); re-export") from None


def validate_manifest(manifest: Any, where: str = "manifest.json") -> dict[str, Any]:
    """Check the manifest's structure (``MANIFEST_SCHEMA``) and every golden array's shape."""
    check_json(manifest, MANIFEST_SCHEMA, where)
    for case in manifest["golden"]:
        for part in ("inputs", "outputs"):
            for key, arr in case[part].items():
                n = 1
                for d in arr["shape"]:
                    n *= d
                if n != len(arr["data"]):
                    raise RunnerError(f"{where}.golden {case['name']!r} {part}.{key}: shape {arr['shape']} does not hold "
                                      f"{len(arr['data'])} values; re-export")
    names = {o["name"] for o in manifest["outputs"]}
    for case in manifest["golden"]:
        if set(case["outputs"]) != names:
            raise RunnerError(f"{where}.golden {case['name']!r} outputs {sorted(case['outputs'])} != {sorted(names)}; re-export")
        for inp in manifest["inputs"]:
            if inp["name"] not in case["inputs"]:
                raise RunnerError(f"{where}.golden {case['name']!r} lacks input {inp['name']!r}; re-export")
    if manifest["task"] == "topk" and not isinstance(manifest.get("topk"), dict):
        raise RunnerError(f"{where}.topk is missing for a top-K artefact; re-export")
    if manifest["task"] == "ctr" and not isinstance(manifest.get("vocab_sizes"), list):
        raise RunnerError(f"{where} lacks 'vocab_sizes'; re-export")
    return manifest


def load_manifest(artefact_dir: str | Path) -> dict[str, Any]:
    """Read ``manifest.json``; one-line ``RunnerError`` when missing or unreadable."""
    path = Path(artefact_dir) / "manifest.json"
    if not path.is_file():
        raise RunnerError(f"{path} not found; pass an artefact folder written by `ondevice export`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunnerError(f"{path} is not valid JSON ({err}); copy the artefact folder again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != "ondevice-artefact":
        raise RunnerError(f"{path} is not an ondevice artefact manifest")
    return validate_manifest(manifest, str(path))


def check_files(artefact_dir: str | Path, manifest: dict[str, Any]) -> None:
    """Every model file listed in the manifest exists inside the folder with the recorded
    bytes and sha256, and no ONNX file keeps weights in an external file (single-file contract)."""
    for name, info in manifest["files"].items():
        path = artefact_file(artefact_dir, name)
        if not path.is_file():
            raise RunnerError(f"{path} is missing; copy the whole artefact folder or re-export")
        size = path.stat().st_size
        if size != info["bytes"]:
            raise RunnerError(
                f"{path} has {size:,} bytes but the manifest records {info['bytes']:,} (truncated or modified); re-export or copy it again"
            )
        digest = sha256_file(path)
        if digest != info["sha256"]:
            raise RunnerError(
                f"{path} sha256 {digest[:12]}... does not match the manifest's {info['sha256'][:12]}... (corrupt or modified); re-export or copy it again"
            )
        if name.endswith(".onnx") and uses_external_data(path.read_bytes()):
            raise RunnerError(f"{path} keeps weights in an external data file; artefacts are single-file models, re-export")


def default_model_file(manifest: dict[str, Any]) -> str:
    """The file the device loads: ``model.ort`` for ORT-format artefacts, else ``model.onnx``."""
    return "model.ort" if manifest.get("runtime_format") == "ort" and "model.ort" in manifest["files"] else "model.onnx"


#: onnxruntime memory settings of every session (``make_session``): ``arena`` (the CPU memory
#: arena), ``mem_pattern`` (pre-planned activation buffers), ``prepacking`` (weights re-laid out
#: for the GEMM kernels, a second copy of each dense weight). Pre-packing is off by default: a
#: session of an fp32 model then holds ~1.2 MB less (DeepFM 400-400-400) at the same batch-1
#: p50 (-8 % .. +3 %, interleaved: noise; 4-9 % slower at batch 256); int8 models gain nothing from
#: either (benchmarks/results/app_payload.md, "Memory settings").
MEMORY_OPTIONS: dict[str, bool] = {"arena": True, "mem_pattern": True, "prepacking": False}
MEMORY_NOTE = "defaults measured by benchmarks/app_payload.py (pre-packing off: less memory, same batch-1 latency)"


def make_session(model_path: str | Path, threads: int, config: dict[str, str] | None = None,
                 memory: dict[str, bool] | None = None) -> ort.InferenceSession:
    """An InferenceSession tuned for small-batch latency (see the module docstring).

    ``config``: extra ``add_session_config_entry`` pairs (e.g. ``mlas.disable_kleidiai=1``).
    ``memory``: overrides of :data:`MEMORY_OPTIONS`.
    """
    mem = {**MEMORY_OPTIONS, **(memory or {})}
    so = ort.SessionOptions()
    for key, value in (config or {}).items():
        so.add_session_config_entry(key, value)
    so.enable_cpu_mem_arena = bool(mem["arena"])
    so.enable_mem_pattern = bool(mem["mem_pattern"])
    if not mem["prepacking"]:
        so.add_session_config_entry("session.disable_prepacking", "1")
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(str(model_path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - any load failure means a bad model file
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise RunnerError(f"onnxruntime cannot load {model_path} ({first[:200]}); re-export the artefact") from None


_NONFINITE = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}


def decode_array(obj: dict[str, Any]) -> np.ndarray:
    """``{"dtype", "shape", "data"}`` (as written in the manifest) -> ndarray."""
    if obj["dtype"] == "string":
        return np.asarray([str(v) for v in obj["data"]], dtype=object).reshape(obj["shape"])
    data = obj["data"]
    if any(isinstance(v, str) for v in data):
        if obj["dtype"] not in ("float32", "float64") or any(isinstance(v, str) and v not in _NONFINITE for v in data):
            raise RunnerError(f"a stored {obj['dtype']} array holds text; only NaN/Infinity/-Infinity are allowed in float arrays")
        data = [_NONFINITE[v] if isinstance(v, str) else v for v in data]
    return np.asarray(data, dtype=np.dtype(obj["dtype"])).reshape(obj["shape"])


def encode_array(arr: np.ndarray) -> dict[str, Any]:
    """ndarray -> ``{"dtype", "shape", "data"}`` (strict JSON: non-finite floats as strings)."""
    arr = np.asarray(arr)
    if arr.dtype.kind in "OUS":
        return {"dtype": "string", "shape": list(arr.shape), "data": [str(v) for v in arr.reshape(-1).tolist()]}
    data = arr.reshape(-1).tolist()
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        data = [v if math.isfinite(v) else ("NaN" if v != v else ("Infinity" if v > 0 else "-Infinity")) for v in data]
    return {"dtype": str(arr.dtype), "shape": list(arr.shape), "data": data}


# --------------------------------------------------------------------------- inputs
def make_inputs(manifest: dict[str, Any], batch: int, seed: int, *, oov_fraction: float = 0.1) -> dict[str, np.ndarray]:
    """Random feeds for ``batch`` rows, reproducible from ``seed``.

    CTR: ids uniform in each field's vocabulary, with ``oov_fraction`` of them replaced by
    out-of-range ids (``vocab``, ``vocab + 17``, ``-1``, ``-2**40``) so the OOV path is timed
    too. Top-K: user vectors ~ N(0, user_vector_std) in float32, and (artefacts with an
    ``exclude_items`` input) 32 seen items per row, the last few ``-1`` padding.
    """
    rng = np.random.default_rng(seed)
    inp = manifest["inputs"][0]
    if manifest.get("raw_inputs"):  # raw artefact: rows drawn from the golden cases (kept, unseen, missing values)
        cases = [{k: decode_array(v) for k, v in c["inputs"].items()} for c in manifest["golden"]]
        pool = {i["name"]: np.concatenate([c[i["name"]] for c in cases]) for i in manifest["inputs"]}
        rows = rng.integers(0, len(next(iter(pool.values()))), size=batch)
        return {name: arr[rows] for name, arr in pool.items()}
    if manifest["task"] == "ctr":
        vocab = np.asarray(manifest["vocab_sizes"], dtype=np.int64)
        ids = (rng.random((batch, len(vocab))) * vocab).astype(np.int64)
        bad = rng.random(ids.shape) < oov_fraction
        choices = np.stack([vocab, vocab + 17, np.full_like(vocab, -1), np.full_like(vocab, -(2**40))])
        pick = rng.integers(0, 4, size=ids.shape)
        ids = np.where(bad, choices[pick, np.arange(len(vocab))], ids)  # [B, F]
        return {inp["name"]: ids.astype(np.int64)}
    dim = int(inp["shape"][1])
    std = float(manifest.get("topk", {}).get("user_vector_std", 1.0))
    feeds = {inp["name"]: (rng.standard_normal((batch, dim)) * std).astype(np.float32)}
    exclude = manifest.get("topk", {}).get("exclude_input")
    if exclude:
        seen = rng.integers(1, int(manifest["topk"]["num_items"]), size=(batch, 32)).astype(np.int64)
        seen[:, 28:] = -1
        feeds[exclude] = seen
    return feeds


def complete_feeds(manifest: dict[str, Any], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``feeds`` plus an empty ``[batch, 0]`` ``exclude_items`` for a top-K artefact that takes one and got none."""
    exclude = (manifest.get("topk") or {}).get("exclude_input")
    if exclude and exclude not in feeds:
        first = next(iter(feeds.values()))
        feeds = {**feeds, exclude: np.zeros((len(first), 0), dtype=np.int64)}
    return feeds


# --------------------------------------------------------------------------- raw records
def value_token(value: Any) -> str:
    """The text of a raw categorical value (``prepare``'s rule): missing -> "", 3.0 -> "3"."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def value_number(value: Any) -> float:
    """A raw numeric value as float64: missing (None, "") -> NaN; numbers written as text are parsed."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return float("nan")
    if isinstance(value, bool):
        raise RunnerError(f"numeric value {value!r} is a boolean, not a number")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise RunnerError(f"numeric value {str(value)[:40]!r} is not a number") from None


def hash_id(value: Any, buckets: int) -> int:
    """A hashed field's id: ``1 + blake2b-64(token) mod buckets`` (see the artefact's hash_reference.py)."""
    digest = hashlib.blake2b(value_token(value).encode("utf-8"), digest_size=8).digest()
    return 1 + int.from_bytes(digest, "little") % int(buckets)


def records_to_feeds(manifest: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Raw records (``{column: value}``, the manifest's ``raw_inputs.columns``) -> the raw artefact's feeds.

    A column absent from a record is missing. Unknown keys are ignored (labels, ids).
    """
    raw = manifest.get("raw_inputs")
    if not raw:
        raise RunnerError("this artefact takes ids, not raw records; re-export it with `ondevice export --inputs raw`")
    buckets = ((raw.get("hashing") or {}).get("fields")) or {}
    feeds: dict[str, np.ndarray] = {}
    for inp in raw["inputs"]:
        cols = [c for c in raw["columns"] if c["input"] == inp["name"]]
        dtype = {"string": object, "float64": np.float64, "int64": np.int64}[inp["dtype"]]
        arr = np.empty((len(records), len(cols)), dtype=dtype)
        for r, rec in enumerate(records):
            if not isinstance(rec, dict):
                raise RunnerError(f"record {r + 1} is not a JSON object of column -> value")
            for c in cols:
                v = rec.get(c["name"])
                if c["kind"] == "string":
                    arr[r, c["index"]] = value_token(v)
                elif c["kind"] == "number":
                    arr[r, c["index"]] = value_number(v)
                else:
                    arr[r, c["index"]] = hash_id(v, buckets[c["fields"][0]])
        feeds[inp["name"]] = arr
    return feeds


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """One JSON object per line (blank lines skipped); a bad line is a one-line error naming it."""
    records = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise RunnerError(f"--records {path}: cannot read ({str(err)[:120]})") from None
    for k, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise RunnerError(f"--records {path} line {k}: not JSON ({err.msg})") from None
        if not isinstance(rec, dict):
            raise RunnerError(f"--records {path} line {k}: expected a JSON object of column -> value")
        records.append(rec)
    if not records:
        raise RunnerError(f"--records {path} holds no records")
    return records


def records_note(manifest: dict[str, Any], records: list[dict[str, Any]]) -> str | None:
    """One line naming the columns some records lack (read as missing) and the keys no column
    has (ignored), so a misspelt column does not pass silently; None when every record matches."""
    cols = [c["name"] for c in (manifest.get("raw_inputs") or {}).get("columns", [])]
    absent = {c: sum(c not in rec for rec in records) for c in cols}
    unknown = sorted({k for rec in records for k in rec} - set(cols))
    parts = []
    if any(absent.values()):
        parts.append("read as missing: " + ", ".join(f"{c} (absent in {n} of {len(records)})" for c, n in absent.items() if n))
    if unknown:
        shown = ", ".join(repr(k)[:40] for k in unknown[:8]) + (f", … (+{len(unknown) - 8})" if len(unknown) > 8 else "")
        parts.append(f"ignored keys no column has: {shown} (columns: {', '.join(cols)})")
    return "note: " + "; ".join(parts) if parts else None


def predict_records(artefact_dir: str | Path, records_path: str | Path, *, model_file: str | None = None,
                    batch: int = 256) -> list[dict[str, Any]]:
    """Run raw records through the artefact (files checked first); one output dict per record."""
    manifest = load_manifest(artefact_dir)
    check_files(artefact_dir, manifest)
    model_file = model_file or default_model_file(manifest)
    if model_file not in manifest["files"]:
        raise RunnerError(f"{str(model_file)[:80]!r} is not in this artefact; choose one of: {', '.join(manifest['files'])}")
    records = read_records(records_path)
    feeds = records_to_feeds(manifest, records)
    session = make_session(artefact_file(artefact_dir, model_file), 1)
    names = [o["name"] for o in manifest["outputs"]]
    out: list[dict[str, Any]] = []
    for start in range(0, len(records), batch):
        part = {k: v[start:start + batch] for k, v in feeds.items()}
        values = session.run(names, part)
        for r in range(len(next(iter(part.values())))):
            out.append({n: np.asarray(v[r]).tolist() for n, v in zip(names, values, strict=True)})
    return out


# --------------------------------------------------------------------------- golden check
def abs_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``|a - b|`` in float64, 0 where the values are equal (so ``-inf`` vs ``-inf``, an empty top-K slot, is 0)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(np.subtract(a, b, out=np.zeros(np.broadcast(a, b).shape), where=a != b))


def compare_outputs(
    manifest: dict[str, Any], got: dict[str, np.ndarray], expected: dict[str, np.ndarray], atol: float
) -> dict[str, float]:
    """Max absolute difference per output (top-K ids: 0 if every position agrees or is a tie).

    For top-K the scores are compared position by position; an id that differs from the
    expected one at a position counts as agreeing when its score equals the expected
    score there within ``atol`` (items with tied scores may come out in either order).
    """
    diffs: dict[str, float] = {}
    for out in manifest["outputs"]:
        name = out["name"]
        a, b = np.asarray(got[name]), np.asarray(expected[name])
        if a.shape != b.shape:
            raise RunnerError(f"output {name!r} has shape {a.shape}, expected {b.shape}", EXIT_BROKEN_PROMISE)
        if out.get("kind") == "topk_ids":
            continue
        diffs[name] = float(np.max(abs_diff(a, b))) if a.size else 0.0
    if manifest["task"] == "topk":
        ids_name, score_name = manifest["topk"]["ids_output"], manifest["topk"]["scores_output"]
        same = np.asarray(got[ids_name]) == np.asarray(expected[ids_name])
        tied = abs_diff(got[score_name], expected[score_name]) <= atol
        diffs[ids_name] = float(np.mean(~(same | tied)))  # fraction of positions neither equal nor tied
    return diffs


def check_golden(session: ort.InferenceSession, manifest: dict[str, Any]) -> dict[str, Any]:
    """Run every golden case; ``passed`` is False when any output differs beyond the tolerance."""
    atol = float(manifest["tolerance"]["atol"])
    names = [o["name"] for o in manifest["outputs"]]
    cases = []
    for case in manifest["golden"]:
        feeds = {k: decode_array(v) for k, v in case["inputs"].items()}
        try:
            got = dict(zip(names, session.run(names, feeds), strict=False))
        except Exception as err:  # noqa: BLE001 - a golden input the model rejects is a broken artefact
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise RunnerError(f"onnxruntime failed on golden case {case['name']!r} ({first[:160]}); re-export") from None
        expected = {k: decode_array(v) for k, v in case["outputs"].items()}
        diffs = compare_outputs(manifest, got, expected, atol)
        passed = all(v <= atol for k, v in diffs.items()) if manifest["task"] == "ctr" else all(
            (v == 0.0 if k == manifest["topk"]["ids_output"] else v <= atol) for k, v in diffs.items()
        )
        cases.append({"name": case["name"], "batch": int(next(iter(feeds.values())).shape[0]),
                      "max_abs_diff": diffs, "passed": bool(passed)})
    return {"atol": atol, "passed": all(c["passed"] for c in cases), "cases": cases}


# --------------------------------------------------------------------------- measurement
def rss_bytes() -> int | None:
    """Current resident set size (psutil when installed, else /proc)."""
    try:
        import psutil  # optional on the device

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        pass
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def peak_rss_bytes() -> int | None:
    """Peak resident set size of this process so far (VmHWM, or getrusage)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)
    except (ImportError, OSError):
        return None


#: A 68-byte ONNX model (Identity, float[1]): the warm-up session that loads onnxruntime's own
#: code and thread pools before a measurement, so the memory a session adds is the model's.
TRIVIAL_MODEL = base64.b64decode("CAg6OgoQCgF4EgF5IghJZGVudGl0eRIEd2FybVoPCgF4EgoKCAgBEgQKAggBYg8KAXkSCgoICAESBAoCCAFCBAoAEBE=")


def warm_up_runtime(threads: int) -> None:
    """Create and run a session on :data:`TRIVIAL_MODEL`, then drop it."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.log_severity_level = 3
    session = ort.InferenceSession(TRIVIAL_MODEL, sess_options=so, providers=["CPUExecutionProvider"])
    session.run(None, {"x": np.zeros(1, dtype=np.float32)})
    del session
    gc.collect()


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux ``/proc/self/clear_refs`` = 5); False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def memory_entry(rss_before: int | None, rss_load: int | None, peak_load: int | None, rss_runs: int | None,
                 peak_runs: int | None, peak_reset: bool) -> dict[str, Any]:
    """Resident bytes a session adds above the warmed-up baseline: after load, peak during load,
    after the runs, peak overall; ``runtime_bytes`` (the one ``memory_budget_runtime`` bounds) is
    the largest of them."""
    def added(v: int | None) -> int | None:
        return None if v is None or rss_before is None else int(v - rss_before)

    out = {"baseline": "RSS after a warm-up session on a trivial model (onnxruntime start-up not counted)",
           "peak_reset": peak_reset, "load_added_bytes": added(rss_load),
           "load_peak_added_bytes": added(peak_load) if peak_reset else None,
           "after_runs_added_bytes": added(rss_runs), "peak_added_bytes": added(peak_runs) if peak_reset else None}
    values = [v for k, v in out.items() if k.endswith("_bytes") and isinstance(v, int)]
    out["runtime_bytes"] = max(values) if values else None
    return out


def latency_stats(samples_ns: list[int] | np.ndarray, batch: int) -> dict[str, float]:
    """p50/p90/p99/p999/max/mean in ms plus throughput, from per-call nanoseconds."""
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    stats = {key: float(np.percentile(ms, q)) for key, q in PERCENTILES.items()}
    stats.update({
        "max_ms": float(ms.max()),
        "mean_ms": float(ms.mean()),
        "calls_per_s": float(1e3 / ms.mean()),
        "throughput_rows_per_s": float(batch * 1e3 / ms.mean()),
    })
    return stats


def time_calls(fn: Any, runs: int, warmup: int) -> list[int]:
    """``warmup`` untimed calls, then ``runs`` timed ones (ns each), GC paused."""
    for _ in range(warmup):
        fn()
    samples = [0] * runs
    clock = time.perf_counter_ns
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for i in range(runs):
            t0 = clock()
            fn()
            samples[i] = clock() - t0
    finally:
        if was_enabled:
            gc.enable()
    return samples


def measure_one(artefact_dir: str | Path, model_file: str, batch: int, threads: int, runs: int, warmup: int,
                seed: int, memory: dict[str, bool] | None = None) -> dict[str, Any]:
    """One (batch, threads) measurement in *this* process (call it in a fresh one)."""
    manifest = load_manifest(artefact_dir)
    feeds = make_inputs(manifest, batch, seed)
    names = [o["name"] for o in manifest["outputs"]]
    warm_up_runtime(threads)
    rss_before = rss_bytes()
    peak_reset = reset_peak_rss()
    t0 = time.perf_counter_ns()
    session = make_session(artefact_file(artefact_dir, model_file), threads, memory=memory)
    create_ms = (time.perf_counter_ns() - t0) / 1e6
    rss_session, peak_session = rss_bytes(), peak_rss_bytes()
    run = session.run
    t0 = time.perf_counter_ns()
    run(names, feeds)
    first_ms = (time.perf_counter_ns() - t0) / 1e6
    samples = time_calls(lambda: run(names, feeds), runs, warmup)
    result: dict[str, Any] = {"runtime": "onnxruntime", "model_file": model_file, "batch": batch, "threads": threads,
                              "runs": runs, "warmup": warmup, "seed": seed,
                              "session_create_ms": create_ms, "first_inference_ms": first_ms}
    result.update(latency_stats(samples, batch))
    result.update({"rss_before_session_bytes": rss_before, "rss_after_session_bytes": rss_session,
                   "peak_rss_after_session_bytes": peak_session, "rss_after_runs_bytes": rss_bytes(),
                   "peak_rss_after_runs_bytes": peak_rss_bytes()})
    result["memory"] = memory_entry(rss_before, rss_session, peak_session, result["rss_after_runs_bytes"],
                                    result["peak_rss_after_runs_bytes"], peak_reset)
    result["memory_options"] = {**MEMORY_OPTIONS, **(memory or {})}
    return result


def measure_in_subprocess(artefact_dir: str | Path, model_file: str, batch: int, threads: int, runs: int,
                          warmup: int, seed: int, *, python: str | None = None, timeout: float = 3600,
                          memory: dict[str, bool] | None = None) -> dict[str, Any]:
    """Run ``measure_one`` in a fresh interpreter and return its JSON."""
    cmd = [python or sys.executable, str(Path(__file__).resolve()), str(artefact_dir), "--_measure",
           "--model-file", model_file, "--batch", str(batch), "--threads", str(threads), "--runs", str(runs),
           "--warmup", str(warmup), "--seed", str(seed)]
    for key, value in (memory or {}).items():
        cmd += ["--memory-option", f"{key}={int(bool(value))}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RunnerError(f"measurement batch={batch} threads={threads} failed: {tail[:300]}", proc.returncode or 1)
    return json.loads(proc.stdout)


def device_info() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "hostname": platform.node(),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def normalise_arch(machine: str) -> str:
    m = machine.lower()
    if m in ("aarch64", "arm64", "armv8l", "armv8"):
        return "arm64"
    if m in ("x86_64", "amd64"):
        return "x86_64"
    return m


def check_target(manifest: dict[str, Any], latency: list[dict[str, Any]], machine: str) -> dict[str, Any] | None:
    """Pass/fail of the device profile's p99 target, or ``None`` when the artefact has no profile.

    The target is checked only on a machine of the profile's architecture and only for the
    measurement at the profile's (batch_size, threads); elsewhere ``checked`` is False with the
    reason, and the nearest measurement is still shown for orientation.
    """
    profile = manifest.get("device_profile")
    if not profile:
        return None
    entry = next((e for e in latency if e["batch"] == profile["batch_size"] and e["threads"] == profile["threads"]), None)
    result: dict[str, Any] = {"profile": profile["name"], "arch": profile["arch"], "batch": profile["batch_size"],
                              "threads": profile["threads"], "p99_target_ms": profile["p99_latency_ms"],
                              "p99_ms": entry["p99_ms"] if entry else None}
    arch = normalise_arch(machine)
    if entry is None:
        result.update(checked=False, passed=None,
                      reason=f"no measurement at batch {profile['batch_size']} x threads {profile['threads']}")
    elif arch != profile["arch"]:
        result.update(checked=False, passed=None,
                      reason=f"measured on {arch}, the profile targets {profile['arch']}; run export/runner.py on the device")
    else:
        result.update(checked=True, passed=bool(entry["p99_ms"] <= profile["p99_latency_ms"]), reason="")
    return result


def check_memory(manifest: dict[str, Any], latency: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The profile's ``memory_budget_runtime`` against the ``runtime_bytes`` measured at the
    profile's (batch_size, threads), as the p99 target (an extra batch 256 measured for
    orientation is not the device's load); without that measurement, the largest measured
    (every batch x threads). None when the profile sets no runtime budget."""
    profile = manifest.get("device_profile") or {}
    budget = profile.get("memory_budget_runtime")
    if not budget:
        return None
    measured = [e for e in latency if (e.get("memory") or {}).get("runtime_bytes") is not None]
    if not measured:
        return {"budget_bytes": int(budget), "runtime_bytes": None, "passed": None, "checked": False}
    at_profile = [e for e in measured if e["batch"] == profile.get("batch_size") and e["threads"] == profile.get("threads")]
    worst = max(at_profile or measured, key=lambda e: e["memory"]["runtime_bytes"])
    used = int(worst["memory"]["runtime_bytes"])
    return {"budget_bytes": int(budget), "runtime_bytes": used, "batch": worst["batch"], "threads": worst["threads"],
            "passed": used <= int(budget), "checked": True, "profile": (manifest.get("device_profile") or {}).get("name")}


def run_device_check(artefact_dir: str | Path, *, batches: list[int] | None = None, threads: list[int] | None = None,
                     runs: int = 1000, warmup: int = 100, seed: int = 0, model_file: str | None = None,
                     memory: dict[str, bool] | None = None) -> dict[str, Any]:
    """Steps 1-4 of the module docstring; returns the JSON-able result (never raises on a miss)."""
    manifest = load_manifest(artefact_dir)
    check_files(artefact_dir, manifest)
    model_file = model_file or default_model_file(manifest)
    if model_file not in manifest["files"]:
        raise RunnerError(f"{str(model_file)[:80]!r} is not in this artefact; choose one of: {', '.join(manifest['files'])}")
    artefact_file(artefact_dir, model_file)
    profile = manifest.get("device_profile") or {}
    batches = batches or sorted({1, int(profile.get("batch_size", 256))} | {256})
    threads = threads or sorted({1, int(profile.get("threads", 1))})
    session = make_session(artefact_file(artefact_dir, model_file), 1)
    golden = check_golden(session, manifest)
    del session
    latency = [measure_in_subprocess(artefact_dir, model_file, b, t, runs, warmup, seed, memory=memory)
               for b in batches for t in threads]
    info = device_info()
    target = check_target(manifest, latency, info["machine"])
    memory_target = check_memory(manifest, latency)
    ok = golden["passed"] and (target is None or target["passed"] is not False) and (
        memory_target is None or memory_target["passed"] is not False)
    return {
        "format": "ondevice-device-result",
        "runner_version": RUNNER_VERSION,
        "created_unix": time.time(),
        "device": info,
        "artefact": {"model_file": model_file, **manifest["files"][model_file],
                     "schema_fingerprint": manifest["schema"]["fingerprint"]},
        "session_options": session_options_doc(),
        "golden": golden,
        "latency": latency,
        "target": target,
        "memory_target": memory_target,
        "ok": bool(ok),
    }


def run_parity(artefact_dir: str | Path, inputs_path: str | Path, out_path: str | Path, *,
               model_file: str | None = None, alt_config: dict[str, str] | None = None) -> dict[str, Any]:
    """Parity mode (module docstring): outputs of every input case, in this one process."""
    manifest = load_manifest(artefact_dir)
    check_files(artefact_dir, manifest)
    model_file = model_file or default_model_file(manifest)
    if model_file not in manifest["files"]:
        raise RunnerError(f"{str(model_file)[:80]!r} is not in this artefact; choose one of: {', '.join(manifest['files'])}")
    artefact_file(artefact_dir, model_file)
    in_name = manifest["inputs"][0]["name"]
    names = [o["name"] for o in manifest["outputs"]]
    t0 = time.perf_counter()
    try:
        with np.load(inputs_path, allow_pickle=False) as data:
            cases = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError) as err:
        raise RunnerError(f"--parity-inputs {inputs_path} is not a readable .npz ({str(err)[:120]})") from None
    for case, x in cases.items():
        if x.dtype.kind not in "iuf":
            raise RunnerError(f"--parity-inputs case {case!r} has dtype {x.dtype}; expected numbers")
    outputs: dict[str, np.ndarray] = {}
    variants = [("", None)] + ([("alt::", alt_config)] if alt_config else [])
    for prefix, config in variants:
        session = make_session(artefact_file(artefact_dir, model_file), 1, config)
        for case, x in cases.items():
            try:
                values = session.run(names, complete_feeds(manifest, {in_name: x}))
            except Exception as err:  # noqa: BLE001 - an input the model rejects
                first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                raise RunnerError(f"onnxruntime failed on parity case {case!r} ({first[:160]})") from None
            for name, value in zip(names, values, strict=False):
                outputs[f"{prefix}{case}::{name}"] = np.asarray(value)
        del session
    tmp = Path(out_path).with_name(f".{Path(out_path).name}.tmp.npz")
    np.savez(tmp, **outputs)
    os.replace(tmp, out_path)
    info = {k: v for k, v in device_info().items() if k != "hostname"}
    return {"format": "ondevice-parity-outputs", "runner_version": RUNNER_VERSION, "device": info,
            "cpu_features": _cpu_features(), "model_file": model_file, "cases": len(cases),
            "alt_config": alt_config or {}, "seconds": time.perf_counter() - t0}


def _cpu_features() -> list[str]:
    """The ``Features`` line of ``/proc/cpuinfo`` (the HWCAPs kernels dispatch on), if any."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("features"):
                    return line.split(":", 1)[1].split()
    except OSError:
        pass
    return []


def session_options_doc() -> dict[str, Any]:
    return {"intra_op_num_threads": "threads", "inter_op_num_threads": 1, "execution_mode": "ORT_SEQUENTIAL",
            "graph_optimization_level": "ORT_ENABLE_ALL", "providers": ["CPUExecutionProvider"],
            "memory": dict(MEMORY_OPTIONS)}


# --------------------------------------------------------------------------- CLI
def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artefact_dir")
    p.add_argument("--json", dest="json_out", help="write the result JSON here (also printed)")
    p.add_argument("--batch", type=int, action="append", help="batch size (repeatable); default 1 and 256")
    p.add_argument("--threads", type=int, action="append", help="intra-op threads (repeatable); default 1 and the profile's")
    p.add_argument("--runs", type=int, default=1000, help="timed calls per measurement (default 1000)")
    p.add_argument("--warmup", type=int, default=100, help="untimed calls before timing (default 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-file", help="model.onnx or model.ort (default: the manifest's runtime format)")
    p.add_argument("--parity-inputs", help="parity mode: .npz of input arrays, one per case (see the docstring)")
    p.add_argument("--parity-out", help="parity mode: write the outputs here (.npz)")
    p.add_argument("--parity-alt-config", action="append", metavar="KEY=VALUE",
                   help="parity mode: also run a session with this config entry (repeatable)")
    p.add_argument("--records", help="raw-feature artefacts: a .jsonl file of records ({column: value} per line); "
                   "prints one JSON line of predictions per record")
    p.add_argument("--memory-option", action="append", metavar="KEY=0|1",
                   help=f"onnxruntime memory setting for the measurements (repeatable): {', '.join(MEMORY_OPTIONS)}")
    p.add_argument("--_measure", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if bool(args.parity_inputs) != bool(args.parity_out):
        p.error("--parity-inputs and --parity-out go together")
    if any("=" not in kv for kv in args.parity_alt_config or []):
        p.error("--parity-alt-config takes KEY=VALUE")
    for name in ("batch", "threads"):
        if any(v < 1 for v in getattr(args, name) or []):
            p.error(f"--{name} must be >= 1")
    if args.runs < 1 or args.warmup < 0:
        p.error("--runs must be >= 1 and --warmup >= 0")
    memory = {}
    for kv in args.memory_option or []:
        key, _, value = kv.partition("=")
        if key not in MEMORY_OPTIONS or value not in ("0", "1"):
            p.error(f"--memory-option takes KEY=0|1 with KEY one of {', '.join(MEMORY_OPTIONS)}")
        memory[key] = value == "1"
    args.memory = memory
    return args


def _check_writable(path: str, what: str) -> None:
    parent = Path(path).resolve().parent
    if not parent.is_dir():
        raise RunnerError(f"{what} {path}: folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise RunnerError(f"{what} {path}: folder {parent} is not writable")


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        if args.json_out:  # fail now, not after the whole run
            _check_writable(args.json_out, "--json")
        if args.parity_out:
            _check_writable(args.parity_out, "--parity-out")
        if args._measure:
            b, t = (args.batch or [1])[0], (args.threads or [1])[0]
            result = measure_one(args.artefact_dir, args.model_file, b, t, args.runs, args.warmup, args.seed, args.memory)
            print(json.dumps(result))
            return EXIT_OK
        if args.records:
            for row in predict_records(args.artefact_dir, args.records, model_file=args.model_file):
                print(json.dumps(row))
            note = records_note(load_manifest(args.artefact_dir), read_records(args.records))
            if note:
                print(note, file=sys.stderr)
            return EXIT_OK
        if args.parity_inputs:
            alt = dict(kv.split("=", 1) for kv in args.parity_alt_config or [])
            print(json.dumps(run_parity(args.artefact_dir, args.parity_inputs, args.parity_out,
                                        model_file=args.model_file, alt_config=alt or None)))
            return EXIT_OK
        result = run_device_check(args.artefact_dir, batches=args.batch, threads=args.threads, runs=args.runs,
                                  warmup=args.warmup, seed=args.seed, model_file=args.model_file, memory=args.memory)
    except RunnerError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    text = json.dumps(result, indent=2)
    if args.json_out:
        tmp = Path(args.json_out).with_name(f".{Path(args.json_out).name}.tmp")
        tmp.write_text(text + "\n", encoding="utf-8")
        os.replace(tmp, args.json_out)
    print(text)
    if not result["golden"]["passed"]:
        print("error: golden outputs differ from the manifest beyond the tolerance", file=sys.stderr)
        return EXIT_BROKEN_PROMISE
    mt = result.get("memory_target")
    if mt and mt["passed"] is False:
        print(f"error: runtime memory {mt['runtime_bytes']:,} B > memory_budget_runtime {mt['budget_bytes']:,} B "
              f"({mt['profile']})", file=sys.stderr)
        return EXIT_BROKEN_PROMISE
    if result["target"] and result["target"]["passed"] is False:
        t = result["target"]
        print(f"error: p99 {t['p99_ms']:.3f} ms > target {t['p99_target_ms']} ms ({t['profile']})", file=sys.stderr)
        return EXIT_BROKEN_PROMISE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
