"""The artefact folder and its ``manifest.json``: what is written, and how it is checked.

Artefact folder (written atomically by ``export_artefact``)::

    model.onnx           single-file ONNX model (no external data); what devices load
    model.ort            ORT-format model (only with --format ort / an ORT device profile)
    manifest.json        see MANIFEST_KEYS below
    schema.json          the dataset schema, so the app encodes features as training did
    runner.py            the torch-free device runner (onnxruntime + numpy only)
    reference_model.pt   host only, not shipped: the exported (deployable) PyTorch model,
                         so ``verify`` can rerun PyTorch vs onnxruntime on fresh inputs
    verify.json, profile.json/.md/.png, report.json/.md   written by later stages

Tolerances (``tolerance_for``): 1e-5 absolute on every output for fp32 storage. For
quantized storage (any embedding tensor stored as int8/uint8/int4/fp16/bf16) the PyTorch side
is the *same* deployable model with the same quantized tables, so both sides dequantize the
same codes and the only difference is fp32 operation order (ORT may fuse the dequantize
multiply into a neighbour); the bound is 5e-5, still far below the >= 1e-3 a wrong scale or a
wrong row produces. A layer may state a wider bound with a class attribute ``export_atol``.
Top-K scores are dot products, not probabilities: their bound is scaled by
``max(1, max |score|)`` of the golden outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ondevice.embedding.base import stored_bytes
from ondevice.errors import ArtefactError, BadInputError, SchemaMismatchError
from ondevice.export._runner import runner_module
from ondevice.io import atomic_write_json, read_json
from ondevice.models import RecModel
from ondevice.schema import Schema

ARTEFACT_FORMAT = "ondevice-artefact"
MANIFEST_VERSION = 1
#: ONNX opset of every exported graph. 17 is supported by every onnxruntime >= 1.13,
#: including the mobile packages, and by the legacy (TorchScript) exporter used here.
OPSET = 17
FP32_ATOL = 1e-5
QUANTIZED_ATOL = 5e-5
MODEL_ONNX, MODEL_ORT = "model.onnx", "model.ort"
REFERENCE_MODEL = "reference_model.pt"
RUNNER_FILE = "runner.py"

#: Top-level keys of manifest.json (tests check that every one is present).
MANIFEST_KEYS = (
    "format", "version", "created_unix", "task", "model", "schema", "vocab_sizes", "opset", "runtime_format",
    "inputs", "outputs", "files", "budget", "device_profile", "storage", "tolerance", "golden",
    "metrics", "mobile_usability", "versions", "export_options", "verify",
)

_QUANTIZED_DTYPES = {torch.int8, torch.uint8, torch.float16, torch.bfloat16}


def sha256_file(path: str | Path) -> str:
    """The device runner's sha256 (one implementation on host and device)."""
    return runner_module().sha256_file(Path(path))


def file_entry(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


def storage_report(module: torch.nn.Module) -> dict[str, Any]:
    """Bytes the exported file must hold: per embedding layer (``storage_bytes()``) + the rest.

    ``parameter_bytes`` is what the file must hold: every distinct tensor once (``shared_bytes``
    is what value-identical tensors in several layers save).

    ``module`` is what is exported (the task wrapper of ``lowering.py``), so a top-K artefact
    counts only the item table (the user table stays on the server). ``dense_bytes`` counts
    every other parameter and buffer (MLP, biases, pair weights).
    """
    from ondevice.embedding import EmbeddingLayer

    layers: dict[str, EmbeddingLayer] = {}
    for name, sub in module.named_modules():
        if isinstance(sub, EmbeddingLayer) and not any(name.startswith(f"{p}.") for p in layers):
            layers[name] = sub
    per_layer = {_short(name): int(layer.storage_bytes()) for name, layer in layers.items()}
    prefixes = tuple(f"{name}." for name in layers)
    dense_tensors = [t for k, t in module.state_dict().items()
                     if not k.startswith(prefixes) and not k.endswith("num_batches_tracked")]
    dense = sum(t.numel() * t.element_size() for t in dense_tensors)
    # The exporter stores one initializer per distinct value (e.g. the vocabulary sizes and
    # offsets that the interaction and first-order tables share), so the file holds the
    # distinct tensors of all layers together.
    all_tensors = [t for layer in layers.values() for t in layer.storage_tensors()] + dense_tensors
    distinct = stored_bytes(all_tensors)
    return {
        "embedding_bytes": per_layer,
        "embedding_types": {_short(name): layer.type_name for name, layer in layers.items()},
        "dense_bytes": int(dense),
        "shared_bytes": int(sum(per_layer.values()) + dense - distinct),
        "parameter_bytes": int(distinct),
    }


def _short(name: str) -> str:
    return name.removeprefix("model.")


def tolerance_for(model: RecModel) -> dict[str, Any]:
    """The absolute tolerance for this model's outputs (see the module docstring)."""
    quantized = False
    atol = FP32_ATOL
    for layer in model.embedding_layers().values():
        if any(t.dtype in _QUANTIZED_DTYPES for t in layer.storage_tensors()):
            quantized = True
        atol = max(atol, float(getattr(layer, "export_atol", 0.0) or 0.0))
    if quantized:
        atol = max(atol, QUANTIZED_ATOL)
    return {"atol": atol, "storage": "quantized" if quantized else "fp32",
            "reference": "PyTorch deployable model (same stored tables as the ONNX file)"}


def write_manifest(artefact_dir: str | Path, manifest: dict[str, Any]) -> None:
    atomic_write_json(Path(artefact_dir) / "manifest.json", manifest)


@dataclass
class Artefact:
    """A checked artefact folder: its manifest and schema."""

    path: Path
    manifest: dict[str, Any]
    schema: Schema

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_ONNX

    def load_reference_model(self) -> RecModel:
        """The deployable PyTorch model saved at export (schema-checked)."""
        from ondevice.train.checkpoint import load_checkpoint

        ref = self.path / REFERENCE_MODEL
        if not ref.is_file():
            raise ArtefactError(f"{ref} is missing; re-export the artefact (verify needs the PyTorch reference)")
        try:
            ckpt = load_checkpoint(ref)
        except BadInputError as err:
            raise ArtefactError(f"{ref}: {err}") from None
        if ckpt.schema.fingerprint() != self.schema.fingerprint():
            raise SchemaMismatchError(
                f"{ref} was built for schema {ckpt.schema.fingerprint()}, the artefact's is {self.schema.fingerprint()}; re-export"
            )
        return ckpt.model


def load_artefact(artefact_dir: str | Path, *, check_hashes: bool = True) -> Artefact:
    """Open an artefact folder; one-line ``ArtefactError``/``SchemaMismatchError`` (exit 2) if
    the manifest is missing or malformed, a model file's bytes or sha256 differ from the
    manifest, or ``schema.json`` is not the schema the manifest records."""
    path = Path(artefact_dir)
    if not path.is_dir():
        raise ArtefactError(f"artefact folder not found: {path}; run `ondevice export` first")
    try:
        manifest = read_json(path / "manifest.json", what="artefact manifest")
    except BadInputError as err:
        raise ArtefactError(str(err)) from None
    if not isinstance(manifest, dict) or manifest.get("format") != ARTEFACT_FORMAT:
        raise ArtefactError(f"{path / 'manifest.json'} is not an ondevice artefact manifest; re-export")
    if manifest.get("version") != MANIFEST_VERSION:
        raise ArtefactError(f"manifest version {manifest.get('version')} != supported {MANIFEST_VERSION}; re-export")
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if missing:
        raise ArtefactError(f"{path / 'manifest.json'} lacks {', '.join(missing)}; re-export")
    runner = runner_module()
    try:  # the device runner's checks: host and device judge a manifest and its files alike
        runner.validate_manifest(manifest, str(path / "manifest.json"))
        if check_hashes:
            runner.check_files(path, manifest)
    except runner.RunnerError as err:
        raise ArtefactError(str(err)) from None
    try:
        schema = Schema.load(path / "schema.json")
    except BadInputError as err:
        raise ArtefactError(f"artefact schema: {err}") from None
    recorded = manifest["schema"].get("fingerprint")
    if schema.fingerprint() != recorded:
        raise SchemaMismatchError(
            f"{path / 'schema.json'} fingerprint {schema.fingerprint()} != manifest {recorded}; the schema was replaced, re-export"
        )
    return Artefact(path=path, manifest=manifest, schema=schema)
