"""``export_artefact``: a (compressed) checkpoint -> a verified single-file ONNX artefact.

Steps, all inside a temporary folder that is renamed into place only when every check
passed (nothing is left behind on failure, an existing artefact survives a failed
``--force``):

1. load the checkpoint and turn every embedding layer into its deployable form;
2. trace the task wrapper (``lowering.py``) with the legacy TorchScript exporter
   (``dynamo=False``: it writes one self-contained file, while torch 2.13's dynamo default
   writes a ``.onnx.data`` side file), opset ``OPSET``, dynamic batch axis, int64 ids;
3. check the file: ``onnx.checker`` (full), no external data, nothing else written;
4. prove it: golden inputs (OOV/negative ids, batch 1 and 64) through onnxruntime vs the
   PyTorch deployable model, within the manifest tolerance (``ParityError``, exit 3);
5. onnxruntime's mobile usability checker; ``.ort`` conversion for ``format="ort"``;
6. every model file <= the byte budget (``BudgetExceededError``, exit 3), every time;
7. write ``manifest.json``, ``schema.json``, ``reference_model.pt`` and ``runner.py``.
"""

from __future__ import annotations

import copy
import os
import platform
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from ondevice import __version__
from ondevice.budget import DeviceProfile, format_bytes, load_profile, resolve_budget
from ondevice.embedding import EmbeddingLayer, swap_embedding_
from ondevice.embedding.row_pruned import compact_rows
from ondevice.errors import ArtefactError, BadInputError, BudgetExceededError, ParityError
from ondevice.export import golden as golden_mod
from ondevice.export import raw as raw_mod
from ondevice.export._runner import RUNNER_PATH, runner_module
from ondevice.export.lowering import DEFAULT_TOP_K, TOPK_EXCLUDE, TOPK_INPUT, export_module
from ondevice.export.manifest import (
    ARTEFACT_FORMAT,
    MANIFEST_VERSION,
    MODEL_ONNX,
    OPSET,
    REFERENCE_MODEL,
    RUNNER_FILE,
    file_entry,
    storage_report,
    tolerance_for,
    write_manifest,
)
from ondevice.export.mobile import check_mobile_usability, convert_to_ort, required_operators_config
from ondevice.io import atomic_output_dir
from ondevice.models import BPRMF, RecModel
from ondevice.outputs import check_output
from ondevice.schema import input_contract
from ondevice.train.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from ondevice.vocabulary import dropped_ids, relabel_applies

__all__ = ["INPUT_MODES", "app_payload", "bytes_by_part", "deployable_model", "export_artefact", "export_onnx",
           "resolve_inputs", "versions"]

REQUIRED_OPS = "required_operators.config"
#: ``export --inputs``: ``ids`` (int64 ids encoded by the app) or ``raw`` (encoding in the graph).
INPUT_MODES = ("ids", "raw")
#: ``export --topk-table``: when a top-K graph computes its item table (``lowering`` module docstring).
TOPK_TABLE_FORMS = ("load", "call")


def resolve_inputs(inputs: str | None, model: RecModel) -> str:
    """The artefact's input mode: ``inputs`` when given, else the default for ``model``:
    ``raw`` for a CTR model (the app sends raw values, the graph encodes them), ``ids`` for a
    top-K model (it takes the user's vector; nothing to encode)."""
    if inputs is not None:
        if inputs not in INPUT_MODES:
            raise BadInputError(f"--inputs {inputs!r} must be one of {', '.join(INPUT_MODES)}")
        return inputs
    return "ids" if isinstance(model, BPRMF) else "raw"


def versions() -> dict[str, str]:
    import onnxruntime

    return {"ondevice": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "numpy": np.__version__, "python": platform.python_version()}


def deployable_model(model: RecModel) -> RecModel:
    """A copy of ``model`` with every embedding layer in its exported (deployable) form, in eval mode."""
    model = copy.deepcopy(model).cpu().eval()

    def _deploy(_name: str, layer: Any) -> Any:
        deployed = layer.to_deployable()
        return None if deployed is layer else deployed

    swap_embedding_(model, _deploy)
    return model.eval()


def export_onnx(module: torch.nn.Module, io: dict[str, Any], example: torch.Tensor | tuple[torch.Tensor, ...],
                path: Path, *, table_at_load: bool = True) -> None:
    """Trace ``module`` to a single self-contained ONNX file at ``path`` (opset ``OPSET``).

    ``example``: the first input's example (a top-K graph's ``exclude_items`` example is an
    empty ``[B, 0]``), or one example per input. Top-K graphs get the trace-only
    ``table_seed`` input, bound after tracing (:func:`bind_table_seed`, ``table_at_load``).
    """
    inputs, outputs = [i["name"] for i in io["inputs"]], [o["name"] for o in io["outputs"]]
    examples = example if isinstance(example, tuple) else (example,)
    seed = (io.get("topk") or {}).get("table_seed")
    if io["task"] == "topk" and len(examples) < len(inputs):
        examples = (examples[0], torch.zeros((examples[0].shape[0], 0), dtype=torch.int64))
    dynamic = {i["name"]: {a: n for a, n in enumerate(i["shape"]) if isinstance(n, str)} for i in io["inputs"]}
    dynamic.update({name: {0: "batch"} for name in outputs})
    names = inputs + ([seed] if seed else [])
    if seed:
        examples = (*examples, torch.zeros((), dtype=torch.int64))
        module.table_at_load = table_at_load  # type: ignore[assignment]  # the decode it traces (lowering.TopKExport)
    with warnings.catch_warnings(), torch.no_grad():
        # The legacy exporter announces its deprecation; it is chosen on purpose (module docstring).
        warnings.simplefilter("ignore")
        torch.onnx.export(module, examples, str(path), dynamo=False, opset_version=OPSET, input_names=names,
                          output_names=outputs, dynamic_axes=dynamic, do_constant_folding=True, export_params=True)
    extra = sorted(p.name for p in path.parent.iterdir() if p != path)
    if extra:
        raise ArtefactError(f"the exporter wrote side files {extra}; the artefact must be one self-contained file")
    model = onnx.load(str(path), load_external_data=False)
    if any(onnx.external_data_helper.uses_external_data(t) for t in model.graph.initializer):
        raise ArtefactError("the exported model references external data; it must be one self-contained file")
    store_int8_weights(model.graph, module)
    if seed:
        bind_table_seed(model.graph, seed, inputs[0], at_load=table_at_load)
    _compact_names(model.graph)
    model.producer_name, model.producer_version = "ondevice", __version__
    model.doc_string = f"ondevice {io['task']} artefact; inputs {inputs}, outputs {outputs}; see manifest.json"
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(path), save_as_external_data=False)


def bind_table_seed(graph: onnx.GraphProto, seed: str, first_input: str, *, at_load: bool) -> None:
    """Replace the trace-only graph input ``seed`` (an int64 scalar 0 the top-K item table is computed from).

    ``at_load``: an initializer 0, so onnxruntime folds the table once at session creation
    (``lowering`` module docstring). Otherwise ``Shape(first_input)[0] · 0``, which no
    optimiser can fold: the table is decoded per call (the ``.ort`` form).
    """
    if not any(i.name == seed for i in graph.input):
        raise ArtefactError(f"the traced top-K graph has no {seed!r} input; re-export")
    keep = [i for i in graph.input if i.name != seed]
    del graph.input[:]
    graph.input.extend(keep)
    zero = onnx.numpy_helper.from_array(np.asarray(0, dtype=np.int64), seed if at_load else f"{seed}.zero")
    graph.initializer.append(zero)
    if not at_load:
        nodes = [onnx.helper.make_node("Shape", [first_input], [f"{seed}.shape"]),
                 onnx.helper.make_node("Gather", [f"{seed}.shape", zero.name], [f"{seed}.batch"], axis=0),
                 onnx.helper.make_node("Mul", [f"{seed}.batch", zero.name], [seed])]
        rest = list(graph.node)
        del graph.node[:]
        graph.node.extend(nodes + rest)


def store_int8_weights(graph: onnx.GraphProto, module: torch.nn.Module) -> int:
    """Put every :class:`Int8Linear`'s int8 weight back into the graph; returns how many.

    The exporter folds ``Cast(q)·s`` into an fp32 initializer. Each one equal to a layer's
    dequantized weight (or its transpose, for a MatMul) is replaced by ``q`` (int8) and ``s``
    (fp32, broadcast over the input axis) feeding ``Cast`` + ``Mul`` nodes that output the
    old name. ONNX Runtime folds those nodes at session creation: the file stores 1 B per
    weight, the run is the fp32 Gemm with bit-identical weights. A layer whose weight is not
    found is an error (the bytes would silently be fp32).
    """
    from ondevice.models.int8_linear import Int8Linear

    layers = [m for m in module.modules() if isinstance(m, Int8Linear)]
    if not layers:
        return 0
    by_shape: dict[tuple[int, ...], list[onnx.TensorProto]] = {}
    for init in graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT:
            by_shape.setdefault(tuple(init.dims), []).append(init)
    new_nodes: list[onnx.NodeProto] = []
    for layer in layers:
        with torch.no_grad():
            w = layer.dequantized_weight().numpy()
        q, scale = layer.weight_q.numpy(), layer.scale.numpy()
        found = None
        for transposed, target in ((False, w), (True, w.T)):
            for init in by_shape.get(target.shape, []):
                if np.array_equal(onnx.numpy_helper.to_array(init), target):
                    found = (init, transposed)
                    break
            if found:
                break
        if found is None:
            raise ArtefactError(f"int8 layer {layer.out_features}x{layer.in_features}: its weight is not an "
                                "initializer of the exported graph; export it with --mlp fp32")
        init, transposed = found
        name = init.name
        graph.initializer.remove(init)
        by_shape[tuple(init.dims)].remove(init)
        qt, st = (q.T, scale.reshape(1, -1)) if transposed else (q, scale.reshape(-1, 1))
        graph.initializer.extend([onnx.numpy_helper.from_array(np.ascontiguousarray(qt), f"{name}.q"),
                                  onnx.numpy_helper.from_array(np.ascontiguousarray(st), f"{name}.scale")])
        new_nodes += [onnx.helper.make_node("Cast", [f"{name}.q"], [f"{name}.qf"], to=onnx.TensorProto.FLOAT),
                      onnx.helper.make_node("Mul", [f"{name}.qf", f"{name}.scale"], [name])]
    nodes = new_nodes + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return len(layers)


def _compact_names(graph: onnx.GraphProto) -> None:
    """Drop node names/doc strings and give intermediate values short names (``v0``, ``v1``...).

    The tracer names every node and value after its module path (``/model/embedding/Gather_1``);
    at ~100 bytes a node that is kilobytes of pure overhead in a small artefact. Graph inputs,
    outputs and initializer names are kept (they are the contract and the weights' identity).
    """
    keep = {v.name for v in graph.input} | {v.name for v in graph.output} | {t.name for t in graph.initializer}
    rename: dict[str, str] = {}
    for node in graph.node:
        node.name = ""
        node.doc_string = ""
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
        for i, name in enumerate(node.output):
            if name and name not in keep:
                rename[name] = node.output[i] = f"v{len(rename)}"
    for vi in graph.value_info:
        if vi.name in rename:
            vi.name = rename[vi.name]


def _torch_outputs(module: torch.nn.Module, args: tuple[np.ndarray, ...], names: list[str]) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = module(*(torch.from_numpy(a) for a in args))
    outs = out if isinstance(out, tuple) else (out,)
    return {n: o.detach().cpu().numpy() for n, o in zip(names, outs, strict=False)}


def _resolve_checkpoint(source: str | Path | Checkpoint) -> Checkpoint:
    return source if isinstance(source, Checkpoint) else load_checkpoint(source)


def export_artefact(
    run_dir_or_checkpoint: str | Path | Checkpoint,
    out_dir: str | Path,
    *,
    budget_bytes: int | None = None,
    budget_source: str | None = None,
    profile: str | Path | DeviceProfile | None = None,
    format: str | None = None,  # noqa: A002 - mirrors the CLI option
    force: bool = False,
    top_k: int = DEFAULT_TOP_K,
    golden_seed: int = 0,
    golden_batch: int = 64,
    check_mobile: bool = True,
    inputs: str | None = None,
    topk_table: str | None = None,
) -> dict[str, Any]:
    """Export a checkpoint (run folder, ``model.pt`` or ``Checkpoint``) to an artefact folder.

    Parameters
    ----------
    budget_bytes : byte budget, parsed once by the caller (``parse_budget("2MB")``); overrides
        the profile's. The one budget check of a ``compress`` run is this export's.
    budget_source : how the user gave it, for the manifest and the error (``"--budget 2MB"``).
    profile : device profile name, ``.toml`` path or ``DeviceProfile``; recorded in the
        manifest (its p99 target is checked by ``profile`` and the device runner).
    format : ``"onnx"`` or ``"ort"`` (also write ``model.ort``); default the profile's
        ``runtime_format``, else ``"onnx"``.
    force : replace an existing ``out_dir``.
    top_k : k of top-K artefacts (clipped to the number of items).
    golden_seed, golden_batch : seed and size of the large golden batch.
    inputs : ``"ids"`` (int64 ids, encode with ``schema.json``) or ``"raw"`` (CTR: the raw field
        values, encoded inside the graph exactly as ``prepare`` does; see ``ondevice.export.raw``);
        default (None): ``raw`` for CTR models, ``ids`` for top-K (:func:`resolve_inputs`).
    topk_table : top-K item table: ``"load"`` (decoded once at session creation; the default for
        ``onnx``) or ``"call"`` (decoded per call: least resident memory; the only form for ``ort``).
        ``benchmarks/topk_sparse_latency.py`` measures both (``lowering`` module docstring).

    Returns the manifest (also written to ``out_dir/manifest.json``). Raises
    ``BudgetExceededError`` (exit 3) when a model file is over budget, ``ParityError``
    (exit 3) when onnxruntime disagrees with PyTorch on the golden inputs, and
    ``BadInputError`` subclasses (exit 2) for bad inputs; ``out_dir`` is then untouched.
    """
    started = time.time()
    dev = profile if isinstance(profile, DeviceProfile) or profile is None else load_profile(profile)
    limit, limit_source = resolve_budget(budget_bytes, dev, budget_source)
    fmt = _check_export_options(format or (dev.runtime_format if dev else "onnx"), top_k)
    topk_table = _check_topk_table(topk_table, fmt)
    out_dir = Path(out_dir)
    src = run_dir_or_checkpoint.path if isinstance(run_dir_or_checkpoint, Checkpoint) else run_dir_or_checkpoint
    check_output(out_dir, kind="export", inputs=[src], force=force)
    ckpt = _resolve_checkpoint(run_dir_or_checkpoint)
    model = deployable_model(ckpt.model)
    inputs = resolve_inputs(inputs, model)  # checks --inputs
    module, io = export_module(model, k=top_k)
    if io["task"] == "topk":
        assert isinstance(model, BPRMF)
        io["topk"]["item_table"] = "decoded once at session creation" if topk_table == "load" else "decoded per call"
        used = getattr(module, "used_dims", None)  # RULE's elastic table: the dims some item uses
        io["topk"]["resident_item_table_bytes"] = model.num_items * (len(used) if used else model.embed_dim) * 4
    gold = _golden_cases(model, module, io, ckpt.schema, inputs, golden_seed, golden_batch)
    traced, relabel = _raw_id_model(model, module, ckpt.schema, gold["plan"], top_k)
    runner = runner_module()
    with atomic_output_dir(out_dir, kind="export", inputs=[src], force=force) as tmp:
        files, extra_files, vocab_bytes = _write_model_files(tmp, traced, io, gold, ckpt.schema, fmt, model,
                                                             table_at_load=topk_table == "load", relabel=relabel)
        manifest = _manifest(started, model, io, ckpt, gold, files, extra_files, dev, fmt, inputs, runner,
                             top_k=top_k, golden_seed=golden_seed, golden_batch=golden_batch)
        if relabel is not None:  # evaluate re-indexes an encoded split the same way (reference_model.pt's remap)
            manifest["raw_inputs"] = {**manifest["raw_inputs"], RELABEL_KEY: RELABEL_NOTE}
        if io["task"] == "topk":
            manifest["export_options"]["topk_table"] = topk_table
        manifest["export_validation"] = _prove_parity(tmp, manifest, runner, fmt)
        # mobile usability: advisory, recorded
        manifest["mobile_usability"] = check_mobile_usability(tmp / MODEL_ONNX) if check_mobile else {"ran": False}
        manifest["storage"], manifest["budget"] = _check_budget(traced, files, vocab_bytes, limit, limit_source)
        _write_rest_of_folder(tmp, manifest, model, ckpt, gold["plan"], extra_files, limit)
        manifest["export_seconds"] = time.time() - started
        write_manifest(tmp, manifest)
        _publishable_permissions(tmp)
    return manifest


def _check_export_options(fmt: str, top_k: int) -> str:
    """One-line errors for a bad ``--format`` or ``--top-k`` (``--inputs``: :func:`resolve_inputs`); returns the format."""
    if fmt not in ("onnx", "ort"):
        raise BadInputError(f"format {fmt!r} must be 'onnx' or 'ort'")
    if top_k < 1:
        raise BadInputError(f"top-k must be >= 1, got {top_k}")
    return fmt


def _check_topk_table(topk_table: str | None, fmt: str) -> str:
    """``--topk-table``: ``load`` (default for onnx) or ``call`` (default, and the only form, for ort)."""
    topk_table = topk_table or ("load" if fmt == "onnx" else "call")
    if topk_table not in TOPK_TABLE_FORMS:
        raise BadInputError(f"--topk-table {topk_table!r} must be one of {', '.join(TOPK_TABLE_FORMS)}")
    if topk_table == "load" and fmt == "ort":
        raise BadInputError("--topk-table load needs --format onnx: the .ort converter would store the decoded table "
                            "dense; use --topk-table call")
    return topk_table


def _golden_cases(model: RecModel, module: torch.nn.Module, io: dict[str, Any], schema: Any, inputs: str,
                  seed: int, batch: int) -> dict[str, Any]:
    """The golden cases the artefact must reproduce: the inputs as the model takes them (``goldens``),
    as the app feeds them (``feeds``: raw values for ``--inputs raw``), PyTorch's outputs
    (``expected``), the raw-input ``plan`` and the comparison ``tolerance`` (scaled for top-K scores)."""
    goldens = golden_mod.golden_inputs(model, seed=seed, large_batch=batch)
    plan = None
    if inputs == "raw":
        if io["task"] != "ctr":
            raise BadInputError("--inputs raw is for CTR artefacts; a top-K artefact takes the user's vector (use --inputs ids)")
        plan = raw_mod.raw_plan(schema)
        feeds = raw_mod.raw_golden(schema, plan, seed=seed, large_batch=batch)
        goldens = {name: raw_mod.encode_reference(schema, plan, f) for name, f in feeds.items()}
    elif io["task"] == "topk":  # every case but batch1 excludes seen items (golden.topk_golden_feeds)
        feeds = golden_mod.topk_golden_feeds(module, goldens, (TOPK_INPUT, TOPK_EXCLUDE), io["topk"]["num_items"],
                                             seed=seed)
    else:
        feeds = {name: {io["inputs"][0]["name"]: x} for name, x in goldens.items()}
    out_names = [o["name"] for o in io["outputs"]]
    # What the PyTorch module is called with per case (raw CTR: prepare's encoding of the raw feeds).
    args = ({name: tuple(f[i["name"]] for i in io["inputs"]) for name, f in feeds.items()}
            if io["task"] == "topk" else {name: (x,) for name, x in goldens.items()})
    expected = {name: _torch_outputs(module, a, out_names) for name, a in args.items()}
    tolerance = tolerance_for(model)
    if io["task"] == "topk":
        scale = max(1.0, max(float(np.abs(np.nan_to_num(e["scores"], neginf=0.0)).max()) for e in expected.values()))
        tolerance["atol"] = tolerance["atol"] * scale
        tolerance["scale"] = scale
        assert isinstance(model, BPRMF)
        io["topk"]["user_vector_std"] = golden_mod.user_vector_std(model)
    return {"goldens": goldens, "feeds": feeds, "args": args, "expected": expected, "plan": plan, "tolerance": tolerance}


#: ``raw_inputs`` key of an artefact whose id model takes re-indexed ids (:func:`_raw_id_model`).
RELABEL_KEY = "id_model_reindexed"
RELABEL_NOTE = ("the id model inside holds the kept rows only: its ids are prepare's re-indexed by the row-pruned "
                "tables' remap (reference_model.pt); raw inputs are unaffected")


def _raw_id_model(model: RecModel, module: torch.nn.Module, schema: Any, plan: dict[str, Any] | None,
                  top_k: int) -> tuple[torch.nn.Module, list[Any] | None]:
    """(the module to trace, the encoder's relabel): for a raw artefact whose every embedding
    table keeps the same rows pruned to OOV, the id model holds the kept rows only and the
    encoder's tables emit their re-indexed ids, so the 4 B per original id of the remap is not
    stored (:func:`ondevice.embedding.row_pruned.compact_rows`); else ``module`` unchanged."""
    if plan is None:
        return module, None
    compact = compact_rows(model)
    if compact is None or not relabel_applies(schema, plan, compact[1]):
        return module, None
    return export_module(compact[0], k=top_k)[0], [r.numpy() for r in compact[1]]


def _write_model_files(tmp: Path, module: torch.nn.Module, io: dict[str, Any], gold: dict[str, Any], schema: Any,
                       fmt: str, model: RecModel, *, table_at_load: bool = True,
                       relabel: list[Any] | None = None) -> tuple[dict[str, Any], list[str], int]:
    """``model.onnx`` (with the raw-input encoder in front when planned) and, for ``ort``,
    ``model.ort``: (files entries, extra files, the raw vocabulary's bytes). ``table_at_load``:
    a top-K graph's item table is decoded at session creation (``bind_table_seed``); ``relabel``:
    ``module`` takes re-indexed ids (:func:`_raw_id_model`)."""
    scratch = tmp / ".export"
    scratch.mkdir()
    example = tuple(torch.from_numpy(a) for a in list(gold["args"].values())[-1])
    export_onnx(module, io, example, scratch / MODEL_ONNX, table_at_load=table_at_load)
    vocab_bytes = 0
    if gold["plan"] is not None:
        vocab_bytes = _attach_raw_encoder(scratch / MODEL_ONNX, schema, gold["plan"], model, relabel)
    shutil.move(str(scratch / MODEL_ONNX), tmp / MODEL_ONNX)
    scratch.rmdir()
    files = {MODEL_ONNX: file_entry(tmp / MODEL_ONNX)}
    extra_files: list[str] = []
    if fmt == "ort":
        try:
            _ort_path, config = convert_to_ort(tmp / MODEL_ONNX, tmp)
        except Exception as err:  # noqa: BLE001 - converter failures are artefact failures
            raise ArtefactError(f"onnxruntime could not convert the model to ORT format ({str(err).splitlines()[0][:200]})") from None
        files["model.ort"] = file_entry(tmp / "model.ort")
        if config is not None:
            extra_files.append(config.name)
    return files, extra_files, vocab_bytes


def _manifest(started: float, model: RecModel, io: dict[str, Any], ckpt: Checkpoint, gold: dict[str, Any],
              files: dict[str, Any], extra_files: list[str], dev: DeviceProfile | None, fmt: str, inputs: str,
              runner: Any, *, top_k: int, golden_seed: int, golden_batch: int) -> dict[str, Any]:
    """The manifest before its checks fill ``export_validation``, ``mobile_usability``, ``storage`` and ``budget``."""
    plan = gold["plan"]
    manifest: dict[str, Any] = {
        "format": ARTEFACT_FORMAT,
        "version": MANIFEST_VERSION,
        "created_unix": started,
        "task": io["task"],
        "model": model.describe(),
        "schema": {"fingerprint": ckpt.schema.fingerprint(), **ckpt.schema.to_dict()},
        "vocab_sizes": list(ckpt.schema.vocab_sizes) if io["task"] == "ctr" else None,
        "opset": OPSET,
        "runtime_format": fmt,
        "inputs": plan["inputs"] if plan else io["inputs"],
        "input_encoding": inputs,
        "raw_inputs": plan,
        "input_contract": input_contract(ckpt.schema, encoding=inputs),
        "outputs": io["outputs"],
        "files": files,
        "budget": None,
        "device_profile": dev.to_dict() if dev else None,
        "storage": {},
        "tolerance": gold["tolerance"],
        "golden": [
            {"name": name, "inputs": {k: runner.encode_array(v) for k, v in gold["feeds"][name].items()},
             "outputs": {k: runner.encode_array(v) for k, v in gold["expected"][name].items()}}
            for name in gold["feeds"]
        ],
        "metrics": ckpt.metrics,
        "mobile_usability": None,
        "versions": versions(),
        "export_options": {"exporter": "torch.onnx.export(dynamo=False)", "opset": OPSET, "dynamic_axes": "batch",
                           "do_constant_folding": True, "top_k": io.get("topk", {}).get("k"),
                           "golden_seed": golden_seed, "golden_batch": golden_batch, "format": fmt,
                           "source_checkpoint": str(ckpt.path) if ckpt.path else None},
        "verify": None,
        "extra_files": extra_files,
    }
    if io["task"] == "ctr" and manifest["vocab_sizes"] != list(model.embedding.vocab_sizes):  # type: ignore[union-attr]
        raise BadInputError("the checkpoint's schema and model disagree on vocabulary sizes; re-train")
    if "topk" in io:
        manifest["topk"] = io["topk"]
    return manifest


def _prove_parity(tmp: Path, manifest: dict[str, Any], runner: Any, fmt: str) -> dict[str, Any]:
    """The golden inputs through onnxruntime, compared as the device runner compares (``ParityError``
    when PyTorch and ORT disagree beyond the tolerance); the ``.ort`` model too. Returns the check."""
    session = runner.make_session(tmp / MODEL_ONNX, 1)
    check = runner.check_golden(session, manifest)
    del session
    if not check["passed"]:
        worst = max(((c["name"], k, v) for c in check["cases"] for k, v in c["max_abs_diff"].items()), key=lambda t: t[2])
        raise ParityError(f"onnxruntime differs from PyTorch on golden case {worst[0]!r} output {worst[1]!r}: "
                          f"max abs diff {worst[2]:.3g} > atol {check['atol']:.3g}",
                          max_abs_diff=worst[2], tolerance=check["atol"])
    if fmt == "ort":
        session = runner.make_session(tmp / "model.ort", 1)
        check_ort = runner.check_golden(session, {**manifest, "export_validation": check})
        del session
        if not check_ort["passed"]:
            raise ParityError("the .ort model's golden outputs differ from PyTorch beyond the tolerance")
    return check


def _check_budget(module: torch.nn.Module, files: dict[str, Any], vocab_bytes: int, limit: int | None,
                  limit_source: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The one budget check: every model file, every time (``BudgetExceededError``, exit 3, when one
    is over). Returns the manifest's ``storage`` (bytes by part) and ``budget`` entries."""
    storage = storage_report(module)
    onnx_bytes = files[MODEL_ONNX]["bytes"]
    storage["file_bytes"] = onnx_bytes
    storage["graph_overhead_bytes"] = onnx_bytes - storage["parameter_bytes"]
    storage["graph_overhead_ratio"] = storage["graph_overhead_bytes"] / onnx_bytes
    storage["by_part"] = bytes_by_part(storage, onnx_bytes, vocab_bytes)
    budget = _budget_entry(limit, limit_source, files)
    if limit is not None and not budget["fits"]:
        worst_name = max(files, key=lambda n: files[n]["bytes"])
        size = files[worst_name]["bytes"]
        raise BudgetExceededError(
            f"{worst_name} is {format_bytes(size)}, over the budget of {format_bytes(limit)} ({limit_source}) "
            f"by {size - limit:,} B; compress further (`ondevice compress`) or raise the budget",
            file_bytes=size, budget=limit)
    return storage, budget


def _write_rest_of_folder(tmp: Path, manifest: dict[str, Any], model: RecModel, ckpt: Checkpoint,
                          plan: dict[str, Any] | None, extra_files: list[str], limit: int | None = None) -> None:
    """``schema.json``, the hash reference (raw inputs), ``required_operators.config``, how a top-K
    app gets its user vector (``user_table.npy`` when it fits ``limit`` beside the model), the app
    payload, ``reference_model.pt`` and the device runner."""
    ckpt.schema.save(tmp / "schema.json")
    if plan is not None and plan["hashing"]:
        extra_files += raw_mod.write_hash_reference(tmp)
    if not (tmp / REQUIRED_OPS).is_file():  # ORT format: the converter wrote it (for model.ort)
        (tmp / REQUIRED_OPS).write_text(required_operators_config(tmp / MODEL_ONNX), encoding="utf-8")
        extra_files.append(REQUIRED_OPS)
    manifest["required_operators"] = {"file": REQUIRED_OPS, "config": (tmp / REQUIRED_OPS).read_text(encoding="utf-8")}
    if manifest["task"] == "topk":
        assert isinstance(model, BPRMF)
        manifest["topk"]["user_vector"] = _user_vector_entry(model, ckpt.schema, tmp, limit, manifest["files"])
        if manifest["topk"]["user_vector"]["file"]:
            extra_files.append(USER_TABLE)
    manifest["app_payload"] = app_payload(manifest, tmp)
    save_checkpoint(tmp / REFERENCE_MODEL, model, ckpt.schema, train_config=ckpt.train_config,
                    metrics=ckpt.metrics, extra={"exported_from": manifest["export_options"]["source_checkpoint"]})
    shutil.copyfile(RUNNER_PATH, tmp / RUNNER_FILE)


def _attach_raw_encoder(path: Path, schema: Any, plan: dict[str, Any], source: RecModel,
                        relabel: list[Any] | None = None) -> int:
    """Put the raw-feature encoder in front of the id model at ``path``; returns the vocabulary bytes.

    Ids that every embedding table of ``source`` reads as the OOV row (rows pruned to OOV) keep
    no key: row pruning saves the key as well as the row (:func:`ondevice.vocabulary.dropped_ids`);
    ``relabel``: the ids the tables emit for the id model at ``path`` (:func:`_raw_id_model`).
    """
    layers = [m for m in source.modules() if isinstance(m, EmbeddingLayer)]
    dropped = dropped_ids(layers, list(schema.vocab_sizes))
    model = onnx.load(str(path), load_external_data=False)
    raw_mod.attach_encoder(model, schema, plan, dropped=dropped, relabel=relabel)
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(path), save_as_external_data=False)
    return raw_mod.vocabulary_bytes(model)


def bytes_by_part(storage: dict[str, Any], file_bytes: int, vocabulary_bytes: int) -> dict[str, int]:
    """The model file's bytes split into embeddings, vocabulary (raw artefacts' lookup tables),
    dense layers (every other parameter) and graph (structure, names, framing: the rest)."""
    embeddings = int(sum(storage["embedding_bytes"].values()) - storage.get("shared_bytes", 0))
    dense = int(storage["dense_bytes"])
    return {"embeddings": embeddings, "vocabulary": int(vocabulary_bytes), "dense_layers": dense,
            "graph": int(file_bytes - embeddings - dense - vocabulary_bytes), "total": int(file_bytes)}


def app_payload(manifest: dict[str, Any], folder: Path) -> dict[str, Any]:
    """What an app must ship to run the artefact: the model file, plus ``schema.json`` (its encoding)
    for an id artefact, plus the hash reference for a raw artefact with hashed fields."""
    model_file = "model.ort" if manifest.get("runtime_format") == "ort" and "model.ort" in manifest["files"] else MODEL_ONNX
    ship = [model_file]
    if manifest.get("input_encoding") != "raw":
        ship.append("schema.json")
    if ((manifest.get("topk") or {}).get("user_vector") or {}).get("file"):  # the user table fits the budget beside the model
        ship.append(manifest["topk"]["user_vector"]["file"])
    elif (manifest.get("raw_inputs") or {}).get("hashing"):
        ship.append("hash_reference.js")
    files = {name: (folder / name).stat().st_size for name in ship}
    return {"files": files, "bytes": int(sum(files.values())),
            "note": "raw inputs: the vocabulary is inside the model file" if manifest.get("input_encoding") == "raw"
            else "id inputs: the app also ships schema.json to encode features (export --inputs raw puts it in the model)"}


USER_TABLE = "user_table.npy"


def _user_vector_entry(model: BPRMF, schema: Any, folder: Path, limit: int | None,
                       files: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """How the app gets the ``user_vector`` input; writes ``user_table.npy`` when it fits the budget beside the model.

    The vector is row ``u`` of the trained user table, ``u`` the user's id under ``schema.json``'s
    user field (0: an unknown user, the OOV row). It is ``D`` float32 values: a server sends it
    (4·D bytes) with the user's history, or an app that fits the table carries it.
    """
    with torch.no_grad():
        table = model.user_embedding.dense_weight().float().numpy()  # type: ignore[union-attr]
    user_field = next((f.name for f in schema.fields if getattr(f, "role", None) == "user"), schema.fields[0].name)
    table_bytes = int(table.nbytes + 128)  # .npy header
    model_bytes = max(info["bytes"] for info in files.values())
    ships = limit is not None and model_bytes + table_bytes <= limit
    if ships:
        np.save(folder / USER_TABLE, np.ascontiguousarray(table))
    return {"input": TOPK_INPUT, "dtype": "float32", "dim": int(table.shape[1]), "user_field": user_field,
            "rows": int(table.shape[0]), "user_table_bytes": table_bytes, "file": USER_TABLE if ships else None,
            "how": (f"row u of {USER_TABLE} (float32 [{table.shape[0]}, {table.shape[1]}]), u = the user's id encoded "
                    f"with schema.json's {user_field!r} field, 0 for an unknown user; it fits the budget beside the "
                    "model, so an app may carry it" if ships else
                    f"fetch the user's vector ({table.shape[1]} float32, {4 * table.shape[1]} B) from the server: row u "
                    f"of the user table in reference_model.pt (user_embedding), u = the user's id encoded with "
                    f"schema.json's {user_field!r} field, 0 for an unknown user; the table "
                    f"({table_bytes:,} B) does not fit the budget beside the model"
                    + ("" if limit is not None else " (no budget given)")),
            "exclude_items": "int64 [batch, S]: the user's seen item ids (schema.json's item field), -1-padded; "
                             "pass an empty [batch, 0] array to exclude nothing"}


def _publishable_permissions(folder: Path) -> None:
    """Temp files are created 0600/0700; give the artefact the usual umask permissions to copy it to devices."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for p in folder.iterdir():
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)


def _budget_entry(limit: int | None, source: str | None, files: dict[str, dict[str, Any]]) -> dict[str, Any]:
    checked = {name: info["bytes"] for name, info in files.items()}
    if limit is None:
        return {"bytes": None, "source": None, "checked_files": checked, "fits": None,
                "rule": "no budget given; file bytes recorded only"}
    return {"bytes": limit, "source": source, "checked_files": checked,
            "fits": all(b <= limit for b in checked.values()),
            "headroom_bytes": limit - max(checked.values()),
            "rule": "every model file (model.onnx, model.ort) must be <= budget bytes on disk"}
