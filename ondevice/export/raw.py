"""Raw-feature artefacts: the schema's encoding (``prepare``) as ONNX nodes in front of the id model.

An app sends the field values as they appear in its data and the graph turns them into the
ids the model was trained on, exactly as :func:`ondevice.data.prepare` does, so the app
re-implements nothing and ships no ``schema.json`` (DESIGN "what ships to an app").

Inputs of a raw artefact (each only when some field needs it):

* ``categorical`` string ``[batch, S]``: one column per vocabulary field without a numeric
  transform (Criteo ``C1..C26``, Avazu ``site_id``, MovieLens ``user``/``zip``...), the text
  as it appears in the file; a missing value is ``""``. Looked up with ``ai.onnx.ml``
  ``LabelEncoder`` (string -> int64, default 0 = the OOV row). libFM values are the
  ``idx:val`` token of the file (``idx``, ``idx:1`` and ``idx:1.0`` name the same one-hot feature;
  ``prepare`` also strips ``:1.00``..., which the graph maps to OOV).
* ``numeric`` float64 ``[batch, N]``: one column per raw numeric column (Criteo ``I1..I13``
  with ``criteo_log2``, CSV ``floor`` / ``edges:`` rules, Avazu ``hour`` as the number
  ``YYMMDDHH`` feeding both ``hour`` and ``weekday``, identity ids); NaN is missing.
  ``criteo_log2`` and ``floor`` columns go through one ``ai.onnx.ml`` ``TreeEnsemble`` (opset
  5): ``prepare``'s rule and the vocabulary folded into the float64 values where the id
  changes (:func:`ondevice.vocabulary.buckets`, exact for every float64), a binary search per
  column; NaN gives the field's missing value ``""`` (OOV when training never saw it
  missing). Avazu dates (integer arithmetic) and ``edges:`` buckets (comparisons) are
  computed and looked up with ``LabelEncoder``. Numbers ``prepare`` refuses (``±inf``,
  ``1e999``, results without an int64 token such as ``-9.3e18``) get the OOV id, as does an
  Avazu hour that is not a valid ``YYMMDDHH`` (``prepare`` refuses the file).
* ``hashed_ids`` int64 ``[batch, H]``: fields encoded by the hashing trick stay ids
  (``1 + blake2b-64(token) mod N``, :func:`ondevice.schema.stable_hash`): standard ONNX ops
  cannot hash strings, so the artefact ships ``hash_reference.py`` and ``hash_reference.js``
  (tested against the Python implementation) and the manifest says so.

Edges and inputs are float64, ids int64: float32 would move the ``floor(ln(x)^2)`` edges.

Cost at batch 1 (issue 16): the Criteo encoder is 6 nodes (``TreeEnsemble``, ``Cast``; the
strings' two-level lookup ``LabelEncoder``, ``Add``, ``LabelEncoder``; ``Concat``) and the id
model's OOV guards are dropped when no id comes from the app (:func:`_drop_oov_guards`), so
the raw graph has as many nodes as the id graph (benchmarks/results/app_payload.md). The id
model's field-offset ``Add`` stays: folding the offsets into the level-2 values would leave an
unknown text at the table's one default, not at its own field's OOV row, so an exact fold needs
another per-column node. What is left is mostly converting the two inputs
(benchmarks/results/raw_overhead.md).
"""

from __future__ import annotations

import datetime
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as onh

from ondevice.errors import BadInputError, BudgetTooSmallError
from ondevice.schema import Field, Schema, stable_hash
from ondevice.vocabulary import (
    MISSING_KEY,
    label_encoder,
    numeric_key,
    table_bytes,
    tables,
    tree_ensemble,
    vocab_ids,
)

STRING_INPUT, NUMBER_INPUT, HASHED_INPUT = "categorical", "numeric", "hashed_ids"
ML_DOMAIN, ML_OPSET = "ai.onnx.ml", 5
AVAZU_TRANSFORMS = ("avazu_hour_of_day", "avazu_weekday")
HASH_SCHEME = "1 + blake2b(utf8(token), digest_size=8) read little-endian, mod buckets (ondevice.schema.stable_hash)"
HASH_FILES = ("hash_reference.py", "hash_reference.js")
HASH_REFERENCE_DIR = Path(__file__).resolve().parent.parent / "_resources" / "hash_reference"
#: libFM: the file writes a one-hot feature as ``idx:1``; prepare stores ``idx`` (regex ``:1(\.0*)?$``).
#: The graph knows these spellings; rarer ones (``idx:1.00``) are OOV in the graph.
LIBFM_ALIASES = (":1", ":1.0")

__all__ = ["HASH_FILES", "attach_encoder", "encode_reference", "id_model", "raw_encoder_bytes", "raw_golden", "raw_plan", "raw_random",
           "vocabulary_bytes", "with_vocabulary",
           "write_hash_reference"]


# --------------------------------------------------------------------------- the plan
def _kind(f: Field) -> str:
    if f.encoding == "hash":
        return "hashed"
    if f.encoding == "identity":
        return "number"
    t = f.transform
    if t is None:
        return "string"
    if t in ("criteo_log2", "floor") or t.startswith("edges:") or t in AVAZU_TRANSFORMS:
        return "number"
    raise BadInputError(f"field {f.name!r} has transform {t!r}, which the raw-feature encoder does not know; "
                        "export with --inputs ids")


def _raw_column(f: Field) -> str:
    return "hour" if f.transform in AVAZU_TRANSFORMS else f.name


def raw_plan(schema: Schema) -> dict[str, Any]:
    """The raw inputs of ``schema``'s CTR artefact: which raw column feeds which input and field.

    Returned dict (stored as ``manifest["raw_inputs"]``): ``inputs`` (name, dtype, shape,
    columns), ``columns`` (name, kind, input, index, fields, transform), ``hashing`` (None
    or the scheme, fields, buckets and reference files) and the rules in words.
    """
    if schema.task != "ctr":
        raise BadInputError("raw-feature inputs are for CTR artefacts; a top-K artefact takes the user's vector")
    columns: list[dict[str, Any]] = []
    by_name: dict[tuple[str, str], dict[str, Any]] = {}
    counts = {"string": 0, "number": 0, "hashed": 0}
    for f in schema.fields:
        kind, raw = _kind(f), _raw_column(f)
        col = by_name.get((kind, raw))
        if col is None or kind != "number" or f.transform not in AVAZU_TRANSFORMS:
            col = {"name": raw, "kind": kind, "input": {"string": STRING_INPUT, "number": NUMBER_INPUT,
                                                        "hashed": HASHED_INPUT}[kind],
                   "index": counts[kind], "fields": [], "transform": f.transform}
            counts[kind] += 1
            columns.append(col)
            by_name[(kind, raw)] = col
        col["fields"].append(f.name)
        if f.transform in AVAZU_TRANSFORMS:
            col["transform"] = "avazu_hour"
    dtypes = {STRING_INPUT: ("string", "string"), NUMBER_INPUT: ("float64", "number"), HASHED_INPUT: ("int64", "hashed")}
    inputs = [{"name": name, "dtype": dt, "shape": ["batch", counts[kind]],
               "columns": [c["name"] for c in columns if c["input"] == name]}
              for name, (dt, kind) in dtypes.items() if counts[kind]]
    hashed = [f for f in schema.fields if f.encoding == "hash"]
    hashing = None
    if hashed:
        hashing = {"in_graph": False, "scheme": HASH_SCHEME, "token": "the value's text; numbers without a fraction as "
                   "integers (3.0 -> '3'); missing -> ''", "fields": {f.name: int(f.hash_buckets or 0) for f in hashed},
                   "reference": list(HASH_FILES),
                   "why": "standard ONNX operators cannot hash strings; the app computes these ids with the reference"}
    return {"mode": "raw", "inputs": inputs, "columns": columns, "hashing": hashing,
            "missing": "categorical: ''; numeric: NaN (the field's missing-value id, else OOV)",
            "oov": "values prepare did not keep (unseen, rarer than min_count) -> id 0 inside the graph",
            "libfm_aliases": list(LIBFM_ALIASES) if schema.source_format == "libfm" else None}


# --------------------------------------------------------------------------- graph
class _Builder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def name(self, hint: str = "") -> str:
        self.n += 1
        return f"enc{self.n}{hint}"

    def const(self, value: Any, dtype: Any) -> str:
        name = self.name("_c")
        self.inits.append(onh.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, domain: str = "", **attrs: Any) -> Any:
        outs = [self.name() for _ in range(n_out)]
        self.nodes.append(oh.make_node(op_type, inputs, outs, domain=domain or None, **attrs))
        return outs[0] if n_out == 1 else outs

    def split(self, x: str, n: int) -> list[str]:
        return [x] if n == 1 else self.op("Split", [x], n, axis=1)

    def lookup(self, x: str, keys: list[Any], values: list[int], default: int, kind: str) -> str:
        """A ``LabelEncoder`` table (:func:`ondevice.vocabulary.label_encoder`)."""
        out = self.name()
        self.nodes.append(label_encoder(x, out, keys, values, default, kind))
        return out


def _edges_key(b: _Builder, x: str, transform: str) -> str:
    """Bucket of an ``edges:`` column: number of edges <= x (searchsorted side=right); ``±inf``
    (refused by ``prepare``) -> -1 (no key, OOV); NaN -> ``MISSING_KEY``."""
    edges = sorted(float(e) for e in transform.split(":", 1)[1].split(","))
    ge = b.op("Cast", [b.op("GreaterOrEqual", [x, b.const(np.asarray([edges]), np.float64)])], to=TensorProto.INT64)
    key = b.op("ReduceSum", [ge, b.const([1], np.int64)], keepdims=1)
    key = b.op("Where", [b.op("IsInf", [x]), b.const(-1, np.int64), key])
    return b.op("Where", [b.op("IsNaN", [x]), b.const(MISSING_KEY, np.int64), key])


def _avazu_parts(b: _Builder, x: str) -> tuple[str, str, str]:
    """(valid, hour of day, weekday Mon=0) of ``YYMMDDHH`` numbers, in int64 arithmetic.

    ``%y``: 00-68 -> 20YY, 69-99 -> 19YY; weekday from days since 1970-01-01 (a Thursday) by
    H. Hinnant's ``days_from_civil``.
    """
    i64 = np.int64

    def c(v: int) -> str:
        return b.const(v, i64)

    finite = b.op("And", [b.op("Equal", [x, b.op("Floor", [x])]),
                          b.op("And", [b.op("GreaterOrEqual", [x, b.const(0.0, np.float64)]),
                                       b.op("Less", [x, b.const(1e8, np.float64)])])])
    n = b.op("Cast", [b.op("Where", [finite, x, b.const(0.0, np.float64)])], to=TensorProto.INT64)
    hh = b.op("Mod", [n, c(100)])
    dd = b.op("Mod", [b.op("Div", [n, c(100)]), c(100)])
    mm = b.op("Mod", [b.op("Div", [n, c(10_000)]), c(100)])
    yy = b.op("Div", [n, c(1_000_000)])
    year = b.op("Add", [yy, b.op("Where", [b.op("Less", [yy, c(69)]), c(2000), c(1900)])])
    leap = b.op("Or", [b.op("And", [b.op("Equal", [b.op("Mod", [year, c(4)]), c(0)]),
                                     b.op("Not", [b.op("Equal", [b.op("Mod", [year, c(100)]), c(0)])])]),
                       b.op("Equal", [b.op("Mod", [year, c(400)]), c(0)])])
    mm_safe = b.op("Min", [b.op("Max", [mm, c(1)]), c(12)])
    dim = b.op("Gather", [c([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]), mm_safe])
    dim = b.op("Add", [dim, b.op("Cast", [b.op("And", [leap, b.op("Equal", [mm_safe, c(2)])])], to=TensorProto.INT64)])
    valid = finite
    for cond in (b.op("Less", [hh, c(24)]), b.op("GreaterOrEqual", [mm, c(1)]), b.op("LessOrEqual", [mm, c(12)]),
                 b.op("GreaterOrEqual", [dd, c(1)]), b.op("LessOrEqual", [dd, dim])):
        valid = b.op("And", [valid, cond])
    # days_from_civil(year, mm, dd)
    early = b.op("LessOrEqual", [mm_safe, c(2)])
    y = b.op("Sub", [year, b.op("Cast", [early], to=TensorProto.INT64)])
    era = b.op("Div", [y, c(400)])
    yoe = b.op("Sub", [y, b.op("Mul", [era, c(400)])])
    mp = b.op("Add", [mm_safe, b.op("Where", [early, c(9), c(-3)])])
    doy = b.op("Add", [b.op("Div", [b.op("Add", [b.op("Mul", [mp, c(153)]), c(2)]), c(5)]), b.op("Sub", [dd, c(1)])])
    doe = b.op("Add", [b.op("Sub", [b.op("Add", [b.op("Mul", [yoe, c(365)]), b.op("Div", [yoe, c(4)])]),
                                    b.op("Div", [yoe, c(100)])]), doy])
    days = b.op("Sub", [b.op("Add", [b.op("Mul", [era, c(146_097)]), doe]), c(719_468)])
    weekday = b.op("Mod", [b.op("Add", [days, c(3)]), c(7)], fmod=0)
    return valid, hh, weekday


def encoder_graph(schema: Schema, plan: dict[str, Any], out_name: str,
                  dropped: dict[int, set[int]] | None = None,
                  relabel: list[Any] | None = None) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto],
                                                             list[onnx.ValueInfoProto]]:
    """Nodes, initializers and graph inputs computing ``out_name`` = ids int64 ``[batch, F]``.

    Numbers with ``criteo_log2``/``floor`` go through one ``TreeEnsemble`` (rule and lookup
    folded into sorted edges, :func:`ondevice.vocabulary.buckets`) and a ``Cast``; string
    fields share one two-level lookup (:class:`ondevice.vocabulary.Tables`, 3 nodes); identity,
    Avazu date and ``edges:`` fields are computed column by column; hashed ids pass through. The blocks are
    concatenated and one ``Gather`` puts the fields in schema order (none when the order already
    matches). ``dropped``: per field, ids that keep no key (they read the OOV row anyway);
    ``relabel``: per field, the id each table emits for a prepare id (:func:`ondevice.vocabulary.relabel_applies`).
    """
    b = _Builder()
    cols = {name: [c for c in plan["columns"] if c["input"] == name] for name in (STRING_INPUT, NUMBER_INPUT, HASHED_INPUT)}
    field_col = {f: c for c in plan["columns"] for f in c["fields"]}
    n_num = len(cols[NUMBER_INPUT])
    t = tables(schema, plan, dropped, relabel)
    blocks: list[str] = []
    position: dict[int, int] = {}  # field index -> column of the concatenated blocks
    width = 0

    def add_block(tensor: str, n: int, fields: dict[int, int]) -> None:
        nonlocal width
        blocks.append(tensor)
        for j, k in fields.items():
            position[j] = width + k
        width += n

    if t.trees:  # numbers with an elementwise rule: rule and lookup as one binary search per column
        out = b.name()
        b.nodes.append(tree_ensemble(NUMBER_INPUT, out, list(t.trees.values())))
        add_block(b.op("Cast", [out], to=TensorProto.INT64), len(t.trees), {j: k for k, j in enumerate(t.trees)})
    if t.strings:  # text -> u (level 1), u + column * stride -> id (level 2)
        keys1, values1, stride, keys2, values2 = t.two_level()
        u = b.lookup(STRING_INPUT, keys1, values1, stride - 1, "string")
        comb = b.op("Add", [u, b.const(np.arange(len(cols[STRING_INPUT]))[None, :] * stride, np.int64)])
        add_block(b.lookup(comb, keys2, values2, 0, "int"), len(cols[STRING_INPUT]), t.in_lookup)
    # column by column: hashed ids, identity ids, Avazu dates, edges buckets
    rest = [j for j, f in enumerate(schema.fields) if field_col[f.name]["kind"] == "number" and j not in t.trees]
    number_cols = b.split(NUMBER_INPUT, n_num) if rest else []
    if cols[HASHED_INPUT]:
        add_block(HASHED_INPUT, len(cols[HASHED_INPUT]),
                  {j: field_col[f.name]["index"] for j, f in enumerate(schema.fields) if field_col[f.name]["kind"] == "hashed"})
    avazu: dict[str, tuple[str, str, str]] = {}
    for j in rest:
        f = schema.fields[j]
        c = field_col[f.name]
        x = number_cols[c["index"]]
        if f.encoding == "identity":  # id = value - offset + 1 for integer values inside the vocabulary, else 0
            off = float(f.offset or 0)
            rel = b.op("Sub", [x, b.const(off - 1.0, np.float64)])
            ok = b.op("And", [b.op("Equal", [x, b.op("Floor", [x])]),
                              b.op("And", [b.op("GreaterOrEqual", [rel, b.const(1.0, np.float64)]),
                                           b.op("Less", [rel, b.const(float(f.vocab_size), np.float64)])])])
            add_block(b.op("Cast", [b.op("Where", [ok, rel, b.const(0.0, np.float64)])], to=TensorProto.INT64), 1, {j: 0})
            continue
        keys, values = t.single[j]
        if f.transform in AVAZU_TRANSFORMS:
            if c["name"] not in avazu:
                avazu[c["name"]] = _avazu_parts(b, x)
            valid, hh, wd = avazu[c["name"]]
            part = hh if f.transform == "avazu_hour_of_day" else wd
            key = b.op("Where", [valid, part, b.const(MISSING_KEY - 1, np.int64)])  # invalid -> no key -> OOV
            add_block(b.lookup(key, keys, values, 0, "int"), 1, {j: 0})
            continue
        key = _edges_key(b, x, f.transform or "")
        add_block(b.lookup(key, keys, values, 0, "int"), 1, {j: 0})
    order = [position[j] for j in range(schema.num_fields)]
    cat = blocks[0] if len(blocks) == 1 else b.op("Concat", blocks, axis=1)
    if order == list(range(width)):
        b.nodes.append(oh.make_node("Identity", [cat], [out_name]))
    else:
        b.nodes.append(oh.make_node("Gather", [cat, b.const(order, np.int64)], [out_name], axis=1))
    elem = {STRING_INPUT: TensorProto.STRING, NUMBER_INPUT: TensorProto.DOUBLE, HASHED_INPUT: TensorProto.INT64}
    inputs = [oh.make_tensor_value_info(i["name"], elem[i["name"]], ["batch", i["shape"][1]]) for i in plan["inputs"]]
    return b.nodes, b.inits, inputs


def attach_encoder(model: onnx.ModelProto, schema: Schema, plan: dict[str, Any], ids_input: str = "ids",
                   dropped: dict[int, set[int]] | None = None, relabel: list[Any] | None = None) -> onnx.ModelProto:
    """``model`` (ids in) with the raw encoder in front: raw inputs in, same outputs.

    ``dropped``: per field, ids every embedding table reads as the OOV row
    (:func:`ondevice.vocabulary.dropped_ids`); their keys are left out. ``relabel``: the id model
    takes re-indexed ids (its tables hold the kept rows only, no remap): per field, prepare's id
    -> the id model's, emitted by the tables directly.
    """
    nodes, inits, inputs = encoder_graph(schema, plan, ids_input, dropped, relabel)
    g = model.graph
    if [i.name for i in g.input] != [ids_input]:
        raise BadInputError(f"the id model's inputs are {[i.name for i in g.input]}, expected [{ids_input!r}]")
    new_nodes = nodes + list(g.node)
    del g.node[:]
    g.node.extend(new_nodes)
    g.initializer.extend(inits)
    del g.input[:]
    g.input.extend(inputs)
    if not cols_hashed(plan):
        vocab = schema.vocab_sizes if relabel is None else [int(np.max(r)) + 1 for r in relabel]
        _drop_oov_guards(model, ids_input, np.asarray(vocab, dtype=np.int64))
    for o in model.opset_import:
        if o.domain == ML_DOMAIN:
            o.version = max(o.version, ML_OPSET)
    if not any(o.domain == ML_DOMAIN for o in model.opset_import):
        model.opset_import.append(oh.make_opsetid(ML_DOMAIN, ML_OPSET))
    return model


def raw_encoder_bytes(schema: Schema) -> int:
    """Bytes the raw encoder adds at most to ``schema``'s CTR id model file: its vocabulary
    tables, nodes, constants and inputs (every key kept; the OOV guards it removes not
    subtracted), so an id model of ``B - raw_encoder_bytes`` bytes gives a raw artefact within
    ``B`` (``compress`` reserves it from the budget before the search)."""
    nodes, inits, inputs = encoder_graph(schema, raw_plan(schema), "ids")
    g = onnx.GraphProto()
    g.node.extend(nodes)
    g.initializer.extend(inits)
    g.input.extend(inputs)
    return int(g.ByteSize()) + 64  # + the ai.onnx.ml opset import and the graph's longer length prefix


def with_vocabulary(err: BudgetTooSmallError, budget: int, reserve: int) -> BudgetTooSmallError:
    """``err`` (a search at ``budget - reserve``) restated for the whole budget: the minimum and its
    parts include the ``reserve`` bytes of the raw artefact's vocabulary and encoder."""
    minimum = (err.minimum_bytes or 0) + reserve
    detail = str(err).removesuffix("; raise the budget")
    return BudgetTooSmallError(f"{budget:,} B is below the smallest raw-feature artefact, {minimum:,} B = the "
                               f"vocabulary and encoder ({reserve:,} B) + the model: {detail}; raise the budget, or use "
                               "--inputs ids (the app then ships schema.json)",
                               minimum_bytes=minimum, parts={"vocabulary and encoder": reserve, **(err.parts or {})})


def id_model(model: onnx.ModelProto, ids: str = "ids") -> onnx.ModelProto:
    """The id model inside a raw artefact: the graph from the encoder's output ``ids`` (int64
    ``[batch, F]``) to the outputs, for ids that are vocabulary ids of their fields (e.g. an
    encoded test split: the raw graph has no OOV guard when no id comes from the app)."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    need, seen, keep = [o.name for o in g.output], set(), set()
    while need:
        name = need.pop()
        if name in seen or name == ids:
            continue
        seen.add(name)
        node = producer.get(name)
        if node is not None and id(node) not in keep:
            keep.add(id(node))
            need.extend(node.input)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(n for n in g.node if id(n) in keep)
    del out.graph.input[:]
    out.graph.input.append(oh.make_tensor_value_info(ids, TensorProto.INT64, ["batch", None]))
    _prune_dead(out.graph)
    return out


def cols_hashed(plan: dict[str, Any]) -> bool:
    """Whether some field comes in as a hashed id (from the app, so not known to be in range)."""
    return any(c["kind"] == "hashed" for c in plan["columns"])


def _constant_values(g: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Values of the initializers, ``Constant`` nodes and ``Identity`` copies of them."""
    out = {t.name: onh.to_array(t) for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            out[n.output[0]] = onh.to_array(n.attribute[0].t)
        elif n.op_type == "Identity" and n.input[0] in out:
            out[n.output[0]] = out[n.input[0]]
    return out


def _drop_oov_guards(model: onnx.ModelProto, ids: str, vocab: np.ndarray) -> int:
    """Remove the id model's OOV guards ``Where(ids >= 0 and ids < vocab, ids, 0)`` (``map_oov``).

    Every id the encoder emits is a vocabulary id of its field (lookup values, default 0;
    identity ids checked against the vocabulary), so the guard is the identity on them; it
    costs ~10 nodes per lookup at batch 1 (issue 16: raw overhead). Applied only when no
    field comes in as a hashed id. Returns the number of guards removed.
    """
    g = model.graph
    const = _constant_values(g)
    producer = {o: n for n in g.node for o in n.output}

    def is_const(name: str, want: np.ndarray) -> bool:
        v = const.get(name)
        return v is not None and v.shape in ((), want.shape, (1, *want.shape)) and bool(np.all(v == want))

    guards = {}
    for n in g.node:
        if n.op_type != "Where" or len(n.input) != 3 or n.input[1] != ids:
            continue
        cond = producer.get(n.input[0])
        if cond is None or cond.op_type != "And":
            continue
        parts = {producer[i].op_type: producer[i] for i in cond.input if i in producer}
        ge, lt = parts.get("GreaterOrEqual"), parts.get("Less")
        if (ge is not None and lt is not None and list(ge.input[:1]) == [ids] and list(lt.input[:1]) == [ids]
                and is_const(ge.input[1], np.zeros((), np.int64)) and is_const(lt.input[1], vocab)):
            guards[n.output[0]] = ids
    if not guards:
        return 0
    for n in g.node:
        for k, name in enumerate(n.input):
            if name in guards:
                n.input[k] = guards[name]
    _prune_dead(g)
    return len(guards)


def _prune_dead(g: onnx.GraphProto) -> None:
    """Drop nodes whose outputs nobody reads, then initializers nobody reads."""
    while True:
        used = {o.name for o in g.output} | {i for n in g.node for i in n.input}
        keep = [n for n in g.node if any(o in used for o in n.output)]
        if len(keep) == len(g.node):
            break
        del g.node[:]
        g.node.extend(keep)
    used = {i for n in g.node for i in n.input}
    inits = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(inits)


def vocabulary_bytes(model: onnx.ModelProto) -> int:
    """Serialized bytes of the ``LabelEncoder`` and ``TreeEnsemble`` tables (:func:`ondevice.vocabulary.table_bytes`)."""
    return sum(table_bytes(n) for n in model.graph.node if n.op_type in ("LabelEncoder", "TreeEnsemble"))


# --------------------------------------------------------------------------- the reference (prepare's rules)
def _avazu_key(x: float, transform: str) -> int | None:
    if not (math.isfinite(x) and x == math.floor(x) and 0 <= x < 1e8):
        return None
    try:
        ts = datetime.datetime.strptime(f"{int(x):08d}", "%y%m%d%H")
    except ValueError:
        return None
    return ts.hour if transform == "avazu_hour_of_day" else ts.weekday()


def encode_reference(schema: Schema, plan: dict[str, Any], feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The ids ``prepare`` gives the raw values in ``feeds`` (NumPy, no onnxruntime): the oracle
    the graph's golden outputs are computed from."""
    col_of = {f: c for c in plan["columns"] for f in c["fields"]}
    batch = next(iter(feeds.values())).shape[0]
    out = np.zeros((batch, schema.num_fields), dtype=np.int64)
    for j, f in enumerate(schema.fields):
        c = col_of[f.name]
        x = np.asarray(feeds[c["input"]])[:, c["index"]]
        if c["kind"] == "hashed":
            out[:, j] = x
        elif c["kind"] == "string":
            ids = vocab_ids(f)
            aliases = plan.get("libfm_aliases") or []
            for r, v in enumerate(x):
                s = str(v)
                for alias in aliases:
                    if s not in ids and s.endswith(alias) and ":" not in s[: -len(alias)]:
                        s = s[: -len(alias)]
                out[r, j] = ids.get(s, 0)
        elif f.encoding == "identity":
            for r, v in enumerate(x.astype(np.float64)):
                ok = math.isfinite(v) and v == math.floor(v) and 1 <= v - (f.offset or 0) + 1 < f.vocab_size
                out[r, j] = int(v - (f.offset or 0) + 1) if ok else 0
        else:
            ids = vocab_ids(f)
            v = x.astype(np.float64)
            if f.transform in AVAZU_TRANSFORMS:
                for r, val in enumerate(v):
                    k = _avazu_key(float(val), f.transform)
                    out[r, j] = 0 if k is None else ids.get(str(k), 0)
                continue
            keys = numeric_key(np.where(np.isnan(v), 0.0, v), f.transform or "floor")
            for r in range(batch):
                if np.isinf(v[r]):  # prepare refuses infinite numbers: OOV
                    continue
                token = "" if np.isnan(v[r]) else str(int(keys[r]))
                out[r, j] = ids.get(token, 0)
    return out


# --------------------------------------------------------------------------- inputs
_ODD_NUMBERS = [float("nan"), -1.0, 0.0, 1.0, 2.0, 2.5, 3.0, -7.5, 1e6, 1e18, 9.3e18, 1e300, -1e300,
                float("inf"), -float("inf")]


def _column_values(schema: Schema, col: dict[str, Any], rows: int, rng: np.random.Generator, odd: float) -> np.ndarray:
    f = next(fl for fl in schema.fields if fl.name == col["fields"][0])
    if col["kind"] == "hashed":
        tokens = [f"v{int(k)}" for k in rng.integers(0, 10 * (f.hash_buckets or 1), size=rows)]
        return np.asarray([stable_hash(t, int(f.hash_buckets or 1)) for t in tokens], dtype=np.int64)
    if col["kind"] == "string":
        values = list(f.values or [])
        out = []
        for _ in range(rows):
            u = rng.random()
            if values and u >= odd:
                out.append(values[int(rng.integers(0, len(values)))])
            else:
                out.append(["", "__unseen__", " ", "ünïcode✓", "0"][int(rng.integers(0, 5))])
        return np.asarray(out, dtype=object)
    if col.get("transform") == "avazu_hour":
        good = 14102100 + rng.integers(0, 10, size=rows) * 100 + rng.integers(0, 24, size=rows)
        bad = np.asarray([14023000.0, 14102124.0, float("nan"), -1.0, 99123123.0, 14102100.5])
        pick = rng.random(rows) < odd
        return np.where(pick, bad[rng.integers(0, len(bad), size=rows)], good.astype(np.float64))
    if f.encoding == "identity":
        good = rng.integers(0, max(1, f.vocab_size - 1), size=rows).astype(np.float64) + (f.offset or 0)
    else:
        good = np.floor(np.exp(rng.random(rows) * 9.0)) - 1.0
    pick = rng.random(rows) < odd
    return np.where(pick, np.asarray(_ODD_NUMBERS)[rng.integers(0, len(_ODD_NUMBERS), size=rows)], good)


def raw_random(schema: Schema, plan: dict[str, Any], rows: int, rng: np.random.Generator, *,
               odd_fraction: float = 0.15) -> dict[str, np.ndarray]:
    """Random raw feeds: kept values plus ``odd_fraction`` unseen values, ``""``, NaN, negative,
    huge and infinite numbers, invalid dates."""
    feeds: dict[str, np.ndarray] = {}
    for inp in plan["inputs"]:
        cols = [c for c in plan["columns"] if c["input"] == inp["name"]]
        arr = np.stack([_column_values(schema, c, rows, rng, odd_fraction) for c in cols], axis=1)
        feeds[inp["name"]] = arr.astype({"string": object, "float64": np.float64, "int64": np.int64}[inp["dtype"]])
    return feeds


def raw_golden(schema: Schema, plan: dict[str, Any], *, seed: int = 0, large_batch: int = 64) -> dict[str, dict[str, np.ndarray]]:
    """Golden raw cases: ``batch1`` (kept values), ``oov`` (every row odd) and ``batch{large_batch}``."""
    rng = np.random.default_rng(seed)
    return {"batch1": raw_random(schema, plan, 1, rng, odd_fraction=0.0),
            "oov": raw_random(schema, plan, 16, rng, odd_fraction=1.0),
            f"batch{large_batch}": raw_random(schema, plan, large_batch, rng)}


def write_hash_reference(folder: Path) -> list[str]:
    """Copy the hash reference implementations (Python, JavaScript) into an artefact folder."""
    for name in HASH_FILES:
        shutil.copyfile(HASH_REFERENCE_DIR / name, folder / name)
    return list(HASH_FILES)
