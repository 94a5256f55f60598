"""Measurements of a model exported exactly as ``export_artefact`` writes it (bytes, latency).

The pipeline's truth for the byte budget and latency targets: a searcher estimates with the
:class:`~ondevice.search.byte_accountant.ByteAccountant`, these export to a temporary file and
measure it. Searchers never import this module (``tests/test_layering.py``): the pipeline
hands them these functions (``measure``/``measure_cost`` callables).
"""

from __future__ import annotations

import platform
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ondevice.models import BPRMF, CTRModel, RecModel

__all__ = ["ROUNDS", "candidate_latency", "host_arch", "measure_cost", "measure_file_bytes", "onnx_file_bytes",
           "ort_encoder_bytes", "ort_file_bytes", "scaled_vocabulary_cost", "vocabulary_cost"]


@contextmanager
def _exported(model: RecModel, **export_options: Any) -> Iterator[tuple[Path, torch.nn.Module]]:
    """``model`` exported as ``export_artefact`` does to a temporary ``model.onnx``: yields
    (its path, the lowered module); ``export_options`` go to ``export_onnx``."""
    from ondevice.export.lowering import export_module
    from ondevice.export.onnx_export import deployable_model, export_onnx

    deployed = deployable_model(model)
    module, io = export_module(deployed)
    if isinstance(deployed, BPRMF):  # top-K: the input is the user's vector
        example = torch.zeros(2, deployed.embed_dim)
    else:
        example = torch.zeros(2, deployed.embedding.num_fields, dtype=torch.int64)  # type: ignore[union-attr]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(module, io, example, path, **export_options)
        yield path, module


def measure_file_bytes(model: RecModel) -> tuple[int, int]:
    """(ONNX file bytes, parameter bytes) of ``model`` exported as ``export_artefact`` does."""
    from ondevice.export.manifest import storage_report

    with _exported(model) as (path, module):
        return path.stat().st_size, int(storage_report(module)["parameter_bytes"])


ROUNDS = 3  # candidate_latency: rounds of timed calls; p99 is the median of the rounds' p99s


def candidate_latency(model: RecModel, *, batch: int = 1, threads: int = 1, runs: int = 50,
                      seed: int = 0) -> dict[str, float]:
    """onnxruntime p50/p99 (ms) of ``model`` exported as ``export_artefact`` does, on this machine.

    Inputs as the profiler draws them (valid ids / unit-scale user vectors and seen items); ``min(10, runs)``
    warm-up calls, then ``ROUNDS`` rounds of ``runs`` timed calls, in this process (``auto``
    compares candidates). p99 is the median of the rounds' p99s: one scheduler stall on a busy
    machine (seen: 4-12 ms next to a 0.02 ms p50) must not reject a candidate against a target.
    """
    import numpy as np

    from ondevice.export._runner import runner_module
    from ondevice.export.lowering import export_module
    from ondevice.export.onnx_export import deployable_model, export_onnx

    runner = runner_module()
    deployed = deployable_model(model)
    module, io = export_module(deployed)
    rng = np.random.default_rng([seed, batch])
    if isinstance(deployed, BPRMF):
        x = rng.normal(size=(batch, deployed.embed_dim)).astype(np.float32)
    else:
        vocab = np.asarray(deployed.embedding.vocab_sizes)  # type: ignore[union-attr]
        x = (rng.random((batch, len(vocab))) * vocab).astype(np.int64)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(module, io, torch.from_numpy(x[:2] if len(x) >= 2 else x), path)
        session = runner.make_session(path, threads)
        feeds = {io["inputs"][0]["name"]: x}
        if isinstance(deployed, BPRMF):  # 32 seen items per row, 4 of them padding (as the profiler draws them)
            seen = rng.integers(1, deployed.num_items, size=(batch, 32)).astype(np.int64)
            seen[:, 28:] = -1
            feeds[io["inputs"][1]["name"]] = seen
        rounds = [runner.time_calls(lambda: session.run(None, feeds), runs, min(10, runs) if r == 0 else 0)
                  for r in range(ROUNDS)]
    p99s = sorted(runner.latency_stats(samples, batch)["p99_ms"] for samples in rounds)
    stats = runner.latency_stats([t for samples in rounds for t in samples], batch)
    return {"p50_ms": stats["p50_ms"], "p99_ms": p99s[len(p99s) // 2], "batch": batch, "threads": threads,
            "runs": runs * ROUNDS}


def vocabulary_cost(schema: Any) -> Any:
    """The :class:`~ondevice.search.byte_accountant.VocabularyCost` of ``schema``'s raw encoder:
    per-id key bytes (``ondevice.vocabulary.key_bytes``), the rest of the encoder as fixed bytes
    (``export.raw.raw_encoder_bytes``, every key kept, minus the keys), and the exact bytes of a
    set of dropped ids (the tables serialized without them + the rest of the encoder)."""
    import math

    from ondevice.export.raw import raw_encoder_bytes, raw_plan
    from ondevice.search.byte_accountant import VocabularyCost
    from ondevice.vocabulary import key_bytes, relabel_applies, vocabulary_bytes

    plan = raw_plan(schema)
    encoder = raw_encoder_bytes(schema)
    not_tables = encoder - vocabulary_bytes(schema, plan)  # nodes, constants, inputs (+ the bound's slack)
    per_id = tuple(key_bytes(schema, plan))

    def exact(dropped: Any) -> int:
        return not_tables + vocabulary_bytes(schema, plan, dropped)

    return VocabularyCost(fixed_bytes=encoder - math.ceil(sum(float(a.sum()) for a in per_id)), per_id=per_id,
                          exact=exact, reindexes=lambda relabel: relabel_applies(schema, plan, relabel))


def ort_encoder_bytes(schema: Any) -> int:
    """Bytes ``schema``'s raw encoder (every key kept) takes in an ``.ort`` file: the encoder alone
    converted as ``export_artefact`` converts. onnxruntime's flatbuffer stores the lookup tables
    2.1-2.7x larger than the ONNX protobuf (Criteo head10k 787,635 -> 1,694,320 B), so an ``.ort``
    profile's raw artefact reserves this, not ``export.raw.raw_encoder_bytes``."""
    import onnx
    from onnx import TensorProto
    from onnx import helper as oh

    from ondevice.export.mobile import convert_to_ort
    from ondevice.export.onnx_export import OPSET
    from ondevice.export.raw import ML_DOMAIN, ML_OPSET, encoder_graph, raw_plan

    nodes, inits, inputs = encoder_graph(schema, raw_plan(schema), "ids")
    out = oh.make_tensor_value_info("ids", TensorProto.INT64, ["batch", schema.num_fields])
    model = oh.make_model(oh.make_graph(nodes, "encoder", inputs, [out], inits),
                          opset_imports=[oh.make_opsetid("", OPSET), oh.make_opsetid(ML_DOMAIN, ML_OPSET)])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save(model, str(path))
        ort_path, _ = convert_to_ort(path, Path(tmp))
        return ort_path.stat().st_size


def scaled_vocabulary_cost(cost: Any, factor: float) -> Any:
    """``cost`` (a ``VocabularyCost``) with every byte multiplied by ``factor`` (rounded up): the
    encoder in an ``.ort`` file (``ort_encoder_bytes`` / the ONNX encoder's bytes)."""
    import dataclasses
    import math

    exact = cost.exact
    return dataclasses.replace(cost, fixed_bytes=math.ceil(cost.fixed_bytes * factor),
                               per_id=tuple(a * factor for a in cost.per_id),
                               exact=None if exact is None else (lambda dropped: math.ceil(exact(dropped) * factor)))


def onnx_file_bytes(model: RecModel) -> int:
    """Exact ONNX file bytes of ``model`` (``measure_file_bytes``'s first half): the
    ``measure(model) -> int`` the pipeline gives searchers through the byte accountant."""
    return measure_file_bytes(model)[0]


def ort_file_bytes(model: RecModel) -> int:
    """The larger of the ONNX and the ``.ort`` file bytes of ``model``: what an ``ort`` device
    profile's artefact is checked against (``export_artefact`` exports as for ``.ort``, top-K
    table decoded per call, and converts with ``convert_to_ort``; the ``.ort`` flatbuffer can
    be a few percent larger than the ONNX file)."""
    from ondevice.export.mobile import convert_to_ort

    with _exported(model, table_at_load=False) as (path, _):  # .ort: a top-K table decoded per call
        ort_path, _ = convert_to_ort(path, path.parent)
        return max(path.stat().st_size, ort_path.stat().st_size)


def host_arch() -> str:
    """This machine's CPU architecture as device profiles name it (``x86_64``, ``arm64``)."""
    from ondevice.export._runner import runner_module

    return runner_module().normalise_arch(platform.machine())


def measure_cost(model: CTRModel, constraints: Any, *, runs: int = 200, warmup: int = 20,
                 repeats: int = 3, seed: int = 0) -> dict[str, float]:
    """Exact ONNX file bytes (``export_onnx`` as ``export_artefact`` writes it) and ORT latency.

    ``constraints``: the architecture search's
    :class:`~ondevice.search.architecture.evolutionary.Constraints` (its ``threads`` and
    ``batch_size`` are used). The session is the device runner's (``make_session``) at
    ``constraints.threads``; inputs are its ``make_inputs`` (OOV ids included) at
    ``constraints.batch_size``. Latency is ``repeats`` rounds of ``warmup`` + ``runs`` calls,
    reporting the round with the lowest p99 (timeit's best-of-R): on a shared host, other
    processes' time slices put ~4 ms spikes into a round's tail; ``repeats=1`` on a dedicated device.
    """
    from ondevice.export._runner import runner_module
    from ondevice.export.lowering import export_module
    from ondevice.export.manifest import storage_report
    from ondevice.export.onnx_export import deployable_model, export_onnx

    runner = runner_module()
    deployed = deployable_model(model)
    module, io = export_module(deployed)
    vocab = list(deployed.embedding.vocab_sizes)  # type: ignore[union-attr]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(module, io, torch.zeros(2, len(vocab), dtype=torch.int64), path)
        file_bytes = path.stat().st_size
        session = runner.make_session(path, constraints.threads)
        manifest = {"task": "ctr", "vocab_sizes": vocab, "inputs": io["inputs"]}
        feeds = runner.make_inputs(manifest, constraints.batch_size, seed)
        names = [o["name"] for o in io["outputs"]]
        rounds = [runner.latency_stats(runner.time_calls(lambda: session.run(names, feeds), runs, warmup),
                                       constraints.batch_size) for _ in range(max(repeats, 1))]
        stats = min(rounds, key=lambda r: r["p99_ms"])
    return {"file_bytes": file_bytes, "param_bytes": int(storage_report(module)["parameter_bytes"]),
            "p50_ms": stats["p50_ms"], "p99_ms": stats["p99_ms"]}
