"""Where a raw artefact's batch-1 time goes beyond its id artefact's (issue 16: overhead <= 10 %).

On the Criteo artefact of ``app_payload.py``'s 1/10 row (first ``--rows`` rows, DeepFM trained
``--epochs``, ``compress --method uniform`` to a tenth of the full raw artefact; the same model
exported with ``--inputs ids``), nine sessions interleaved in one process, batch 1, 1 thread:

* ``ids``: the id artefact (OOV guard, one int64 input);
* ``raw``: the raw artefact (encoder, no guard, a string and a float64 input);
* ``id_model``: the raw artefact's id model alone (no encoder, no guard), fed the ids the
  encoder computes: ``ids - id_model`` is the guard, ``raw - id_model`` the encoder and inputs;
* ``id_model+categorical`` / ``+numeric`` / ``+raw inputs``: the same with one or both raw
  inputs fed too (unused): what converting them costs;
* ``cheapest encoder``: the id model behind the cheapest exact-shape encoder one could draw
  (two one-key ``LabelEncoder`` + ``Concat``; wrong ids, a lower bound for any real encoder);
* ``raw without offset Add``: the raw graph with the id model's field-offset ``Add`` removed
  (wrong ids): the most that folding the offsets into the lookup tables could gain;
* ``raw, strings as bytes``: the raw artefact fed the same texts as a NUL-padded numpy bytes
  array (``S{n+1}``) instead of an object array of ``str``.

    OMP_NUM_THREADS=1 python benchmarks/raw_overhead.py [--runs 200] [--rounds 15] [--rows 3000]

Writes ``benchmarks/results/raw_overhead.json`` and ``.md``; needs the shared Criteo file.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as onh

from ondevice.export import export_artefact
from ondevice.export._runner import runner_module
from ondevice.export.raw import ML_DOMAIN, ML_OPSET, _prune_dead, id_model
from ondevice.pipeline.compress import compress
from ondevice.train import TrainConfig, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402
from app_payload import OUT, datasets  # noqa: E402


def _with_inputs(model: onnx.ModelProto, nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto],
                 keep_ids: bool) -> onnx.ModelProto:
    """``model`` (ids in) with ``nodes`` in front and ``inputs`` as its graph inputs (plus ``ids``)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    body = list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(nodes + body)
    if not keep_ids:
        del m.graph.input[:]
    m.graph.input.extend(inputs)
    if not any(o.domain == ML_DOMAIN for o in m.opset_import):
        m.opset_import.append(oh.make_opsetid(ML_DOMAIN, ML_OPSET))
    _prune_dead(m.graph)
    return m


def build(work: Path, rows: int, epochs: int) -> tuple[Path, Path]:
    """(id artefact, raw artefact) of the Criteo 1/10 budget, as app_payload builds them."""
    data, _ = datasets(work, rows)["criteo"]
    config = TrainConfig(model="deepfm", embed_dim=16, mlp_dims=[400, 400, 400], epochs=epochs, threads=1, seed=0)
    train(data, work / "trained", config, quiet=True)
    full = export_artefact(work / "trained", work / "full_raw", inputs="raw", check_mobile=False)
    budget = int(full["files"]["model.onnx"]["bytes"] / 10)
    compress(work / "trained", budgets=[budget], methods=["uniform"], out_dir=work / "comp", epochs=1, profile=False,
             plot=False, quiet=True, evaluate_test=False, inputs="raw")
    run = json.loads((work / "comp" / "summary.json").read_text())["runs"][0]
    raw = work / "comp" / run["folder"]
    export_artefact(raw / "reference_model.pt", work / "ids", inputs="ids", check_mobile=False)
    return work / "ids", raw


def _without_offset_add(model: onnx.ModelProto, ids: str = "ids") -> onnx.ModelProto:
    """``model`` with every ``Add(ids, constant)`` bypassed (its readers read ``ids``): wrong outputs."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    bypass = {n.output[0] for n in m.graph.node if n.op_type == "Add" and n.input[0] == ids}
    for n in m.graph.node:
        for k, name in enumerate(n.input):
            if name in bypass:
                n.input[k] = ids
    _prune_dead(m.graph)
    return m


def as_bytes(strings: np.ndarray) -> np.ndarray:
    """UTF-8 texts as a numpy bytes array one byte wider than the longest, so every item ends in NUL
    (onnxruntime's Python binding copies a bytes item up to its first NUL, past the item's end if none)."""
    encoded = np.char.encode(strings.astype(str), "utf-8")
    return encoded.astype(f"S{max(1, int(np.char.str_len(encoded).max(initial=0))) + 1}")


def measure(ids_art: Path, raw_art: Path, runs: int, rounds: int) -> dict[str, Any]:
    runner = runner_module()
    raw = onnx.load(str(raw_art / "model.onnx"))
    raw_inputs = {i.name: i for i in raw.graph.input}
    feeds = runner.make_inputs(runner.load_manifest(raw_art), 1, 0)
    enc = onnx.ModelProto()
    enc.CopyFrom(raw)
    del enc.graph.output[:]
    enc.graph.output.append(oh.make_tensor_value_info("ids", TensorProto.INT64, None))
    _prune_dead(enc.graph)
    ids = ort.InferenceSession(enc.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    inner = id_model(raw)
    n_num = int(feeds["numeric"].shape[1])
    cheapest = [oh.make_node("LabelEncoder", ["numeric"], ["n"], domain=ML_DOMAIN, values_int64s=[1], default_int64=1,
                             keys_tensor=onh.from_array(np.asarray([0.5]), "k")),
                oh.make_node("LabelEncoder", ["categorical"], ["s"], domain=ML_DOMAIN, keys_strings=["a"],
                             values_int64s=[1], default_int64=1),
                oh.make_node("Concat", ["n", "s"], ["ids"], axis=1)]
    bytes_feeds = {**feeds, "categorical": as_bytes(feeds["categorical"])}
    models = {"ids": (onnx.load(str(ids_art / "model.onnx")), runner.make_inputs(runner.load_manifest(ids_art), 1, 0)),
              "raw": (raw, feeds), "id_model": (inner, {"ids": ids})}
    for name in ("categorical", "numeric"):
        models[f"id_model+{name}"] = (_with_inputs(inner, [], [raw_inputs[name]], keep_ids=True),
                                      {"ids": ids, name: feeds[name]})
    models.update({"id_model+raw inputs": (_with_inputs(inner, [], list(raw_inputs.values()), keep_ids=True),
                                           {"ids": ids, **feeds}),
                   "cheapest encoder": (_with_inputs(inner, cheapest, list(raw_inputs.values()), keep_ids=False), feeds),
                   "raw without offset Add": (_without_offset_add(raw), feeds),
                   "raw, strings as bytes": (raw, bytes_feeds)})
    sessions = {}
    with tempfile.TemporaryDirectory(prefix="raw_overhead_") as tmp:
        for key, (model, _) in models.items():
            path = Path(tmp) / f"{len(sessions)}.onnx"
            onnx.save(model, str(path))
            sessions[key] = runner.make_session(path, 1)
    same = sessions["raw"].run(None, bytes_feeds)[0] == sessions["raw"].run(None, feeds)[0]
    if not bool(np.all(same)):
        raise AssertionError("the bytes feed gives other outputs than the object array")
    samples: dict[str, list[int]] = {key: [] for key in models}
    for _ in range(rounds):
        for key, sess in sessions.items():
            f = models[key][1]
            samples[key] += runner.time_calls(lambda sess=sess, f=f: sess.run(None, f), runs, 20)
    p50 = {key: float(np.percentile(v, 50) / 1e3) for key, v in samples.items()}
    return {"p50_us": p50, "encoder_nodes": [n.op_type for n in enc.graph.node], "numeric_columns": n_num}


def render(res: dict[str, Any]) -> str:
    p = res["p50_us"]
    base = p["ids"]
    lines = ["# Raw-input overhead, decomposed (issue 16)", "",
             f"Command: `{res['command']}` on {res['machine']} (onnxruntime {res['onnxruntime']}). Criteo, the 1/10 "
             f"budget of `app_payload.py`; p50 µs at batch 1, 1 thread, the {len(p)} sessions interleaved in one "
             f"process. Encoder nodes: {', '.join(res['encoder_nodes'])}.", "",
             "| session | p50 µs | vs ids |", "|---|---:|---:|"]
    lines += [f"| {k} | {v:.2f} | {100 * (v / base - 1):+.1f} % |" for k, v in p.items()]
    inputs = p["id_model+raw inputs"]
    lines += ["", f"- OOV guard of the id artefact (ids - id_model): {base - p['id_model']:+.2f} µs",
              f"- converting the raw inputs (id_model+... - id_model): categorical "
              f"{p['id_model+categorical'] - p['id_model']:+.2f} µs, numeric {p['id_model+numeric'] - p['id_model']:+.2f}"
              f" µs, both {inputs - p['id_model']:+.2f} µs",
              f"- the encoder's nodes (raw - id_model+raw inputs): {p['raw'] - inputs:+.2f} µs; the cheapest encoder "
              f"{p['cheapest encoder'] - inputs:+.2f} µs",
              f"- the field-offset Add (raw - raw without offset Add; the most folding offsets could gain): "
              f"{p['raw'] - p['raw without offset Add']:+.2f} µs",
              f"- strings fed as NUL-padded bytes instead of str objects (raw - raw, strings as bytes): "
              f"{p['raw'] - p['raw, strings as bytes']:+.2f} µs", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--rows", type=int, default=3000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    res: dict[str, Any] = {"command": "python benchmarks/raw_overhead.py " + " ".join(argv or sys.argv[1:]),
                           "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                           "onnxruntime": ort.__version__}
    with tempfile.TemporaryDirectory(prefix="raw_overhead_") as tmp:
        ids_art, raw_art = build(Path(tmp), args.rows, args.epochs)
        res.update(measure(ids_art, raw_art, args.runs, args.rounds))
    write_results(args.out, "raw_overhead", res, render)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
